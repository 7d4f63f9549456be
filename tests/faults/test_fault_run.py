"""Faults during a LoadGen run: inference raising in a query, a sample that cannot be read, CTRL-C.
The run must end with a non-zero exit, its logs on disk, its results marked as not valid, and no
number (mAP, latency) that silently counts failed queries as answered; a submission must refuse it."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from abtf_ssd.config import DEMO_CONFIG
from abtf_ssd.loadgen import harness
from abtf_ssd.model.backends import create_backend
from faults.support import PYTHON, child_env, kill_group, run_python, wait_until

SYSTEM = "faulty-sut"


class FailingBackend:
    """The real ONNX Runtime backend, except that its ``fail_on``-th predict call (0-based) raises the
    way a GPU running out of memory does."""

    def __init__(self, model: Path, fail_on: int) -> None:
        self.inner = create_backend("onnxruntime", model, "cpu", 1, DEMO_CONFIG)
        self.name = self.inner.name
        self.config_name = self.inner.config_name
        self.input_shape = self.inner.input_shape
        self.fail_on = fail_on
        self.calls = 0

    def predict(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        call, self.calls = self.calls, self.calls + 1
        if call == self.fail_on:
            raise RuntimeError("CUDA error: out of memory (simulated)")
        return self.inner.predict(batch)


def run_options(dataset: Path, model: Path, results: Path, mode: str) -> harness.RunOptions:
    return harness.RunOptions(
        dataset_dir=dataset,
        model_path=model,
        config_name=DEMO_CONFIG,
        mode=mode,
        test_query_count=6,
        threads=1,
        results_dir=results,
        system_name=SYSTEM,
        command="pytest",
    )


def results_json(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def test_query_exception_fails_an_accuracy_run_with_its_logs_kept(tiny_dataset, demo_onnx_model, tmp_path):
    options = run_options(tiny_dataset.preprocessed, demo_onnx_model, tmp_path / "results", "accuracy")
    with pytest.raises(harness.RunFailedError) as info:
        harness.run(options, backend=FailingBackend(demo_onnx_model, fail_on=2))
    message = str(info.value)
    assert "1 sample(s) raised" in message and "CUDA error: out of memory" in message
    out = harness.output_dir(options)
    record = results_json(out)
    assert record["status"] == "failed" and len(record["failed_samples"]) == 1
    assert str(record["failed_samples"][0]) in message
    assert not (out / "accuracy.txt").exists(), "an mAP over a failed query must not be written"
    assert (out / "mlperf_log_detail.txt").stat().st_size > 0
    assert len(json.loads((out / "mlperf_log_accuracy.json").read_text())) == 6


def test_query_exception_fails_a_performance_run_and_marks_it_invalid(
    tiny_dataset, demo_onnx_model, tmp_path
):
    options = run_options(tiny_dataset.preprocessed, demo_onnx_model, tmp_path / "results", "performance")
    with pytest.raises(harness.RunFailedError):
        harness.run(options, backend=FailingBackend(demo_onnx_model, fail_on=3))
    record = results_json(harness.output_dir(options))
    assert record["status"] == "failed"
    assert record["summary"]["result"] == "INVALID"


@pytest.fixture
def corrupt_dataset(tiny_dataset, tmp_path: Path) -> Path:
    """The tiny set with ``val_2.pkl`` cut short, as a bad copy would leave it."""
    dataset = shutil.copytree(tiny_dataset.preprocessed, tmp_path / "val")
    sample = dataset / "val_2.pkl"
    sample.write_bytes(sample.read_bytes()[:5000])
    return dataset


def cli_run(dataset: Path, model: Path, results: Path, cwd: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_python(
        ["-m", "abtf_ssd.cli", "run", "--dataset-dir", str(dataset), "--model-path", str(model)]
        + ["--config-name", DEMO_CONFIG, "--results-dir", str(results), "--system-name", SYSTEM]
        + ["--test-query-count", "4", "--threads", "1", *extra],
        cwd,
    )


def test_unreadable_sample_fails_an_accuracy_run_from_the_cli(corrupt_dataset, demo_onnx_model, tmp_path):
    results = tmp_path / "results"
    proc = cli_run(corrupt_dataset, demo_onnx_model, results, tmp_path, "--mode", "accuracy")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "samples [2]" in line and "val_2.pkl: not a complete sample pickle" in line
    out = results / SYSTEM / "ssd" / "SingleStream" / "accuracy"
    assert results_json(out)["status"] == "failed" and not (out / "accuracy.txt").exists()


def test_unreadable_sample_fails_a_performance_run_from_the_cli(corrupt_dataset, demo_onnx_model, tmp_path):
    results = tmp_path / "results"
    proc = cli_run(corrupt_dataset, demo_onnx_model, results, tmp_path, "--mode", "performance")
    out = results / SYSTEM / "ssd" / "SingleStream" / "performance" / "run_1"
    assert results_json(out)["status"] == "failed"
    assert proc.returncode != 0
    assert "val_2.pkl" in proc.stderr


def test_submission_refuses_a_run_with_failed_queries(tiny_dataset, demo_onnx_model, tmp_path):
    from abtf_ssd.submission import sysinfo
    from abtf_ssd.submission import tree as submission
    from abtf_ssd.submission.runs import SubmissionError

    results = tmp_path / "results"
    performance = run_options(tiny_dataset.preprocessed, demo_onnx_model, results, "performance")
    with pytest.raises(harness.RunFailedError):
        harness.run(performance, backend=FailingBackend(demo_onnx_model, fail_on=3))
    harness.run(run_options(tiny_dataset.preprocessed, demo_onnx_model, results, "accuracy"))
    sysinfo.write_sut_info(results / SYSTEM / sysinfo.SUT_INFO_NAME, framework="onnxruntime")

    with pytest.raises(SubmissionError, match="results.json"):
        submission.generate_submission(
            results, tmp_path / "sub", "ABTF_Demo", "open", SYSTEM, allow_test_mode=True
        )


def test_ctrl_c_during_a_run_exits_cleanly_and_marks_it_invalid(tiny_dataset, demo_onnx_model, tmp_path):
    results = tmp_path / "results"
    out = results / SYSTEM / "ssd" / "SingleStream" / "performance" / "run_1"
    detail = out / "mlperf_log_detail.txt"
    command = [PYTHON, "-m", "abtf_ssd.cli", "run", "--dataset-dir", str(tiny_dataset.preprocessed)]
    command += ["--model-path", str(demo_onnx_model), "--config-name", DEMO_CONFIG, "--threads", "1"]
    command += ["--results-dir", str(results), "--system-name", SYSTEM, "--execution-mode", "valid"]
    child = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        # A valid run lasts at least ten minutes: interrupt it once LoadGen is issuing queries.
        wait_until(
            lambda: detail.is_file() and "generated_query_duration" in detail.read_text(),
            120,
            "LoadGen to start",
        )
        child.send_signal(signal.SIGINT)
        stdout, stderr = child.communicate(timeout=60)
    finally:
        kill_group(child.pid)
    assert child.returncode == 130, f"exit {child.returncode}\n{stderr[-3000:]}"
    assert "interrupt" in stderr.lower()
    assert detail.stat().st_size > 0
    record = results_json(out)
    assert record["status"] != "ok"
    assert record["summary"]["result"] == "INVALID"
