"""The LoadGen harness: a QSL over a preprocessed folder, an SUT around a backend, one run a call.

Layout of the results (the submission's, section 7 of BENCHMARK.md)::

    <results_dir>/<system_name>/ssd/<scenario>/
        performance/run_1/      LoadGen logs, user.conf, command.txt, results.json, latency_histogram.png
        accuracy/               LoadGen logs, user.conf, command.txt, results.json, accuracy.txt
        TEST01/performance/run_1/   a compliance run (an audit config was given)
        find-performance/       the short run that measured the expected latency
        expected_latency_ns.txt the expected latency (ns, end to end) later runs of the scenario use

LoadGen reads ``audit.config`` from the working directory and applies it to any run; the run
therefore takes place with the output folder as working directory, and an audit config is
copied there only when one is given explicitly (a compliance run).

A query whose inference raises is answered with an empty response so that LoadGen can finish,
and counted: an accuracy run with any such query raises :class:`RunFailedError` naming the
samples (an empty answer would silently lower the mAP), a performance run reports the count
(``RunResult.ok`` is False; ``abtf-ssd run`` exits 1).
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Protocol

import mlperf_loadgen as lg
import numpy as np

from abtf_ssd import accuracy, report, rules
from abtf_ssd.boxes import decode_batch
from abtf_ssd.config import BENCHMARK_CONFIG, get_config
from abtf_ssd.fileio import atomic_write_json, atomic_write_text
from abtf_ssd.preprocess import load_sample, sample_name

MODEL_DIR = "ssd"
EXPECTED_LATENCY_FILE = "expected_latency_ns.txt"
RESULTS_JSON = "results.json"
USER_CONF = "user.conf"
COMMAND_TXT = "command.txt"
AUDIT_CONFIG = "audit.config"
COMPLIANCE_TEST = "TEST01"
_RUN_FILES = (
    "mlperf_log_summary.txt",
    "mlperf_log_detail.txt",
    "mlperf_log_accuracy.json",
    "mlperf_log_trace.json",
    accuracy.ACCURACY_TXT,
    RESULTS_JSON,
    USER_CONF,
    COMMAND_TXT,
    report.HISTOGRAM_PNG,
)
"""Files a run writes; removed from the output folder first so that no stale file survives."""

_NO_DETECTIONS = np.zeros((0, accuracy.DETECTION_COLUMNS), dtype=np.float32)


class Backend(Protocol):
    def predict(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class RunFailedError(RuntimeError):
    """An accuracy run in which some queries raised; ``result`` holds what was written."""

    def __init__(self, message: str, result: RunResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class RunOptions:
    """Everything one benchmark run needs. Paths may be relative to the caller's directory."""

    dataset_dir: str | Path
    model_path: str | Path | None = None
    framework: str = "onnxruntime"
    device: str = "cpu"
    config_name: str | None = None
    """None: the backend's (inferred from the model), else the benchmark config."""
    scenario: str = "SingleStream"
    mode: str = "performance"
    """``performance`` | ``accuracy`` | ``find-performance``."""
    round: str = rules.DEFAULT_ROUND
    execution_mode: str = "test"
    """``test``: at most ``test_query_count`` queries (and QSL samples); ``valid``: the full rules."""
    test_query_count: int = rules.DEFAULT_TEST_QUERY_COUNT
    performance_sample_count: int | None = None
    """None: the round's (128), lowered to the QSL size when that is smaller."""
    batch_size: int = 1
    """Largest batch the SUT sends the backend (Offline and MultiStream; SingleStream is 1)."""
    threads: int | None = None
    results_dir: str | Path = "results"
    system_name: str = "default"
    user_conf: str | Path | None = None
    audit_config: str | Path | None = None
    """An explicit audit.config makes this a compliance run; None keeps every audit.config away."""
    expected_latency_ns: int | None = None
    """None: the value a find-performance run stored for this scenario, if any."""
    dataset_prefix: str = "val"
    output_dir: str | Path | None = None
    """Overrides the results layout (the folder LoadGen writes into)."""
    command: str | None = None
    """Written to command.txt; None records this process's command line."""


