"""ConstantStream find-performance on LoadGen: the rate search's trials, run on the warmed-up SUT.

After the back-to-back run of a ConstantStream find-performance (LoadGen's SingleStream, whose
99.9th percentile is the search's starting point), each trial is a ConstantStream test run of the
round's automotive LoadGen at one rate, at least ``trial_queries`` queries and ``trial_seconds``
long, logged in ``find-performance/rate-trials/<n>-<qps>qps/``. The outcome lies beside the other
find-performance values of the scenario::

    <results>/<system>/ssd/ConstantStream/
        target_qps.txt      the highest rate that held (absent when none did)
        rate_search.json    settings, every trial, the outcome, the model it was measured with

The search itself is :mod:`abtf_ssd.loadgen.rate_search`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from abtf_ssd.fileio import atomic_write_json, atomic_write_text
from abtf_ssd.loadgen import rate_search, report, rules
from abtf_ssd.loadgen.options import RunOptions
from abtf_ssd.loadgen.rate_search import NoRateHoldsError, SearchResult, SearchSettings, TrialLatency
from abtf_ssd.loadgen.sut import SampleLibrary, SystemUnderTest, start_loadgen

TARGET_QPS_FILE = "target_qps.txt"
TRIALS_DIR = "rate-trials"


def search_settings(
    execution_mode: str,
    round: str,
    margin: float | None = None,
    trial_seconds: float | None = None,
    trial_queries: int | None = None,
    resolution_qps: float | None = None,
    max_trials: int | None = None,
) -> SearchSettings:
    """The search's settings: the defaults of ``execution_mode``, the given values over them, and the
    round's rate as the ceiling where the round reports latency at its own rate (v1.0)."""
    constant = rules.get_round(round).constant_stream
    ceiling = constant.target_qps if constant.qps_capped_at_round else None
    given = {
        "margin": margin,
        "trial_seconds": trial_seconds,
        "trial_queries": trial_queries,
        "resolution_qps": resolution_qps,
        "max_trials": max_trials,
    }
    return dataclasses.replace(
        rate_search.default_settings(execution_mode, ceiling),
        **{k: v for k, v in given.items() if v is not None},
    )


