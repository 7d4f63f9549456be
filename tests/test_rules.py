"""LoadGen rules per round: the facts, the TestSettings they make, user.conf on top, audit config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlperf_loadgen as lg
import pytest

from abtf_ssd import rules
from abtf_ssd.rules import ROUNDS, RulesError, make_test_settings


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
        audit = r.audits["TEST01"]
        assert (audit.mode, audit.accuracy_log_rng_seed, audit.accuracy_log_sampling_target) == (
            2,
            720381539243781796,
            128,
        )


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
        "from abtf_ssd.rules import make_test_settings\n"
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
