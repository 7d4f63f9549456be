"""Frame preprocessing and the parallel, resumable build of the official pickle set."""

from __future__ import annotations

import csv
import hashlib
import json
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import build_demo_val_set, val_sample_names
from PIL import Image

from abtf_ssd.cognata import read_annotation
from abtf_ssd.config import BENCHMARK_CONFIG, DEMO_CONFIG, MEAN, STD, get_config
from abtf_ssd.data import preprocess
from abtf_ssd.data.preprocess import (
    MANIFEST_NAME,
    PARTIAL_MANIFEST_NAME,
    DiskSpaceError,
    PreprocessError,
    build_preprocessed,
    is_complete_pickle,
    load_sample,
    preprocess_frame,
    read_manifest,
    sample_name,
)

DEMO = get_config(DEMO_CONFIG)
OG_H, OG_W = DEMO.og_image_size
ANN_HEADER = "object_class,object_class_name,bounding_box_2D,center_distance\n"


def reference_input(png: Path, image_size: tuple[int, int]) -> np.ndarray:
    """The straightforward computation: resize, float32 /255, then (x - mean) / std per channel."""
    image = Image.open(png).convert("RGB")
    height, width = image_size
    if image.size != (width, height):
        image = image.resize((width, height), Image.BILINEAR)
    x = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / np.float32(255)
    mean = np.asarray(MEAN, dtype=np.float32)[:, None, None]
    std = np.asarray(STD, dtype=np.float32)[:, None, None]
    return ((x - mean) / std)[None]


def write_png(path: Path, width: int, height: int, seed: int, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(path)
    return path


def make_dataset(root: Path, frames: int, width: int = OG_W, height: int = OG_H) -> Path:
    """Raw Cognata layout with random frames; returns the split CSV."""
    rows = []
    for i in range(frames):
        img = f"10001_Urban_Clear_Noon/Cognata_Camera_01_8M_png/{i:010d}.png"
        ann = f"10001_Urban_Clear_Noon/Cognata_Camera_01_8M_ann/{i:010d}.csv"
        write_png(root / img, width, height, seed=i)
        (root / ann).parent.mkdir(parents=True, exist_ok=True)
        (root / ann).write_text(
            ANN_HEADER
            + f'8,Car,"[{10 + i}, 20, 60.5, 90]",12.0\n'
            + '2,Ignored,"[0, 0, 100, 100]",5\n'
            + f'14,Pedestrian,"[100, 100, {130 + i}, 170]",299.5\n'
        )
        rows.append((img, ann))
    split = root / "val_set.csv"
    with split.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["img", "ann"])
        writer.writerows(rows)
    return split


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("raw")
    return root, make_dataset(root, frames=5)


def build(dataset, out: Path, **kwargs) -> Path:
    root, split = dataset
    return build_demo_val_set(root, split, out, **kwargs)


def file_bytes(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in val_sample_names(folder)}


# --- one frame -----------------------------------------------------------------------------------


def test_preprocess_frame_matches_reference_with_resize(tmp_path):
    png = write_png(tmp_path / "f.png", OG_W, OG_H, seed=1)
    out = preprocess_frame(png, DEMO)
    assert out.shape == (1, 3, *DEMO.image_size) and out.dtype == np.float32
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out.view(np.uint32), reference_input(png, DEMO.image_size).view(np.uint32))


def test_preprocess_frame_without_resize_matches_reference(tmp_path):
    height, width = DEMO.image_size
    png = write_png(tmp_path / "f.png", width, height, seed=2)
    out = preprocess_frame(png, DEMO)
    expected = reference_input(png, DEMO.image_size)
    np.testing.assert_array_equal(out.view(np.uint32), expected.view(np.uint32))
    # No resize: every pixel maps straight through, so channel 0 at (0, 0) is computable by hand.
    pixel = np.float32(np.asarray(Image.open(png))[0, 0, 0])
    assert out[0, 0, 0, 0] == (pixel / np.float32(255) - np.float32(MEAN[0])) / np.float32(STD[0])


