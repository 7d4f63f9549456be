"""Accuracy: reading LoadGen accuracy logs, the reference mAP (checked against torchmetrics), accuracy.txt."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from abtf_ssd.cognata import CLASS_NAMES
from abtf_ssd.data.metric import compute_map, count_samples, format_accuracy, load_ground_truth
from abtf_ssd.loadgen.accuracy import AccuracyLogError, accuracy_main, read_accuracy_log


def _write_log(path: Path, entries: list[tuple[int, np.ndarray | str]]) -> Path:
    items = []
    for seq, (index, data) in enumerate(entries):
        hex_data = data if isinstance(data, str) else np.asarray(data, np.float32).tobytes().hex().upper()
        items.append({"seq_id": seq, "qsl_idx": index, "data": hex_data})
    path.write_text(json.dumps(items))
    return path


# ---------------------------------------------------------------------------------------------
# read_accuracy_log


def test_read_round_trip_and_first_response_wins(tmp_path: Path) -> None:
    a = np.arange(12, dtype=np.float32).reshape(2, 6)
    b = np.full((1, 6), 7, np.float32)
    log = _write_log(tmp_path / "log.json", [(3, a), (0, np.zeros((0, 6))), (3, b), (5, b)])
    detections = read_accuracy_log(log, sample_count=6)
    assert list(detections) == [3, 0, 5]
    np.testing.assert_array_equal(detections[3], a)
    assert detections[0].shape == (0, 6)
    assert detections[5].dtype == np.float32


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('[{"qsl_idx": 0, "data": "00"', "not valid JSON"),
        ('{"qsl_idx": 0}', "expected a JSON list"),
        ('[{"qsl_idx": 0}]', r"entry 0: expected an object with 'qsl_idx' and 'data'"),
        ('[{"qsl_idx": 0, "data": "zz"}]', r"entry 0 \(qsl_idx 0\): data is not hex"),
        ('[{"qsl_idx": 1, "data": "' + "00" * 25 + '"}]', r"entry 0 \(qsl_idx 1\): 25 bytes is not a whole"),
        (
            '[{"qsl_idx": 0, "data": ""}, {"qsl_idx": 9, "data": ""}]',
            r"entry 1: qsl_idx 9 is not in the dataset",
        ),
        ('[{"qsl_idx": -1, "data": ""}]', "non-negative integer"),
        ('[{"qsl_idx": "2", "data": ""}]', "non-negative integer"),
    ],
)
def test_malformed_logs_are_named_errors(tmp_path: Path, content: str, message: str) -> None:
    log = tmp_path / "mlperf_log_accuracy.json"
    log.write_text(content)
    with pytest.raises(AccuracyLogError, match=message) as info:
        read_accuracy_log(log, sample_count=4)
    assert str(log) in str(info.value)


def test_missing_log(tmp_path: Path) -> None:
    with pytest.raises(AccuracyLogError, match="no such file"):
        read_accuracy_log(tmp_path / "nope.json")


# ---------------------------------------------------------------------------------------------
# compute_map == torchmetrics


@pytest.fixture(scope="module")
def mean_average_precision() -> type:
    """torchmetrics' MeanAveragePrecision with the faster_coco_eval backend.

    torchmetrics needs torchvision only for ``box_convert``; when torchvision is not installed
    that one function is supplied (xyxy -> xywh), everything else is torchmetrics' own code.
    """
    import torchmetrics.detection.mean_ap as mean_ap

    if importlib.util.find_spec("torchvision") is not None:
        return mean_ap.MeanAveragePrecision

    def box_convert(boxes: torch.Tensor, in_fmt: str, out_fmt: str) -> torch.Tensor:
        assert (in_fmt, out_fmt) == ("xyxy", "xywh")
        x1, y1, x2, y2 = boxes.unbind(-1)
        return torch.stack([x1, y1, x2 - x1, y2 - y1], dim=-1)

    ops = types.ModuleType("torchvision.ops")
    ops.box_convert = box_convert  # type: ignore[attr-defined]
    torchvision = types.ModuleType("torchvision")
    torchvision.ops = ops  # type: ignore[attr-defined]
    patch = pytest.MonkeyPatch()
    patch.setitem(sys.modules, "torchvision", torchvision)
    patch.setitem(sys.modules, "torchvision.ops", ops)
    patch.setattr(mean_ap, "_TORCHVISION_AVAILABLE", True)
    yield mean_ap.MeanAveragePrecision
    patch.undo()


def _random_frames(seed: int, frames: int = 24) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Noisy copies of random ground truth, some wrong labels, some frames without detections or truth."""
    rng = np.random.default_rng(seed)
    detections, ground_truth = {}, {}
    for frame in range(frames):
        n = int(rng.integers(0, 12))
        k = 0 if frame % 5 == 2 else int(rng.integers(1, 160))
        xy = rng.uniform(0, 480, (n, 2))
        gt = np.zeros((n, 7), np.float32)
        gt[:, :2], gt[:, 2:4] = xy, xy + rng.uniform(8, 120, (n, 2))
        gt[:, 4] = rng.integers(1, 15, n)
        det = np.zeros((k, 6), np.float32)
        if n:
            source = rng.integers(0, n, k)
            det[:, :4] = gt[source, :4] + rng.normal(0, 5, (k, 4))
            det[:, 4] = np.where(rng.random(k) < 0.8, gt[source, 4], rng.integers(1, 15, k))
        else:
            xy = rng.uniform(0, 480, (k, 2))
            det[:, :2], det[:, 2:4], det[:, 4] = xy, xy + 30, rng.integers(1, 15, k)
        det[:, 5] = rng.random(k)
        index = 2 * frame + 1  # sample indices need not be contiguous
        detections[index], ground_truth[index] = det, gt
    return detections, ground_truth


