"""The LoadGen harness: one benchmark run a call, from :class:`RunOptions` to its results folder.

Here: a run's result (its options: :mod:`abtf_ssd.loadgen.options`), its folders, the find-performance
values it stores and later runs read (expected latency, ConstantStream's target QPS), and the run
itself. The QSL, the SUT and the
CTRL-C guard LoadGen calls are in :mod:`abtf_ssd.loadgen.sut`; what is checked of the dataset before
a run, in :mod:`abtf_ssd.loadgen.dataset_checks`.

Layout of the results (the submission's, section 7 of BENCHMARK.md)::

    <results_dir>/<system_name>/ssd/<scenario>/
        performance/run_1/      LoadGen logs, user.conf, command.txt, results.json, latency_histogram.png
        accuracy/               LoadGen logs, user.conf, command.txt, results.json, accuracy.txt
        TEST01/performance/run_1/   a compliance run (an audit config was given)
        find-performance/       the short run that measured the expected latency
        expected_latency_ns.txt the expected latency (ns, end to end) later runs of the scenario use
        target_qps.txt          ConstantStream: the highest rate that held in the rate search
        rate_search.json        ConstantStream: the search's trials (:mod:`abtf_ssd.loadgen.find_rate`)

LoadGen reads ``audit.config`` from the working directory and applies it to any run; the run
therefore takes place with the output folder as working directory, and an audit config is
copied there only when one is given explicitly (a compliance run).

The dataset is read through :func:`abtf_ssd.data.store.open_dataset`: a pickle folder or a memory-mapped
store. What can be checked without LoadGen is checked first, and a refused run leaves the output
folder alone: the sample files exist, a valid run covers its whole split, and one warm-up inference
(every mode) shows that the model answers with the config's shapes. Only then are a previous run's
files cleared.

A query whose inference raises, or that uses a sample which could not be loaded, is answered with
an empty response so that LoadGen can finish, and counted: the run then raises
:class:`RunFailedError` naming the samples, after writing its folder with status ``failed``. An
empty answer would silently lower the mAP, and an instant one the latency, so a performance run so
affected is marked INVALID whatever LoadGen said (``abtf-ssd run`` exits 1).

CTRL-C (SIGINT) during LoadGen: a Python exception must not cross LoadGen's C++ frames (the process
dies of SIGSEGV), so the run's handler only sets a flag. From then on the QSL loads nothing and the
SUT answers every query empty at once, so LoadGen runs out of queries and writes its logs; the
folder's results.json says ``interrupted`` (INVALID) and :class:`RunInterrupted` ends the process
with exit status 130. Should LoadGen not be done within
:data:`~abtf_ssd.loadgen.sut.INTERRUPT_GRACE_S` (a run scheduled by wall time), or on a second CTRL-C,
results.json is written from what is on disk and the process exits 130 at once.
"""

from __future__ import annotations

import shlex
import shutil
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import mlperf_loadgen as lg

from abtf_ssd.config import BENCHMARK_CONFIG
from abtf_ssd.data import metric
from abtf_ssd.data.store import open_dataset
from abtf_ssd.fileio import atomic_write_json, atomic_write_text
from abtf_ssd.loadgen import accuracy, find_rate, report, rules
from abtf_ssd.loadgen.dataset_checks import check_image_size, check_sample_files, check_whole_split
from abtf_ssd.loadgen.options import RunOptions
from abtf_ssd.loadgen.sut import (
    EXIT_INTERRUPTED,
    INTERRUPT_GRACE_S,
    Backend,
    InterruptGuard,
    QueryFailure,
    SampleLibrary,
    SystemUnderTest,
    start_loadgen,
    warm_up,
)

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


class RunFailedError(RuntimeError):
    """A run in which some queries failed (raised, or used a sample that could not be loaded);
    ``result`` holds what was written (results.json status ``failed``)."""

    def __init__(self, message: str, result: RunResult) -> None:
        super().__init__(message)
        self.result = result


