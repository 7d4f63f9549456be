"""Cognata annotation reader, filters, label map and split CSVs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from abtf_ssd import cognata
from abtf_ssd.cognata import (
    CLASS_NAMES,
    EXCLUDED_CLASSES,
    LABEL_MAP,
    CognataFormatError,
    official_split,
    read_annotation,
    read_split,
)
from abtf_ssd.config import NUM_CLASSES

CAR, PEDESTRIAN = 8, 14  # Cognata ids; labels 4 and 9

# Extra columns, and the read ones out of their usual order: the reader must go by header name.
HEADER = [
    "object_id",
    "center_distance",
    "truncation",
    "bounding_box_2D",
    "object_class_name",
    "object_class",
]


def write_annotation(path: Path, objects: list[tuple[object, object, object]], header=HEADER) -> Path:
    """objects: (class, box literal or list, distance) per row."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for n, (cls, box, distance) in enumerate(objects):
            fields = {
                "object_id": n,
                "center_distance": distance,
                "truncation": 0.0,
                "bounding_box_2D": box if isinstance(box, str) else str(list(box)),
                "object_class_name": "whatever",
                "object_class": cls,
            }
            writer.writerow([fields[name] for name in header])
    return path


def test_label_map_covers_every_class_once():
    assert LABEL_MAP[0] == 0
    labels = sorted(v for k, v in LABEL_MAP.items() if k != 0)
    assert labels == list(range(1, NUM_CLASSES))
    assert sorted(CLASS_NAMES) == labels
    assert CLASS_NAMES[LABEL_MAP[CAR]] == "Car" and CLASS_NAMES[LABEL_MAP[PEDESTRIAN]] == "Pedestrian"
    assert not EXCLUDED_CLASSES & set(LABEL_MAP)


def test_rows_boxes_and_labels(tmp_path):
    path = write_annotation(
        tmp_path / "a.csv",
        [(CAR, [10.5, 20.25, 110.5, 220.75], 12.5), (PEDESTRIAN, [0, 0, 30, 90], 0)],
    )
    gt = read_annotation(path)
    assert gt.dtype == np.float32 and gt.shape == (2, 7)
    np.testing.assert_array_equal(
        gt,
        np.array([[10.5, 20.25, 110.5, 220.75, 4, 0, 0], [0, 0, 30, 90, 9, 0, 0]], dtype=np.float32),
    )


@pytest.mark.parametrize(
    ("box", "distance", "kept"),
    [
        ([100, 100, 108, 108], 10, True),  # width and height exactly 8 (area 64)
        ([100, 100, 107.99, 150], 10, False),  # width just under 8
        ([100, 100, 150, 107.99], 10, False),  # height just under 8
        ([100, 100, 108, 107.999], 10, False),
        ([100, 100, 200, 200], 300, True),  # distance exactly 300
        ([100, 100, 200, 200], 300.001, False),
        ([100, 100, 200, 200], 0, True),
        ([200, 200, 100, 100], 10, False),  # inverted: negative width
    ],
)
def test_size_and_distance_filters_boundaries(tmp_path, box, distance, kept):
    gt = read_annotation(write_annotation(tmp_path / "a.csv", [(CAR, box, distance)]))
    assert gt.shape == ((1, 7) if kept else (0, 7))


def test_area_rule_boundary_and_side_rule_make_it_redundant():
    # Area exactly 50 passes the area rule but not the side rule; sides of 8 give an area of 64,
    # so with MIN_SIDE = 8 the area rule can never be the one that drops an object.
    assert cognata.MIN_SIDE**2 >= cognata.MIN_AREA
    assert not cognata.keep_object(CAR, (0, 0, 10, 5), 1)  # area 50, height 5
    assert cognata.keep_object(CAR, (0, 0, 8, 8), 1)


@pytest.mark.parametrize("excluded", sorted(EXCLUDED_CLASSES))
def test_excluded_classes_are_dropped(tmp_path, excluded):
    path = write_annotation(tmp_path / "a.csv", [(excluded, [0, 0, 500, 500], 5), (CAR, [0, 0, 500, 500], 5)])
    gt = read_annotation(path)
    assert gt[:, 4].tolist() == [LABEL_MAP[CAR]]


