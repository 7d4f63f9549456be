"""Accuracy of a LoadGen accuracy run: ``mlperf_log_accuracy.json`` -> COCO mAP -> ``accuracy.txt``.

The metric is the reference's: torchmetrics ``MeanAveragePrecision(iou_type="bbox",
class_metrics=True, backend="faster_coco_eval")``. It is computed here with faster-coco-eval
directly, building the same COCO datasets torchmetrics builds (boxes to xywh in float32, area
= w * h, annotation ids from 1, categories = every label seen, IoU and recall thresholds from
``torch.linspace`` in float32, max detections 1/10/100), so torchvision, which torchmetrics
needs only to convert the boxes, is not required; a test checks equality with torchmetrics.

Reference quirk, kept for the official number: frames without any detection are left out,
their ground truth too. The mAP over every frame of the log is reported beside it.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from abtf_ssd.cognata import CLASS_NAMES, SPLIT_PREFIXES
from abtf_ssd.fileio import atomic_write_text
from abtf_ssd.preprocess import PARTIAL_MANIFEST_NAME, read_manifest
from abtf_ssd.store import open_dataset

DETECTION_COLUMNS = 6
"""A response row: ``[x1, y1, x2, y2, label, score]`` float32, boxes in original pixels."""
ROW_BYTES = DETECTION_COLUMNS * np.dtype(np.float32).itemsize
ACCURACY_LOG = "mlperf_log_accuracy.json"
ACCURACY_TXT = "accuracy.txt"
MAX_DETECTIONS = (1, 10, 100)
"""COCO's (and torchmetrics') per-image detection limits; mAP uses the last."""


class AccuracyLogError(ValueError):
    """A malformed ``mlperf_log_accuracy.json``; the message names the file and the entry."""


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
# The accuracy log


def read_accuracy_log(path: str | Path, sample_count: int | None = None) -> dict[int, np.ndarray]:
    """Detections per sample from a LoadGen accuracy log.

    Args:
        path: ``mlperf_log_accuracy.json``, a JSON list of ``{"qsl_idx": int, "data": hex}``
            where ``data`` is the float32 response bytes.
        sample_count: the dataset's size; a ``qsl_idx`` outside ``0 .. sample_count-1`` is an error.

    Returns:
        ``{qsl_idx: float32 (K, 6)}`` in the order of first appearance; a repeated ``qsl_idx``
        (LoadGen may issue a sample more than once) keeps its first response.

    Raises:
        AccuracyLogError: not JSON (or JSON Python cannot hold: nested too deeply, an integer too
            long), not a list of such entries, bad hex, a length that is not a whole number of
            6-float rows, or an unknown ``qsl_idx``.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            entries = json.load(f)
    except FileNotFoundError:
        raise AccuracyLogError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AccuracyLogError(f"{path}: not valid JSON ({e}); was the LoadGen run cut short?") from None
    except RecursionError:
        raise AccuracyLogError(f"{path}: JSON nested too deeply to be a LoadGen accuracy log") from None
    except ValueError as e:  # e.g. an integer longer than Python converts (sys.get_int_max_str_digits)
        raise AccuracyLogError(f"{path}: not a LoadGen accuracy log ({e})") from None
    if not isinstance(entries, list):
        raise AccuracyLogError(
            f"{path}: expected a JSON list of {{qsl_idx, data}}, found {type(entries).__name__}"
        )
    detections: dict[int, np.ndarray] = {}
    for position, entry in enumerate(entries):
        where = f"{path}: entry {position}"
        if not isinstance(entry, dict) or "qsl_idx" not in entry or "data" not in entry:
            raise AccuracyLogError(
                f"{where}: expected an object with 'qsl_idx' and 'data', found {entry!r:.80}"
            )
        index, data = entry["qsl_idx"], entry["data"]
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise AccuracyLogError(f"{where}: qsl_idx must be a non-negative integer, found {index!r}")
        if sample_count is not None and index >= sample_count:
            raise AccuracyLogError(
                f"{where}: qsl_idx {index} is not in the dataset "
                f"({sample_count} samples, 0..{sample_count - 1})"
            )
        if index in detections:
            continue
        if not isinstance(data, str):
            raise AccuracyLogError(
                f"{where} (qsl_idx {index}): data must be a hex string, found {type(data).__name__}"
            )
        try:
            raw = bytes.fromhex(data)
        except ValueError as e:
            raise AccuracyLogError(f"{where} (qsl_idx {index}): data is not hex ({e})") from None
        if len(raw) % ROW_BYTES:
            raise AccuracyLogError(
                f"{where} (qsl_idx {index}): {len(raw)} bytes is not a whole number of "
                f"{ROW_BYTES}-byte detections (6 float32: x1, y1, x2, y2, label, score)"
            )
        detections[index] = np.frombuffer(raw, dtype=np.float32).reshape(-1, DETECTION_COLUMNS)
    return detections


