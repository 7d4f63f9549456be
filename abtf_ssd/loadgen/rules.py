"""LoadGen rules of each MLPerf Automotive round, and the ``TestSettings`` that enforce them.

Every rule is written into a ``mlperf_loadgen.TestSettings`` field, so the effective values
in ``mlperf_log_detail.txt`` are the round's whichever LoadGen is installed: the PyPI wheel
(inference LoadGen, whose built-in ``mlperf.conf`` carries other seeds and no ``ssd``) or
the automotive LoadGen built from the round's tag.

A ``user.conf`` is applied on top with ``FromConfig(..., conf_type=2)``: that parses only
the file (LoadGen's ``conf_type=1`` would also load its built-in ``mlperf.conf`` once per
process and override the round's values, and the automotive LoadGen logs an error whenever
``conf_type=1`` is used twice in a process). As in LoadGen, seeds cannot be set by a user.conf.

Execution modes: ``"valid"`` applies the full rules; ``"test"`` keeps everything but caps
the run at ``test_query_count`` queries with no minimum duration (the harness also caps the
QSL at that many samples, so an accuracy run is short too).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import mlperf_loadgen as lg

MODEL_NAME = "ssd"
"""The benchmark's model name in LoadGen config keys (``ssd.SingleStream.target_latency``)."""

SCENARIOS = ("SingleStream", "MultiStream", "Offline", "ConstantStream")
ROUND_SCENARIOS = ("SingleStream", "ConstantStream")
"""The scenarios of the MLPerf Automotive rounds (SingleStream required, ConstantStream optional); the
others of :data:`SCENARIOS` are for test runs only."""
MODES = ("performance", "accuracy", "find-performance")
EXECUTION_MODES = ("test", "valid")
DEFAULT_TEST_QUERY_COUNT = 10
MIN_TARGET_QPS = 0.01
"""The lowest ConstantStream rate find-performance proposes (one query every 100 s)."""
TEST_MIN_DURATION_MS = 0
"""A test run stops after its query count, however short it was."""

AUTOMOTIVE_LOADGEN_HINT = (
    "install the automotive LoadGen: mlcr get,mlperf,automotive,loadgen,_v0.5 "
    "(or pip install from loadgen/ of the mlperf_automotive repository at the round's tag)"
)


SINGLE_STREAM_METRIC = "early_stopping_latency_ss"
CONSTANT_STREAM_THROUGHPUT_METRIC = "result_completed_samples_per_sec"
CONSTANT_STREAM_LATENCY_METRIC = "result_99.90_percentile_latency_ns"
METRIC_LABELS = {
    SINGLE_STREAM_METRIC: "early-stopping 99.9th percentile latency (ms)",
    CONSTANT_STREAM_THROUGHPUT_METRIC: "completed samples per second",
    CONSTANT_STREAM_LATENCY_METRIC: "99.9th percentile latency (ms)",
}
"""Each round's reported metric (the official checker's RESULT_FIELD_NEW) and how it is shown."""


@dataclass(frozen=True)
class LatencyRules:
    """Per-scenario latency rules. ``target_latency_percentile`` is a fraction (0.999)."""

    target_latency_percentile: float
    min_duration_ms: int
    min_query_count: int


