"""``--store mmap`` from the command line: preprocessing straight into a store, ``convert-store``, and
``run --store mmap``, which must give the pickle run's detections and mAP byte for byte."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from faults.support import run_python, tree_digest
from helpers import store_kill_script

from abtf_ssd import cli
from abtf_ssd.config import DEMO_CONFIG
from abtf_ssd.data import preprocess, store, store_writer
from abtf_ssd.data.store import STORE_MANIFEST, SampleStore, StoreError
from abtf_ssd.data.store_writer import convert_pickles_to_store
from abtf_ssd.data.synth import SPLIT_FILES
from abtf_ssd.loadgen.accuracy import ACCURACY_LOG, ACCURACY_TXT
from abtf_ssd.loadgen.harness import RESULTS_JSON

STORE_DATA = (store.IMAGES_FILE, store.GT_BOXES_FILE, store.GT_OFFSETS_FILE)


def _preprocess_args(tiny_dataset, out: Path, *extra: str) -> list[str]:
    raw = tiny_dataset.raw_root
    return [
        "preprocess", "--raw", str(raw), "--split-csv", str(raw / SPLIT_FILES["validation"]),
        "--out", str(out), "--prefix", "val", "--config", DEMO_CONFIG, "--workers", "1", *extra,
    ]  # fmt: skip


def _copy_pickles(tiny_dataset, target: Path) -> Path:
    """A private copy of the tiny pickle set: ``run --store mmap`` writes ``<folder>/mmap`` beside them."""
    return Path(shutil.copytree(tiny_dataset.preprocessed, target))


def _manifest(store_dir: Path) -> dict:
    return json.loads((store_dir / STORE_MANIFEST).read_text())


@pytest.fixture(scope="module")
def direct_store(tiny_dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny split preprocessed by ``abtf-ssd preprocess --store mmap`` in one uninterrupted run."""
    out = tmp_path_factory.mktemp("direct") / "val"
    assert cli.main(_preprocess_args(tiny_dataset, out, "--store", "mmap")) == 0
    return store.default_store_dir(out)


