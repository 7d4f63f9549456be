"""How long a plan takes, without running it: queries and seconds of each step.

Query counts and minimum durations come from :func:`abtf_ssd.loadgen.rules.get_round`, the latency
from ``--latency-ms``, the plan, a cached find-performance result or a finished performance run
(:func:`run_latency`). :func:`format_estimate` is the table ``abtf-ssd plan estimate`` prints.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass

from abtf_ssd.cognata import official_split, read_split
from abtf_ssd.loadgen import find_rate, rate_search, rules
from abtf_ssd.loadgen.harness import COMPLIANCE_TEST, RESULTS_JSON, RunOptions, scenario_dir
from abtf_ssd.submission.plan.format import (
    ACCURACY,
    FIND_PERFORMANCE,
    PERFORMANCE,
    Plan,
    PlannedRun,
    Step,
    plan_steps,
)
from abtf_ssd.submission.plan.identity import _generate_default, step_folder


@dataclass(frozen=True)
class StepEstimate:
    step: Step
    queries: int
    seconds: float | None
    """None when no latency is known."""


@dataclass(frozen=True)
class Latency:
    ms: float | None
    source: str


def dataset_samples(plan: Plan, run: PlannedRun) -> int:
    """Samples of the run's dataset: the synthetic frames, a local folder's, else the official split's."""
    if run.source.kind == "synthetic":
        return run.source.frames if run.source.frames is not None else _generate_default("frames")
    if run.source.kind == "local" and run.source.dataset is not None and run.source.dataset.is_dir():
        from abtf_ssd.data.metric import count_samples

        return count_samples(run.source.dataset)
    return len(read_split(official_split("validation")))


def run_latency(plan: Plan, run: PlannedRun, latency_ms: float | None = None) -> Latency:
    """The latency a run's estimate uses: given, the plan's, a cached find-performance result, or a
    finished performance run's measured mean; ``Latency(None, ...)`` when none is known."""
    if latency_ms is not None:
        return Latency(latency_ms, "--latency-ms")
    if run.latency_ms is not None:
        return Latency(run.latency_ms, "plan latency_ms")
    from abtf_ssd.loadgen.harness import stored_expected_latency

    stored = _stored(plan, run, stored_expected_latency)
    if stored is not None:
        return Latency(stored / 1e6, "find-performance")
    results = step_folder(plan, Step(run, PERFORMANCE)) / RESULTS_JSON
    try:
        mean = json.loads(results.read_text(encoding="utf-8"))["summary"]["mean_ms"]
    except (OSError, ValueError, KeyError, TypeError):
        mean = None
    if isinstance(mean, (int, float)) and mean > 0:
        return Latency(float(mean), "measured")
    return Latency(None, "unknown")


def _stored(plan: Plan, run: PlannedRun, reader: Callable[[RunOptions], float | None]) -> float | None:
    """What a find-performance run stored for ``run``'s system and scenario (``reader``: the harness's
    ``stored_expected_latency``); None when nothing or something unreadable."""
    options = RunOptions(
        dataset_dir="", scenario=run.scenario, results_dir=plan.results_dir, system_name=run.system
    )
    try:
        return reader(options)
    except ValueError:
        return None


def constant_stream_rate(plan: Plan, run: PlannedRun, latency_ms: float | None) -> tuple[float, str]:
    """The rate a ConstantStream run issues queries at, and where it comes from: the plan's
    ``target_qps``; else the rate search's (as the round takes it: v1.0 runs at its own 15 QPS unless
    that held); else, before any search, the search's first rate at ``latency_ms`` (valid mode:
    find-performance searches) or the round's."""
    constant = rules.get_round(plan.round).constant_stream
    if run.target_qps is not None:
        return run.target_qps, "the plan's"
    folder = scenario_dir(
        RunOptions(
            dataset_dir="", scenario=run.scenario, results_dir=plan.results_dir, system_name=run.system
        )
    )
    try:
        stored = find_rate.stored_target_qps(folder)
        qps, _ = find_rate.run_rate(plan.round, None, folder)
    except ValueError:
        stored = qps = None
    if qps is not None:
        return qps, "the rate search's"
    if stored is not None:
        return constant.target_qps, f"the round's; the rate search found only {stored:g} QPS holds"
    if run.execution_mode == "valid" and run.latency_ms is None and latency_ms is not None:
        settings = find_rate.search_settings("valid", plan.round)
        first = rate_search.start_rate(latency_ms * 1e6, settings)
        return first, "the rate search has not run: its first rate"
    return constant.target_qps, "the round's; the rate search has not run"


def constant_stream_qps(plan: Plan, run: PlannedRun, latency_ms: float | None) -> float:
    """The rate of :func:`constant_stream_rate`."""
    return constant_stream_rate(plan, run, latency_ms)[0]


def rate_search_seconds(plan: Plan, run: PlannedRun, latency_ms: float) -> float:
    """At most how long the ConstantStream rate search of ``run``'s find-performance takes: its whole
    trial budget at the rate it starts from."""
    settings = find_rate.search_settings(run.execution_mode, plan.round)
    qps = rate_search.start_rate(latency_ms * 1e6, settings)
    return settings.max_trials * max(settings.trial_seconds, settings.trial_queries / qps)


