"""The memory-mapped sample store: bit-identity with the pickles, resumable conversion, refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from abtf_ssd.data import preprocess, store, store_writer
from abtf_ssd.data.store import (
    PickleDataset,
    SampleStore,
    StoreError,
    open_dataset,
)
from abtf_ssd.data.store_writer import convert_pickles_to_store


def _pickles(folder: Path) -> list[dict[str, np.ndarray]]:
    count = preprocess.read_manifest(folder)["count"]
    return [preprocess.load_sample(folder / preprocess.sample_name("val", i)) for i in range(count)]


def _assert_matches_pickles(reader: store.Dataset, samples: list[dict[str, np.ndarray]]) -> None:
    assert len(reader) == len(samples)
    for i, sample in enumerate(samples):
        image, gt_boxes = reader.image(i), reader.gt_boxes(i)
        assert image.dtype == np.float32 and image.shape == sample["img"].shape
        assert image.tobytes() == sample["img"].tobytes(), f"image {i} differs"
        assert gt_boxes.dtype == np.float32 and gt_boxes.shape == sample["gt_boxes"].shape
        assert gt_boxes.tobytes() == sample["gt_boxes"].tobytes(), f"gt_boxes {i} differs"


@pytest.fixture(scope="module")
def converted(tiny_dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_pickles_to_store(
        tiny_dataset.preprocessed, tmp_path_factory.mktemp("store"), progress=False
    )


def test_store_is_bit_identical_to_the_pickles(tiny_dataset, converted: Path) -> None:
    samples = _pickles(tiny_dataset.preprocessed)
    reader = SampleStore.open(converted)
    _assert_matches_pickles(reader, samples)
    assert not reader.image(3).flags.owndata, "image(i) must be a view into the mapping"
    assert reader.image(3).flags.c_contiguous

    manifest = json.loads((converted / store.STORE_MANIFEST).read_text())
    source = preprocess.read_manifest(tiny_dataset.preprocessed)
    height, width = source["image_size"]
    assert manifest["count"] == tiny_dataset.frames and manifest["prefix"] == "val"
    assert manifest["shape"] == [tiny_dataset.frames, 3, height, width] and manifest["dtype"] == "float32"
    assert manifest["config"] == source["config"]
    assert manifest["split_csv_sha256"] == source["split_csv_sha256"]
    leftovers = {p.name for p in converted.iterdir()} - {
        store.STORE_MANIFEST,
        store.IMAGES_FILE,
        store.GT_BOXES_FILE,
        store.GT_OFFSETS_FILE,
    }
    assert not leftovers, f"conversion left {leftovers}"


def test_parallel_conversion_writes_the_same_bytes(tiny_dataset, converted: Path, tmp_path: Path) -> None:
    parallel = convert_pickles_to_store(
        tiny_dataset.preprocessed, tmp_path / "parallel", workers=2, progress=False
    )
    for name in (store.IMAGES_FILE, store.GT_BOXES_FILE, store.GT_OFFSETS_FILE):
        assert (parallel / name).read_bytes() == (converted / name).read_bytes(), name


def test_conversion_resumes_after_an_interruption(tiny_dataset, monkeypatch, tmp_path: Path) -> None:
    real_load = preprocess.load_sample
    loaded: list[str] = []

    def failing_at_5(path, image_size=None):
        if Path(path).name == preprocess.sample_name("val", 5):
            raise RuntimeError("simulated interruption")
        loaded.append(Path(path).name)
        return real_load(path, image_size)

    monkeypatch.setattr(preprocess, "load_sample", failing_at_5)
    out = tmp_path / "store"
    with pytest.raises(RuntimeError, match="simulated"):
        convert_pickles_to_store(tiny_dataset.preprocessed, out, progress=False)
    assert not (out / store.STORE_MANIFEST).exists()
    with pytest.raises(StoreError, match=r"store\.json.*unfinished"):
        SampleStore.open(out)
    with pytest.raises(StoreError, match=r"store\.json"):
        open_dataset(out)

    def counting(path, image_size=None):
        loaded.append(Path(path).name)
        return real_load(path, image_size)

    loaded.clear()
    monkeypatch.setattr(preprocess, "load_sample", counting)
    convert_pickles_to_store(tiny_dataset.preprocessed, out, progress=False)
    assert loaded == [preprocess.sample_name("val", i) for i in range(5, tiny_dataset.frames)]
    _assert_matches_pickles(SampleStore.open(out), _pickles(tiny_dataset.preprocessed))


def test_uncommitted_ground_truth_is_dropped_on_resume(tiny_dataset, monkeypatch, tmp_path: Path) -> None:
    # Die after sample 3's ground truth is appended but before the state that counts it is written.
    real_write = store_writer._write_json

    def dying_commit(path, data):
        if data.get("filled") == 4:
            raise KeyboardInterrupt
        real_write(path, data)

    monkeypatch.setattr(store_writer, "_write_json", dying_commit)
    out = tmp_path / "store"
    with pytest.raises(KeyboardInterrupt):
        convert_pickles_to_store(tiny_dataset.preprocessed, out, progress=False)
    monkeypatch.setattr(store_writer, "_write_json", real_write)
    convert_pickles_to_store(tiny_dataset.preprocessed, out, progress=False)
    _assert_matches_pickles(SampleStore.open(out), _pickles(tiny_dataset.preprocessed))


def test_finished_store_is_not_rebuilt_and_another_source_is_refused(
    tiny_dataset, converted: Path, monkeypatch, tmp_path: Path
) -> None:
    def no_loading(path, image_size=None):
        raise AssertionError(f"loaded {path}")

    monkeypatch.setattr(preprocess, "load_sample", no_loading)
    assert convert_pickles_to_store(tiny_dataset.preprocessed, converted, progress=False) == converted
    moved = shutil.copytree(tiny_dataset.preprocessed, tmp_path / "moved")
    assert convert_pickles_to_store(moved, converted, progress=False) == converted
    with pytest.raises(StoreError, match="holds another store"):
        convert_pickles_to_store(tiny_dataset.preprocessed, converted, count=3, progress=False)


def _copy_store(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def test_truncated_images_file_is_refused(converted: Path, tmp_path: Path) -> None:
    damaged = _copy_store(converted, tmp_path / "damaged")
    images = damaged / store.IMAGES_FILE
    with images.open("r+b") as f:
        f.truncate(images.stat().st_size - 4)
    with pytest.raises(StoreError, match=r"images\.f32.*truncated"):
        SampleStore.open(damaged)
    with pytest.raises(StoreError, match=r"images\.f32"):
        open_dataset(damaged)


def test_missing_manifest_is_refused(converted: Path, tmp_path: Path) -> None:
    damaged = _copy_store(converted, tmp_path / "damaged")
    (damaged / store.STORE_MANIFEST).unlink()
    with pytest.raises(StoreError, match=r"store\.json does not exist"):
        SampleStore.open(damaged)
    with pytest.raises(StoreError, match=r"store\.json does not exist"):
        open_dataset(damaged)


def test_inconsistent_ground_truth_is_refused(converted: Path, tmp_path: Path) -> None:
    damaged = _copy_store(converted, tmp_path / "damaged")
    offsets = np.load(damaged / store.GT_OFFSETS_FILE)
    offsets[-1] += 1
    np.save(damaged / store.GT_OFFSETS_FILE, offsets)
    with pytest.raises(StoreError, match=r"gt_offsets\.npy"):
        SampleStore.open(damaged)


def test_manifest_naming_a_file_outside_the_store_is_refused(converted: Path, tmp_path: Path) -> None:
    damaged = _copy_store(converted, tmp_path / "damaged")
    manifest = json.loads((damaged / store.STORE_MANIFEST).read_text())
    manifest["images"] = "../elsewhere.f32"
    (damaged / store.STORE_MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="inconsistent manifest"):
        SampleStore.open(damaged)


def test_open_dataset_picks_the_reader(tiny_dataset, converted: Path, tmp_path: Path) -> None:
    samples = _pickles(tiny_dataset.preprocessed)
    from_pickles, from_store = open_dataset(tiny_dataset.preprocessed), open_dataset(converted)
    assert isinstance(from_pickles, PickleDataset) and isinstance(from_store, SampleStore)
    for reader in (from_pickles, from_store):
        assert isinstance(reader, store.Dataset)
        reader.load([0, 2])
        _assert_matches_pickles(reader, samples)
        reader.unload([0, 2])
        assert reader.image(2).tobytes() == samples[2]["img"].tobytes()
    assert set(from_pickles.images) == set(), "unload must drop the in-memory images"
    with pytest.raises(StoreError, match="expected 'calib'"):
        open_dataset(converted, prefix="calib")
    with pytest.raises(StoreError, match="expected 'calib'"):
        open_dataset(tiny_dataset.preprocessed, prefix="calib")
    with pytest.raises(StoreError, match="pixels, expected"):
        open_dataset(converted, image_size=(10, 10))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_dataset(tmp_path / "nowhere")
    with pytest.raises(IndexError, match="out of range"):
        from_store.image(tiny_dataset.frames)


def test_what_a_folder_records_and_where_its_store_is(tiny_dataset, converted: Path, tmp_path: Path) -> None:
    assert store.recorded_config(tiny_dataset.preprocessed) == "demo" == store.recorded_config(converted)
    assert store.find_store(converted) == converted and store.find_store(tiny_dataset.preprocessed) is None
    assert store.default_store_dir(tiny_dataset.preprocessed) == tiny_dataset.preprocessed / "mmap"
    assert store_writer.prepare_store(converted) == converted
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty holds no preprocessed samples"):
        store.recorded_config(empty)
    with pytest.raises(FileNotFoundError, match=r"nowhere does not exist"):
        store.recorded_config(tmp_path / "nowhere")
    assert store.dataset_problem(tiny_dataset.preprocessed) is None
    assert store.dataset_problem(converted) is None
    with pytest.raises(StoreError, match=r"no val_0\.pkl"):
        store_writer.prepare_store(empty, "val")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        store_writer.prepare_store(tmp_path / "nowhere")
    assert store.check_store_kind("mmap") == "mmap" and store.check_store_kind("pickle") == "pickle"


def test_official_layout_without_manifest(tiny_dataset, tmp_path: Path) -> None:
    """The official download has no dataset.json: prefix from the file names, size from sample 0."""
    official = tmp_path / "val_2d"
    official.mkdir()
    for i in range(4):
        name = preprocess.sample_name("val", i)
        shutil.copyfile(tiny_dataset.preprocessed / name, official / name)
    reader = open_dataset(official)
    assert isinstance(reader, PickleDataset) and len(reader) == 4 and reader.prefix == "val"
    out = convert_pickles_to_store(official, tmp_path / "store", progress=False)
    converted = SampleStore.open(out)
    assert converted.config_name is None and len(converted) == 4
    _assert_matches_pickles(converted, _pickles(tiny_dataset.preprocessed)[:4])

    (official / preprocess.sample_name("val", 2)).unlink()
    with pytest.raises(StoreError, match=r"val_2\.pkl is missing"):
        open_dataset(official)


def test_bad_pickle_stops_conversion_naming_it(tiny_dataset, tmp_path: Path) -> None:
    official = tmp_path / "val_2d"
    official.mkdir()
    for i in range(3):
        name = preprocess.sample_name("val", i)
        shutil.copyfile(tiny_dataset.preprocessed / name, official / name)
    (official / "val_1.pkl").write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(preprocess.SampleFormatError, match=r"val_1\.pkl"):
        convert_pickles_to_store(official, tmp_path / "store", progress=False)


@pytest.mark.slow
def test_8mp_samples_round_trip(tmp_path: Path) -> None:
    from abtf_ssd.config import BENCHMARK_CONFIG, get_config

    height, width = get_config(BENCHMARK_CONFIG).image_size
    rng = np.random.default_rng(0)
    source = tmp_path / "pickles"
    source.mkdir()
    samples = []
    for i in range(2):
        img = rng.standard_normal((1, 3, height, width), dtype=np.float32)
        gt_boxes = rng.uniform(0, 2000, (i + 3, 7)).astype(np.float32)
        preprocess.write_sample(source / preprocess.sample_name("val", i), img, gt_boxes)
        samples.append({"img": img, "gt_boxes": gt_boxes})
    reader = SampleStore.open(convert_pickles_to_store(source, tmp_path / "store", progress=False))
    reader.load([0, 1])
    _assert_matches_pickles(reader, samples)
