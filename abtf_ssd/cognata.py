"""The Cognata dataset as the benchmark sees it: label map, annotation filters, split CSVs.

Raw layout (paths in the split CSVs are relative to the dataset root)::

    <root>/<recording>/<camera>_png/<frame>.png
    <root>/<recording>/<camera>_ann/<frame>.csv

An annotation CSV has a header row and one object a row; only the columns named in
:data:`CLASS_COLUMN`, :data:`BOX_COLUMN` and :data:`DISTANCE_COLUMN` are read, by name.
A split CSV has the columns :data:`SPLIT_COLUMNS` and its row index is the sample index.

Objects whose class is kept by the filters but absent from :data:`LABEL_MAP` are an error
(:class:`CognataFormatError`), as in the reference reader, whose ``label_map[class]`` lookup
stops with a ``KeyError``: silently dropping them would change the ground truth unnoticed.
The filters run before the label lookup, so such an object that the filters drop is no error.
"""

from __future__ import annotations

import ast
import csv
import math
from pathlib import Path, PurePosixPath

import numpy as np

from abtf_ssd import ASSETS_DIR

LABEL_MAP: dict[int, int] = {
    0: 0,
    28: 1,
    29: 2,
    33: 3,
    8: 4,
    36: 5,
    13: 6,
    11: 7,
    35: 8,
    14: 9,
    9: 10,
    48: 11,
    10: 12,
    46: 13,
    44: 14,
}
"""Cognata class id -> contiguous training label (0 is background)."""

CLASS_NAMES: dict[int, str] = {
    1: "Traffic_light",
    2: "Props",
    3: "TrafficSign",
    4: "Car",
    5: "Van",
    6: "Rider",
    7: "Motorcycle",
    8: "Bicycle",
    9: "Pedestrian",
    10: "Truck",
    11: "PersonalMobility",
    12: "Bus",
    13: "Trailer",
    14: "Animal",
}
"""Contiguous label -> class name, labels 1..14."""

EXCLUDED_CLASSES: frozenset[int] = frozenset({2, 25, 31})
"""Cognata class ids whose objects are never ground truth."""
MIN_SIDE = 8
"""An object is kept only if its width and height are at least this many pixels."""
MIN_AREA = 50
"""An object is kept only if width * height is at least this many square pixels."""
MAX_DISTANCE = 300
"""An object is kept only if ``center_distance`` is at most this many metres."""

CLASS_COLUMN = "object_class"
CLASS_NAME_COLUMN = "object_class_name"
BOX_COLUMN = "bounding_box_2D"
DISTANCE_COLUMN = "center_distance"

SPLIT_COLUMNS = ("img", "ann")
"""Header of a split CSV: image path, annotation path, both relative to the dataset root."""

GT_COLUMNS = 7
"""Width of a ground-truth row ``[x1, y1, x2, y2, label, 0, 0]``."""

SPLIT_PREFIXES: dict[str, str] = {"validation": "val", "calibration": "calib"}
"""Official split name -> file name prefix of its preprocessed samples (``<prefix>_<i>.pkl``)."""
SPLITS: tuple[str, ...] = tuple(SPLIT_PREFIXES)
"""The official split names, in the order of :data:`SPLIT_PREFIXES`."""

_DATA_DIR = ASSETS_DIR
_SPLIT_CSV_NAMES = {
    "validation": "cognata_val_set.csv",
    "calibration": "cognata_calibration_set.csv",
}


class CognataFormatError(ValueError):
    """A Cognata annotation or split CSV that cannot be read; the message names file and line."""


def keep_object(cognata_class: int, box: tuple[float, float, float, float], distance: float) -> bool:
    """Whether an object passes the benchmark's ground-truth filters.

    Boundaries are inclusive: width 8, area 50 and distance 300 are all kept.
    """
    width = box[2] - box[0]
    height = box[3] - box[1]
    return (
        cognata_class not in EXCLUDED_CLASSES
        and width >= MIN_SIDE
        and height >= MIN_SIDE
        and width * height >= MIN_AREA
        and distance <= MAX_DISTANCE
    )


