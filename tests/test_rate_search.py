"""The ConstantStream rate search (abtf_ssd.loadgen.rate_search) on a simulated system.

A simulated trial is the queue LoadGen's ConstantStream makes of a one-query-at-a-time SUT: query i
arrives at ``i / qps``, starts when it arrives or when the query before it is done, and takes its
service time; its latency is completion minus arrival. Service times are fixed, or drawn from a
seeded distribution with rare stalls.
"""

from __future__ import annotations

import numpy as np
import pytest

from abtf_ssd.loadgen import rate_search
from abtf_ssd.loadgen.rate_search import (
    NoRateHoldsError,
    SearchSettings,
    TrialLatency,
    bound_ns,
    format_trials,
    search,
)
from abtf_ssd.loadgen.report import loadgen_percentile

MS = 1_000_000


def simulated_trial(service_ns, settings: SearchSettings, calls: list[float] | None = None):
    """``qps -> TrialLatency`` of a FIFO one-server queue fed at a constant rate."""

    def trial(qps: float) -> TrialLatency:
        if calls is not None:
            calls.append(qps)
        queries = max(settings.trial_queries, int(np.ceil(settings.trial_seconds * qps)))
        service = service_ns(queries)
        arrival = np.arange(queries) * (1e9 / qps)
        done = 0.0
        latency = np.empty(queries)
        for i in range(queries):
            done = max(done, arrival[i]) + service[i]
            latency[i] = done - arrival[i]
        return TrialLatency(
            queries=queries,
            p50_ns=loadgen_percentile(latency, 0.5),
            p99_ns=loadgen_percentile(latency, 0.99),
            p999_ns=loadgen_percentile(latency, 0.999),
            over_bound=int((latency > bound_ns(qps)).sum()),
        )

    return trial


def fixed(ms: float):
    return lambda n: np.full(n, ms * MS)


def jittery_with_stalls(mean_ms: float, seed: int = 0):
    """Log-normal service times (about ``mean_ms``), and one query in 400 stalls 4x as long."""

    def draw(n: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        times = rng.lognormal(np.log(mean_ms * MS), 0.15, n)
        stalls = rng.random(n) < 1 / 400
        times[stalls] *= 4
        return times

    return draw


def test_fixed_service_time_finds_the_margin_below_the_service_rate() -> None:
    settings = SearchSettings(trial_seconds=5, trial_queries=200)
    result = search(simulated_trial(fixed(10), settings), 10 * MS, settings)
    # 10 ms a query: 100 QPS of service; a 10 ms latency keeps 10% of the bound free up to 90 QPS
    assert 90 - 2 * settings.resolution_qps <= result.rate_qps <= 90  # the bound is truncated to ns
    assert result.rate_qps <= (1 - settings.margin) * 100
    assert all(t.holds == (t.p999_ms <= 0.9 * t.bound_ms) for t in result.trials)
    assert len(result.trials) <= settings.max_trials


def test_stalls_and_jitter_keep_the_rate_below_the_service_rate_by_the_margin() -> None:
    settings = SearchSettings(trial_seconds=20, trial_queries=1000, resolution_qps=0.05)
    draw = jittery_with_stalls(20)
    back_to_back_p999 = loadgen_percentile(draw(1000), 0.999)
    result = search(simulated_trial(draw, settings), back_to_back_p999, settings)
    mean_service_ms = float(draw(100_000).mean()) / MS
    assert result.rate_qps is not None
    assert result.rate_qps <= (1 - settings.margin) * 1000 / mean_service_ms
    # the back-to-back rule (1 / tail latency) would have asked for more than the search keeps
    assert result.rate_qps < 1e9 / back_to_back_p999
    held = [t for t in result.trials if t.holds]
    failed = [t for t in result.trials if not t.holds]
    assert max(t.qps for t in held) == result.rate_qps
    assert failed and min(t.qps for t in failed) - result.rate_qps <= settings.resolution_qps + 1e-9
    for t in result.trials:  # the table is complete
        assert t.queries >= settings.trial_queries
        assert t.p50_ms <= t.p99_ms <= t.p999_ms
        assert t.bound_ms == pytest.approx(1000 / t.qps, rel=1e-6)


def test_a_system_slower_than_the_lowest_rate_is_refused_in_one_line() -> None:
    settings = SearchSettings(trial_seconds=0, trial_queries=3)
    calls: list[float] = []
    with pytest.raises(NoRateHoldsError) as caught:
        search(simulated_trial(fixed(200_000), settings, calls), 200_000 * MS, settings)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("no ConstantStream rate holds")
    assert caught.value.result.rate_qps is None
    assert calls[-1] == settings.floor_qps
    assert len(calls) <= 3  # jumps down to what the tail allows, not 1.2x at a time


def test_v1_keeps_the_round_rate_when_it_holds() -> None:
    settings = SearchSettings(trial_seconds=5, trial_queries=100, ceiling_qps=15)
    calls: list[float] = []
    result = search(simulated_trial(fixed(10), settings, calls), 10 * MS, settings)
    assert result.rate_qps == 15
    assert calls == [15]
    assert result.reason == "15 QPS holds: the round's rate"


def test_v1_below_the_round_rate_searches_under_it() -> None:
    settings = SearchSettings(trial_seconds=5, trial_queries=100, ceiling_qps=15)
    result = search(simulated_trial(fixed(100), settings), 100 * MS, settings)
    assert result.rate_qps == pytest.approx(9, abs=settings.resolution_qps)
    assert max(t.qps for t in result.trials) <= 15


def test_the_trial_budget_ends_the_search_with_the_best_rate_so_far() -> None:
    settings = SearchSettings(trial_seconds=1, trial_queries=50, max_trials=3)
    result = search(simulated_trial(fixed(10), settings), 10 * MS, settings)
    assert len(result.trials) == 3
    assert result.rate_qps is not None and "trial budget" in result.reason


def test_the_trials_table_and_json() -> None:
    settings = SearchSettings(trial_seconds=1, trial_queries=50)
    result = search(simulated_trial(fixed(10), settings), 10 * MS, settings)
    table = format_trials(result).splitlines()
    assert table[1].split() == [
        "QPS",
        "bound",
        "ms",
        "queries",
        "p50",
        "ms",
        "p99",
        "ms",
        "p99.9",
        "ms",
        "over",
        "verdict",
    ]
    assert len(table) == 2 + len(result.trials) + 1
    assert table[-1] == result.reason
    data = result.to_dict()
    assert data["rate_qps"] == result.rate_qps and len(data["trials"]) == len(result.trials)
    assert set(data["trials"][0]) >= {"qps", "queries", "p50_ms", "p99_ms", "p999_ms", "over_bound", "holds"}


@pytest.mark.parametrize(
    "bad",
    [{"margin": 1.0}, {"margin": -0.1}, {"resolution_qps": 0}, {"trial_queries": 0}, {"max_trials": 0}],
)
def test_bad_settings_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        SearchSettings(**bad)


def test_holds_is_inclusive_at_the_margin() -> None:
    assert rate_search.holds(90 * MS, 10, 0.1)
    assert not rate_search.holds(90 * MS + 1, 10, 0.1)
