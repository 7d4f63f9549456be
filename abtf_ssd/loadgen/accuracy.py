"""Accuracy of a LoadGen accuracy run: ``mlperf_log_accuracy.json`` -> COCO mAP -> ``accuracy.txt``.

The metric itself (COCO mAP, the reference's quirks) is :mod:`abtf_ssd.data.metric`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from abtf_ssd.cognata import SPLIT_PREFIXES
from abtf_ssd.data.metric import MapResult, compute_map, count_samples, format_accuracy
from abtf_ssd.fileio import atomic_write_text

DETECTION_COLUMNS = 6
"""A response row: ``[x1, y1, x2, y2, label, score]`` float32, boxes in original pixels."""
ROW_BYTES = DETECTION_COLUMNS * np.dtype(np.float32).itemsize
ACCURACY_LOG = "mlperf_log_accuracy.json"
ACCURACY_TXT = "accuracy.txt"


class AccuracyLogError(ValueError):
    """A malformed ``mlperf_log_accuracy.json``; the message names the file and the entry."""


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