def _torchmetrics(
    metric_class: type,
    detections: dict[int, np.ndarray],
    ground_truth: dict[int, np.ndarray],
    skip_empty: bool,
) -> dict:
    """The reference computation: tensors built the way the reference accuracy script builds them."""
    preds, targets = [], []
    for index, det in detections.items():
        if skip_empty and not len(det):
            continue
        rows = [[float(v) for v in row] for row in det]
        preds.append(
            {
                "boxes": torch.tensor([r[:4] for r in rows]).reshape(-1, 4),
                "labels": torch.tensor([int(r[4]) for r in rows], dtype=torch.int64),
                "scores": torch.tensor([r[5] for r in rows]),
            }
        )
        gt = torch.from_numpy(ground_truth[index])
        targets.append({"boxes": gt[:, :4], "labels": gt[:, 4].to(dtype=torch.int32)})
    metric = metric_class(iou_type="bbox", class_metrics=True, backend="faster_coco_eval")
    metric.warn_on_many_detections = False
    metric.update(preds, targets)
    return metric.compute()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_map_equals_torchmetrics(mean_average_precision: type, seed: int) -> None:
    detections, ground_truth = _random_frames(seed)
    result = compute_map(detections, dataset_dir=None, ground_truth=ground_truth)  # type: ignore[arg-type]

    reference = _torchmetrics(mean_average_precision, detections, ground_truth, skip_empty=True)
    assert result.map == reference["map"].item()
    assert result.map_50 == reference["map_50"].item()
    assert result.map_75 == reference["map_75"].item()
    assert result.mar_100 == reference["mar_100"].item()
    assert [c.label for c in result.per_class] == reference["classes"].tolist()
    assert [c.ap for c in result.per_class] == reference["map_per_class"].tolist()
    assert [c.ar for c in result.per_class] == reference["mar_100_per_class"].tolist()
    assert 0.05 < result.map < 0.95  # a real comparison, not two -1s

    every_frame = _torchmetrics(mean_average_precision, detections, ground_truth, skip_empty=False)
    assert result.map_all_frames == every_frame["map"].item()
    skipped = [i for i, d in detections.items() if not len(d)]
    assert skipped and list(result.frames_without_detections) == skipped
    assert (result.frames, result.frames_total) == (len(detections) - len(skipped), len(detections))
    # the quirk matters: the skipped frames' ground truth would count as misses
    assert result.map_all_frames != result.map