@dataclass(frozen=True)
class ConstantStreamRules(LatencyRules):
    """ConstantStream (automotive LoadGen only): queries arrive at a constant rate.

    Both rounds' LoadGens bound the latency by the query interval, ``1 / target_qps``: the v0.5
    LoadGen ignores ``target_latency``; the v1.0 one takes a non-zero ``target_latency`` as the bound
    and derives the QPS from it, which is why the v1.0 mlperf.conf sets it to 0 for ssd.
    """

    target_qps: float
    """The round's mlperf.conf rate (``ssd.ConstantStream.target_qps``), which a user.conf may override."""
    target_latency_ms: float
    """The round's ``ssd.ConstantStream.target_latency`` as its mlperf.conf writes it (0: from the QPS)."""
    constant_gen: bool
    metric: str
    """What the round reports for ConstantStream: a detail-log key (see :data:`METRIC_LABELS`)."""
    qps_capped_at_round: bool
    """Find-performance: True keeps the found QPS at or under ``target_qps`` (the round reports the
    latency at the camera rate); False lets it go higher (the round reports the throughput)."""

    def latency_bound_ns(self, target_qps: float | None = None) -> int:
        """The latency LoadGen holds each query to at ``target_qps`` (default: the round's)."""
        return int(1e9 / (target_qps or self.target_qps))  # LoadGen truncates too

    def rate_warning(self, qps: float) -> str | None:
        """Why a result at ``qps`` is not the round's own, where the round reports latency at its rate."""
        if not self.qps_capped_at_round or math.isclose(qps, self.target_qps):
            return None
        return (
            f"ConstantStream at {qps:g} QPS, not the round's {self.target_qps:g} QPS (mlperf.conf "
            f"{MODEL_NAME}.ConstantStream.target_qps), at which the round reports the 99.9th percentile "
            "latency; the official checker does not check the rate"
        )


@dataclass(frozen=True)
class AuditRules:
    """Values of a compliance test's ``audit.config``."""

    mode: int
    accuracy_log_rng_seed: int
    accuracy_log_sampling_target: int


@dataclass(frozen=True)
class RoundRules:
    """Everything LoadGen must be told for a result of one round to be valid."""

    name: str
    qsl_rng_seed: int
    sample_index_rng_seed: int
    schedule_rng_seed: int
    performance_sample_count: int
    single_stream: LatencyRules
    constant_stream: ConstantStreamRules
    audits: dict[str, AuditRules]
    checks_test01: bool
    """Whether the round's official checker checks TEST01 for a closed ssd result (v1.0 does)."""

    def metric(self, scenario: str) -> str:
        """The detail-log key of the metric this round reports for ``scenario``."""
        return self.constant_stream.metric if scenario == "ConstantStream" else SINGLE_STREAM_METRIC


_SINGLE_STREAM = LatencyRules(target_latency_percentile=0.999, min_duration_ms=600_000, min_query_count=6636)
_AUDITS = {
    "TEST01": AuditRules(mode=2, accuracy_log_rng_seed=720381539243781796, accuracy_log_sampling_target=128)
}


def _constant_stream(target_latency_ms: float, metric: str) -> ConstantStreamRules:
    return ConstantStreamRules(
        target_latency_percentile=0.999,
        min_duration_ms=600_000,
        min_query_count=100_000,
        target_qps=15.0,
        target_latency_ms=target_latency_ms,
        constant_gen=True,
        metric=metric,
        qps_capped_at_round=metric == CONSTANT_STREAM_LATENCY_METRIC,
    )


ROUNDS: dict[str, RoundRules] = {
    "v0.5": RoundRules(
        name="v0.5",
        qsl_rng_seed=1575625098,
        sample_index_rng_seed=2227286192,
        schedule_rng_seed=3495234579,
        performance_sample_count=128,
        single_stream=_SINGLE_STREAM,
        # v0.5 mlperf.conf: *.ConstantStream.target_latency = 10 (its LoadGen ignores it).
        constant_stream=_constant_stream(10.0, CONSTANT_STREAM_THROUGHPUT_METRIC),
        audits=_AUDITS,
        checks_test01=False,
    ),
    "v1.0": RoundRules(
        name="v1.0",
        qsl_rng_seed=1215947953,
        sample_index_rng_seed=295229089,
        schedule_rng_seed=1380859451,
        performance_sample_count=128,
        single_stream=_SINGLE_STREAM,
        # v1.0 mlperf.conf: ssd.ConstantStream.target_latency = 0 (the bound comes from the QPS).
        constant_stream=_constant_stream(0.0, CONSTANT_STREAM_LATENCY_METRIC),
        audits=_AUDITS,
        checks_test01=True,
    ),
}
DEFAULT_ROUND = "v0.5"


class RulesError(ValueError):
    """An unknown round, scenario or mode, an unreadable user.conf, or a LoadGen that lacks a scenario."""