def model_identity(model_path: str | Path | None) -> dict[str, Any] | None:
    """What tells one model file from another cheaply: its path, size and modification time."""
    if model_path is None:
        return None
    path = Path(model_path).resolve()
    stat = path.stat()
    return {"path": str(path), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def loadgen_trials(
    sut: SystemUnderTest,
    library: SampleLibrary,
    round: str,
    folder: Path,
    total: int,
    performance_count: int,
    settings: SearchSettings,
) -> Callable[[float], TrialLatency]:
    """``qps -> TrialLatency``: one ConstantStream test run at ``qps`` into ``folder/<n>-<qps>qps``."""
    shutil.rmtree(folder, ignore_errors=True)
    numbers = itertools.count(1)

    def trial(qps: float) -> TrialLatency:
        if sut.interrupt.is_set():
            raise InterruptedError("rate search interrupted")
        number = next(numbers)
        test = rules.make_test_settings(
            round,
            "ConstantStream",
            "performance",
            execution_mode="test",
            test_query_count=settings.trial_queries,
            performance_sample_count=performance_count,
            target_qps=qps,
        )
        test.min_duration_ms = int(settings.trial_seconds * 1000)
        out = folder / f"{number:02d}-{qps:g}qps"
        out.mkdir(parents=True, exist_ok=True)
        seconds = max(settings.trial_seconds, settings.trial_queries / qps)
        print(f"rate search: trial {number} at {qps:g} QPS (about {seconds:.0f} s) ...", flush=True)
        start_loadgen(sut, library, test, out, total, performance_count)
        values = report.detail_values(report.read_detail_log(out / report.DETAIL_LOG))
        try:
            return TrialLatency(
                queries=int(values["result_query_count"]),  # type: ignore[arg-type]
                p50_ns=float(values["result_50.00_percentile_latency_ns"]),  # type: ignore[arg-type]
                p99_ns=float(values["result_99.00_percentile_latency_ns"]),  # type: ignore[arg-type]
                p999_ns=float(values["result_99.90_percentile_latency_ns"]),  # type: ignore[arg-type]
                over_bound=int(values.get("result_overlatency_query_count", 0)),  # type: ignore[arg-type]
                # A trial is short, so LoadGen calls it INVALID for its length; what matters is its
                # own latency check (p99.9 within the bound, with no margin).
                loadgen_result="bound met" if values.get("result_perf_constraints_met") else "bound exceeded",
            )
        except KeyError as missing:
            raise RuntimeError(f"{out / report.DETAIL_LOG}: LoadGen logged no {missing}") from None

    return trial


def find_rate(
    sut: SystemUnderTest,
    library: SampleLibrary,
    *,
    round: str,
    scenario_folder: Path,
    find_folder: Path,
    back_to_back_p999_ns: float,
    total: int,
    performance_count: int,
    settings: SearchSettings,
    model_path: str | Path | None,
) -> SearchResult:
    """Search the rate, print the trials, store ``target_qps.txt`` and ``rate_search.json``.

    Raises :class:`~abtf_ssd.loadgen.rate_search.NoRateHoldsError` (one line) when no rate held;
    ``rate_search.json`` then records the trials and any earlier ``target_qps.txt`` is removed, so
    that no later run takes a rate this system cannot hold.
    """
    trials = loadgen_trials(sut, library, round, find_folder / TRIALS_DIR, total, performance_count, settings)

    def progress(trial: rate_search.Trial) -> None:
        verdict = "holds" if trial.holds else "fails"
        print(
            f"rate search: {trial.qps:g} QPS: p99.9 {trial.p999_ms:.1f} ms of a {trial.bound_ms:.1f} ms "
            f"bound ({trial.over_bound} over it): {verdict}",
            flush=True,
        )

    record = {
        "round": round,
        "model": model_identity(model_path),
        "back_to_back_p999_ns": back_to_back_p999_ns,
    }
    target_file = scenario_folder / TARGET_QPS_FILE
    try:
        result = rate_search.search(trials, back_to_back_p999_ns, settings, on_trial=progress)
    except NoRateHoldsError as error:
        target_file.unlink(missing_ok=True)
        _write_record(scenario_folder, record, error.result)
        print(rate_search.format_trials(error.result))
        raise
    _write_record(scenario_folder, record, result)
    atomic_write_text(target_file, f"{result.rate_qps:g}\n")
    print(rate_search.format_trials(result))
    print(f"ConstantStream target QPS {result.rate_qps:g} written to {target_file}")
    return result


def search_for_run(
    options: RunOptions,
    sut: SystemUnderTest,
    library: SampleLibrary,
    scenario_folder: Path,
    find_folder: Path,
    back_to_back_p999_ns: float,
    total: int,
    performance_count: int,
) -> float | None:
    """The rate search of a ConstantStream find-performance run, with its options (None: interrupted)."""
    settings = search_settings(
        options.execution_mode,
        options.round,
        margin=options.rate_margin,
        trial_seconds=options.rate_trial_seconds,
        trial_queries=options.rate_trial_queries,
        resolution_qps=options.rate_resolution_qps,
        max_trials=options.rate_max_trials,
    )
    try:
        search = find_rate(
            sut,
            library,
            round=options.round,
            scenario_folder=scenario_folder,
            find_folder=find_folder,
            back_to_back_p999_ns=back_to_back_p999_ns,
            total=total,
            performance_count=performance_count,
            settings=settings,
            model_path=options.model_path,
        )
    except InterruptedError:
        return None
    return search.rate_qps


def _write_record(scenario_folder: Path, record: dict[str, Any], result: SearchResult) -> None:
    record = {**record, **result.to_dict(), "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_json(scenario_folder / rate_search.TRIALS_FILE, record)


def stored_target_qps(scenario_folder: Path) -> float | None:
    """The ConstantStream rate a find-performance run stored in ``scenario_folder``, or None."""
    path = scenario_folder / TARGET_QPS_FILE
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8").strip()
    try:
        return rules.check_target_qps(float(text))
    except (ValueError, rules.RulesError):
        raise ValueError(
            f"{path}: expected a positive number of queries per second, found {text!r}"
        ) from None


def run_rate(round: str, given_qps: float | None, scenario_folder: Path) -> tuple[float | None, list[str]]:
    """The rate of a ConstantStream run (None: the round's) and what to warn about it.

    ``given_qps`` wins. Else the stored rate: in v0.5 (which reports throughput) always; in v1.0
    (which reports the latency at its own 15 QPS) only when it is the round's rate: a lower one means
    15 QPS did not hold, and the run goes at 15 unless the user asks for the lower rate.
    """
    constant = rules.get_round(round).constant_stream
    qps = rules.check_target_qps(given_qps)
    warnings = []
    if qps is None:
        stored = stored_target_qps(scenario_folder)
        if stored is not None and constant.qps_capped_at_round and stored < constant.target_qps:
            warnings.append(
                f"the rate search found that {constant.target_qps:g} QPS does not hold on this system "
                f"(the highest rate that holds: {stored:g} QPS, {scenario_folder / TARGET_QPS_FILE}); "
                f"round {round} reports the latency at {constant.target_qps:g} QPS, so this run goes at "
                f"{constant.target_qps:g} and its latency will likely exceed the bound; "
                f"--constantstream_target_qps={stored:g} runs at the rate that holds"
            )
            return None, warnings
        qps = stored
    off_round = constant.rate_warning(qps if qps is not None else constant.target_qps)
    if off_round:
        warnings.append(off_round)
    return qps, warnings


def read_search(scenario_folder: Path) -> dict[str, Any] | None:
    """The ``rate_search.json`` of a scenario folder, or None (none, or unreadable)."""
    try:
        data = json.loads((scenario_folder / rate_search.TRIALS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def reusable_search(scenario_folder: Path, model_path: str | Path | None) -> str | None:
    """Why the stored search can stand for a new one (a line to print), or None to search again.

    It can when it found a rate (``target_qps.txt``) for the same model file, unchanged since.
    """
    data = read_search(scenario_folder)
    target_file = scenario_folder / TARGET_QPS_FILE
    if data is None or not target_file.is_file() or not data.get("rate_qps"):
        return None
    if model_path is None or not os.path.exists(model_path):
        return None
    if data.get("model") != model_identity(model_path):
        return None
    trials = data.get("trials") or []
    return (
        f"ConstantStream: the rate search of {data.get('written', 'an earlier run')} stands "
        f"({data['rate_qps']:g} QPS, {len(trials)} trials, same model; {target_file}); "
        "run _find-performance to search again"
    )