def read_annotation(csv_path: str | Path) -> np.ndarray:
    """Ground truth of one frame after the filters.

    Returns:
        float32 array (N, 7), rows ``[x1, y1, x2, y2, label, 0, 0]``: box corners in original
        pixels, ``label`` mapped through :data:`LABEL_MAP`; shape (0, 7) when nothing is kept.

    Raises:
        CognataFormatError: missing column, malformed box, class or distance, or a kept object of
            a class absent from the label map. The message names the file and line.
        OSError: the file cannot be opened.
    """
    path = Path(csv_path)
    rows: list[list[float]] = []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = _read_header(reader, path)
        columns = _column_indices(header, (CLASS_COLUMN, BOX_COLUMN, DISTANCE_COLUMN), path)
        class_at, box_at, distance_at = columns
        width = max(columns) + 1
        for record in reader:
            if not record:
                continue
            where = f"{path}, line {reader.line_num}"
            if len(record) < width:
                raise CognataFormatError(f"{where}: {len(record)} fields, header has {len(header)}")
            cognata_class = _parse_class(record[class_at], where)
            box = _parse_box(record[box_at], where)
            distance = _parse_number(record[distance_at], DISTANCE_COLUMN, where)
            if not keep_object(cognata_class, box, distance):
                continue
            try:
                label = LABEL_MAP[cognata_class]
            except KeyError:
                raise CognataFormatError(
                    f"{where}: object class {cognata_class} is kept by the filters but is not in the "
                    f"label map (known ids: {sorted(LABEL_MAP)})"
                ) from None
            rows.append([*box, float(label), 0.0, 0.0])
    if not rows:
        return np.zeros((0, GT_COLUMNS), dtype=np.float32)
    return np.asarray(rows, dtype=np.float32)


def read_split(csv_path: str | Path) -> list[tuple[str, str]]:
    """The (image, annotation) paths of a split CSV, relative to the dataset root, in row order.

    Raises:
        CognataFormatError: missing ``img``/``ann`` column, short row, empty, absolute or
            ``..``-escaping path. The message names the file and line.
    """
    path = Path(csv_path)
    frames: list[tuple[str, str]] = []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = _read_header(reader, path)
        img_at, ann_at = _column_indices(header, SPLIT_COLUMNS, path)
        for record in reader:
            if not record:
                continue
            where = f"{path}, line {reader.line_num}"
            if len(record) <= max(img_at, ann_at):
                raise CognataFormatError(f"{where}: {len(record)} fields, header has {len(header)}")
            frames.append((_relative_path(record[img_at], where), _relative_path(record[ann_at], where)))
    return frames


def official_split(name: str) -> Path:
    """Path of the split CSV shipped in ``abtf_ssd/assets`` for an official split (one of :data:`SPLITS`)."""
    try:
        return _DATA_DIR / _SPLIT_CSV_NAMES[name]
    except KeyError:
        raise ValueError(f"unknown split {name!r}; known: {', '.join(SPLITS)}") from None


def _read_header(reader, path: Path) -> list[str]:
    for record in reader:
        if record:
            # A UTF-8 byte-order mark would otherwise become part of the first column name.
            return [name.strip().lstrip("\ufeff") for name in record]
    raise CognataFormatError(f"{path}: empty file, expected a header row")


def _column_indices(header: list[str], names: tuple[str, ...], path: Path) -> tuple[int, ...]:
    missing = [name for name in names if name not in header]
    if missing:
        raise CognataFormatError(f"{path}: header lacks column(s) {missing}; header is {header}")
    return tuple(header.index(name) for name in names)


def _literal(text: str, column: str, where: str):
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise CognataFormatError(f"{where}: {column} {text!r} is not a Python literal") from None


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _parse_number(text: str, column: str, where: str) -> float:
    value = _literal(text, column, where)
    if not _is_real(value) or math.isnan(value):
        raise CognataFormatError(f"{where}: {column} {text!r} is not a number")
    return float(value)


def _parse_class(text: str, where: str) -> int:
    value = _literal(text, CLASS_COLUMN, where)
    if not _is_real(value) or not math.isfinite(value) or value != int(value):
        raise CognataFormatError(f"{where}: {CLASS_COLUMN} {text!r} is not an integer")
    return int(value)


def _parse_box(text: str, where: str) -> tuple[float, float, float, float]:
    value = _literal(text, BOX_COLUMN, where)
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 4
        or not all(_is_real(v) and math.isfinite(v) for v in value)
    ):
        raise CognataFormatError(f"{where}: {BOX_COLUMN} {text!r} is not a list of 4 finite numbers")
    x1, y1, x2, y2 = (float(v) for v in value)
    return x1, y1, x2, y2


def _relative_path(text: str, where: str) -> str:
    text = text.strip()
    parts = PurePosixPath(text).parts
    if not text or text.startswith(("/", "\\")) or ".." in parts or (len(text) > 1 and text[1] == ":"):
        raise CognataFormatError(f"{where}: {text!r} is not a path relative to the dataset root")
    return text
