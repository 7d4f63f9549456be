"""The benchmark's accuracy metric: COCO mAP of detections against the Cognata ground truth.

The metric is the reference's: torchmetrics ``MeanAveragePrecision(iou_type="bbox",
class_metrics=True, backend="faster_coco_eval")``. It is computed here with faster-coco-eval
directly, building the same COCO datasets torchmetrics builds (boxes to xywh in float32, area
= w * h, annotation ids from 1, categories = every label seen, IoU and recall thresholds from
``torch.linspace`` in float32, max detections 1/10/100), so torchvision, which torchmetrics
needs only to convert the boxes, is not required; a test checks equality with torchmetrics.

Reference quirk, kept for the official number: frames without any detection are left out,
their ground truth too. The mAP over every frame is reported beside it.

Read by the LoadGen accuracy step (:mod:`abtf_ssd.loadgen.accuracy`) and by training's
validation (:mod:`abtf_ssd.model.train`).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from abtf_ssd.cognata import CLASS_NAMES, SPLIT_PREFIXES
from abtf_ssd.data.preprocess import PARTIAL_MANIFEST_NAME, read_manifest
from abtf_ssd.data.store import open_dataset

MAX_DETECTIONS = (1, 10, 100)
"""COCO's (and torchmetrics') per-image detection limits; mAP uses the last."""


@dataclass(frozen=True)
class ClassResult:
    label: int
    name: str
    ap: float
    """mAP@[.5:.95] of this class; -1 when undefined (no ground truth)."""
    ar: float
    """Recall at 100 detections per image; -1 when undefined."""


@dataclass(frozen=True)
class MapResult:
    """COCO metrics of one accuracy log. -1 marks a value COCO cannot define (no frames)."""

    map: float
    """The reference number: mAP@[.5:.95] over frames with at least one detection."""
    map_50: float
    map_75: float
    mar_100: float
    per_class: tuple[ClassResult, ...]
    map_all_frames: float
    """mAP@[.5:.95] over every frame of the log, frames without detections included."""
    frames: int
    """Frames evaluated for :attr:`map` (those with detections)."""
    frames_total: int
    """Distinct frames in the log."""
    frames_without_detections: tuple[int, ...] = field(default=())
    """Sample indices left out of :attr:`map`."""

    def to_dict(self) -> dict:
        return {
            "mAP": self.map,
            "mAP_50": self.map_50,
            "mAP_75": self.map_75,
            "mAR_100": self.mar_100,
            "mAP_all_frames": self.map_all_frames,
            "frames": self.frames,
            "frames_total": self.frames_total,
            "frames_without_detections": list(self.frames_without_detections),
            "per_class": [
                {"label": c.label, "name": c.name, "AP": c.ap, "AR_100": c.ar} for c in self.per_class
            ],
        }


# ---------------------------------------------------------------------------------------------
# The dataset


def count_samples(dataset_dir: str | Path, prefix: str = SPLIT_PREFIXES["validation"]) -> int:
    """Samples of a preprocessed split: a pickle folder or a memory-mapped store (:mod:`abtf_ssd.data.store`).

    A pickle folder's count is its manifest's when it has one
    (:func:`abtf_ssd.data.preprocess.build_preprocessed`), else that of the files themselves (an official
    download), which must be numbered ``<prefix>_0.pkl .. <prefix>_{n-1}.pkl`` without gaps.

    Raises:
        FileNotFoundError: no such folder, or a file missing in the numbering (named).
        ValueError: a folder whose preprocessing is unfinished (``dataset.partial.json`` without
            ``dataset.json``): its first samples are not the set.
        abtf_ssd.data.store.StoreError: an unfinished or damaged store, samples of another prefix.
    """
    dataset_dir = Path(dataset_dir)
    partial = dataset_dir / PARTIAL_MANIFEST_NAME
    if partial.is_file() and read_manifest(dataset_dir) is None:
        raise ValueError(
            f"{partial}: preprocessing into {dataset_dir} is unfinished; rerun it before using the samples"
        )
    return len(open_dataset(dataset_dir, prefix))


def load_ground_truth(
    dataset_dir: str | Path, indices: Iterable[int], prefix: str = SPLIT_PREFIXES["validation"]
) -> dict[int, np.ndarray]:
    """``gt_boxes`` (N, 7) float32 of each sample, rows ``[x1, y1, x2, y2, label, 0, 0]``, from a
    pickle folder or a memory-mapped store."""
    dataset = open_dataset(dataset_dir, prefix)
    ground_truth = {}
    for index in indices:
        if not 0 <= index < len(dataset):
            raise ValueError(
                f"qsl_idx {index}: {dataset_dir} has samples 0..{len(dataset) - 1} "
                "(is this the run's dataset?)"
            )
        ground_truth[index] = dataset.gt_boxes(index)
    return ground_truth


# ---------------------------------------------------------------------------------------------
# COCO evaluation, as torchmetrics' faster_coco_eval backend does it


def _coco_thresholds() -> tuple[list[float], list[float]]:
    # torchmetrics' defaults are float32 torch.linspace values; numpy's float32 linspace differs
    # in the last bit for some recall thresholds, which can change the interpolated precision.
    import torch

    iou = torch.linspace(0.5, 0.95, round((0.95 - 0.5) / 0.05) + 1).tolist()
    recall = torch.linspace(0.0, 1.00, round(1.00 / 0.01) + 1).tolist()
    return iou, recall


def _coco_dataset(
    boxes: list[np.ndarray], labels: list[np.ndarray], categories: list[int], scores: list[np.ndarray] | None
) -> dict:
    """One COCO dataset dict: ``boxes[i]`` (K, 4) xyxy float32 and ``labels[i]`` (K,) of image i."""
    annotations = []
    annotation_id = 1  # COCOeval needs ids from 1
    for image_id, (image_boxes, image_labels) in enumerate(zip(boxes, labels, strict=True)):
        xywh = np.concatenate([image_boxes[:, :2], image_boxes[:, 2:4] - image_boxes[:, :2]], axis=1)
        image_scores = scores[image_id].tolist() if scores is not None else None
        for k, (box, label) in enumerate(zip(xywh.tolist(), image_labels.tolist(), strict=True)):
            annotation = {
                "id": annotation_id,
                "image_id": image_id,
                "area": box[2] * box[3],
                "category_id": label,
                "iscrowd": 0,
                "bbox": box,
            }
            if image_scores is not None:
                annotation["score"] = image_scores[k]
            annotations.append(annotation)
            annotation_id += 1
    return {
        "images": [{"id": i} for i in range(len(boxes))],
        "annotations": annotations,
        "categories": [{"id": c, "name": str(c)} for c in categories],
    }


def _coco_stats(
    frames: list[tuple[np.ndarray, np.ndarray]], class_metrics: bool
) -> tuple[list[float], list[int], list[tuple[float, float]]]:
    """COCO stats of ``frames`` = [(detections (K, 6), gt_boxes (N, 7))].

    Returns:
        the 12 COCO summary stats (all -1 without frames), the sorted category ids, and per
        category (mAP, mAR@100) when ``class_metrics``.
    """
    from faster_coco_eval import COCO, COCOeval_faster

    det_boxes = [np.ascontiguousarray(d[:, :4], dtype=np.float32) for d, _ in frames]
    det_labels = [d[:, 4].astype(np.int64) for d, _ in frames]
    det_scores = [d[:, 5].astype(np.float32) for d, _ in frames]
    gt_boxes = [np.ascontiguousarray(g[:, :4], dtype=np.float32) for _, g in frames]
    gt_labels = [g[:, 4].astype(np.int32).astype(np.int64) for _, g in frames]
    categories = sorted(set(np.concatenate(det_labels + gt_labels).tolist())) if frames else []
    if not frames:
        return [-1.0] * 12, categories, []
    iou_thresholds, recall_thresholds = _coco_thresholds()

    def evaluator() -> COCOeval_faster:
        target, preds = COCO(), COCO()
        target.dataset = _coco_dataset(gt_boxes, gt_labels, categories, None)
        preds.dataset = _coco_dataset(det_boxes, det_labels, categories, det_scores)
        with contextlib.redirect_stdout(io.StringIO()):
            target.createIndex()
            preds.createIndex()
        coco_eval = COCOeval_faster(target, preds, iouType="bbox")
        coco_eval.params.iouThrs = np.array(iou_thresholds, dtype=np.float64)
        coco_eval.params.recThrs = np.array(recall_thresholds, dtype=np.float64)
        coco_eval.params.maxDets = list(MAX_DETECTIONS)
        return coco_eval

    def summarize(coco_eval: COCOeval_faster) -> list[float]:
        with contextlib.redirect_stdout(io.StringIO()):
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        return [float(s) for s in coco_eval.stats[:12]]

    stats = summarize(evaluator())
    per_class = []
    if class_metrics:
        coco_eval = evaluator()  # fresh state, as torchmetrics does for the per-class pass
        for category in categories:
            coco_eval.params.catIds = [category]
            class_stats = summarize(coco_eval)
            per_class.append((class_stats[0], class_stats[8]))
    return stats, categories, per_class


def _float32(value: float) -> float:
    # torchmetrics returns float32 tensors; round the same way so both report identical numbers.
    return float(np.float32(value))


def compute_map(
    detections: Mapping[int, np.ndarray],
    dataset_dir: str | Path,
    ground_truth: Mapping[int, np.ndarray] | None = None,
    prefix: str = SPLIT_PREFIXES["validation"],
) -> MapResult:
    """COCO mAP of ``detections`` ({sample index: (K, 6)}) against the samples' ``gt_boxes``.

    ``ground_truth`` ({sample index: (N, 7)}) skips reading the pickles when given.
    """
    if ground_truth is None:
        ground_truth = load_ground_truth(dataset_dir, detections.keys(), prefix)
    with_detections = [i for i, d in detections.items() if len(d)]
    without = tuple(i for i, d in detections.items() if not len(d))
    stats, categories, per_class = _coco_stats(
        [(detections[i], ground_truth[i]) for i in with_detections], class_metrics=True
    )
    all_stats, _, _ = _coco_stats([(detections[i], ground_truth[i]) for i in detections], class_metrics=False)
    return MapResult(
        map=_float32(stats[0]),
        map_50=_float32(stats[1]),
        map_75=_float32(stats[2]),
        mar_100=_float32(stats[8]),
        per_class=tuple(
            ClassResult(label=c, name=CLASS_NAMES.get(c, f"label {c}"), ap=_float32(ap), ar=_float32(ar))
            for c, (ap, ar) in zip(categories, per_class, strict=True)
        ),
        map_all_frames=_float32(all_stats[0]),
        frames=len(with_detections),
        frames_total=len(detections),
        frames_without_detections=without,
    )


# ---------------------------------------------------------------------------------------------
# accuracy.txt


def _value(value: float) -> str:
    return "n/a" if value < 0 else f"{value:.6f}"


def format_accuracy(result: MapResult) -> str:
    """``accuracy.txt``: first line ``mAP: <value>`` (what the submission checker reads)."""
    lines = [
        f"mAP: {result.map:.7f}",
        f"mAP@0.50: {_value(result.map_50)}  mAP@0.75: {_value(result.map_75)}  "
        f"mAR@100: {_value(result.mar_100)}",
        f"frames evaluated: {result.frames} of {result.frames_total} (as the reference does, frames without "
        f"detections are skipped, their ground truth too: {len(result.frames_without_detections)} skipped)",
        "",
        f"{'label':>5}  {'class':<18}{'AP':>10}{'AR@100':>10}",
    ]
    lines += [f"{c.label:>5}  {c.name:<18}{_value(c.ap):>10}{_value(c.ar):>10}" for c in result.per_class]
    lines += [
        "",
        "all-frames mAP (every frame of the log, frames without detections count): "
        f"{_value(result.map_all_frames)}",
    ]
    return "\n".join(lines) + "\n"
