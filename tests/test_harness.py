"""The LoadGen harness end to end: real LoadGen, real ONNX Runtime on the demo model, tiny synthetic data."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import mlperf_loadgen as lg
import numpy as np
import pytest
from PIL import Image

from abtf_ssd.data.preprocess import load_sample
from abtf_ssd.loadgen import rules
from abtf_ssd.loadgen.accuracy import read_accuracy_log
from abtf_ssd.loadgen.find_rate import TARGET_QPS_FILE
from abtf_ssd.loadgen.harness import (
    EXPECTED_LATENCY_FILE,
    RunFailedError,
    RunOptions,
    RunResult,
    run,
)
from abtf_ssd.loadgen.report import (
    DETAIL_LOG,
    TRACE_LOG,
    detail_messages,
    detail_values,
    read_detail_log,
    read_trace_latencies,
    summarize_run,
)
from abtf_ssd.model.backends import create_backend


@pytest.fixture(scope="module")
def backend(demo_onnx_model: Path):
    return create_backend("onnxruntime", demo_onnx_model, "cpu", threads=2, config_name="demo")


def _run(tmp_path: Path, dataset, backend, **overrides) -> RunResult:
    options = RunOptions(
        dataset_dir=dataset.preprocessed,
        results_dir=tmp_path / "results",
        system_name="tiny",
        test_query_count=4,
        command="abtf-ssd run (test)",
    )
    for name, value in overrides.items():
        setattr(options, name, value)
    return run(options, backend=backend)


def _detail(result: RunResult) -> dict:
    return detail_values(read_detail_log(result.output_dir / DETAIL_LOG))


class FailingBackend:
    """The real backend, except that it raises for one image (or for every call after ``good_calls``)."""

    def __init__(self, inner, bad_image: np.ndarray | None = None, good_calls: int | None = None) -> None:
        self.inner = inner
        self.bad_image = bad_image
        self.good_calls = good_calls
        self.calls = 0
        self.config_name = inner.config_name

    def predict(self, batch: np.ndarray):
        self.calls += 1
        if self.good_calls is not None and self.calls > self.good_calls:
            raise RuntimeError("device lost")
        if self.bad_image is not None and any(np.array_equal(image, self.bad_image[0]) for image in batch):
            raise RuntimeError("kernel crashed on this frame")
        return self.inner.predict(batch)


@pytest.mark.parametrize("round_name", ["v0.5", "v1.0"])
def test_detail_log_has_the_rounds_seeds_and_test_count(tmp_path, tiny_dataset, backend, round_name) -> None:
    result = _run(tmp_path, tiny_dataset, backend, round=round_name)
    values = _detail(result)
    r = rules.ROUNDS[round_name]
    assert values["effective_qsl_rng_seed"] == r.qsl_rng_seed
    assert values["effective_sample_index_rng_seed"] == r.sample_index_rng_seed
    assert values["effective_schedule_rng_seed"] == r.schedule_rng_seed
    assert values["effective_target_latency_percentile"] == pytest.approx(0.999)
    assert values["effective_performance_sample_count"] == 4  # the round's 128, capped by the 4-sample QSL
    assert values["result_query_count"] == 4 == result.summary.queries
    assert result.ok and result.summary.result == "INVALID"


def test_test_query_count_limits_an_accuracy_run(tmp_path, tiny_dataset, backend) -> None:
    result = _run(tmp_path, tiny_dataset, backend, mode="accuracy")
    detections = read_accuracy_log(result.output_dir / "mlperf_log_accuracy.json")
    assert sorted(detections) == [0, 1, 2, 3]
    assert result.output_dir == tmp_path / "results/tiny/ssd/SingleStream/accuracy"
    assert result.map_result is not None and result.map_result.frames_total == 4
    text = (result.output_dir / "accuracy.txt").read_text()
    assert text.startswith(f"mAP: {result.map_result.map:.7f}\n")
    saved = json.loads((result.output_dir / "results.json").read_text())
    assert saved["accuracy"]["mAP"] == result.map_result.map and saved["summary"]["map"] == result.summary.map


def test_valid_accuracy_run_covers_every_sample(tmp_path, tiny_dataset, backend) -> None:
    result = _run(tmp_path, tiny_dataset, backend, mode="accuracy", execution_mode="valid")
    detections = read_accuracy_log(result.output_dir / "mlperf_log_accuracy.json")
    assert sorted(detections) == list(range(tiny_dataset.frames))


def test_stray_audit_config_in_cwd_has_no_effect(tmp_path, tiny_dataset, backend, monkeypatch) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "audit.config").write_text(
        "*.*.mode = 1\n*.*.min_query_count = 2\n*.*.max_query_count = 2\n"
        "*.*.accuracy_log_sampling_target = 3\n"
    )
    monkeypatch.chdir(cwd)
    result = _run(tmp_path, tiny_dataset, backend, test_query_count=3)
    values = _detail(result)
    assert values["effective_test_mode"] == "PerformanceOnly"
    assert values["result_query_count"] == 3
    assert values["effective_accuracy_log_sampling_target"] == 0
    assert "audit" not in (result.output_dir / DETAIL_LOG).read_text().lower()
    assert not (result.output_dir / "audit.config").exists()
    assert Path.cwd() == cwd


def test_explicit_audit_config_makes_a_compliance_run(tmp_path, tiny_dataset, backend) -> None:
    audit = tmp_path / "TEST01.config"
    audit.write_text(rules.audit_config_text("v0.5"))
    result = _run(tmp_path, tiny_dataset, backend, test_query_count=3, audit_config=audit)
    assert result.output_dir == tmp_path / "results/tiny/ssd/SingleStream/TEST01/performance/run_1"
    assert (result.output_dir / "audit.config").read_text() == audit.read_text()
    values = _detail(result)
    assert values["effective_accuracy_log_rng_seed"] == 720381539243781796
    assert values["effective_accuracy_log_sampling_target"] == 128
    assert "audit" in (result.output_dir / DETAIL_LOG).read_text().lower()
    assert len(read_accuracy_log(result.output_dir / "mlperf_log_accuracy.json")) > 0


def test_a_failing_sample_fails_the_accuracy_run_naming_it(tmp_path, tiny_dataset, backend) -> None:
    bad = load_sample(tiny_dataset.preprocessed / "val_3.pkl")["img"]
    with pytest.raises(RunFailedError, match=r"samples \[3\].*kernel crashed on this frame") as info:
        _run(
            tmp_path,
            tiny_dataset,
            FailingBackend(backend, bad_image=bad),
            mode="accuracy",
            test_query_count=6,
        )
    out = info.value.result.output_dir
    assert not (out / "accuracy.txt").exists()
    saved = json.loads((out / "results.json").read_text())
    assert saved["status"] == "failed" and saved["failed_samples"] == [3] and saved["failed_queries"] == 1
    detections = read_accuracy_log(out / "mlperf_log_accuracy.json")
    assert sorted(detections) == list(range(6)) and len(detections[3]) == 0 and len(detections[2]) > 0


def test_failing_queries_fail_a_performance_run_and_make_it_invalid(
    tmp_path, tiny_dataset, backend, capsys
) -> None:
    with pytest.raises(RunFailedError, match="performance run failed.*device lost") as info:
        _run(tmp_path, tiny_dataset, FailingBackend(backend, good_calls=1))  # the warm-up succeeds
    result = info.value.result
    assert not result.ok and result.summary.failed_queries == 4
    saved = json.loads((result.output_dir / "results.json").read_text())
    assert saved["status"] == "failed" and saved["summary"]["result"] == "INVALID"
    assert any("answered with no detections" in reason for reason in saved["summary"]["invalid_reasons"])
    assert "4 queries raised and were answered empty: run FAILED" in capsys.readouterr().out


def test_results_folder_table_and_user_conf(tmp_path, tiny_dataset, backend, capsys) -> None:
    user_conf = tmp_path / "my_user.conf"
    user_conf.write_text("ssd.SingleStream.target_latency = 123\n")
    result = _run(tmp_path, tiny_dataset, backend, user_conf=user_conf)
    out = result.output_dir
    assert out == tmp_path / "results/tiny/ssd/SingleStream/performance/run_1"
    for name in (
        "mlperf_log_summary.txt",
        "mlperf_log_detail.txt",
        "user.conf",
        "command.txt",
        "results.json",
    ):
        assert (out / name).is_file(), name
    assert (out / "command.txt").read_text() == "abtf-ssd run (test)\n"
    assert _detail(result)["requested_single_stream_expected_latency_ns"] == 123_000_000
    # user.conf: what LoadGen logged as effective (the asked 123 ms comes back through its QPS).
    effective = (out / "user.conf").read_text()
    assert effective.startswith(
        "# Effective LoadGen settings of this run (round v0.5), from its mlperf_log_detail"
    )
    assert "ssd.SingleStream.max_query_count = 4\n" in effective
    again = lg.TestSettings()
    again.scenario = lg.TestScenario.SingleStream
    rules.apply_user_conf(again, out / "user.conf", "SingleStream")
    assert again.single_stream_expected_latency_ns == pytest.approx(123_000_000, rel=1e-5)

    saved = json.loads((out / "results.json").read_text())
    assert saved["status"] == "ok" and saved["backend"].startswith("onnxruntime")
    assert saved["effective_settings"]["qsl_rng_seed"] == rules.ROUNDS["v0.5"].qsl_rng_seed
    summary = saved["summary"]
    assert summary["queries"] == 4 and summary["result"] == "INVALID"
    assert 0 < summary["p50_ms"] <= summary["p99_ms"] and summary["mean_ms"] > 0
    assert any("early stopping" in reason for reason in summary["invalid_reasons"])

    with Image.open(out / "latency_histogram.png") as png:
        assert png.size == (900, 480)
    printed = capsys.readouterr().out
    assert "SingleStream" in printed and "performance" in printed and "INVALID" in printed
    assert f"{summary['mean_ms']:.3f}" in printed


def test_find_performance_feeds_the_next_run(tmp_path, tiny_dataset, backend) -> None:
    found = _run(tmp_path, tiny_dataset, backend, mode="find-performance", test_query_count=3)
    stored = tmp_path / "results/tiny/ssd/SingleStream" / EXPECTED_LATENCY_FILE
    assert found.output_dir.name == "find-performance"
    assert int(stored.read_text()) == found.expected_latency_ns == round(found.summary.mean_ms * 1e6)
    later = _run(tmp_path, tiny_dataset, backend, test_query_count=2)
    # the detail log prints doubles to 6 significant digits
    requested = _detail(later)["requested_single_stream_expected_latency_ns"]
    assert requested == pytest.approx(found.expected_latency_ns, rel=1e-5)
    assert later.expected_latency_ns == found.expected_latency_ns


def _automotive_run(
    tools, tmp_path: Path, tiny_dataset, model: Path, *options: str, check: bool = True
) -> subprocess.CompletedProcess:
    """``abtf-ssd run`` of the demo model on the round's automotive LoadGen (ConstantStream needs it)."""
    done = subprocess.run(
        [
            str(tools.bin / "abtf-ssd"),
            "run",
            "--dataset-dir",
            str(tiny_dataset.preprocessed),
            "--model-path",
            str(model),
            "--config-name",
            "demo",
            "--threads",
            "2",
            "--results-dir",
            str(tmp_path / "results"),
            "--system-name",
            "tiny",
            "--round",
            tools.round,
            "--scenario",
            "ConstantStream",
            *options,
        ],  # fmt: skip
        env=tools.env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0 or not check, done.stdout + done.stderr
    return done


SHORT_SEARCH = ("--rate-trial-seconds", "2", "--rate-trial-queries", "6", "--rate-resolution-qps", "0.5",
                "--rate-max-trials", "5", "--rate-margin", "0.5")  # fmt: skip
"""A search of a few seconds a trial. Its margin is wide because the test run after it has 8 queries on a
shared 2-core machine: its p99.9 is its slowest query, so one stall counts (a margin of 30 % let a CI
run's stall through). The default margin is the one ``make valid-constantstream`` measured."""


@pytest.mark.parametrize("round_name", ["v0.5", "v1.0"])
def test_constant_stream_find_performance_searches_a_rate_that_holds(
    tmp_path, tiny_dataset, demo_onnx_model, round_name
) -> None:
    """Find-performance measures back-to-back queries (LoadGen's SingleStream), then searches over
    real ConstantStream trials and stores the highest rate that held, with its trials; a run at that
    rate meets LoadGen's bound. v1.0 runs at its own 15 QPS unless asked for the rate that holds."""
    from upstream_tools import official_tools

    tools = official_tools(round_name)
    scenario_dir = tmp_path / "results/tiny/ssd/ConstantStream"
    found = _automotive_run(tools, tmp_path, tiny_dataset, demo_onnx_model, "--mode", "find-performance",
                            "--test-query-count", "3", *SHORT_SEARCH)  # fmt: skip
    back_to_back = detail_values(read_detail_log(scenario_dir / "find-performance" / DETAIL_LOG))
    assert back_to_back["effective_scenario"] == "SingleStream" and back_to_back["result_query_count"] == 3
    search = json.loads((scenario_dir / "rate_search.json").read_text())
    qps = float((scenario_dir / TARGET_QPS_FILE).read_text())
    assert search["rate_qps"] == pytest.approx(qps) and search["model"]["path"] == str(demo_onnx_model)
    trials = search["trials"]
    assert 1 <= len(trials) <= 5 and max(t["qps"] for t in trials if t["holds"]) == pytest.approx(qps)
    for number, trial in enumerate(trials, 1):  # each trial is a real ConstantStream LoadGen run
        logged = detail_values(
            read_detail_log(
                scenario_dir
                / "find-performance/rate-trials"
                / f"{number:02d}-{trial['qps']:g}qps"
                / DETAIL_LOG
            )
        )
        assert logged["effective_scenario"] == "ConstantStream"
        assert logged["effective_target_qps"] == pytest.approx(trial["qps"])
        assert trial["holds"] == (trial["p999_ms"] <= 0.5 * trial["bound_ms"])
    assert "rate search (margin 50% of the bound" in found.stdout and search["reason"] in found.stdout
    saved = json.loads((scenario_dir / "find-performance" / "results.json").read_text())
    assert saved["target_qps"] == pytest.approx(qps)
    constant = rules.ROUNDS[round_name].constant_stream
    assert qps <= constant.target_qps or not constant.qps_capped_at_round

    given = () if round_name == "v0.5" or qps == constant.target_qps else ("--target-qps", f"{qps:g}")
    later = _automotive_run(tools, tmp_path, tiny_dataset, demo_onnx_model, "--test-query-count", "8", *given)
    run_dir = scenario_dir / "performance" / "run_1"
    records = read_detail_log(run_dir / DETAIL_LOG)
    values = detail_values(records)
    assert values["effective_scenario"] == "ConstantStream" and detail_messages(records) == []
    assert values["effective_target_qps"] == pytest.approx(qps) and values["effective_max_query_count"] == 0
    assert "Reduce target QPS" not in str(values.get("result_invalid_reason", ""))
    assert values["result_perf_constraints_met"] is True
    said = later.stdout + later.stderr
    rows = [row for row in map(str.split, said.splitlines()) if row[:2] == ["ConstantStream", "performance"]]
    assert rows and rows[-1][-1 if values["result_validity"] == "VALID" else -3] == values["result_validity"]
    for reason in summarize_run(run_dir, "ConstantStream", "performance").invalid_reasons:
        assert f"INVALID: {reason}" in said
    assert f"ssd.ConstantStream.target_qps = {qps!r}\n" in (run_dir / "user.conf").read_text()
    trace = read_trace_latencies(run_dir / TRACE_LOG)  # from the scheduled time: queueing included
    assert trace.query_ns.max() == values["result_max_latency_ns"]
    assert trace.query_ns.min() == values["result_min_latency_ns"]
    if given:  # v1.0 below its rate: said in the run's output and the table
        assert "not the round's 15 QPS" in later.stdout + later.stderr

    if round_name == "v1.0" and qps < constant.target_qps:
        at_round = _automotive_run(tools, tmp_path, tiny_dataset, demo_onnx_model, "--test-query-count", "2")
        assert "the rate search found that 15 QPS does not hold" in at_round.stderr
        assert detail_values(read_detail_log(run_dir / DETAIL_LOG))["effective_target_qps"] == 15.0


@pytest.mark.parametrize(
    ("stored", "given", "message"),
    [
        ("fast\n", None, "target_qps.txt: expected a positive number of queries per second, found 'fast'"),
        ("-3\n", None, "target_qps.txt: expected a positive number of queries per second, found '-3'"),
        (None, 0.0, "the ConstantStream target QPS must be a positive number, got 0.0"),
        (None, float("nan"), "the ConstantStream target QPS must be a positive number, got nan"),
    ],
)
def test_a_bad_constant_stream_rate_is_refused_before_running(
    tmp_path, tiny_dataset, backend, stored, given, message
) -> None:
    scenario_dir = tmp_path / "results/tiny/ssd/ConstantStream"
    if stored is not None:
        scenario_dir.mkdir(parents=True)
        (scenario_dir / TARGET_QPS_FILE).write_text(stored)
    with pytest.raises(ValueError, match=re.escape(message)):
        _run(tmp_path, tiny_dataset, backend, scenario="ConstantStream", target_qps=given)
    written = sorted(p.name for p in scenario_dir.iterdir()) if scenario_dir.exists() else []
    assert written == ([TARGET_QPS_FILE] if stored is not None else [])


def test_offline_batches_answer_like_single_stream(tmp_path, tiny_dataset, backend) -> None:
    single = _run(tmp_path / "a", tiny_dataset, backend, mode="accuracy", test_query_count=5)
    batched = _run(
        tmp_path / "b",
        tiny_dataset,
        backend,
        mode="accuracy",
        test_query_count=5,
        scenario="Offline",
        batch_size=4,
    )
    one = read_accuracy_log(single.output_dir / "mlperf_log_accuracy.json")
    many = read_accuracy_log(batched.output_dir / "mlperf_log_accuracy.json")
    assert sorted(one) == sorted(many) == [0, 1, 2, 3, 4]
    for index in one:
        assert one[index].shape == many[index].shape
        np.testing.assert_allclose(one[index], many[index], rtol=1e-4, atol=1e-3)


def test_multistream_queries(tmp_path, tiny_dataset, backend) -> None:
    user_conf = tmp_path / "user.conf"
    user_conf.write_text("ssd.MultiStream.samples_per_query = 4\n")
    result = _run(
        tmp_path,
        tiny_dataset,
        backend,
        scenario="MultiStream",
        test_query_count=2,
        batch_size=2,
        user_conf=user_conf,
    )
    values = _detail(result)
    assert values["result_query_count"] == 2 and values["effective_samples_per_query"] == 4
    assert result.summary.mean_ms > 0


def test_bad_options_fail_before_running(tmp_path, tiny_dataset, backend) -> None:
    with pytest.raises(ValueError, match="unknown mode"):
        _run(tmp_path, tiny_dataset, backend, mode="submission")
    with pytest.raises(FileNotFoundError, match="user_conf"):
        _run(tmp_path, tiny_dataset, backend, user_conf=tmp_path / "missing.conf")
    with pytest.raises(ValueError, match="config 'demo', not the requested"):
        _run(tmp_path, tiny_dataset, backend, config_name="baseline_8MP_ss_scales_fm1_5x5_all")
    assert not (tmp_path / "results").exists()


def test_an_audit_config_in_the_output_folder_is_refused(tmp_path, tiny_dataset, backend) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "audit.config").write_text("*.*.mode = 1\n")
    with pytest.raises(FileExistsError, match="compliance run"):
        _run(tmp_path, tiny_dataset, backend, output_dir=out)
    assert (out / "audit.config").read_text() == "*.*.mode = 1\n"