def test_preprocess_frame_matches_torch_to_tensor_normalize(tmp_path):
    torch = pytest.importorskip("torch")
    png = write_png(tmp_path / "f.png", OG_W, OG_H, seed=3)
    image = Image.open(png).convert("RGB").resize(DEMO.image_size[::-1], Image.BILINEAR)
    # torchvision.transforms.ToTensor then Normalize, spelled out in torch ops.
    tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous().to(torch.float32).div(255)
    tensor.sub_(torch.tensor(MEAN).view(-1, 1, 1)).div_(torch.tensor(STD).view(-1, 1, 1))
    out = preprocess_frame(png, DEMO)
    np.testing.assert_array_equal(out[0].view(np.uint32), tensor.numpy().view(np.uint32))


@pytest.mark.parametrize("mode", ["RGBA", "L"])
def test_preprocess_frame_converts_to_rgb(tmp_path, mode):
    png = write_png(tmp_path / "f.png", OG_W, OG_H, seed=4, mode=mode)
    out = preprocess_frame(png, DEMO)
    np.testing.assert_array_equal(out, reference_input(png, DEMO.image_size))
    if mode == "L":
        # Grey: all three channels hold the same pixel before normalisation.
        np.testing.assert_allclose(out[0, 0] * STD[0] + MEAN[0], out[0, 1] * STD[1] + MEAN[1], atol=1e-6)


# --- completeness check --------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_is_complete_pickle_rejects_every_truncation(tmp_path, protocol):
    sample = {"img": np.arange(6, dtype=np.float32).reshape(1, 3, 1, 2), "gt_boxes": np.ones((1, 7), "f4")}
    data = pickle.dumps(sample, protocol=protocol)
    path = tmp_path / "s.pkl"
    path.write_bytes(data)
    assert is_complete_pickle(path)
    for cut in range(len(data)):
        path.write_bytes(data[:cut])
        assert not is_complete_pickle(path), cut
    path.write_bytes(data + b"\0")
    assert not is_complete_pickle(path)
    assert not is_complete_pickle(tmp_path / "absent.pkl")


# --- building a set ------------------------------------------------------------------------------


def test_build_writes_the_official_format(dataset, tmp_path):
    root, split = dataset
    out = build(dataset, tmp_path / "out")
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_NAME] + [
        sample_name("val", i) for i in range(5)
    ]
    for i in range(5):
        raw = (out / f"val_{i}.pkl").read_bytes()
        assert raw[:2] == b"\x80\x04"  # protocol 4, as plain pickle.dump wrote it for the reference
        plain = pickle.loads(raw)
        assert list(plain) == ["img", "gt_boxes"]
        sample = load_sample(out / f"val_{i}.pkl", image_size=DEMO.image_size)
        png = root / f"10001_Urban_Clear_Noon/Cognata_Camera_01_8M_png/{i:010d}.png"
        np.testing.assert_array_equal(sample["img"], reference_input(png, DEMO.image_size))
        expected_gt = np.array([[10 + i, 20, 60.5, 90, 4, 0, 0], [100, 100, 130 + i, 170, 9, 0, 0]], "f4")
        np.testing.assert_array_equal(sample["gt_boxes"], expected_gt)
        ann = root / f"10001_Urban_Clear_Noon/Cognata_Camera_01_8M_ann/{i:010d}.csv"
        np.testing.assert_array_equal(plain["gt_boxes"], read_annotation(ann))
    manifest = read_manifest(out)
    assert manifest == {
        "config": DEMO_CONFIG,
        "count": 5,
        "image_size": list(DEMO.image_size),
        "prefix": "val",
        "split_csv": "val_set.csv",
        "split_csv_sha256": hashlib.sha256(split.read_bytes()).hexdigest(),
        "split_rows": 5,
    }


def test_parallel_output_is_byte_identical(dataset, tmp_path):
    serial = file_bytes(build(dataset, tmp_path / "serial", workers=1))
    parallel = file_bytes(build(dataset, tmp_path / "parallel", workers=2))
    assert len(serial) == 5 and serial == parallel
    assert json.loads((tmp_path / "serial" / MANIFEST_NAME).read_text()) == json.loads(
        (tmp_path / "parallel" / MANIFEST_NAME).read_text()
    )


