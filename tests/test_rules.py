"""LoadGen rules per round: the facts, the TestSettings they make, user.conf on top, audit config.

ConstantStream exists only in the automotive LoadGen: those runs take place in a subprocess on the
round's automotive LoadGen of ``../shared/upstream`` (``upstream_tools``; skipped without it).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import mlperf_loadgen as lg
import pytest
from helpers import run_instant_sut

from abtf_ssd.loadgen import rules
from abtf_ssd.loadgen.report import DETAIL_LOG, detail_values, read_detail_log
from abtf_ssd.loadgen.rules import ROUNDS, RulesError, make_test_settings


def test_round_facts() -> None:
    v05, v10 = ROUNDS["v0.5"], ROUNDS["v1.0"]
    assert (v05.qsl_rng_seed, v05.sample_index_rng_seed, v05.schedule_rng_seed) == (
        1575625098,
        2227286192,
        3495234579,
    )
    assert (v10.qsl_rng_seed, v10.sample_index_rng_seed, v10.schedule_rng_seed) == (
        1215947953,
        295229089,
        1380859451,
    )
    for r in (v05, v10):
        assert r.performance_sample_count == 128
        assert (r.single_stream.target_latency_percentile, r.single_stream.min_duration_ms) == (0.999, 600000)
        assert r.single_stream.min_query_count == 6636
        assert r.constant_stream.min_query_count == 100000 and r.constant_stream.target_qps == 15
        assert r.constant_stream.min_duration_ms == 600000 and r.constant_stream.constant_gen
        assert r.constant_stream.target_latency_percentile == 0.999
        assert r.metric("SingleStream") == "early_stopping_latency_ss"
        audit = r.audits["TEST01"]
        assert (audit.mode, audit.accuracy_log_rng_seed, audit.accuracy_log_sampling_target) == (
            2,
            720381539243781796,
            128,
        )
    # Each round's official mlperf.conf and checker: v0.5 reports ConstantStream's throughput and
    # writes target_latency 10 (its LoadGen ignores it); v1.0 reports the 99.9th percentile latency
    # and writes 0 (the bound comes from the QPS). Only v1.0 checks TEST01 for a closed ssd result.
    assert (v05.constant_stream.target_latency_ms, v10.constant_stream.target_latency_ms) == (10, 0)
    assert v05.metric("ConstantStream") == "result_completed_samples_per_sec"
    assert v10.metric("ConstantStream") == "result_99.90_percentile_latency_ns"
    assert (v05.checks_test01, v10.checks_test01) == (False, True)


@pytest.mark.parametrize("round_name", ["v0.5", "v1.0"])
def test_latency_bound_is_the_query_interval(round_name: str) -> None:
    constant = ROUNDS[round_name].constant_stream
    assert constant.latency_bound_ns() == 66_666_666  # 1 / 15 s, truncated as LoadGen does
    assert constant.latency_bound_ns(20.0) == 50_000_000
    assert constant.latency_bound_ns(0.5) == 2_000_000_000


def test_rate_warning_only_for_v1_off_its_rate() -> None:
    v05, v10 = ROUNDS["v0.5"].constant_stream, ROUNDS["v1.0"].constant_stream
    assert v05.rate_warning(7.5) is None  # v0.5 reports throughput: any rate is its result
    assert v10.rate_warning(15.0) is None
    warning = v10.rate_warning(7.5)
    assert warning is not None and warning.startswith("ConstantStream at 7.5 QPS, not the round's 15 QPS")
    assert "ssd.ConstantStream.target_qps" in warning and "official checker does not check" in warning


@pytest.mark.parametrize("value", [0, -1.5, math.nan, math.inf, -math.inf])
def test_check_target_qps_refuses_what_is_no_rate(value: float) -> None:
    with pytest.raises(RulesError, match="target QPS must be a positive number, got"):
        rules.check_target_qps(value)
    with pytest.raises(RulesError, match="target QPS must be a positive number"):
        make_test_settings("v0.5", "SingleStream", "performance", "test", target_qps=value)


def test_check_target_qps_passes_a_rate_and_none() -> None:
    assert rules.check_target_qps(None) is None
    assert rules.check_target_qps(7.5) == 7.5
    assert rules.check_target_qps(1e-3) == 1e-3


@pytest.mark.parametrize("round_name", ["v0.5", "v1.0"])
def test_constant_stream_find_performance_measures_back_to_back_queries(round_name: str) -> None:
    """It runs LoadGen's SingleStream (a constant rate would measure the queue); the round's
    ConstantStream rules stay out of it. Like every ConstantStream request, it needs the automotive
    LoadGen: the PyPI one is refused, naming the way out."""
    if not rules.has_constant_stream():
        with pytest.raises(RulesError, match="mlcr get,mlperf,automotive,loadgen"):
            make_test_settings(round_name, "ConstantStream", "find-performance", "valid")
        return
    s = make_test_settings(
        round_name, "ConstantStream", "find-performance", "valid", test_query_count=6, expected_latency_ns=9
    )
    assert s.scenario == lg.TestScenario.SingleStream and s.mode == lg.TestMode.PerformanceOnly
    assert (s.min_query_count, s.max_query_count, s.min_duration_ms) == (6, 6, 0)
    assert s.single_stream_target_latency_percentile == pytest.approx(0.999)
    assert s.single_stream_expected_latency_ns != 9  # a ConstantStream expectation is no SingleStream one
    assert s.qsl_rng_seed == ROUNDS[round_name].qsl_rng_seed


@pytest.mark.parametrize("round_name", ["v0.5", "v1.0"])
def test_valid_settings_carry_every_rule(round_name: str) -> None:
    r = ROUNDS[round_name]
    s = make_test_settings(round_name, "SingleStream", "performance", "valid", expected_latency_ns=50_000_000)
    assert s.scenario == lg.TestScenario.SingleStream and s.mode == lg.TestMode.PerformanceOnly
    assert (s.qsl_rng_seed, s.sample_index_rng_seed, s.schedule_rng_seed) == (
        r.qsl_rng_seed,
        r.sample_index_rng_seed,
        r.schedule_rng_seed,
    )
    assert s.performance_sample_count_override == 128
    assert s.single_stream_target_latency_percentile == pytest.approx(0.999)
    assert (s.min_duration_ms, s.min_query_count) == (600000, 6636)
    assert (s.max_query_count, s.max_duration_ms) == (0, 0)
    assert s.single_stream_expected_latency_ns == 50_000_000


def test_test_mode_caps_queries_and_duration() -> None:
    s = make_test_settings("v0.5", "SingleStream", "accuracy", "test", test_query_count=7)
    assert s.mode == lg.TestMode.AccuracyOnly
    assert (s.min_query_count, s.max_query_count, s.min_duration_ms) == (7, 7, 0)
    # the seeds stay the round's in a test run
    assert s.qsl_rng_seed == ROUNDS["v0.5"].qsl_rng_seed


def test_find_performance_is_a_short_performance_run() -> None:
    s = make_test_settings("v1.0", "SingleStream", "find-performance", "valid", test_query_count=5)
    assert s.mode == lg.TestMode.PerformanceOnly
    assert (s.min_query_count, s.max_query_count, s.min_duration_ms) == (5, 5, 0)


def test_offline_expected_latency_becomes_qps() -> None:
    s = make_test_settings("v0.5", "Offline", "performance", "valid", expected_latency_ns=20_000_000)
    assert s.offline_expected_qps == pytest.approx(50.0)


def test_user_conf_applies_on_top_but_not_seeds(tmp_path: Path) -> None:
    conf = tmp_path / "user.conf"
    conf.write_text(
        "ssd.SingleStream.target_latency = 7\n"
        "*.SingleStream.min_query_count = 11\n"
        "ssd.*.qsl_rng_seed = 5\n"  # LoadGen takes seeds only from its own mlperf.conf
        "resnet50.SingleStream.min_duration = 3\n"  # another model: ignored
    )
    s = make_test_settings("v0.5", "SingleStream", "performance", "valid", user_conf=conf)
    assert s.single_stream_expected_latency_ns == 7_000_000
    assert s.min_query_count == 11
    assert s.qsl_rng_seed == ROUNDS["v0.5"].qsl_rng_seed
    assert s.min_duration_ms == 600000


def test_user_conf_does_not_pull_in_loadgens_mlperf_conf(tmp_path: Path) -> None:
    # LoadGen's FromConfig(conf_type=1) loads its built-in mlperf.conf on the first call in a
    # process, overriding the round's seeds and durations: check in a fresh process.
    conf = tmp_path / "user.conf"
    conf.write_text("ssd.SingleStream.target_latency = 9\n")
    code = (
        "from abtf_ssd.loadgen.rules import make_test_settings\n"
        f"s = make_test_settings('v1.0', 'SingleStream', 'performance', 'test', user_conf={str(conf)!r})\n"
        "print(s.qsl_rng_seed, s.sample_index_rng_seed, s.schedule_rng_seed, s.min_duration_ms,"
        " s.single_stream_target_latency_percentile, s.single_stream_expected_latency_ns)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    out = done.stdout.split()
    assert out == ["1215947953", "295229089", "1380859451", "0", "0.999", "9000000.0"]


@pytest.mark.parametrize(
    "line",
    [
        "ssd.SingleStream.target_latency = fast",
        "ssd.SingleStream.target_latency = 5 # ms",
        "ssd.SingleStream.target_latency 5",
        "#note about the run",
    ],
)
def test_bad_user_conf_is_refused_before_loadgen_sees_it(tmp_path: Path, line: str) -> None:
    conf = tmp_path / "user.conf"
    conf.write_text(f"# header\n\n{line}\n")
    with pytest.raises(RulesError, match=r"user\.conf .* line 3: expected 'model\.scenario\.key = number'"):
        make_test_settings("v0.5", "SingleStream", "performance", user_conf=conf)


def test_missing_user_conf(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="no such file"):
        make_test_settings("v0.5", "SingleStream", "performance", user_conf=tmp_path / "missing.conf")


def test_a_refused_user_conf_leaves_no_error_for_the_next_run(tmp_path: Path) -> None:
    # LoadGen would log its own parse error and write it into the next run's detail log
    conf = tmp_path / "user.conf"
    conf.write_text("ssd.SingleStream.target_latency = fast\n")
    with pytest.raises(RulesError):
        make_test_settings("v0.5", "SingleStream", "performance", user_conf=conf)
    settings = make_test_settings("v0.5", "SingleStream", "performance", "test", test_query_count=3)
    sut = lg.ConstructSUT(
        lambda samples: lg.QuerySamplesComplete([lg.QuerySampleResponse(s.id, 0, 0) for s in samples]),
        lambda: None,
    )
    qsl = lg.ConstructQSL(4, 4, lambda _: None, lambda _: None)
    log_settings = lg.LogSettings()
    log_settings.log_output.outdir = str(tmp_path)
    try:
        lg.StartTestWithLogSettings(sut, qsl, settings, log_settings)
    finally:
        lg.DestroyQSL(qsl)
        lg.DestroySUT(sut)
    assert '"is_error": true' not in (tmp_path / "mlperf_log_detail.txt").read_text()


def test_unknown_round_scenario_mode() -> None:
    with pytest.raises(RulesError, match="unknown round 'v9'"):
        make_test_settings("v9", "SingleStream", "performance")
    with pytest.raises(RulesError, match="unknown scenario"):
        make_test_settings("v0.5", "Server", "performance")
    with pytest.raises(RulesError, match="unknown mode"):
        make_test_settings("v0.5", "SingleStream", "submission")
    with pytest.raises(RulesError, match="execution mode"):
        make_test_settings("v0.5", "SingleStream", "performance", execution_mode="fast")


def test_constant_stream_needs_the_automotive_loadgen() -> None:
    if rules.has_constant_stream():
        s = make_test_settings("v0.5", "ConstantStream", "performance", "valid")
        assert s.server_target_qps == 15 and s.server_constant_gen
        assert (s.min_query_count, s.min_duration_ms) == (100000, 600000)
    else:
        with pytest.raises(RulesError, match=r"mlcr get,mlperf,automotive,loadgen,_v0\.5"):
            make_test_settings("v0.5", "ConstantStream", "performance")


@pytest.mark.parametrize("scenario", ["SingleStream", "MultiStream", "Offline"])
def test_effective_user_conf_reads_back_the_same_settings(scenario: str, tmp_path: Path) -> None:
    s = make_test_settings(
        "v0.5", scenario, "performance", "test", test_query_count=12, expected_latency_ns=3_500_000
    )
    conf = tmp_path / "user.conf"
    conf.write_text(rules.user_conf_text(s, scenario, "v0.5"))
    fresh = lg.TestSettings()
    fresh.scenario = getattr(lg.TestScenario, scenario)
    rules.apply_user_conf(fresh, conf, scenario)
    for name in ("min_duration_ms", "max_duration_ms", "min_query_count", "max_query_count"):
        assert getattr(fresh, name) == getattr(s, name), name
    assert fresh.performance_sample_count_override == s.performance_sample_count_override
    if scenario == "SingleStream":
        assert fresh.single_stream_expected_latency_ns == s.single_stream_expected_latency_ns
        assert fresh.single_stream_target_latency_percentile == pytest.approx(0.999)
    if scenario == "Offline":
        assert fresh.offline_expected_qps == pytest.approx(s.offline_expected_qps)
    assert "# qsl_rng_seed = 1575625098" in conf.read_text()


def test_audit_config_text() -> None:
    text = rules.audit_config_text("v0.5")
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert lines == [
        "*.*.mode = 2",
        "*.*.accuracy_log_rng_seed = 720381539243781796",
        "*.*.accuracy_log_sampling_target = 128",
    ]
    with pytest.raises(RulesError, match="TEST04"):
        rules.audit_config_text("v0.5", "TEST04")


def _pypi_loadgen_run(out: Path, settings: lg.TestSettings) -> dict[str, object]:
    """A real run of an instant SUT with ``settings``; the values of its detail log."""
    run_instant_sut(out, settings, samples=4, answer_after_s=0.001)
    return detail_values(read_detail_log(out / DETAIL_LOG))


@pytest.mark.parametrize("round_name", ["v0.5", "v1.0"])
def test_effective_user_conf_from_a_real_detail_log(round_name: str, tmp_path: Path) -> None:
    """What a PyPI LoadGen run logged as effective, as a user.conf that sets the same again."""
    asked = tmp_path / "asked.conf"
    asked.write_text("ssd.SingleStream.target_latency = 123\n")
    settings = make_test_settings(
        round_name, "SingleStream", "performance", "test", test_query_count=5, performance_sample_count=4,
        user_conf=asked,
    )  # fmt: skip
    values = _pypi_loadgen_run(tmp_path / "run", settings)
    text = rules.effective_user_conf_text(values, "SingleStream", round_name)
    assert text is not None
    r = ROUNDS[round_name]
    assert text.startswith(
        f"# Effective LoadGen settings of this run (round {round_name}), from its mlperf_log_detail.txt.\n"
    )
    for seed in ("qsl_rng_seed", "sample_index_rng_seed", "schedule_rng_seed"):
        assert f"# {seed} = {getattr(r, seed)}\n" in text
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert [line.split(" = ")[0] for line in lines] == [
        f"ssd.SingleStream.{key}"
        for key in (
            "target_latency", "target_latency_percentile", "min_duration", "max_duration",
            "min_query_count", "max_query_count", "performance_sample_count_override",
        )
    ]  # fmt: skip
    written = tmp_path / "user.conf"
    written.write_text(text)
    again = lg.TestSettings()
    again.scenario = lg.TestScenario.SingleStream
    rules.apply_user_conf(again, written, "SingleStream")
    # LoadGen logs the latency as a QPS to 6 significant digits: 123 ms comes back within 1e-5.
    assert again.single_stream_expected_latency_ns == pytest.approx(123_000_000, rel=1e-5)
    assert again.single_stream_target_latency_percentile == pytest.approx(0.999)
    assert (again.min_query_count, again.max_query_count, again.min_duration_ms, again.max_duration_ms) == (
        5, 5, 0, 0,
    )  # fmt: skip
    assert again.performance_sample_count_override == 4


def test_effective_user_conf_of_a_log_without_effective_settings() -> None:
    assert rules.effective_user_conf_text({"result_validity": "INVALID"}, "SingleStream", "v0.5") is None


def test_effective_user_conf_of_a_constant_stream_log(tmp_path: Path) -> None:
    """The v1.0 LoadGen derived 100 QPS from a 10 ms target latency: the file says 100, what it used."""
    values = {
        "effective_scenario": "Constant Stream",
        "effective_target_qps": 100,
        "effective_target_latency_ns": 10_000_000,
        "effective_server_constant_gen": True,
        "effective_target_latency_percentile": 0.999,
        "effective_min_duration_ms": 0,
        "effective_max_duration_ms": 0,
        "effective_min_query_count": 4,
        "effective_max_query_count": 0,
        "effective_performance_sample_count": 4,
        "effective_qsl_rng_seed": 1215947953,
        "effective_sample_index_rng_seed": 295229089,
        "effective_schedule_rng_seed": 1380859451,
    }
    text = rules.effective_user_conf_text(values, "ConstantStream", "v1.0")
    assert [line for line in text.splitlines() if not line.startswith("#")] == [
        "ssd.ConstantStream.target_qps = 100.0",
        "ssd.ConstantStream.target_latency = 10",
        "ssd.ConstantStream.constant_gen = 1",
        "ssd.ConstantStream.target_latency_percentile = 99.9",
        "ssd.ConstantStream.min_duration = 0",
        "ssd.ConstantStream.max_duration = 0",
        "ssd.ConstantStream.min_query_count = 4",
        "ssd.ConstantStream.max_query_count = 0",
        "ssd.ConstantStream.performance_sample_count_override = 4",
    ]
    assert "# qsl_rng_seed = 1215947953\n" in text
    written = tmp_path / "user.conf"
    written.write_text(text)
    rules.check_user_conf(written)  # every line one LoadGen's FromConfig accepts


_CONSTANT_STREAM_RUN = """
import json, sys, time
from pathlib import Path
import mlperf_loadgen as lg
import numpy as np
from abtf_ssd.loadgen import rules
from abtf_ssd.loadgen.report import DETAIL_LOG, detail_messages, detail_values, read_detail_log