def test_drops_exactly_the_rule_breakers(tmp_path):
    objects = [
        (CAR, [0, 0, 50, 50], 10),  # kept
        (2, [0, 0, 50, 50], 10),  # excluded class
        (PEDESTRIAN, [0, 0, 7, 50], 10),  # too narrow
        (PEDESTRIAN, [0, 0, 50, 7], 10),  # too short
        (CAR, [0, 0, 50, 50], 301),  # too far
        (28, [1, 2, 9, 10], 300),  # kept: every boundary met exactly (8 x 8, 300 m)
        (31, [0, 0, 7, 7], 500),  # excluded and failing everything
    ]
    gt = read_annotation(write_annotation(tmp_path / "a.csv", objects))
    np.testing.assert_array_equal(gt[:, :5], np.array([[0, 0, 50, 50, 4], [1, 2, 9, 10, 1]], np.float32))


def test_header_only_gives_empty_table(tmp_path):
    gt = read_annotation(write_annotation(tmp_path / "a.csv", []))
    assert gt.shape == (0, 7) and gt.dtype == np.float32


def test_class_zero_is_background_label(tmp_path):
    # The reference label map sends Cognata class 0 to label 0 and keeps such objects.
    gt = read_annotation(write_annotation(tmp_path / "a.csv", [(0, [0, 0, 20, 20], 1)]))
    assert gt[:, 4].tolist() == [0.0]


def test_unknown_class_kept_by_filters_is_an_error(tmp_path):
    path = write_annotation(tmp_path / "a.csv", [(CAR, [0, 0, 20, 20], 1), (77, [0, 0, 20, 20], 1)])
    with pytest.raises(CognataFormatError, match=r"a\.csv, line 3: object class 77"):
        read_annotation(path)


def test_unknown_class_dropped_by_filters_is_no_error(tmp_path):
    # The reference filters before its label-map lookup.
    gt = read_annotation(write_annotation(tmp_path / "a.csv", [(77, [0, 0, 5, 5], 1)]))
    assert gt.shape == (0, 7)


@pytest.mark.parametrize(
    ("cls", "box", "distance", "message"),
    [
        (CAR, "[1, 2, 3]", 1, "bounding_box_2D"),
        (CAR, "[1, 2, 3, 'x']", 1, "bounding_box_2D"),
        (CAR, "1, 2, 3, 4, 5", 1, "bounding_box_2D"),
        (CAR, "[1, 2, 3, 4", 1, "not a Python literal"),
        (CAR, "[True, 2, 30, 40]", 1, "bounding_box_2D"),
        (CAR, "__import__('os').getcwd()", 1, "not a Python literal"),
        (CAR, "[0, 0, 1e400, 10]", 1, "finite"),
        (CAR, [0, 0, 20, 20], "far", "center_distance"),
        (CAR, [0, 0, 20, 20], "", "center_distance"),
        ("car", [0, 0, 20, 20], 1, "object_class"),
        (8.5, [0, 0, 20, 20], 1, "object_class"),
    ],
)
def test_malformed_fields_name_file_and_line(tmp_path, cls, box, distance, message):
    path = write_annotation(tmp_path / "bad.csv", [(CAR, [0, 0, 20, 20], 1), (cls, box, distance)])
    with pytest.raises(CognataFormatError, match=message) as info:
        read_annotation(path)
    assert f"{path}, line 3" in str(info.value)


def test_literal_parser_never_evaluates_code(tmp_path):
    marker = tmp_path / "pwned"
    box = f"[__import__('os').system('touch {marker}'), 0, 10, 10]"
    with pytest.raises(CognataFormatError):
        read_annotation(write_annotation(tmp_path / "a.csv", [(CAR, box, 1)]))
    assert not marker.exists()