def test_resume_skips_finished_and_redoes_broken_samples(dataset, tmp_path):
    out = build(dataset, tmp_path / "out", count=3)
    assert read_manifest(out)["count"] == 3
    expected = file_bytes(build(dataset, tmp_path / "fresh"))
    finished = out / "val_0.pkl"
    stamp = finished.stat().st_mtime_ns, finished.stat().st_ino
    # A crash of a non-atomic writer: half a file under the final name; and a stale temp file.
    (out / "val_1.pkl").write_bytes(expected["val_1.pkl"][: len(expected["val_1.pkl"]) // 2])
    (out / "val_2.pkl").write_bytes(b"")
    stale_temp = out / ".val_3.pkl.0123456789ab.tmp"  # abtf_ssd.fileio's temp-file naming
    stale_temp.write_bytes(b"\x80\x04partial")

    build(dataset, out)

    assert (finished.stat().st_mtime_ns, finished.stat().st_ino) == stamp
    assert file_bytes(out) == expected
    assert not stale_temp.exists() and not (out / PARTIAL_MANIFEST_NAME).exists()
    assert read_manifest(out)["count"] == 5
    # Nothing left to do: the rerun writes no sample and keeps the larger finished count.
    build(dataset, out, count=2)
    assert finished.stat().st_mtime_ns == stamp[0]
    assert read_manifest(out)["count"] == 5


def test_interrupted_run_leaves_partial_manifest_and_no_temp_files(dataset, tmp_path):
    root, split = dataset
    frames = split.read_text().splitlines()
    broken_split = tmp_path / "split.csv"
    broken_split.write_text("\n".join(frames[:3] + ["missing_png/0.png,missing_ann/0.csv"]) + "\n")
    out = tmp_path / "out"
    with pytest.raises(PreprocessError):
        build_preprocessed(root, broken_split, out, "val", DEMO_CONFIG, workers=2, progress=False)
    names = {p.name for p in out.iterdir()}
    assert PARTIAL_MANIFEST_NAME in names and MANIFEST_NAME not in names
    assert not [n for n in names if n.endswith(".tmp")]
    assert read_manifest(out) is None
    for name in names - {PARTIAL_MANIFEST_NAME}:
        assert is_complete_pickle(out / name)


def test_disk_space_check_names_both_numbers(dataset, tmp_path, monkeypatch):
    free = 123_456
    monkeypatch.setattr(
        preprocess.shutil, "disk_usage", lambda _: SimpleNamespace(total=10**12, used=0, free=free)
    )
    per_sample = preprocess.estimated_sample_bytes(DEMO)
    with pytest.raises(DiskSpaceError) as info:
        build(dataset, tmp_path / "out", count=4)
    message = str(info.value)
    assert str(free) in message and str(4 * per_sample) in message
    assert not list((tmp_path / "out").glob("val_*"))


def test_disk_space_counts_only_remaining_samples(dataset, tmp_path, monkeypatch):
    out = build(dataset, tmp_path / "out", count=4)
    per_sample = preprocess.estimated_sample_bytes(DEMO)
    monkeypatch.setattr(preprocess.shutil, "disk_usage", lambda _: SimpleNamespace(free=per_sample))
    build(dataset, out)  # one sample left: fits
    assert read_manifest(out)["count"] == 5


def test_estimated_sample_size_is_an_upper_bound(dataset, tmp_path):
    out = build(dataset, tmp_path / "out", count=1)
    actual = (out / "val_0.pkl").stat().st_size
    estimate = preprocess.estimated_sample_bytes(DEMO)
    assert actual <= estimate < actual + 128 * 1024
    # The 8 MP benchmark sample: about 100 MB, as the official set.
    assert 99e6 < preprocess.estimated_sample_bytes(get_config(BENCHMARK_CONFIG)) < 100e6


@pytest.mark.parametrize("workers", [1, 2])
def test_missing_frame_names_file_and_split_row(dataset, tmp_path, workers):
    root, split = dataset
    lines = split.read_text().splitlines()
    lines[2] = lines[2].replace("0000000001.png", "0000009999.png")
    bad_split = tmp_path / "bad_split.csv"
    bad_split.write_text("\n".join(lines) + "\n")
    with pytest.raises(PreprocessError) as info:
        build_preprocessed(
            root, bad_split, tmp_path / "out", "val", DEMO_CONFIG, workers=workers, progress=False
        )
    message = str(info.value)
    assert "0000009999.png does not exist" in message and f"{bad_split} row 1 (0-based" in message


def test_unreadable_png_and_bad_annotation(tmp_path):
    root = tmp_path / "raw"
    split = make_dataset(root, frames=3)
    png = root / "10001_Urban_Clear_Noon/Cognata_Camera_01_8M_png/0000000001.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(
        PreprocessError, match=r"row 1 \(0-based, after the header\): cannot read frame .*0000000001\.png"
    ):
        build_preprocessed(root, split, tmp_path / "a", "val", DEMO_CONFIG, workers=1, progress=False)
    write_png(png, OG_W, OG_H, seed=1)
    ann = root / "10001_Urban_Clear_Noon/Cognata_Camera_01_8M_ann/0000000002.csv"
    ann.write_text(ANN_HEADER + '8,Car,"[1, 2, 3]",12.0\n')
    with pytest.raises(
        PreprocessError,
        match=r"row 2 \(0-based, after the header\): bad annotation: .*0000000002\.csv, line 2",
    ):
        build_preprocessed(root, split, tmp_path / "b", "val", DEMO_CONFIG, workers=1, progress=False)
    ann.unlink()
    with pytest.raises(
        PreprocessError,
        match=r"row 2 \(0-based, after the header\): annotation .*0000000002\.csv does not exist",
    ):
        build_preprocessed(root, split, tmp_path / "c", "val", DEMO_CONFIG, workers=1, progress=False)


def test_frame_of_wrong_size_is_refused(tmp_path):
    root = tmp_path / "raw"
    split = make_dataset(root, frames=1, width=OG_W + 2, height=OG_H)
    with pytest.raises(
        PreprocessError, match=rf"is {OG_W + 2}x{OG_H} pixels, config 'demo' expects {OG_W}x{OG_H}"
    ):
        build_preprocessed(root, split, tmp_path / "out", "val", DEMO_CONFIG, workers=1, progress=False)


def test_folder_holding_another_set_is_refused(dataset, tmp_path):
    root, split = dataset
    out = build(dataset, tmp_path / "out", count=1)
    with pytest.raises(PreprocessError, match="another preprocessed set"):
        build_preprocessed(root, split, out, "val", BENCHMARK_CONFIG, workers=1, progress=False)
    with pytest.raises(PreprocessError, match="another preprocessed set"):
        build_preprocessed(root, split, out, "calib", DEMO_CONFIG, workers=1, progress=False)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "val_0.pkl").write_bytes(b"")
    with pytest.raises(PreprocessError, match="config is unknown"):
        build(dataset, foreign)