def get_round(name: str) -> RoundRules:
    try:
        return ROUNDS[name]
    except KeyError:
        raise RulesError(f"unknown round {name!r}; known: {', '.join(ROUNDS)}") from None


def has_constant_stream() -> bool:
    """Whether the installed LoadGen is the automotive one (it alone has ConstantStream)."""
    return hasattr(lg.TestScenario, "ConstantStream")


def loadgen_scenario(scenario: str) -> lg.TestScenario:
    if scenario not in SCENARIOS:
        raise RulesError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
    if scenario == "ConstantStream" and not has_constant_stream():
        raise RulesError(
            "scenario ConstantStream needs the automotive LoadGen; the installed mlperf_loadgen "
            f"(PyPI mlcommons-loadgen, the inference LoadGen) lacks it: {AUTOMOTIVE_LOADGEN_HINT}"
        )
    return getattr(lg.TestScenario, scenario)


def _loadgen_mode(mode: str) -> lg.TestMode:
    if mode not in MODES:
        raise RulesError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
    # find-performance is a short performance run; LoadGen's FindPeakPerformance is for Server only.
    return lg.TestMode.AccuracyOnly if mode == "accuracy" else lg.TestMode.PerformanceOnly


def check_target_qps(target_qps: float | None) -> float | None:
    """``target_qps`` if it is a usable ConstantStream rate (positive, finite), else :class:`RulesError`."""
    if target_qps is not None and not (math.isfinite(target_qps) and target_qps > 0):
        raise RulesError(f"the ConstantStream target QPS must be a positive number, got {target_qps}")
    return target_qps


def make_test_settings(
    round: str,
    scenario: str,
    mode: str,
    execution_mode: str = "valid",
    test_query_count: int = DEFAULT_TEST_QUERY_COUNT,
    expected_latency_ns: int | None = None,
    user_conf: str | Path | None = None,
    performance_sample_count: int | None = None,
    samples_per_query: int | None = None,
    target_qps: float | None = None,
) -> lg.TestSettings:
    """LoadGen settings for one run, every rule of ``round`` set through a field.

    ``expected_latency_ns``: end-to-end latency of one query (SingleStream / MultiStream) or
    of one sample (Offline, turned into the expected QPS). ``performance_sample_count``
    defaults to the round's; the harness lowers it to the QSL size when that is smaller.
    ``samples_per_query`` is MultiStream's query size (None: LoadGen's, 8). ``target_qps`` is
    ConstantStream's rate (None: the round's). ``user_conf`` (LoadGen's key = value format, model
    ``ssd``) is applied last and wins over everything but the seeds.

    ConstantStream's find-performance measures the latency of back-to-back queries, so it runs
    LoadGen's SingleStream scenario: at a constant rate, queries that pile up would measure the queue.
    A ConstantStream test run ends by running out of queries (``max_query_count`` 0): a query cap
    makes LoadGen log an error, and an error in a detail log fails the submission checker.
    """
    rules = get_round(round)
    if execution_mode not in EXECUTION_MODES:
        raise RulesError(f"unknown execution mode {execution_mode!r}; known: {', '.join(EXECUTION_MODES)}")
    if test_query_count < 1:
        raise RulesError(f"test_query_count must be at least 1, got {test_query_count}")
    check_target_qps(target_qps)
    requested = loadgen_scenario(scenario)  # refuses ConstantStream without the automotive LoadGen
    measured_scenario = (
        "SingleStream" if scenario == "ConstantStream" and mode == "find-performance" else scenario
    )
    settings = lg.TestSettings()
    settings.scenario = requested if measured_scenario == scenario else lg.TestScenario.SingleStream
    settings.mode = _loadgen_mode(mode)

    settings.qsl_rng_seed = rules.qsl_rng_seed
    settings.sample_index_rng_seed = rules.sample_index_rng_seed
    settings.schedule_rng_seed = rules.schedule_rng_seed
    settings.performance_sample_count_override = performance_sample_count or rules.performance_sample_count

    latency = rules.constant_stream if measured_scenario == "ConstantStream" else rules.single_stream
    settings.min_duration_ms = latency.min_duration_ms
    settings.min_query_count = latency.min_query_count
    settings.max_query_count = 0
    settings.max_duration_ms = 0

    if measured_scenario == "SingleStream":
        settings.single_stream_target_latency_percentile = latency.target_latency_percentile
        if expected_latency_ns and scenario == "SingleStream":
            settings.single_stream_expected_latency_ns = int(expected_latency_ns)
    elif measured_scenario == "MultiStream":
        settings.multi_stream_target_latency_percentile = latency.target_latency_percentile
        if samples_per_query is not None:
            settings.multi_stream_samples_per_query = samples_per_query
        if expected_latency_ns:
            settings.multi_stream_expected_latency_ns = int(expected_latency_ns)
    elif measured_scenario == "Offline":
        if expected_latency_ns:
            settings.offline_expected_qps = 1e9 / expected_latency_ns
    else:
        constant = rules.constant_stream
        settings.server_target_latency_percentile = constant.target_latency_percentile
        settings.server_target_qps = target_qps or constant.target_qps
        settings.server_target_latency_ns = int(constant.target_latency_ms * 1e6)
        settings.server_constant_gen = constant.constant_gen

    if execution_mode == "test" or mode == "find-performance":
        settings.min_query_count = test_query_count
        settings.max_query_count = 0 if measured_scenario == "ConstantStream" else test_query_count
        settings.min_duration_ms = TEST_MIN_DURATION_MS

    if user_conf is not None:
        apply_user_conf(settings, user_conf, scenario)
    return settings