def test_a_memory_mapped_store_gives_the_pickles_detections_and_map(tmp_path, tiny_dataset, backend) -> None:
    from abtf_ssd.data.store_writer import convert_pickles_to_store
    from abtf_ssd.loadgen.accuracy import accuracy_main

    store = convert_pickles_to_store(tiny_dataset.preprocessed, tmp_path / "store", progress=False)
    from_pickles = _run(tmp_path / "pickles", tiny_dataset, backend, mode="accuracy", test_query_count=6)
    from_store = _run(
        tmp_path / "store-run", tiny_dataset, backend, mode="accuracy", test_query_count=6, dataset_dir=store
    )
    one = read_accuracy_log(from_pickles.output_dir / "mlperf_log_accuracy.json")
    other = read_accuracy_log(from_store.output_dir / "mlperf_log_accuracy.json")
    assert sorted(one) == sorted(other) == list(range(6))
    for index in one:
        np.testing.assert_array_equal(one[index], other[index])
    assert from_store.map_result == from_pickles.map_result
    log = from_store.output_dir / "mlperf_log_accuracy.json"
    rescored = accuracy_main(log_path=log, dataset_path=store, out=tmp_path / "accuracy.txt")
    assert rescored == from_pickles.map_result


def test_a_valid_run_over_part_of_the_official_split_is_refused(tmp_path, tiny_dataset, backend) -> None:
    import shutil

    from abtf_ssd.data.preprocess import MANIFEST_NAME

    download = shutil.copytree(tiny_dataset.preprocessed, tmp_path / "val")
    (download / MANIFEST_NAME).unlink()  # as the official download: the files alone
    with pytest.raises(ValueError, match=r"holds 12 samples, but the official validation split .* 6000 rows"):
        _run(tmp_path, tiny_dataset, backend, mode="accuracy", execution_mode="valid", dataset_dir=download)
    assert not (tmp_path / "results").exists()


def test_a_valid_run_over_part_of_a_split_preprocessed_into_a_store_is_refused(
    tmp_path, tiny_dataset, backend
) -> None:
    from abtf_ssd.config import DEMO_CONFIG
    from abtf_ssd.data.store_writer import preprocess_to_store
    from abtf_ssd.data.synth import SPLIT_FILES

    raw = tiny_dataset.raw_root
    store = preprocess_to_store(
        raw,
        raw / SPLIT_FILES["validation"],
        tmp_path / "val",
        "val",
        DEMO_CONFIG,
        workers=1,
        count=3,
        progress=False,
    )
    with pytest.raises(ValueError, match=rf"holds 3 samples, but split .* has {tiny_dataset.frames} rows"):
        _run(tmp_path, tiny_dataset, backend, mode="accuracy", execution_mode="valid", dataset_dir=store)
    assert not (tmp_path / "results").exists()
