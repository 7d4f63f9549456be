"""ConstantStream find-performance: the highest rate whose latency tail stays within LoadGen's bound.

LoadGen's ConstantStream issues one query every ``1 / QPS`` seconds and holds each to that same
interval: a run is INVALID when its 99.9th percentile latency exceeds ``1 / QPS`` (or too many
queries do, for early stopping). A rate of ``1 / back-to-back latency`` leaves no room for queueing:
every stall delays the queries behind it, so the tail grows past the bound. This module searches
over real ConstantStream trials instead:

1. start from a safe rate derived from the back-to-back 99.9th percentile
   (:func:`start_rate`: the bound minus the margin equals that latency);
2. bracket: step up by :data:`STEP` while trials hold, or down (to the rate the failed trial's own
   tail allows: at least one step, at most :data:`MAX_DROP`) until one holds;
3. bisect between the highest rate that held and the lowest that failed, to ``resolution_qps``.

A trial holds when its 99.9th percentile latency is at most ``(1 - margin)`` of the bound
(:func:`holds`). The trials themselves are a callable (``qps -> TrialLatency``): the harness runs
them on LoadGen (:mod:`abtf_ssd.loadgen.harness`), tests on a simulated queue.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from abtf_ssd.loadgen.rules import MIN_TARGET_QPS

DEFAULT_MARGIN = 0.10
"""Fraction of the bound a trial's 99.9th percentile must leave free (docs/scenarios-and-rounds.md
gives the measurements behind it)."""
DEFAULT_RESOLUTION_QPS = 0.01
DEFAULT_TRIAL_SECONDS = 60.0
DEFAULT_TRIAL_QUERIES = 1000
DEFAULT_MAX_TRIALS = 16
STEP = 1.2
"""Bracketing factor between two rates."""
MAX_DROP = 4.0
"""The most a failed trial divides the rate by before the next one."""
TEST_TRIAL_SECONDS = 10.0
TEST_TRIAL_QUERIES = 200
TEST_RESOLUTION_QPS = 0.05
TEST_MAX_TRIALS = 10
"""A test-mode search (``--execution_mode=test``, ``_short``): shorter trials, a coarser resolution."""
TRIALS_FILE = "rate_search.json"
"""Written beside ``target_qps.txt``: the settings, every trial and the outcome."""


class NoRateHoldsError(RuntimeError):
    """Not even the lowest rate tried kept the latency within the bound (the message is one line).

    ``result`` keeps the trials that ran.
    """

    def __init__(self, message: str, result: SearchResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class SearchSettings:
    """How the search runs; every field an input of find-performance."""

    margin: float = DEFAULT_MARGIN
    resolution_qps: float = DEFAULT_RESOLUTION_QPS
    trial_seconds: float = DEFAULT_TRIAL_SECONDS
    """Each trial lasts at least this long..."""
    trial_queries: int = DEFAULT_TRIAL_QUERIES
    """...and issues at least this many queries."""
    max_trials: int = DEFAULT_MAX_TRIALS
    ceiling_qps: float | None = None
    """The highest rate worth trying (v1.0: the round's 15 QPS, at which it reports latency)."""
    floor_qps: float = MIN_TARGET_QPS

    def __post_init__(self) -> None:
        if not 0 <= self.margin < 1:
            raise ValueError(f"the rate search margin must be in [0, 1), got {self.margin}")
        if not (math.isfinite(self.resolution_qps) and self.resolution_qps > 0):
            raise ValueError(f"the rate search resolution must be a positive QPS, got {self.resolution_qps}")
        if self.trial_seconds < 0 or self.trial_queries < 1:
            raise ValueError(
                f"a trial needs at least one query and no negative time, got {self.trial_queries} "
                f"queries and {self.trial_seconds} s"
            )
        if self.max_trials < 1:
            raise ValueError(f"the rate search needs at least one trial, got {self.max_trials}")


@dataclass(frozen=True)
class TrialLatency:
    """What one ConstantStream trial measured; latencies in ns, as LoadGen reports them."""

    queries: int
    p50_ns: float
    p99_ns: float
    p999_ns: float
    over_bound: int
    """Queries whose latency exceeded the bound (LoadGen's ``result_overlatency_query_count``)."""
    loadgen_result: str | None = None
    """LoadGen's own latency verdict of the trial (``bound met`` / ``bound exceeded``), where it gave one."""


@dataclass(frozen=True)
class Trial:
    """One trial of the search: its rate, bound, latencies and verdict."""

    qps: float
    bound_ms: float
    queries: int
    p50_ms: float
    p99_ms: float
    p999_ms: float
    over_bound: int
    holds: bool
    loadgen_result: str | None = None


@dataclass
class SearchResult:
    settings: SearchSettings
    start_qps: float
    trials: list[Trial] = field(default_factory=list)
    rate_qps: float | None = None
    """The highest rate that held; None when none did."""
    reason: str = ""
    """How the search ended, in words."""

    def to_dict(self) -> dict:
        return {
            "settings": asdict(self.settings),
            "start_qps": self.start_qps,
            "rate_qps": self.rate_qps,
            "reason": self.reason,
            "trials": [asdict(t) for t in self.trials],
        }


def default_settings(execution_mode: str, ceiling_qps: float | None = None) -> SearchSettings:
    """The search's defaults for a ``valid`` or a ``test`` find-performance run."""
    if execution_mode == "test":
        return SearchSettings(
            resolution_qps=TEST_RESOLUTION_QPS,
            trial_seconds=TEST_TRIAL_SECONDS,
            trial_queries=TEST_TRIAL_QUERIES,
            max_trials=TEST_MAX_TRIALS,
            ceiling_qps=ceiling_qps,
        )
    return SearchSettings(ceiling_qps=ceiling_qps)


def bound_ns(qps: float) -> int:
    """LoadGen's ConstantStream latency bound at ``qps``: the query interval, truncated to ns."""
    return int(1e9 / qps)


def holds(p999_ns: float, qps: float, margin: float) -> bool:
    """Whether a 99.9th percentile of ``p999_ns`` keeps ``margin`` of the bound at ``qps`` free."""
    return p999_ns <= (1.0 - margin) * bound_ns(qps)


def floor_to(qps: float, resolution: float) -> float:
    """``qps`` rounded down to a multiple of ``resolution`` (and to 6 decimals against float noise)."""
    return round(math.floor(qps / resolution + 1e-9) * resolution, 6)


def start_rate(back_to_back_p999_ns: float, settings: SearchSettings) -> float:
    """The first rate to try: the one whose bound, less the margin, is the back-to-back tail latency."""
    qps = (1.0 - settings.margin) * 1e9 / max(back_to_back_p999_ns, 1.0)
    return _clamp(qps, settings)


def _clamp(qps: float, settings: SearchSettings) -> float:
    if settings.ceiling_qps is not None:
        qps = min(qps, settings.ceiling_qps)
    return max(floor_to(qps, settings.resolution_qps), settings.floor_qps)


def search(
    trial: Callable[[float], TrialLatency],
    back_to_back_p999_ns: float,
    settings: SearchSettings | None = None,
    on_trial: Callable[[Trial], None] | None = None,
) -> SearchResult:
    """Search the highest rate that holds, running ``trial(qps)`` for each rate tried.

    ``on_trial`` sees each trial as it ends (progress output). Raises :class:`NoRateHoldsError`
    (after the trials, which the error's ``result`` attribute keeps) when no rate held down to
    ``settings.floor_qps`` or within ``settings.max_trials``.
    """
    settings = settings or SearchSettings()
    result = SearchResult(settings, start_rate(back_to_back_p999_ns, settings))
    tried: dict[float, Trial] = {}

    def attempt(qps: float) -> Trial:
        if qps not in tried:
            measured = trial(qps)
            done = Trial(
                qps=qps,
                bound_ms=bound_ns(qps) / 1e6,
                queries=measured.queries,
                p50_ms=measured.p50_ns / 1e6,
                p99_ms=measured.p99_ns / 1e6,
                p999_ms=measured.p999_ns / 1e6,
                over_bound=measured.over_bound,
                holds=holds(measured.p999_ns, qps, settings.margin),
                loadgen_result=measured.loadgen_result,
            )
            tried[qps] = done
            result.trials.append(done)
            if on_trial is not None:
                on_trial(done)
        return tried[qps]

    def budget_left() -> bool:
        return len(result.trials) < settings.max_trials

    low: float | None = None  # highest rate that held
    high: float | None = None  # lowest rate that failed
    qps = result.start_qps
    while budget_left():  # bracket
        done = attempt(qps)
        if done.holds:
            low = qps
            if high is not None:
                break
            up = _clamp(qps * STEP, settings)
            if up <= qps:
                break  # at the ceiling
            qps = up
        else:
            high = qps
            if low is not None:
                break
            # Down one step at least; further where the bound cannot cover the tail this trial saw,
            # but no more than MAX_DROP at once (a queue's tail says little about one query's).
            allowed = (1.0 - settings.margin) * 1e9 / max(done.p999_ms * 1e6, 1.0)
            down = _clamp(min(qps / STEP, max(allowed, qps / MAX_DROP)), settings)
            if down >= qps:
                break  # at the floor
            qps = down
    while low is not None and high is not None and budget_left():  # bisect
        mid = floor_to((low + high) / 2, settings.resolution_qps)
        if mid <= low or high - low <= settings.resolution_qps + 1e-9:
            break
        if attempt(mid).holds:
            low = mid
        else:
            high = mid
    result.rate_qps = low
    result.reason = _reason(result, low, high)
    if low is None:
        raise NoRateHoldsError(result.reason, result)
    return result


def _reason(result: SearchResult, low: float | None, high: float | None) -> str:
    settings = result.settings
    if low is None:
        last = result.trials[-1]
        return (
            f"no ConstantStream rate holds: at {last.qps:g} QPS, the lowest tried, the 99.9th percentile "
            f"latency {last.p999_ms:.1f} ms exceeds {1 - settings.margin:.0%} of the bound "
            f"{last.bound_ms:.1f} ms ({len(result.trials)} trials)"
        )
    if high is None:
        ceiling = settings.ceiling_qps
        if ceiling is not None and low >= ceiling:
            return f"{low:g} QPS holds: the round's rate"
        return f"{low:g} QPS holds; the trial budget ({settings.max_trials}) ended the search going up"
    if len(result.trials) >= settings.max_trials and high - low > settings.resolution_qps + 1e-9:
        budget = settings.max_trials
        return f"{low:g} QPS holds, {high:g} does not; the trial budget ({budget}) ended the search"
    return f"{low:g} QPS holds, {high:g} QPS does not (resolution {settings.resolution_qps:g} QPS)"


def format_trials(result: SearchResult) -> str:
    """The trials as a table, in the order they ran, with the outcome below."""
    header = (
        f"{'QPS':>8} {'bound ms':>9} {'queries':>8} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} "
        f"{'over':>5}  verdict"
    )
    lines = [
        f"ConstantStream rate search (margin {result.settings.margin:.0%} of the bound at the 99.9th "
        f"percentile, trials of >= {result.settings.trial_queries} queries and "
        f">= {result.settings.trial_seconds:g} s)",
        header,
    ]
    for t in result.trials:
        verdict = "holds" if t.holds else "fails"
        if t.loadgen_result:
            verdict += f" (LoadGen: {t.loadgen_result})"
        lines.append(
            f"{t.qps:>8g} {t.bound_ms:>9.1f} {t.queries:>8d} {t.p50_ms:>8.1f} {t.p99_ms:>8.1f} "
            f"{t.p999_ms:>9.1f} {t.over_bound:>5d}  {verdict}"
        )
    lines.append(result.reason)
    return "\n".join(lines)