def test_no_frames_gives_undefined_map() -> None:
    result = compute_map({}, dataset_dir=None, ground_truth={})  # type: ignore[arg-type]
    assert (result.map, result.map_all_frames, result.frames) == (-1.0, -1.0, 0)


# ---------------------------------------------------------------------------------------------
# accuracy.txt and accuracy_main on the real tiny dataset


def test_accuracy_txt_format() -> None:
    detections, ground_truth = _random_frames(3)
    result = compute_map(detections, dataset_dir=None, ground_truth=ground_truth)  # type: ignore[arg-type]
    text = format_accuracy(result)
    lines = text.splitlines()
    match = re.match(r"^mAP:\s*([0-9.]+)", lines[0])
    assert match and float(match.group(1)) == pytest.approx(result.map, abs=1e-7)
    assert [line for line in lines if re.match(r"^mAP:", line)] == [lines[0]]
    for c in result.per_class:
        assert any(CLASS_NAMES[c.label] in line for line in lines)
    assert lines[-1].startswith("all-frames mAP") and f"{result.map_all_frames:.6f}" in lines[-1]


def test_perfect_detections_on_the_tiny_dataset_score_one(tiny_dataset, tmp_path: Path) -> None:
    indices = [0, 3, 5, 7]
    ground_truth = load_ground_truth(tiny_dataset.preprocessed, indices)
    assert sum(len(g) for g in ground_truth.values()) > 0
    entries = []
    for index in indices:
        gt = ground_truth[index]
        perfect = np.concatenate([gt[:, :5], np.ones((len(gt), 1), np.float32)], axis=1)
        entries.append((index, perfect))
    log = _write_log(tmp_path / "mlperf_log_accuracy.json", entries)
    result = accuracy_main(log_path=log, dataset_path=tiny_dataset.preprocessed)
    assert result.map == pytest.approx(1.0)
    assert (tmp_path / "accuracy.txt").read_text().startswith("mAP: 1.0000000\n")

    # swapped label and box columns would not score 1: the columns really are read as documented
    shifted = [(i, np.roll(d, 1, axis=1)) for i, d in entries]
    _write_log(tmp_path / "shifted.json", shifted)
    out = tmp_path / "shifted.txt"
    assert (
        accuracy_main(log_path=tmp_path / "shifted.json", dataset_path=tiny_dataset.preprocessed, out=out).map
        < 0.5
    )


def test_accuracy_main_finds_log_and_dataset_of_a_run(tiny_dataset, tmp_path: Path) -> None:
    run_dir = tmp_path / "accuracy"
    run_dir.mkdir()
    gt = load_ground_truth(tiny_dataset.preprocessed, [1])[1]
    _write_log(run_dir / "mlperf_log_accuracy.json", [(1, np.c_[gt[:, :5], np.ones(len(gt), np.float32)])])
    (run_dir / "results.json").write_text(json.dumps({"dataset_dir": str(tiny_dataset.preprocessed)}))
    result = accuracy_main(result_dir=tmp_path)
    assert result.frames_total == 1 and (run_dir / "accuracy.txt").is_file()


def test_unknown_sample_in_log_names_it(tiny_dataset, tmp_path: Path) -> None:
    log = _write_log(tmp_path / "log.json", [(tiny_dataset.frames, np.zeros((1, 6)))])
    with pytest.raises(AccuracyLogError, match=f"qsl_idx {tiny_dataset.frames} is not in the dataset"):
        accuracy_main(log_path=log, dataset_path=tiny_dataset.preprocessed)


def test_count_samples_of_an_official_folder(tmp_path: Path) -> None:
    for i in (0, 1, 3):
        (tmp_path / f"val_{i}.pkl").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="val_2.pkl is missing"):
        count_samples(tmp_path)
    (tmp_path / "val_2.pkl").write_bytes(b"")
    assert count_samples(tmp_path) == 4
