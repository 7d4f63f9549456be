"""Reading LoadGen's logs (from real LoadGen runs of an instant SUT), the results table, the PNGs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import mlperf_loadgen as lg
import numpy as np
import pytest
from helpers import run_instant_sut
from PIL import Image

from abtf_ssd.data.metric import load_ground_truth
from abtf_ssd.loadgen.report import (
    DETAIL_LOG,
    SUMMARY_LOG,
    TRACE_LOG,
    RunSummary,
    detail_values,
    format_metric,
    format_table,
    loadgen_percentile,
    longest_completion_gap,
    parse_summary,
    read_detail_log,
    read_trace_latencies,
    stall_note,
    summarize_run,
    write_latency_histogram,
)
from abtf_ssd.loadgen.rules import METRIC_LABELS, ROUNDS
from abtf_ssd.loadgen.show import GROUND_TRUTH_COLOR, denormalize, render


def _loadgen_run(out: Path, queries: int, percentile: float, mode=lg.TestMode.PerformanceOnly) -> Path:
    """A real LoadGen SingleStream run of an SUT that answers each query after ~0.2 ms."""
    settings = lg.TestSettings()
    settings.scenario = lg.TestScenario.SingleStream
    settings.mode = mode
    settings.min_query_count = settings.max_query_count = queries
    settings.min_duration_ms = 0
    settings.single_stream_target_latency_percentile = percentile
    settings.single_stream_expected_latency_ns = 200_000
    return run_instant_sut(out, settings, samples=8, answer_after_s=0.0002)


@pytest.fixture(scope="module")
def valid_run(tmp_path_factory) -> Path:
    # 90th percentile: early stopping is met after a few hundred queries, so LoadGen says VALID
    return _loadgen_run(tmp_path_factory.mktemp("report") / "valid", queries=600, percentile=0.9)


def test_summary_of_a_valid_run_matches_loadgens_summary(valid_run: Path) -> None:
    summary = summarize_run(valid_run, "SingleStream", "performance")
    text = parse_summary(valid_run / SUMMARY_LOG)
    assert summary.result == text["Result is"] == "VALID" and summary.invalid_reasons == []
    assert summary.queries == 600
    assert summary.mean_ms == pytest.approx(int(text["Mean latency (ns)"]) / 1e6)
    assert summary.p50_ms == pytest.approx(int(text["50.00 percentile latency (ns)"]) / 1e6)
    assert summary.p999_ms == pytest.approx(int(text["99.90 percentile latency (ns)"]) / 1e6)
    values = detail_values(read_detail_log(valid_run / DETAIL_LOG))
    assert summary.early_stopping_ms == pytest.approx(values["early_stopping_latency_ss"] / 1e6)
    assert 0.2 <= summary.p50_ms <= summary.p90_ms <= summary.p99_ms <= summary.p999_ms
    assert summary.loadgen_version
    assert summary.errors == []


def test_trace_latencies_are_loadgens(valid_run: Path) -> None:
    trace = read_trace_latencies(valid_run / TRACE_LOG)
    assert trace is not None and len(trace.sample_ns) == len(trace.query_ns) == 600
    summary = summarize_run(valid_run, "SingleStream", "performance")
    assert trace.query_ns.mean() / 1e6 == pytest.approx(summary.mean_ms, abs=1e-6)
    assert trace.query_ns.max() / 1e6 == pytest.approx(
        int(parse_summary(valid_run / SUMMARY_LOG)["Max latency (ns)"]) / 1e6
    )
    assert set(trace.sample_index.tolist()) <= set(range(8))
    assert read_trace_latencies(valid_run / "missing.json") is None


def test_completion_times_are_the_trace_s(valid_run: Path) -> None:
    trace = read_trace_latencies(valid_run / TRACE_LOG)
    assert trace is not None and len(trace.completed_at_ns) == 600
    assert (np.diff(np.sort(trace.completed_at_ns)) > 0).all()  # SingleStream: one query at a time
    gap_ns, _ = longest_completion_gap(trace)
    assert 0 < gap_ns < 0.1e9  # back to back at ~0.2 ms a query: no stall


def test_longest_completion_gap_finds_a_stall(tmp_path: Path) -> None:
    settings = lg.TestSettings()
    settings.scenario = lg.TestScenario.SingleStream
    settings.mode = lg.TestMode.PerformanceOnly
    settings.min_query_count = settings.max_query_count = 50
    settings.min_duration_ms = 0
    run_dir = run_instant_sut(tmp_path / "stall", settings, samples=8, answer_after_s=0.0002, stall=(20, 0.4))
    trace = read_trace_latencies(run_dir / TRACE_LOG)
    gap_ns, ended_ns = longest_completion_gap(trace)
    assert 0.4e9 <= gap_ns < 0.6e9
    stalled = int(np.argmax(trace.sample_ns))
    assert trace.completed_at_ns[stalled] == ended_ns and trace.sample_ns[stalled] >= 0.4e9
    one = dataclasses.replace(trace, completed_at_ns=trace.completed_at_ns[:1])
    assert longest_completion_gap(one) == (0, 0)
    note = stall_note(trace, interval_ns=0.1e9)  # a query every 100 ms: the 0.4 s stall made one late
    assert note and note.startswith("no query completed for 0.4") and "query intervals of 100.0 ms" in note
    assert "the system stalled" in note and "p50 0." in note
    assert stall_note(trace, interval_ns=0.3e9) is None  # under two intervals: no query had to be late


def test_percentiles_from_the_trace_are_loadgens(valid_run: Path) -> None:
    trace = read_trace_latencies(valid_run / TRACE_LOG)
    text = parse_summary(valid_run / SUMMARY_LOG)
    for label in ("50.00", "90.00", "95.00", "97.00", "99.00", "99.90"):
        reported = int(text[f"{label} percentile latency (ns)"])
        assert loadgen_percentile(trace.query_ns, float(label) / 100) == reported, label


def test_loadgen_percentile_takes_no_interpolation() -> None:
    latencies = np.arange(1, 11) * 10.0  # 10 ... 100, shuffled order must not matter
    assert loadgen_percentile(latencies[::-1], 0.5) == 60.0
    assert loadgen_percentile(latencies, 0.999) == 100.0
    assert loadgen_percentile(latencies, 0.0) == 10.0


def test_invalid_run_lists_its_reasons(tmp_path: Path) -> None:
    run_dir = _loadgen_run(tmp_path / "short", queries=10, percentile=0.999)
    summary = summarize_run(run_dir, "SingleStream", "performance", failed_queries=2)
    assert summary.result == "INVALID"
    assert any(r.startswith("early stopping not met") for r in summary.invalid_reasons)
    table = format_table([summary])
    assert "INVALID (see reasons)" in table and "INVALID: early stopping not met" in table
    assert "2 queries raised" in table


def test_accuracy_run_latencies_come_from_the_trace(tmp_path: Path) -> None:
    run_dir = _loadgen_run(tmp_path / "acc", queries=8, percentile=0.999, mode=lg.TestMode.AccuracyOnly)
    summary = summarize_run(run_dir, "SingleStream", "accuracy", map_value=0.5)
    assert summary.result is None and summary.latency_source == "trace" and summary.queries == 8
    assert summary.mean_ms > 0
    assert "latencies from LoadGen's trace" in format_table([summary])


def test_table_rows_and_json(valid_run: Path) -> None:
    rows = [
        summarize_run(valid_run, "SingleStream", "performance"),
        RunSummary(scenario="SingleStream", mode="accuracy", queries=6000, map=0.7180123),
    ]
    lines = format_table(rows).splitlines()
    assert lines[0].split()[:4] == ["scenario", "mode", "queries", "mean"]
    assert lines[2].split()[:3] == ["SingleStream", "performance", "600"] and lines[2].endswith("VALID")
    assert "0.7180" in lines[3] and lines[3].split()[2] == "6000"
    assert json.loads(json.dumps(rows[0].to_dict()))["result"] == "VALID"


@pytest.mark.parametrize(
    ("key", "value", "shown"),
    [
        ("result_completed_samples_per_sec", 14.8226, "14.823 samples/s"),
        ("result_completed_samples_per_sec", 3, "3.000 samples/s"),
        ("result_99.90_percentile_latency_ns", 66_666_667, "66.667 ms"),
        ("early_stopping_latency_ss", 581_000_000, "581.000 ms"),
    ],
)
def test_format_metric(key: str, value: float, shown: str) -> None:
    assert key in METRIC_LABELS
    assert format_metric(key, value) == shown


def test_the_metric_column_shows_the_rounds_singlestream_metric(valid_run: Path) -> None:
    values = detail_values(read_detail_log(valid_run / DETAIL_LOG))
    expected = f"{values['early_stopping_latency_ss'] / 1e6:.3f} ms"
    for round_name in ("v0.5", "v1.0"):
        summary = summarize_run(valid_run, "SingleStream", "performance", round=round_name)
        assert summary.metric == expected
    assert summarize_run(valid_run, "SingleStream", "performance").metric is None
    lines = format_table([summary]).splitlines()
    header = lines[0]
    assert header.index("metric") == lines[2].index(expected)  # the value sits under its column


@pytest.mark.parametrize(("round_name", "unit"), [("v0.5", "samples/s"), ("v1.0", "ms")])
def test_a_constant_stream_row_shows_the_rounds_metric(round_name: str, unit: str, tmp_path: Path) -> None:
    """A real ConstantStream log of the round's automotive LoadGen (skipped without it): v0.5 reports
    the completed samples per second, v1.0 the 99.9th percentile latency."""
    from test_rules import automotive_constant_stream_run

    automotive_constant_stream_run(round_name, tmp_path / "run")
    summary = summarize_run(tmp_path / "run", "ConstantStream", "performance", round=round_name)
    key = ROUNDS[round_name].metric("ConstantStream")
    values = detail_values(read_detail_log(tmp_path / "run" / DETAIL_LOG))
    assert summary.metric == format_metric(key, values[key]) and summary.metric.endswith(f" {unit}")
    table = format_table([summary])
    row = table.splitlines()[2]
    assert row.split()[:3] == ["ConstantStream", "performance", "4"]  # no "ConstantStreamperformance"
    assert summary.target_qps == values["effective_target_qps"]
    # v1.0 reports the latency at its 15 QPS: a row at another rate says so in the notes
    off_round = summary.target_qps != 15 and round_name == "v1.0"
    assert ("not the round's 15 QPS" in table) == off_round and bool(summary.warnings) == off_round


def test_missing_detail_log(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no mlperf_log_detail.txt"):
        summarize_run(tmp_path, "SingleStream", "performance")


def test_histogram_png(tmp_path: Path) -> None:
    latencies = np.random.default_rng(0).gamma(20, 1, 1000) * 1e6
    png = write_latency_histogram(latencies, tmp_path / "h.png", "test")
    with Image.open(png) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape == (480, 900, 3)
    bars = np.all(pixels == (70, 110, 180), axis=2)
    assert bars.sum() > 20_000  # the bars are drawn
    write_latency_histogram(np.full(3, 5e6), tmp_path / "flat.png", "one value")
    with pytest.raises(ValueError, match="no latencies"):
        write_latency_histogram(np.array([]), tmp_path / "none.png", "empty")


def test_show_draws_ground_truth_and_predictions(tiny_dataset, tmp_path: Path) -> None:
    gt = load_ground_truth(tiny_dataset.preprocessed, [2])[2]
    assert len(gt)
    predictions = np.concatenate([gt[:1, :5] + [[4, 4, 4, 4, 0]], [[0.9]]], axis=1).astype(np.float32)
    log = tmp_path / "mlperf_log_accuracy.json"
    log.write_text(json.dumps([{"seq_id": 0, "qsl_idx": 2, "data": predictions.tobytes().hex()}]))
    png = render(tmp_path, tiny_dataset.preprocessed, 2, tmp_path / "frame.png")
    with Image.open(png) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape == (288, 512, 3)  # the demo config's original frame size
    x1, y1, x2, y2 = (int(round(v)) for v in gt[0, :4])
    assert tuple(pixels[(y1 + y2) // 2, x1]) == GROUND_TRUTH_COLOR
    with pytest.raises(KeyError, match="no response for sample 5"):
        render(log, tiny_dataset.preprocessed, 5, tmp_path / "none.png")


def test_denormalize_inverts_the_preprocessing() -> None:
    from abtf_ssd.config import MEAN, STD

    rgb = np.random.default_rng(1).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    normalized = ((rgb / 255.0 - np.array(MEAN)) / np.array(STD)).transpose(2, 0, 1)[None].astype(np.float32)
    np.testing.assert_array_equal(denormalize(normalized), rgb)
