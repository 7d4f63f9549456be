"""Datasets that are not what they claim: a sample file missing, fewer samples than the split, a
``gt_boxes`` of the wrong shape. Each is refused with the sample's file named; none may yield a
number computed over the wrong samples."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from abtf_ssd.config import DEMO_CONFIG
from abtf_ssd.data.metric import count_samples
from abtf_ssd.data.preprocess import (
    MANIFEST_NAME,
    SampleFormatError,
    build_preprocessed,
    load_sample,
    write_sample,
)
from abtf_ssd.loadgen import harness
from abtf_ssd.loadgen.accuracy import accuracy_main
from faults.support import run_python


def run_options(dataset: Path, model: Path, results: Path, **overrides) -> harness.RunOptions:
    values = dict(
        dataset_dir=dataset,
        model_path=model,
        config_name=DEMO_CONFIG,
        mode="accuracy",
        test_query_count=12,
        threads=1,
        results_dir=results,
        command="pytest",
    )
    values.update(overrides)
    return harness.RunOptions(**values)


def accuracy_log(path: Path, samples: int) -> Path:
    row = np.array([[10, 10, 60, 60, 4, 0.9]], dtype=np.float32)
    path.write_text(
        json.dumps([{"qsl_idx": i, "seq_id": i, "data": row.tobytes().hex()} for i in range(samples)])
    )
    return path


@pytest.fixture
def dataset_copy(tiny_dataset, tmp_path: Path) -> Path:
    return shutil.copytree(tiny_dataset.preprocessed, tmp_path / "val")


class VanishingSampleBackend:
    """The real ONNX Runtime backend; its first predict (the warm-up, after the files were checked)
    deletes ``doomed``, as a sample vanishing from a network share mid-run would."""

    def __init__(self, model: Path, doomed: Path) -> None:
        from abtf_ssd.model.backends import create_backend

        self.inner = create_backend("onnxruntime", model, "cpu", 1, DEMO_CONFIG)
        self.config_name = self.inner.config_name
        self.doomed = doomed

    def predict(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.doomed.unlink(missing_ok=True)
        return self.inner.predict(batch)


def test_sample_vanishing_mid_run_fails_the_accuracy_run_naming_it(dataset_copy, demo_onnx_model, tmp_path):
    options = run_options(dataset_copy, demo_onnx_model, tmp_path / "results")
    with pytest.raises(harness.RunFailedError) as info:
        harness.run(options, backend=VanishingSampleBackend(demo_onnx_model, dataset_copy / "val_7.pkl"))
    assert "samples [7]" in str(info.value) and "val_7.pkl" in str(info.value)
    out = harness.output_dir(options)
    assert not (out / "accuracy.txt").exists()
    assert json.loads((out / "results.json").read_text())["failed_samples"] == [7]


@pytest.mark.parametrize("mode", ["accuracy", "performance"])
def test_missing_sample_is_refused_before_loadgen(dataset_copy, demo_onnx_model, tmp_path, mode):
    (dataset_copy / "val_7.pkl").unlink()
    options = run_options(dataset_copy, demo_onnx_model, tmp_path / "results", mode=mode)
    with pytest.raises(FileNotFoundError, match=r"val_7\.pkl"):
        harness.run(options)
    assert not list((tmp_path / "results").rglob("mlperf_log_*"))


def test_official_layout_with_a_gap_is_refused_naming_the_missing_file(
    dataset_copy, demo_onnx_model, tmp_path
):
    """A download (no dataset.json) missing a file in the middle: refused before anything runs."""
    (dataset_copy / MANIFEST_NAME).unlink()
    (dataset_copy / "val_5.pkl").unlink()
    with pytest.raises(FileNotFoundError, match=r"val_5\.pkl is missing"):
        count_samples(dataset_copy)
    with pytest.raises(FileNotFoundError, match=r"val_5\.pkl is missing"):
        harness.run(run_options(dataset_copy, demo_onnx_model, tmp_path / "results"))
    assert not (tmp_path / "results").exists()


def test_valid_run_over_fewer_samples_than_the_split_is_refused(tiny_dataset, demo_onnx_model, tmp_path):
    partial_set = build_preprocessed(
        tiny_dataset.raw_root,
        tiny_dataset.raw_root / "val_set.csv",
        tmp_path / "val",
        "val",
        DEMO_CONFIG,
        workers=1,
        count=6,
        progress=False,
    )
    options = run_options(partial_set, demo_onnx_model, tmp_path / "results", execution_mode="valid")
    with pytest.raises(ValueError, match=r"6\b.*12\b"):
        harness.run(options)


@pytest.fixture
def bad_gt_dataset(dataset_copy: Path) -> Path:
    sample = load_sample(dataset_copy / "val_4.pkl")
    write_sample(dataset_copy / "val_4.pkl", sample["img"], np.zeros((3, 5), np.float32))
    return dataset_copy


def test_gt_boxes_of_the_wrong_shape_is_refused_naming_the_sample(bad_gt_dataset, demo_onnx_model, tmp_path):
    with pytest.raises(SampleFormatError, match=r"val_4\.pkl: 'gt_boxes' must be \(N, 7\), found \(3, 5\)"):
        load_sample(bad_gt_dataset / "val_4.pkl")

    options = run_options(bad_gt_dataset, demo_onnx_model, tmp_path / "results")
    with pytest.raises(harness.RunFailedError) as info:
        harness.run(options)
    assert "samples [4]" in str(info.value) and "val_4.pkl: 'gt_boxes' must be (N, 7)" in str(info.value)
    assert not (harness.output_dir(options) / "accuracy.txt").exists()

    log = accuracy_log(tmp_path / "mlperf_log_accuracy.json", samples=12)
    with pytest.raises(SampleFormatError, match=r"val_4\.pkl"):
        accuracy_main(log_path=log, dataset_path=bad_gt_dataset, out=tmp_path / "accuracy.txt")
    assert not (tmp_path / "accuracy.txt").exists()


def test_gt_boxes_of_the_wrong_shape_through_the_accuracy_cli(bad_gt_dataset, tmp_path):
    log = accuracy_log(tmp_path / "mlperf_log_accuracy.json", samples=12)
    proc = run_python(
        ["-m", "abtf_ssd.cli", "accuracy", "--log", str(log), "--dataset", str(bad_gt_dataset)], tmp_path
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "val_4.pkl" in line and "(3, 5)" in line
    assert not (tmp_path / "accuracy.txt").exists()
