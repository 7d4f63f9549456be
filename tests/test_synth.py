"""The synthetic Cognata generator: layout, split files, annotation content, determinism, resume."""

from __future__ import annotations

import ast
import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from abtf_ssd.data import synth

IGNORED = {2, 25, 31}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _kept(row: dict[str, str]) -> bool:
    x1, y1, x2, y2 = ast.literal_eval(row["bounding_box_2D"])
    w, h = x2 - x1, y2 - y1
    return (
        int(row["object_class"]) not in IGNORED
        and w >= 8
        and h >= 8
        and w * h >= 50
        and float(row["center_distance"]) <= 300
    )


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth.generate(
        tmp_path_factory.mktemp("synth"), frames=64, calibration_frames=16, train_frames=8, workers=1
    )


def test_split_files_list_distinct_existing_frames(dataset: Path) -> None:
    splits = {}
    for name, count in (("val_set.csv", 64), ("calibration_set.csv", 16), ("train_set.csv", 8)):
        with (dataset / name).open(newline="") as handle:
            lines = list(csv.reader(handle))
        assert lines[0] == ["img", "ann"]
        splits[name] = lines[1:]
        assert len(splits[name]) == count
        for img, ann in splits[name]:
            recording, png_dir, png_name = img.split("/")
            _, ann_dir, ann_name = ann.split("/")
            assert len(recording.split("_")) == 4 and recording[:5].isdigit()
            assert png_dir.startswith("Cognata_Camera_0") and png_dir.endswith("_8M_png")
            assert ann_dir == png_dir[: -len("png")] + "ann"
            assert png_name[:-4] == ann_name[:-4] and len(png_name) == len("0000000000.png")
            assert (dataset / img).is_file() and (dataset / ann).is_file()
    all_images = [img for rows in splits.values() for img, _ in rows]
    assert len(set(all_images)) == len(all_images)
    assert not list(dataset.rglob("*.tmp"))


def test_annotations_hold_learnable_objects_and_rows_to_drop(dataset: Path) -> None:
    classes: set[int] = set()
    dropped_kinds: set[str] = set()
    for ann in dataset.rglob("*_ann/*.csv"):
        rows = _rows(ann)
        assert {
            "object_class",
            "object_class_name",
            "bounding_box_2D",
            "center_distance",
            "object_id",
        } <= set(rows[0])
        kept = [r for r in rows if _kept(r)]
        assert 2 <= len(kept) <= 8, ann
        boxes = [ast.literal_eval(r["bounding_box_2D"]) for r in kept]
        for x1, y1, x2, y2 in boxes:
            assert 0 <= x1 < x2 <= 512 and 0 <= y1 < y2 <= 288
            assert y2 - y1 >= 20
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                assert synth._iou(tuple(a), tuple(b)) <= 0.35 + 1e-9
        classes.update(int(r["object_class"]) for r in kept)
        for row in rows:
            if _kept(row):
                continue
            x1, y1, x2, y2 = ast.literal_eval(row["bounding_box_2D"])
            if int(row["object_class"]) in IGNORED:
                dropped_kinds.add("class")
            elif min(x2 - x1, y2 - y1) < 8:
                dropped_kinds.add("size")
            elif float(row["center_distance"]) > 300:
                dropped_kinds.add("distance")
    assert classes == {8, 9, 14, 28, 33, 35}
    assert dropped_kinds == {"class", "size", "distance"}


def test_objects_lower_in_the_frame_are_bigger_and_nearer(dataset: Path) -> None:
    bottoms, heights, distances = [], [], []
    for ann in dataset.rglob("*_ann/*.csv"):
        for row in _rows(ann):
            if _kept(row) and int(row["object_class"]) in (8, 9, 14, 35):
                x1, y1, x2, y2 = ast.literal_eval(row["bounding_box_2D"])
                bottoms.append(y2)
                heights.append(y2 - y1)
                distances.append(float(row["center_distance"]))
    assert np.corrcoef(bottoms, heights)[0, 1] > 0.7
    assert np.corrcoef(bottoms, np.log(distances))[0, 1] < -0.9


def test_parallel_workers_write_identical_bytes(tmp_path: Path) -> None:
    serial = synth.generate(tmp_path / "serial", frames=12, calibration_frames=4, seed=3, workers=1)
    parallel = synth.generate(tmp_path / "parallel", frames=12, calibration_frames=4, seed=3, workers=2)
    assert _tree_digest(serial) == _tree_digest(parallel)
    other_seed = synth.generate(tmp_path / "other", frames=12, calibration_frames=4, seed=4, workers=1)
    assert _tree_digest(serial) != _tree_digest(other_seed)


def test_rerun_keeps_finished_frames_and_redoes_missing_ones(tmp_path: Path) -> None:
    root = synth.generate(tmp_path, frames=4, calibration_frames=0, workers=1)
    png_rel, ann_rel = synth.frame_paths(0, 1)
    before = (root / png_rel).stat().st_mtime_ns
    (root / ann_rel).unlink()
    assert synth.write_frame(root, 0, 0, 512, 288) is False
    synth.generate(root, frames=4, calibration_frames=0, workers=1)
    assert (root / ann_rel).is_file()
    assert (root / png_rel).stat().st_mtime_ns >= before
    assert synth.write_frame(root, 0, 1, 512, 288) is False


def test_eight_megapixel_frame_is_the_same_scene_scaled(tmp_path: Path) -> None:
    small = synth.generate(tmp_path / "small", frames=1, calibration_frames=0, workers=1)
    large = synth.generate(
        tmp_path / "large", frames=1, calibration_frames=0, width=3840, height=2160, workers=1
    )
    png_rel, ann_rel = synth.frame_paths(0, 0)
    assert Image.open(large / png_rel).size == (3840, 2160)
    assert Image.open(small / png_rel).size == (512, 288)
    small_boxes = [ast.literal_eval(r["bounding_box_2D"]) for r in _rows(small / ann_rel) if _kept(r)]
    large_boxes = [ast.literal_eval(r["bounding_box_2D"]) for r in _rows(large / ann_rel) if _kept(r)]
    assert len(small_boxes) == len(large_boxes)
    np.testing.assert_allclose(np.array(large_boxes) / 7.5, np.array(small_boxes), atol=1.0)


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="frames"):
        synth.generate(tmp_path, frames=-1)
    with pytest.raises(ValueError, match="too small"):
        synth.generate(tmp_path, width=32, height=18)