class RunInterrupted(SystemExit):
    """CTRL-C ended the run after its folder was written (results.json status ``interrupted``).

    A :class:`SystemExit` with code :data:`~abtf_ssd.loadgen.sut.EXIT_INTERRUPTED`: left uncaught, the
    process exits 130 without a traceback, as a shell expects of an interrupted command; ``result``
    holds what was written.
    """

    def __init__(self, message: str, result: RunResult) -> None:
        super().__init__(EXIT_INTERRUPTED)
        self.message = message
        self.result = result

    def __str__(self) -> str:
        return self.message


@dataclass
class RunResult:
    output_dir: Path
    options: RunOptions
    summary: report.RunSummary
    map_result: metric.MapResult | None = None
    failures: list[QueryFailure] = field(default_factory=list)
    expected_latency_ns: int | None = None
    """The measured value (find-performance) or the one the run used."""
    target_qps: float | None = None
    """ConstantStream: the rate found (find-performance) or the one the run used."""
    load_errors: dict[int, str] = field(default_factory=dict)
    """Samples the QSL could not load (queried or not), with the error."""
    interrupted: bool = False
    """CTRL-C ended the run: the queries after it were answered empty."""

    @property
    def failed_samples(self) -> list[int]:
        return sorted({i for f in self.failures for i in f.samples} | set(self.load_errors))

    @property
    def failed_queries(self) -> int:
        return sum(len(f.samples) for f in self.failures)

    @property
    def status(self) -> str:
        """results.json's ``status``: ``ok``, ``failed`` or ``interrupted``."""
        return "interrupted" if self.interrupted else "failed" if self.failed_samples else "ok"

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def failure_message(self) -> str:
        """What failed, for a person: the samples that failed and the first error."""
        samples = self.failed_samples
        if self.interrupted:
            return (
                f"{self.options.mode} run interrupted (SIGINT): the queries after it were answered with no "
                f"detections; marked INVALID in {self.output_dir / RESULTS_JSON}"
            )
        consequence = (
            "the latencies are not valid"
            if self.options.mode == "performance"
            else "no accuracy.txt or expected latency written"
        )
        if self.failures:
            first = self.failures[0].error
        else:
            first = f"sample could not be loaded: {self.load_errors[samples[0]]}"
        return (
            f"{self.options.mode} run failed: {len(samples)} sample(s) raised during inference or could not "
            f"be loaded, and queries on them were answered with no detections ({consequence}): samples "
            f"{samples}; first error: {first} (details in {self.output_dir / RESULTS_JSON})"
        )


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


def reusable_find_performance(options: RunOptions) -> str | None:
    """Why a find-performance run the user did not ask for can be skipped (a line to print), or None.

    ConstantStream only: a rate search stored for the same model stands (its trials take minutes).
    """
    if options.scenario != "ConstantStream":
        return None
    return find_rate.reusable_search(scenario_dir(options), options.model_path)


def _target_qps(options: RunOptions) -> float | None:
    """The rate of a ConstantStream run: given, else stored by find-performance (as the round allows),
    else None (the round's); the warnings about it are printed."""
    if options.scenario != "ConstantStream" or options.mode == "find-performance":
        return None
    qps, warnings = find_rate.run_rate(options.round, options.target_qps, scenario_dir(options))
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return qps


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


def _check_output(out_dir: Path, audit_config: Path | None) -> None:
    """Refuse a stray audit.config in the output folder: LoadGen would make this a compliance run."""
    audit_here = out_dir / AUDIT_CONFIG
    if audit_config is None and audit_here.exists():
        raise FileExistsError(
            f"{audit_here} would turn this run into a compliance run: remove it, or pass it as audit_config"
        )


def _prepare_output(out_dir: Path, audit_config: Path | None) -> None:
    """Create the output folder, clear a previous run's files, and place the audit config (if any).

    Called only once the run can no longer be refused, so that a refused run keeps earlier results.
    """
    _check_output(out_dir, audit_config)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in _RUN_FILES:
        (out_dir / name).unlink(missing_ok=True)
    audit_here = out_dir / AUDIT_CONFIG
    if audit_config is not None and audit_config != audit_here.resolve():
        shutil.copyfile(audit_config, audit_here)