# ---------------------------------------------------------------------------------------------
# The dataset


def count_samples(dataset_dir: str | Path, prefix: str = SPLIT_PREFIXES["validation"]) -> int:
    """Samples of a preprocessed split: a pickle folder or a memory-mapped store (:mod:`abtf_ssd.store`).

    A pickle folder's count is its manifest's when it has one
    (:func:`abtf_ssd.preprocess.build_preprocessed`), else that of the files themselves (an official
    download), which must be numbered ``<prefix>_0.pkl .. <prefix>_{n-1}.pkl`` without gaps.

    Raises:
        FileNotFoundError: no such folder, or a file missing in the numbering (named).
        ValueError: a folder whose preprocessing is unfinished (``dataset.partial.json`` without
            ``dataset.json``): its first samples are not the set.
        abtf_ssd.store.StoreError: an unfinished or damaged store, samples of another prefix.
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


def write_accuracy_txt(result: MapResult, path: str | Path) -> Path:
    return atomic_write_text(path, format_accuracy(result))


def find_accuracy_log(result_dir: str | Path) -> Path:
    """The accuracy log of a results folder: the folder itself or its ``accuracy/`` subfolder."""
    result_dir = Path(result_dir)
    for candidate in (result_dir / ACCURACY_LOG, result_dir / "accuracy" / ACCURACY_LOG):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{result_dir}: no {ACCURACY_LOG} here or in accuracy/")


def _dataset_of_run(log_path: Path) -> Path | None:
    """The dataset folder a harness run recorded in the results.json beside its log."""
    results_json = log_path.parent / "results.json"
    if not results_json.is_file():
        return None
    try:
        dataset = json.loads(results_json.read_text(encoding="utf-8")).get("dataset_dir")
    except (json.JSONDecodeError, AttributeError):
        return None
    return Path(dataset) if dataset else None


def _run_mode(log_path: Path) -> str | None:
    """The mode (``performance``, ``accuracy``, ...) the results.json beside a log records, if any."""
    try:
        options = json.loads((log_path.parent / "results.json").read_text(encoding="utf-8")).get("options")
        return options.get("mode") if isinstance(options, dict) else None
    except (OSError, ValueError, AttributeError):
        return None


_ACCURACY_FOLDER_LEVELS = 3
"""How far up from a log its scenario folder (holding ``accuracy/``) can be: ``performance/run_1``."""


def _empty_log_message(log_path: Path) -> str:
    """Why a log without entries has no mAP, and which folder to give instead."""
    mode = _run_mode(log_path)
    what = f"the log of a {mode} run" if mode and mode != "accuracy" else "an empty log"
    message = (
        f"{log_path}: no accuracy entries: {what} (LoadGen logs detections only in accuracy mode); "
        "no accuracy.txt written"
    )
    for folder in list(log_path.parents)[:_ACCURACY_FOLDER_LEVELS]:
        candidate = folder / "accuracy" / ACCURACY_LOG
        if candidate != log_path and candidate.is_file():
            return f"{message}; give the accuracy run's folder: {candidate.parent}"
    return f"{message}; give the folder of an accuracy run (mode accuracy)"


def accuracy_main(
    result_dir: str | Path | None = None,
    log_path: str | Path | None = None,
    dataset_path: str | Path | None = None,
    out: str | Path | None = None,
    prefix: str = SPLIT_PREFIXES["validation"],
) -> MapResult:
    """Compute the mAP of an accuracy run and write ``accuracy.txt``.

    Args:
        result_dir: a run's accuracy folder (or the scenario folder above it); its
            ``results.json`` names the dataset when ``dataset_path`` is not given.
        log_path: a bare ``mlperf_log_accuracy.json`` instead of ``result_dir``.
        dataset_path: the preprocessed folder (``val_<i>.pkl``) the run used.
        out: where to write accuracy.txt; default beside the log.
    """
    if (result_dir is None) == (log_path is None):
        raise ValueError("give exactly one of result_dir and log_path")
    log = find_accuracy_log(result_dir) if result_dir is not None else Path(log_path)
    dataset = Path(dataset_path) if dataset_path is not None else _dataset_of_run(log)
    if dataset is None:
        raise ValueError(f"{log}: no dataset_path given and no results.json beside it naming the dataset")
    detections = read_accuracy_log(log, sample_count=count_samples(dataset, prefix))
    if not detections:
        raise AccuracyLogError(_empty_log_message(log))
    result = compute_map(detections, dataset, prefix=prefix)
    write_accuracy_txt(result, Path(out) if out is not None else log.parent / ACCURACY_TXT)
    return result