def test_integral_float_class_is_accepted(tmp_path):
    gt = read_annotation(write_annotation(tmp_path / "a.csv", [("8.0", [0, 0, 20, 20], 1)]))
    assert gt[:, 4].tolist() == [4.0]


def test_missing_column_is_named(tmp_path):
    header = [name for name in HEADER if name != "center_distance"]
    path = tmp_path / "a.csv"
    path.write_text(",".join(header) + "\n")
    with pytest.raises(CognataFormatError, match=r"center_distance"):
        read_annotation(path)


def test_empty_file_and_short_row(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(CognataFormatError, match="empty file"):
        read_annotation(empty)
    short = tmp_path / "short.csv"
    short.write_text(",".join(HEADER) + "\n1,2\n")
    with pytest.raises(CognataFormatError, match=r"short\.csv, line 2: 2 fields"):
        read_annotation(short)


def test_official_splits():
    val = read_split(official_split("validation"))
    calib = read_split(official_split("calibration"))
    assert len(val) == 6000 and len(calib) == 200
    assert val[0] == (
        "10009_Urban_Rain_Morning/Cognata_Camera_03_8M_png/0000011333.png",
        "10009_Urban_Rain_Morning/Cognata_Camera_03_8M_ann/0000011333.csv",
    )
    for img, ann in val + calib:
        assert img.endswith(".png") and ann.endswith(".csv")
        assert img.replace("_png/", "_ann/")[:-4] == ann[:-4]
    with pytest.raises(ValueError, match="validation"):
        official_split("test")


def test_every_official_split_has_a_prefix_and_a_csv():
    assert cognata.SPLITS == ("validation", "calibration")
    assert cognata.SPLIT_PREFIXES == {"validation": "val", "calibration": "calib"}
    for split in cognata.SPLITS:
        assert official_split(split).is_file()


def test_split_columns_by_name_and_bad_paths(tmp_path):
    path = tmp_path / "split.csv"
    path.write_text("ann,extra,img\nr/c_ann/1.csv,x,r/c_png/1.png\n\n")
    assert read_split(path) == [("r/c_png/1.png", "r/c_ann/1.csv")]
    for bad in ("/etc/passwd", "../outside.png", "r/../../x.png", ""):
        path.write_text(f"img,ann\nr/c_png/1.png,r/c_ann/1.csv\n{bad},r/c_ann/2.csv\n")
        with pytest.raises(CognataFormatError, match=r"split\.csv, line 3"):
            read_split(path)
    path.write_text("image,ann\nx.png,x.csv\n")
    with pytest.raises(CognataFormatError, match=r"\['img'\]"):
        read_split(path)


def _reference_drops(cls: int, box: list[float], distance: float) -> bool:
    # The reference reader's skip condition, written the way it reads there.
    width, height = box[2] - box[0], box[3] - box[1]
    return width * height < 50 or cls in (2, 25, 31) or height < 8 or width < 8 or distance > 300


_coordinate = st.one_of(st.integers(0, 40), st.sampled_from([7.5, 7.99, 8, 8.01, 12.5, 50]))


@settings(max_examples=60, deadline=None)
@given(
    objects=st.lists(
        st.tuples(
            st.sampled_from(sorted(LABEL_MAP) + sorted(EXCLUDED_CLASSES)),
            st.tuples(_coordinate, _coordinate, _coordinate, _coordinate),
            st.sampled_from([0, 299.99, 300, 300.01, 1000]),
        ),
        max_size=12,
    )
)
def test_filters_agree_with_the_reference_condition(tmp_path_factory, objects):
    rows = [(cls, [x, y, x + w, y + h], d) for cls, (x, y, w, h), d in objects]
    path = write_annotation(tmp_path_factory.mktemp("h") / "a.csv", rows)
    expected = [
        [*box, LABEL_MAP[cls], 0, 0]
        for cls, box, distance in rows
        if not _reference_drops(cls, box, distance)
    ]
    np.testing.assert_array_equal(read_annotation(path), np.array(expected, np.float32).reshape(-1, 7))