def run(options: RunOptions, backend: Backend | None = None) -> RunResult:
    """Run LoadGen once as ``options`` say and write the results folder; return its numbers.

    ``backend`` replaces the one :func:`abtf_ssd.model.backends.create_backend` would make.

    Raises:
        RunFailedError: some queries failed (after writing the folder, results.json status ``failed``).
        RunInterrupted: CTRL-C (after writing the folder, status ``interrupted``); exits 130 uncaught.
        rules.RulesError, ValueError, FileNotFoundError, StoreError, BackendError: bad options, a
            dataset that is missing files or not the whole split (valid runs), a model that does not
            fit: before anything is written.
    """
    _validate(options)
    command = options.command if options.command is not None else shlex.join(sys.argv)
    options = _absolute(options)
    dataset_dir = Path(options.dataset_dir)
    dataset = open_dataset(dataset_dir, options.dataset_prefix)
    if options.execution_mode == "valid" and options.mode != "find-performance":
        check_whole_split(dataset, dataset_dir)
    total = len(dataset)
    short = options.execution_mode == "test" or options.mode == "find-performance"
    if short:
        total = min(total, options.test_query_count)
    check_sample_files(dataset, dataset_dir, total)
    round_rules = rules.get_round(options.round)
    performance_count = min(options.performance_sample_count or round_rules.performance_sample_count, total)
    if options.performance_sample_count is not None and options.performance_sample_count > performance_count:
        print(
            f"warning: performance_sample_count {options.performance_sample_count} lowered to "
            f"{performance_count}, the samples this run has ({dataset_dir}); results.json records "
            f"{performance_count}",
            file=sys.stderr,
        )
        options = replace(options, performance_sample_count=performance_count)
    expected_latency = options.expected_latency_ns
    if expected_latency is None and options.mode != "find-performance":
        expected_latency = stored_expected_latency(options)
    if expected_latency is None and options.execution_mode == "valid" and options.mode == "performance":
        print(
            f"warning: no expected latency for {options.scenario}: LoadGen's default is used; run mode "
            "find-performance first or set expected_latency_ns so that the run lasts as planned",
            file=sys.stderr,
        )
    target_qps = _target_qps(options)
    if options.scenario == "ConstantStream" and options.mode != "find-performance" and target_qps is None:
        print(
            f"warning: ConstantStream at the round's {round_rules.constant_stream.target_qps:g} QPS: no "
            "find-performance result and no target QPS given; a system slower than that piles queries up",
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
        target_qps=target_qps,
    )
    out_dir = output_dir(options)
    audit_config = Path(options.audit_config) if options.audit_config is not None else None
    _check_output(out_dir, audit_config)

    if backend is None:
        from abtf_ssd.model.backends import create_backend

        if options.model_path is None:
            raise ValueError("model_path is required unless a backend is given")
        backend = create_backend(
            options.framework, options.model_path, options.device, options.threads, options.config_name
        )
    options = replace(options, config_name=_config_name(options, backend))
    check_image_size(dataset, dataset_dir, options.config_name)
    interrupt = threading.Event()
    library = SampleLibrary(dataset, interrupt)
    sut = SystemUnderTest(backend, library, options.config_name, options.batch_size, interrupt)
    warm_up(sut, library, options.batch_size if options.scenario != "SingleStream" else 1)

    # Nothing refused the run: from here on the folder is this run's.
    _prepare_output(out_dir, audit_config)
    measured = "SingleStream" if settings.scenario == lg.TestScenario.SingleStream else options.scenario
    atomic_write_text(out_dir / USER_CONF, rules.user_conf_text(settings, measured, options.round))
    atomic_write_text(out_dir / COMMAND_TXT, command + "\n")
    backend_name = getattr(backend, "name", type(backend).__name__)

    def abandon() -> None:
        """Record the run as interrupted from what LoadGen has written so far (it is still running)."""
        result = RunResult(
            out_dir,
            options,
            _summary_so_far(options, out_dir, sut),
            failures=list(sut.failures),
            expected_latency_ns=expected_latency,
            target_qps=target_qps,
            load_errors=dict(library.load_errors),
            interrupted=True,
        )
        _mark_invalid(result)
        _write_results_json(result, dataset_dir, settings, backend_name)
        print(f"{result.failure_message()}; LoadGen's logs are incomplete", file=sys.stderr)

    guard = InterruptGuard(interrupt, abandon, INTERRUPT_GRACE_S)
    sut.on_interrupted_query = guard.poll
    with guard:
        start_loadgen(sut, library, settings, out_dir, total, performance_count)

    _write_effective_user_conf(out_dir, options)
    result = _collect(options, out_dir, sut, library, total, expected_latency, interrupt.is_set())
    if result.target_qps is None:
        result.target_qps = target_qps
    _mark_invalid(result)
    _write_results_json(result, dataset_dir, settings, backend_name)
    print(report.format_table([result.summary]))
    if options.mode == "find-performance" and result.expected_latency_ns is not None and result.ok:
        stored = scenario_dir(options) / EXPECTED_LATENCY_FILE
        print(f"expected latency {result.expected_latency_ns} ns written to {stored}")
    if options.scenario == "ConstantStream" and options.mode == "find-performance" and result.ok:
        with guard:
            result.target_qps = find_rate.search_for_run(
                options,
                sut,
                library,
                scenario_dir(options),
                out_dir,
                _tail_latency_ns(result.summary),
                total,
                performance_count,
            )
        result.interrupted = interrupt.is_set()
        _write_results_json(result, dataset_dir, settings, backend_name)
    if result.interrupted:
        print(result.failure_message(), file=sys.stderr)
        raise RunInterrupted(result.failure_message(), result)
    if not result.ok:
        raise RunFailedError(result.failure_message(), result)
    return result