def test_bad_arguments(dataset, tmp_path):
    for kwargs in ({"count": 0}, {"count": 6}, {"workers": 0}):
        with pytest.raises(ValueError):
            build(dataset, tmp_path / "out", **kwargs)
    with pytest.raises(ValueError, match="prefix"):
        build_preprocessed(*dataset, tmp_path / "out", "../val", DEMO_CONFIG, progress=False)
    with pytest.raises(ValueError, match="unknown model config"):
        build_preprocessed(*dataset, tmp_path / "out", "val", "nope", progress=False)
    with pytest.raises(PreprocessError, match="cannot read split CSV"):
        build_preprocessed(dataset[0], tmp_path / "absent.csv", tmp_path / "out", "val", DEMO_CONFIG)


def test_synthetic_dataset_round_trip(tmp_path):
    synth = pytest.importorskip("abtf_ssd.data.synth")
    raw = tmp_path / "raw"
    synth.generate(raw, frames=3, width=OG_W, height=OG_H, seed=7, calibration_frames=2, workers=1)
    out = build_preprocessed(
        raw, raw / "calibration_set.csv", tmp_path / "calib", "calib", DEMO_CONFIG, workers=1, progress=False
    )
    assert read_manifest(out)["count"] == 2
    sample = load_sample(out / "calib_1.pkl", image_size=DEMO.image_size)
    assert sample["gt_boxes"].shape[0] >= 1


@pytest.mark.slow
def test_benchmark_config_8mp_frame_without_resize(tmp_path):
    config = get_config(BENCHMARK_CONFIG)
    height, width = config.og_image_size
    root = tmp_path / "raw"
    split = make_dataset(root, frames=1, width=width, height=height)
    out = build_preprocessed(
        root, split, tmp_path / "out", "val", BENCHMARK_CONFIG, workers=1, progress=False
    )
    sample = load_sample(out / "val_0.pkl", image_size=config.image_size)
    png = root / "10001_Urban_Clear_Noon/Cognata_Camera_01_8M_png/0000000000.png"
    np.testing.assert_array_equal(
        sample["img"].view(np.uint32), reference_input(png, config.image_size).view(np.uint32)
    )