def test_preprocess_store_mmap_equals_converting_the_pickles(
    tiny_dataset, direct_store: Path, tmp_path: Path, monkeypatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert sorted(p.name for p in direct_store.parent.iterdir()) == ["mmap"], "no pickles beside the store"
    converted = convert_pickles_to_store(tiny_dataset.preprocessed, tmp_path / "converted", progress=False)
    for name in STORE_DATA:
        assert (direct_store / name).read_bytes() == (converted / name).read_bytes(), name
    direct, from_pickles = _manifest(direct_store), _manifest(converted)
    assert direct.pop("source") == str(tiny_dataset.raw_root.resolve())
    from_pickles.pop("source")
    assert direct == from_pickles
    assert SampleStore.open(direct_store).config_name == DEMO_CONFIG

    # Two spawn workers (the frame source travels to them once) write the same bytes.
    parallel = store_writer.preprocess_to_store(
        tiny_dataset.raw_root,
        tiny_dataset.raw_root / SPLIT_FILES["validation"],
        tmp_path / "parallel",
        "val",
        DEMO_CONFIG,
        workers=2,
        progress=False,
    )
    assert tree_digest(parallel, skip=(STORE_MANIFEST,)) == tree_digest(direct_store, skip=(STORE_MANIFEST,))

    # A rerun finds it finished and preprocesses nothing.
    def no_preprocessing(index, *args):
        raise AssertionError(f"preprocessed frame {index} again")

    monkeypatch.setattr(preprocess, "preprocess_sample", no_preprocessing)
    capsys.readouterr()
    assert cli.main(_preprocess_args(tiny_dataset, direct_store.parent, "--store", "mmap")) == 0
    assert capsys.readouterr().out.splitlines()[-1] == str(direct_store)


def test_preprocess_store_pickle_is_the_default(tiny_dataset, tmp_path: Path) -> None:
    out = tmp_path / "val"
    assert cli.main(_preprocess_args(tiny_dataset, out, "--store", "pickle", "--count", "3")) == 0
    assert sorted(p.name for p in out.glob("*.pkl")) == ["val_0.pkl", "val_1.pkl", "val_2.pkl"]
    assert not (out / "mmap").exists()
    for i in range(3):
        name = preprocess.sample_name("val", i)
        assert (out / name).read_bytes() == (tiny_dataset.preprocessed / name).read_bytes()


KILL_DIRECT_WRITE = store_kill_script(
    "raw, split_csv, out = sys.argv[1:4]\n"
    'store_writer.preprocess_to_store(raw, split_csv, out, "val", "demo", workers=1, progress=False)'
)


def test_killed_direct_write_resumes_byte_identical(
    tiny_dataset, direct_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "val"
    script = tmp_path / "kill_direct_write.py"
    script.write_text(KILL_DIRECT_WRITE)
    split_csv = tiny_dataset.raw_root / SPLIT_FILES["validation"]
    killed = run_python([str(script), str(tiny_dataset.raw_root), str(split_csv), str(out)], tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    store_dir = store.default_store_dir(out)
    assert not (store_dir / STORE_MANIFEST).exists()
    assert store_writer.prepare_store(out) == store_dir
    with pytest.raises(StoreError, match=r"unfinished.*preprocess --store mmap"):
        store.open_dataset(store_dir)

    real = preprocess.preprocess_sample
    done: list[int] = []

    def counting(index, *args):
        done.append(index)
        return real(index, *args)

    monkeypatch.setattr(preprocess, "preprocess_sample", counting)
    assert cli.main(_preprocess_args(tiny_dataset, out, "--store", "mmap")) == 0
    assert done == list(range(5, tiny_dataset.frames)), "finished samples were redone"
    assert tree_digest(store_dir) == tree_digest(direct_store)


def test_convert_store_command(tiny_dataset, tmp_path: Path, monkeypatch, capsys) -> None:
    pickles = _copy_pickles(tiny_dataset, tmp_path / "val_2d")
    assert cli.main(["convert-store", str(pickles), "--workers", "1"]) == 0
    store_dir = pickles / "mmap"
    assert capsys.readouterr().out.splitlines()[-1] == str(store_dir)
    converted = convert_pickles_to_store(tiny_dataset.preprocessed, tmp_path / "reference", progress=False)
    assert tree_digest(store_dir, skip=(STORE_MANIFEST,)) == tree_digest(converted, skip=(STORE_MANIFEST,))

    def no_loading(path, image_size=None):
        raise AssertionError(f"loaded {path}")

    monkeypatch.setattr(preprocess, "load_sample", no_loading)
    assert cli.main(["convert-store", str(pickles)]) == 0, "a finished store is not converted again"
    out = tmp_path / "elsewhere"
    monkeypatch.undo()
    assert cli.main(["convert-store", str(pickles), "--out", str(out), "--count", "4"]) == 0
    assert len(SampleStore.open(out)) == 4


def _accuracy_run(dataset: Path, model: Path, results: Path, *extra: str) -> Path:
    args = [
        "run", "--dataset-dir", str(dataset), "--model-path", str(model), "--config-name", DEMO_CONFIG,
        "--mode", "accuracy", "--test-query-count", "12", "--threads", "2", "--results-dir", str(results),
        *extra,
    ]  # fmt: skip
    assert cli.main(args) == 0
    return results / "default" / "ssd" / "SingleStream" / "accuracy"


def test_run_store_mmap_gives_the_pickle_runs_detections_and_map(
    tiny_dataset, demo_onnx_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pickles = _copy_pickles(tiny_dataset, tmp_path / "val")
    from_pickles = _accuracy_run(pickles, demo_onnx_model, tmp_path / "pickle")
    from_store = _accuracy_run(pickles, demo_onnx_model, tmp_path / "mmap", "--store", "mmap")

    log = (from_pickles / ACCURACY_LOG).read_bytes()
    assert json.loads(log), "an accuracy run logs every sample"
    assert (from_store / ACCURACY_LOG).read_bytes() == log
    assert (from_store / ACCURACY_TXT).read_text() == (from_pickles / ACCURACY_TXT).read_text()
    pickle_json = json.loads((from_pickles / RESULTS_JSON).read_text())
    store_json = json.loads((from_store / RESULTS_JSON).read_text())
    assert store_json["accuracy"] == pickle_json["accuracy"] and store_json["accuracy"]["frames_total"] == 12
    assert pickle_json["dataset_dir"] == str(pickles)
    assert store_json["dataset_dir"] == str(pickles / "mmap")
    assert SampleStore.open(pickles / "mmap").manifest["count"] == tiny_dataset.frames

    # Converted once: the next --store mmap run reads no pickle.
    def no_loading(path, image_size=None):
        raise AssertionError(f"loaded {path}")

    monkeypatch.setattr(preprocess, "load_sample", no_loading)
    assert store_writer.prepare_store(pickles, "val", progress=False) == pickles / "mmap"
    # A store folder and the --out folder of preprocess --store mmap are taken as they are.
    assert store_writer.prepare_store(pickles / "mmap") == pickles / "mmap"


def test_run_store_mmap_on_a_preprocess_store_folder(
    tiny_dataset, direct_store: Path, demo_onnx_model: Path, tmp_path: Path
) -> None:
    assert store_writer.prepare_store(direct_store.parent) == direct_store
    run_dir = _accuracy_run(direct_store.parent, demo_onnx_model, tmp_path / "r", "--store", "mmap")
    assert json.loads((run_dir / RESULTS_JSON).read_text())["dataset_dir"] == str(direct_store)


@pytest.mark.parametrize("command", ["run", "preprocess"])
def test_unknown_store_is_refused(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main([command, "--store", "tmpfs"])
    assert "--store: invalid choice: 'tmpfs'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--store=tmpfs: unknown sample store; use pickle or mmap"):
        store.check_store_kind("tmpfs")


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[Path]:
    """``folder`` read-only for this process: a read-only bind mount (root ignores file modes), or
    without root the mode bits. Skips where neither works."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(0o755)
        return
    bind = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True, text=True)
    if bind.returncode != 0:
        pytest.skip(f"cannot bind-mount here ({bind.stderr.strip() or bind.returncode})")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], check=True, capture_output=True)
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


def test_read_only_pickle_folder_is_a_clear_error(
    tiny_dataset, demo_onnx_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pickles = _copy_pickles(tiny_dataset, tmp_path / "cache_entry")
    run = ["run", "--dataset-dir", str(pickles), "--model-path", str(demo_onnx_model), "--store", "mmap"]
    with read_only(pickles):
        assert cli.main([*run, "--results-dir", str(tmp_path / "results")]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"abtf-ssd run: error: {pickles / 'mmap'}: cannot write the sample store there")
        assert f"the pickle folder {pickles} is read-only" in err
        assert f"abtf-ssd convert-store {pickles} --out <folder>" in err and "\n" not in err.strip()
        assert not (tmp_path / "results").exists(), "a refused run writes nothing"

        assert cli.main(["convert-store", str(pickles)]) == 1
        assert "give --out <a folder you can write>" in capsys.readouterr().err
        writable = tmp_path / "writable"
        assert cli.main(["convert-store", str(pickles), "--out", str(writable)]) == 0
        assert store_writer.prepare_store(writable) == writable
    # Converted while it was writable, the store is used read-only without writing anything.
    assert store_writer.prepare_store(pickles, progress=False) == pickles / "mmap"
    with read_only(pickles):
        assert store_writer.prepare_store(pickles, progress=False) == pickles / "mmap"
        assert len(SampleStore.open(pickles / "mmap")) == tiny_dataset.frames