def _config_name(options: RunOptions, backend: Backend) -> str:
    served = getattr(backend, "config_name", None)
    if options.config_name is not None and served is not None and served != options.config_name:
        raise ValueError(f"the model is for config {served!r}, not the requested {options.config_name!r}")
    return options.config_name or served or BENCHMARK_CONFIG


def _summary_so_far(options: RunOptions, out_dir: Path, sut: SystemUnderTest) -> report.RunSummary:
    """The table row from a detail log LoadGen may still be writing (its last line can be cut)."""
    failed = sum(len(f.samples) for f in sut.failures)
    try:
        return report.summarize_run(
            out_dir, options.scenario, options.mode, failed_queries=failed, round=options.round
        )
    except (ValueError, OSError):
        return report.RunSummary(scenario=options.scenario, mode=options.mode, failed_queries=failed)


def _collect(
    options: RunOptions,
    out_dir: Path,
    sut: SystemUnderTest,
    library: SampleLibrary,
    total: int,
    expected_latency: int | None,
    interrupted: bool,
) -> RunResult:
    failed = sum(len(f.samples) for f in sut.failures)
    summary = report.summarize_run(
        out_dir, options.scenario, options.mode, failed_queries=failed, round=options.round
    )
    result = RunResult(
        out_dir,
        options,
        summary,
        failures=list(sut.failures),
        expected_latency_ns=expected_latency,
        load_errors=dict(library.load_errors),
        interrupted=interrupted,
    )
    if not result.ok:
        return result  # no number over answers that were not the model's
    if options.mode == "accuracy":
        log = out_dir / accuracy.ACCURACY_LOG
        detections = accuracy.read_accuracy_log(log, sample_count=total)
        ground_truth = {
            i: library.ground_truth[i] if i in library.ground_truth else library.dataset.gt_boxes(i)
            for i in detections
        }
        result.map_result = metric.compute_map(detections, options.dataset_dir, ground_truth=ground_truth)
        accuracy.write_accuracy_txt(result.map_result, out_dir / accuracy.ACCURACY_TXT)
        summary.map = result.map_result.map
    else:
        trace = report.read_trace_latencies(out_dir / report.TRACE_LOG)
        if trace is not None and len(trace.query_ns):
            title = f"{options.scenario} {options.mode}: LoadGen query latency ({options.system_name})"
            report.write_latency_histogram(trace.query_ns, out_dir / report.HISTOGRAM_PNG, title)
            if summary.target_qps and summary.result == "INVALID":
                constant_stream = rules.get_round(options.round).constant_stream
                note = report.stall_note(trace, constant_stream.latency_bound_ns(summary.target_qps))
                summary.warnings += [note] if note else []
    if options.mode == "find-performance":
        result.expected_latency_ns = _measured_latency(summary)
        path = scenario_dir(options) / EXPECTED_LATENCY_FILE
        atomic_write_text(path, f"{result.expected_latency_ns}\n")
    return result