@dataclass
class QueryFailure:
    samples: list[int]
    error: str


@dataclass
class RunResult:
    output_dir: Path
    options: RunOptions
    summary: report.RunSummary
    map_result: accuracy.MapResult | None = None
    failures: list[QueryFailure] = field(default_factory=list)
    expected_latency_ns: int | None = None
    """The measured value (find-performance) or the one the run used."""

    @property
    def failed_samples(self) -> list[int]:
        return sorted({i for f in self.failures for i in f.samples})

    @property
    def ok(self) -> bool:
        return not self.failures

    def failure_message(self) -> str:
        """What failed, for a person: the samples whose queries raised and the first error."""
        samples = self.failed_samples
        consequence = (
            "the latencies are not valid"
            if self.options.mode == "performance"
            else "no accuracy.txt or expected latency written"
        )
        return (
            f"{self.options.mode} run failed: {len(samples)} sample(s) raised during inference and were "
            f"answered with no detections ({consequence}): samples {samples}; first error: "
            f"{self.failures[0].error} (details in {self.output_dir / RESULTS_JSON})"
        )


# ---------------------------------------------------------------------------------------------
# QSL and SUT


class SampleLibrary:
    """The QSL: loads the images LoadGen asks for into memory, keeps every loaded ``gt_boxes``."""

    def __init__(self, dataset_dir: Path, prefix: str, image_size: tuple[int, int]) -> None:
        self.dataset_dir = dataset_dir
        self.prefix = prefix
        self.image_size = image_size
        self.images: dict[int, np.ndarray] = {}
        self.ground_truth: dict[int, np.ndarray] = {}
        self.load_errors: dict[int, str] = {}

    def path(self, index: int) -> Path:
        return self.dataset_dir / sample_name(self.prefix, index)

    def load(self, indices: list[int]) -> None:
        for index in indices:
            # An exception must not cross into LoadGen's thread: a sample that cannot be loaded
            # fails the queries that use it instead.
            try:
                sample = load_sample(self.path(index), self.image_size)
            except Exception as e:  # noqa: BLE001
                self.load_errors[index] = f"{type(e).__name__}: {e}"
                continue
            self.images[index] = sample["img"]
            self.ground_truth[index] = sample["gt_boxes"]

    def unload(self, indices: list[int]) -> None:
        for index in indices:
            self.images.pop(index, None)