round_name, out, user_conf = sys.argv[1], Path(sys.argv[2]), sys.argv[3] or None
target_qps = float(sys.argv[4]) if sys.argv[4] else None
settings = rules.make_test_settings(
    round_name, "ConstantStream", "performance", "test", test_query_count=4, performance_sample_count=4,
    user_conf=user_conf, target_qps=target_qps,
)
response = np.zeros(6, np.float32)

def issue(samples):
    lg.QuerySamplesComplete(
        [lg.QuerySampleResponse(s.id, response.ctypes.data, response.nbytes) for s in samples]
    )

sut = lg.ConstructSUT(issue, lambda: None)
qsl = lg.ConstructQSL(4, 4, lambda _: None, lambda _: None)
log_settings = lg.LogSettings()
log_settings.log_output.outdir = str(out)
log_settings.log_output.copy_summary_to_stdout = False
lg.StartTestWithLogSettings(sut, qsl, settings, log_settings, str(out / "no-audit.config"))
records = read_detail_log(out / DETAIL_LOG)
values = detail_values(records)
print(json.dumps({
    "asked": {"max_query_count": settings.max_query_count, "target_qps": settings.server_target_qps,
              "target_latency_ns": settings.server_target_latency_ns},
    "values": values,
    "errors": detail_messages(records),
    "user_conf": rules.effective_user_conf_text(values, "ConstantStream", round_name),
}))
"""


def automotive_constant_stream_run(
    round_name: str, out: Path, user_conf: Path | None = None, target_qps: float | None = None
) -> dict:
    """A 4-query ConstantStream test run of an instant SUT on the round's automotive LoadGen (in
    ``out``): the settings asked, the detail log's values and errors, the effective user.conf."""
    from upstream_tools import official_tools

    tools = official_tools(round_name)
    out.mkdir(parents=True)
    done = subprocess.run(
        [
            str(tools.python),
            "-c",
            _CONSTANT_STREAM_RUN,
            round_name,
            str(out),
            str(user_conf or ""),
            str(target_qps or ""),
        ],  # fmt: skip
        env=tools.env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("round_name", ["v0.5", "v1.0"])
def test_a_constant_stream_test_run_ends_without_a_loadgen_error(round_name: str, tmp_path: Path) -> None:
    """The round's automotive LoadGen: a test run runs out of queries (no cap, no error logged), at the
    round's 15 QPS and 1/15 s bound, and the effective user.conf says so."""
    run = automotive_constant_stream_run(round_name, tmp_path / "run")
    constant = ROUNDS[round_name].constant_stream
    assert run["asked"] == {
        "max_query_count": 0,
        "target_qps": 15.0,
        "target_latency_ns": int(constant.target_latency_ms * 1e6),
    }
    values = run["values"]
    assert run["errors"] == [] and values["result_query_count"] == 4
    assert values["effective_scenario"].replace(" ", "") == "ConstantStream"
    assert values["effective_target_qps"] == 15 and values["effective_server_constant_gen"] is True
    assert values["effective_target_latency_ns"] == pytest.approx(constant.latency_bound_ns(), abs=1)
    assert values[ROUNDS[round_name].metric("ConstantStream")] > 0
    assert "ssd.ConstantStream.target_qps = 15.0\n" in run["user_conf"]
    assert "ssd.ConstantStream.max_query_count = 0\n" in run["user_conf"]


@pytest.mark.parametrize(("round_name", "used_qps"), [("v0.5", 15.0), ("v1.0", 100.0)])
def test_the_effective_user_conf_says_what_loadgen_used(
    round_name: str, used_qps: float, tmp_path: Path
) -> None:
    """A 10 ms target latency: the v1.0 LoadGen derives 100 QPS from it, the v0.5 one ignores it."""
    asked = tmp_path / "asked.conf"
    asked.write_text("ssd.ConstantStream.target_latency = 10\n")
    run = automotive_constant_stream_run(round_name, tmp_path / "run", asked)
    assert run["values"]["effective_target_qps"] == used_qps
    assert f"ssd.ConstantStream.target_qps = {used_qps!r}\n" in run["user_conf"]


@pytest.mark.parametrize("round_name", ["v0.5", "v1.0"])
def test_a_target_qps_sets_the_rate_and_its_bound(round_name: str, tmp_path: Path) -> None:
    """``--constantstream_target_qps`` (or a find-performance result): both rounds run at that rate."""
    run = automotive_constant_stream_run(round_name, tmp_path / "run", target_qps=30.0)
    values = run["values"]
    assert run["asked"]["target_qps"] == 30.0 and run["errors"] == []
    assert values["effective_target_qps"] == 30
    bound = ROUNDS[round_name].constant_stream.latency_bound_ns(30.0)
    assert values["effective_target_latency_ns"] == pytest.approx(bound, abs=1)