def _tail_latency_ns(summary: report.RunSummary) -> float:
    """The 99.9th percentile latency of a find-performance run (its slowest query when it is short)."""
    tail = summary.p999_ms if summary.p999_ms is not None else summary.mean_ms
    if tail is None:
        raise RuntimeError("find-performance: LoadGen reported no latency; see mlperf_log_detail.txt")
    return tail * 1e6


def _write_effective_user_conf(out_dir: Path, options: RunOptions) -> None:
    """Replace the run's user.conf with the settings LoadGen logged as effective (what it really used)."""
    try:
        values = report.detail_values(report.read_detail_log(out_dir / report.DETAIL_LOG))
    except (OSError, ValueError):
        return  # no complete log (LoadGen failed): the requested settings stay
    text = rules.effective_user_conf_text(values, options.scenario, options.round)
    if text is not None:
        atomic_write_text(out_dir / USER_CONF, text)


def _mark_invalid(result: RunResult) -> None:
    """A run with failed queries or interrupted is INVALID whatever LoadGen said: the empty answers
    were instant (lowering the latency) and are not the model's (lowering the mAP)."""
    if result.interrupted:
        reason = "interrupted (SIGINT): the queries after it were answered with no detections"
    elif result.failed_samples:
        reason = (
            f"{len(result.failed_samples)} sample(s) failed (raised during inference or could not be "
            "loaded); queries on them were answered with no detections"
        )
    else:
        return
    result.summary.result = "INVALID"
    result.summary.invalid_reasons.insert(0, reason)  # the reason that matters most


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
        "status": result.status,
        "dataset_dir": str(dataset_dir),
        "backend": backend_name,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()},
        "summary": result.summary.to_dict(),
        "table": report.format_table([result.summary]).splitlines(),
        "failed_queries": result.failed_queries,
        "failed_samples": result.failed_samples,
        "failures": [asdict(f) for f in result.failures],
        "load_errors": {str(i): error for i, error in sorted(result.load_errors.items())},
        "expected_latency_ns": result.expected_latency_ns,
        "target_qps": result.target_qps,
        "accuracy": result.map_result.to_dict() if result.map_result else None,
        "effective_settings": {
            "qsl_rng_seed": settings.qsl_rng_seed,
            "sample_index_rng_seed": settings.sample_index_rng_seed,
            "schedule_rng_seed": settings.schedule_rng_seed,
            "performance_sample_count": settings.performance_sample_count_override,
            "min_query_count": settings.min_query_count,
            "max_query_count": settings.max_query_count,
            "min_duration_ms": settings.min_duration_ms,
            "target_qps": result.target_qps,
        },
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_json(result.output_dir / RESULTS_JSON, data)


def run_benchmark(options: RunOptions, backend: Backend | None = None) -> RunResult:
    """Alias of :func:`run` (the name docs/ARCHITECTURE.md uses)."""
    return run(options, backend)