def apply_user_conf(settings: lg.TestSettings, user_conf: str | Path, scenario: str) -> None:
    """Apply the keys of ``user_conf`` (and only those) on top of ``settings``.

    The file is checked here first: LoadGen logs a rejected line as an error that lands in the
    detail log of the process's next run, and any error there fails the submission checker.
    """
    path = Path(user_conf)
    check_user_conf(path)
    status = settings.FromConfig(str(path), MODEL_NAME, scenario, 2)
    if status != 0:
        raise RulesError(f"user.conf {path}: LoadGen's FromConfig rejected it (status {status})")


_CONF_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|0[xX][0-9a-fA-F]+)")


def check_user_conf(path: Path) -> None:
    """Raise :class:`RulesError` naming the line unless every line is one LoadGen accepts.

    Accepted: blank lines, ``# comment`` lines and ``model.scenario.key = number`` (LoadGen reads
    a ``#`` after the value as a bad value, so no trailing comments).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RulesError(f"user.conf {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RulesError(f"user.conf {path}: unreadable ({e})") from None
    for number, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens or tokens[0] == "#" or (len(tokens) == 1 and tokens[0].startswith("#")):
            continue
        if len(tokens) != 3 or tokens[1] != "=" or not _CONF_NUMBER.fullmatch(tokens[2]):
            raise RulesError(
                f"user.conf {path} line {number}: expected 'model.scenario.key = number', "
                f"found {line.strip()!r}"
            )


def user_conf_text(settings: lg.TestSettings, scenario: str, round: str) -> str:
    """The effective settings of a run written as a user.conf (LoadGen's units: ms, percent).

    Seeds are comments: LoadGen reads them only from its own mlperf.conf, never a user.conf.
    """
    prefix = f"{MODEL_NAME}.{scenario}"
    lines = [
        f"# Effective LoadGen settings of this run (round {round}).",
        f"# qsl_rng_seed = {settings.qsl_rng_seed}",
        f"# sample_index_rng_seed = {settings.sample_index_rng_seed}",
        f"# schedule_rng_seed = {settings.schedule_rng_seed}",
    ]
    values: dict[str, str] = {}
    if scenario == "SingleStream":
        values["target_latency"] = _ms(settings.single_stream_expected_latency_ns)
        values["target_latency_percentile"] = _percent(settings.single_stream_target_latency_percentile)
    elif scenario == "MultiStream":
        values["target_latency"] = _ms(settings.multi_stream_expected_latency_ns)
        values["target_latency_percentile"] = _percent(settings.multi_stream_target_latency_percentile)
        values["samples_per_query"] = str(settings.multi_stream_samples_per_query)
    elif scenario == "Offline":
        values["target_qps"] = repr(float(settings.offline_expected_qps))
    else:
        values["target_qps"] = repr(float(settings.server_target_qps))
        values["target_latency"] = _ms(settings.server_target_latency_ns)
        values["target_latency_percentile"] = _percent(settings.server_target_latency_percentile)
        values["constant_gen"] = str(int(settings.server_constant_gen))
    values["min_duration"] = str(settings.min_duration_ms)
    values["max_duration"] = str(settings.max_duration_ms)
    values["min_query_count"] = str(settings.min_query_count)
    values["max_query_count"] = str(settings.max_query_count)
    values["performance_sample_count_override"] = str(settings.performance_sample_count_override)
    lines += [f"{prefix}.{key} = {value}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def effective_user_conf_text(values: dict[str, object], scenario: str, round: str) -> str | None:
    """The settings a detail log records as effective, written as a user.conf (None: not in the log).

    This is what LoadGen used, which can differ from what was asked: the v1.0 LoadGen derives the
    ConstantStream QPS from a non-zero target latency, and a SingleStream target latency is logged as
    its QPS (``1 / latency``).
    """
    logged = str(values.get("effective_scenario") or scenario).replace(" ", "")
    if "effective_target_qps" not in values or logged not in ROUND_SCENARIOS:
        return None  # Offline / MultiStream (test runs only) keep the requested settings
    qps = float(values["effective_target_qps"])  # type: ignore[arg-type]
    lines = [
        f"# Effective LoadGen settings of this run (round {round}), from its mlperf_log_detail.txt.",
        *(
            f"# {seed} = {values.get(f'effective_{seed}')}"
            for seed in ("qsl_rng_seed", "sample_index_rng_seed", "schedule_rng_seed")
        ),
    ]
    entries: dict[str, str] = {}
    if logged == "ConstantStream":
        entries["target_qps"] = repr(qps)
        entries["target_latency"] = _ms(float(values.get("effective_target_latency_ns") or 0))  # type: ignore[arg-type]
        if "effective_server_constant_gen" in values:
            entries["constant_gen"] = str(int(bool(values["effective_server_constant_gen"])))
    elif qps > 0:
        entries["target_latency"] = _ms(1e9 / qps)
    entries["target_latency_percentile"] = _percent(
        float(values.get("effective_target_latency_percentile", 0))
    )  # type: ignore[arg-type]
    for key in ("min_duration", "max_duration"):
        entries[key] = str(values.get(f"effective_{key}_ms"))
    for key in ("min_query_count", "max_query_count"):
        entries[key] = str(values.get(f"effective_{key}"))
    entries["performance_sample_count_override"] = str(values.get("effective_performance_sample_count"))
    lines += [f"{MODEL_NAME}.{logged}.{key} = {value}" for key, value in entries.items()]
    return "\n".join(lines) + "\n"


def _ms(nanoseconds: float) -> str:
    return f"{nanoseconds / 1e6:.6f}".rstrip("0").rstrip(".")


def _percent(fraction: float) -> str:
    return f"{fraction * 100:.6f}".rstrip("0").rstrip(".")


def audit_config_text(round: str, test: str = "TEST01") -> str:
    """The ``audit.config`` of compliance test ``test`` for the ssd model."""
    rules = get_round(round)
    try:
        audit = rules.audits[test]
    except KeyError:
        known = ", ".join(rules.audits)
        raise RulesError(f"round {round}: no audit values for {test!r}; known: {known}") from None
    return (
        f"# {test} audit config for {MODEL_NAME} ({round})\n"
        f"*.*.mode = {audit.mode}\n"
        f"*.*.accuracy_log_rng_seed = {audit.accuracy_log_rng_seed}\n"
        f"*.*.accuracy_log_sampling_target = {audit.accuracy_log_sampling_target}\n"
    )