def step_queries(plan: Plan, step: Step, latency_ms: float | None = None) -> int:
    """Queries LoadGen issues in ``step``. A valid performance run issues them until both the round's
    query count and minimum duration are reached: more than the count when a query takes less than
    the duration over the count (SingleStream, needs ``latency_ms``) or when the ConstantStream rate
    fills the duration with more."""
    run = step.run
    test_queries = run.test_query_count or RunOptions.test_query_count
    if step.kind == FIND_PERFORMANCE:
        return test_queries
    if step.kind == ACCURACY:
        samples = dataset_samples(plan, run)
        return min(samples, test_queries) if run.execution_mode == "test" else samples
    if run.execution_mode == "test":
        return test_queries
    latency = _latency_rules(plan, run)
    if run.scenario == "ConstantStream":
        qps = constant_stream_qps(plan, run, latency_ms)
        return max(latency.min_query_count, math.ceil(latency.min_duration_ms / 1000 * qps))
    if latency_ms is None:
        return latency.min_query_count
    return max(latency.min_query_count, math.ceil(latency.min_duration_ms / latency_ms))


def _latency_rules(plan: Plan, run: PlannedRun) -> rules.LatencyRules:
    round_rules = rules.get_round(plan.round)
    return round_rules.constant_stream if run.scenario == "ConstantStream" else round_rules.single_stream


def step_seconds(plan: Plan, step: Step, latency_ms: float) -> float:
    """Wall time of ``step`` at ``latency_ms`` a query, for a SUT that answers one query at a time:
    ConstantStream issues queries at its rate (:func:`constant_stream_qps`; a SUT slower than that
    takes a latency a query), and a valid performance run lasts at least the round's minimum duration."""
    run = step.run
    queries = step_queries(plan, step, latency_ms)
    seconds = queries * latency_ms / 1000
    if run.scenario == "ConstantStream" and step.kind != FIND_PERFORMANCE:
        seconds = max(seconds, queries / constant_stream_qps(plan, run, latency_ms))
    if run.scenario == "ConstantStream" and step.kind == FIND_PERFORMANCE:
        seconds += rate_search_seconds(plan, run, latency_ms)
    if run.execution_mode == "valid" and step.kind in (PERFORMANCE, COMPLIANCE_TEST):
        seconds = max(seconds, _latency_rules(plan, run).min_duration_ms / 1000)
    return seconds


def estimate(
    plan: Plan, latency_ms: float | None = None, steps: list[Step] | None = None
) -> list[StepEstimate]:
    """Queries and seconds of each step (all of the plan's, or ``steps``)."""
    estimates = []
    latencies: dict[str, Latency] = {}
    for step in steps if steps is not None else plan_steps(plan):
        if step.run.label not in latencies:
            latencies[step.run.label] = run_latency(plan, step.run, latency_ms)
        latency = latencies[step.run.label].ms
        seconds = step_seconds(plan, step, latency) if latency is not None else None
        estimates.append(StepEstimate(step, step_queries(plan, step, latency), seconds))
    return estimates


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def format_estimate(plan: Plan, estimates: list[StepEstimate], latency_ms: float | None = None) -> str:
    """The table ``abtf-ssd plan estimate`` prints: a line a step, the total in hours."""
    rows = [("run", "latency", "queries", "time", "hours")]
    for item in estimates:
        latency = run_latency(plan, item.step.run, latency_ms)
        latency_text = f"{latency.ms:g} ms ({latency.source})" if latency.ms is not None else "unknown"
        hours = f"{item.seconds / 3600:.2f}" if item.seconds is not None else "?"
        rows.append((item.step.label, latency_text, str(item.queries), format_duration(item.seconds), hours))
    known = [e.seconds for e in estimates if e.seconds is not None]
    unknown = len(estimates) - len(known)
    total = sum(known)
    rows.append(
        ("total", "", str(sum(e.queries for e in estimates)), format_duration(total), f"{total / 3600:.2f}")
    )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    shown = set()
    for item in estimates:
        run = item.step.run
        if run.scenario == "ConstantStream" and run.label not in shown:
            shown.add(run.label)
            latency = run_latency(plan, run, latency_ms).ms
            qps, source = constant_stream_rate(plan, run, latency)
            lines.append(f"{run.label}: ConstantStream at {qps:g} QPS ({source})")
    if any(e.step.run.scenario == "ConstantStream" and e.step.kind == FIND_PERFORMANCE for e in estimates):
        lines.append("find-performance of ConstantStream counts the rate search's whole trial budget")
    if unknown:
        lines.append(
            f"{unknown} run(s) without a known latency are not in the total: give --latency-ms, "
            "latency_ms in the plan, or run find-performance first"
        )
    return "\n".join(lines)


def total_hours(estimates: list[StepEstimate]) -> float | None:
    """Hours of all the steps; None if any step's latency is unknown."""
    if any(e.seconds is None for e in estimates):
        return None
    return sum(e.seconds or 0.0 for e in estimates) / 3600