class SystemUnderTest:
    """Answers LoadGen's queries inline: predict, decode, respond. No per-query bookkeeping."""

    def __init__(self, backend: Backend, library: SampleLibrary, config_name: str, batch_size: int) -> None:
        self.backend = backend
        self.library = library
        self.config = get_config(config_name)
        self.batch_size = max(1, batch_size)
        self.failures: list[QueryFailure] = []

    def infer(self, indices: list[int]) -> list[np.ndarray]:
        """Detections (K, 6) float32 C-contiguous for each sample index."""
        images = self.library.images
        if len(indices) == 1:
            batch = images[indices[0]]
        else:
            batch = np.concatenate([images[i] for i in indices], axis=0)
        loc, conf = self.backend.predict(batch)
        return [np.ascontiguousarray(d, dtype=np.float32) for d in decode_batch(loc, conf, self.config)]

    def issue_queries(self, query_samples: list) -> None:
        step = self.batch_size
        for start in range(0, len(query_samples), step):
            chunk = query_samples[start : start + step]
            indices = [q.index for q in chunk]
            try:
                detections = self.infer(indices)
            except Exception as e:  # noqa: BLE001 - any failure must still be answered
                self.failures.append(QueryFailure(indices, self._describe(indices, e)))
                detections = [_NO_DETECTIONS] * len(chunk)
            # ``detections`` keeps the buffers alive until QuerySamplesComplete has copied them.
            responses = [
                lg.QuerySampleResponse(q.id, d.ctypes.data, d.nbytes)
                for q, d in zip(chunk, detections, strict=True)
            ]
            lg.QuerySamplesComplete(responses)

    def _describe(self, indices: list[int], error: Exception) -> str:
        load_errors = [self.library.load_errors[i] for i in indices if i in self.library.load_errors]
        if load_errors:
            return f"sample could not be loaded: {load_errors[0]}"
        return f"{type(error).__name__}: {error}"

    def flush_queries(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------
# Paths


def scenario_dir(options: RunOptions) -> Path:
    return Path(options.results_dir) / options.system_name / MODEL_DIR / options.scenario


def output_dir(options: RunOptions) -> Path:
    """The folder LoadGen writes this run's logs into."""
    if options.output_dir is not None:
        return Path(options.output_dir)
    base = scenario_dir(options)
    if options.mode == "find-performance":
        return base / "find-performance"
    if options.audit_config is not None:
        base = base / COMPLIANCE_TEST
    return base / "accuracy" if options.mode == "accuracy" else base / "performance" / "run_1"


def stored_expected_latency(options: RunOptions) -> int | None:
    """The expected latency a find-performance run stored for this system and scenario."""
    path = scenario_dir(options) / EXPECTED_LATENCY_FILE
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8").strip()
    if not text.isdigit() or int(text) <= 0:
        raise ValueError(f"{path}: expected a positive integer number of nanoseconds, found {text!r}")
    return int(text)


# ---------------------------------------------------------------------------------------------
# A run


def _validate(options: RunOptions) -> None:
    if options.mode not in rules.MODES:
        raise ValueError(f"unknown mode {options.mode!r}; known: {', '.join(rules.MODES)}")
    if options.batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {options.batch_size}")
    if options.test_query_count < 1:
        raise ValueError(f"test_query_count must be at least 1, got {options.test_query_count}")
    for name in ("user_conf", "audit_config"):
        value = getattr(options, name)
        if value is not None and not Path(value).is_file():
            raise FileNotFoundError(f"{name} {value} does not exist")
    if options.model_path is not None and not Path(options.model_path).exists():
        raise FileNotFoundError(f"model {options.model_path} does not exist")


def _absolute(options: RunOptions) -> RunOptions:
    """A copy with every path absolute: the run changes the working directory."""
    values = asdict(options)
    for name in ("dataset_dir", "model_path", "results_dir", "user_conf", "audit_config", "output_dir"):
        if values[name] is not None:
            values[name] = Path(values[name]).resolve()
    return RunOptions(**values)


def _prepare_output(out_dir: Path, audit_config: Path | None) -> None:
    """Create the output folder, clear a previous run's files, and place the audit config (if any)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    audit_here = out_dir / AUDIT_CONFIG
    if audit_config is None and audit_here.exists():
        raise FileExistsError(
            f"{audit_here} would turn this run into a compliance run: remove it, or pass it as audit_config"
        )
    for name in _RUN_FILES:
        (out_dir / name).unlink(missing_ok=True)
    if audit_config is not None and audit_config != audit_here.resolve():
        shutil.copyfile(audit_config, audit_here)


def _warm_up(sut: SystemUnderTest, library: SampleLibrary, batch_size: int) -> None:
    """One inference before timing starts, so that lazy initialisation is not in the first query."""
    library.load([0])
    if 0 in library.load_errors:
        raise ValueError(f"{library.path(0)}: {library.load_errors[0]}")
    sut.infer([0] * batch_size)
    library.unload([0])


def run(options: RunOptions, backend: Backend | None = None) -> RunResult:
    """Run LoadGen once as ``options`` say and write the results folder; return its numbers.

    ``backend`` replaces the one :func:`abtf_ssd.backends.create_backend` would make.

    Raises:
        RunFailedError: an accuracy run in which some queries raised (after writing the folder).
        rules.RulesError, ValueError, FileNotFoundError: bad options, before anything runs.
    """
    _validate(options)
    command = options.command if options.command is not None else shlex.join(sys.argv)
    options = _absolute(options)
    dataset_dir = Path(options.dataset_dir)
    total = accuracy.count_samples(dataset_dir, options.dataset_prefix)
    short = options.execution_mode == "test" or options.mode == "find-performance"
    if short:
        total = min(total, options.test_query_count)
    round_rules = rules.get_round(options.round)
    performance_count = min(options.performance_sample_count or round_rules.performance_sample_count, total)
    expected_latency = options.expected_latency_ns
    if expected_latency is None and options.mode != "find-performance":
        expected_latency = stored_expected_latency(options)
    if expected_latency is None and options.execution_mode == "valid" and options.mode == "performance":
        print(
            f"warning: no expected latency for {options.scenario}: LoadGen's default is used; run mode "
            "find-performance first or set expected_latency_ns so that the run lasts as planned",
            file=sys.stderr,
        )
    settings = rules.make_test_settings(
        options.round,
        options.scenario,
        options.mode,
        execution_mode=options.execution_mode,
        test_query_count=options.test_query_count,
        expected_latency_ns=expected_latency,
        user_conf=options.user_conf,
        performance_sample_count=performance_count,
    )

    if backend is None:
        from abtf_ssd.backends import create_backend

        if options.model_path is None:
            raise ValueError("model_path is required unless a backend is given")
        backend = create_backend(
            options.framework, options.model_path, options.device, options.threads, options.config_name
        )
    options = replace(options, config_name=_config_name(options, backend))
    config = get_config(options.config_name)
    library = SampleLibrary(dataset_dir, options.dataset_prefix, config.image_size)
    sut = SystemUnderTest(backend, library, options.config_name, options.batch_size)
    out_dir = output_dir(options)
    _prepare_output(out_dir, Path(options.audit_config) if options.audit_config is not None else None)
    if options.mode != "accuracy":
        _warm_up(sut, library, options.batch_size if options.scenario != "SingleStream" else 1)

    _start_loadgen(sut, library, settings, out_dir, total, performance_count)

    atomic_write_text(out_dir / USER_CONF, rules.user_conf_text(settings, options.scenario, options.round))
    atomic_write_text(out_dir / COMMAND_TXT, command + "\n")
    result = _collect(options, out_dir, sut, library, total, expected_latency)
    _write_results_json(result, dataset_dir, settings, getattr(backend, "name", type(backend).__name__))
    print(report.format_table([result.summary]))
    if options.mode == "find-performance" and result.expected_latency_ns is not None:
        stored = scenario_dir(options) / EXPECTED_LATENCY_FILE
        print(f"expected latency {result.expected_latency_ns} ns written to {stored}")
    if options.mode != "performance" and result.failures:
        raise RunFailedError(result.failure_message(), result)
    return result


def _config_name(options: RunOptions, backend: Backend) -> str:
    served = getattr(backend, "config_name", None)
    if options.config_name is not None and served is not None and served != options.config_name:
        raise ValueError(f"the model is for config {served!r}, not the requested {options.config_name!r}")
    return options.config_name or served or BENCHMARK_CONFIG


def _start_loadgen(
    sut: SystemUnderTest,
    library: SampleLibrary,
    settings: lg.TestSettings,
    out_dir: Path,
    total: int,
    performance_count: int,
) -> None:
    log_settings = lg.LogSettings()
    log_settings.log_output.outdir = str(out_dir)
    log_settings.log_output.copy_summary_to_stdout = False
    sut_handle = lg.ConstructSUT(sut.issue_queries, sut.flush_queries)
    qsl_handle = lg.ConstructQSL(total, performance_count, library.load, library.unload)
    previous_cwd = os.getcwd()
    try:
        os.chdir(out_dir)
        lg.StartTestWithLogSettings(sut_handle, qsl_handle, settings, log_settings)
    finally:
        os.chdir(previous_cwd)
        lg.DestroyQSL(qsl_handle)
        lg.DestroySUT(sut_handle)


def _collect(
    options: RunOptions,
    out_dir: Path,
    sut: SystemUnderTest,
    library: SampleLibrary,
    total: int,
    expected_latency: int | None,
) -> RunResult:
    failed = sum(len(f.samples) for f in sut.failures)
    summary = report.summarize_run(out_dir, options.scenario, options.mode, failed_queries=failed)
    result = RunResult(
        out_dir, options, summary, failures=list(sut.failures), expected_latency_ns=expected_latency
    )
    if options.mode == "accuracy" and not sut.failures:
        log = out_dir / accuracy.ACCURACY_LOG
        detections = accuracy.read_accuracy_log(log, sample_count=total)
        missing = [i for i in detections if i not in library.ground_truth]
        loaded = accuracy.load_ground_truth(options.dataset_dir, missing, options.dataset_prefix)
        ground_truth = {**library.ground_truth, **loaded}
        result.map_result = accuracy.compute_map(detections, options.dataset_dir, ground_truth=ground_truth)
        accuracy.write_accuracy_txt(result.map_result, out_dir / accuracy.ACCURACY_TXT)
        summary.map = result.map_result.map
    if options.mode != "accuracy":
        trace = report.read_trace_latencies(out_dir / report.TRACE_LOG)
        if trace is not None and len(trace.query_ns):
            title = f"{options.scenario} {options.mode}: LoadGen query latency ({options.system_name})"
            report.write_latency_histogram(trace.query_ns, out_dir / report.HISTOGRAM_PNG, title)
    if options.mode == "find-performance" and not sut.failures:
        result.expected_latency_ns = _measured_latency(summary)
        path = scenario_dir(options) / EXPECTED_LATENCY_FILE
        atomic_write_text(path, f"{result.expected_latency_ns}\n")
    return result


def _measured_latency(summary: report.RunSummary) -> int:
    """End-to-end latency to expect, ns: a query's mean (an Offline sample's, from the throughput)."""
    if summary.samples_per_second:
        return max(1, round(1e9 / summary.samples_per_second))
    if summary.mean_ms is None:
        raise RuntimeError("find-performance: LoadGen reported no latency; see mlperf_log_detail.txt")
    return max(1, round(summary.mean_ms * 1e6))


def _write_results_json(
    result: RunResult, dataset_dir: Path, settings: lg.TestSettings, backend_name: str
) -> None:
    options = result.options
    data = {
        "status": "ok" if result.ok else "failed",
        "dataset_dir": str(dataset_dir),
        "backend": backend_name,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()},
        "summary": result.summary.to_dict(),
        "table": report.format_table([result.summary]).splitlines(),
        "failed_queries": sum(len(f.samples) for f in result.failures),
        "failed_samples": result.failed_samples,
        "failures": [asdict(f) for f in result.failures],
        "expected_latency_ns": result.expected_latency_ns,
        "accuracy": result.map_result.to_dict() if result.map_result else None,
        "effective_settings": {
            "qsl_rng_seed": settings.qsl_rng_seed,
            "sample_index_rng_seed": settings.sample_index_rng_seed,
            "schedule_rng_seed": settings.schedule_rng_seed,
            "performance_sample_count": settings.performance_sample_count_override,
            "min_query_count": settings.min_query_count,
            "max_query_count": settings.max_query_count,
            "min_duration_ms": settings.min_duration_ms,
        },
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_json(result.output_dir / RESULTS_JSON, data)


def run_benchmark(options: RunOptions, backend: Backend | None = None) -> RunResult:
    """Alias of :func:`run` (the name docs/ARCHITECTURE.md uses)."""
    return run(options, backend)
