"""Preprocessing under faults: killed mid-write, killed with workers, disk full, disk too small,
a frame missing mid-split. Every case must end, after a rerun, byte-identical to an uninterrupted
run, and an unfinished folder must never pass for a finished set."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import build_demo_val_set, store_kill_script, val_sample_names

from abtf_ssd.config import DEMO_CONFIG, get_config
from abtf_ssd.data import preprocess
from abtf_ssd.data.preprocess import (
    MANIFEST_NAME,
    PARTIAL_MANIFEST_NAME,
    DiskSpaceError,
    PreprocessError,
    build_preprocessed,
    is_complete_pickle,
    load_sample,
    read_manifest,
)
from faults.support import (
    PYTHON,
    child_env,
    group_alive,
    kill_group,
    run_python,
    tmpfs,
    tree_digest,
    wait_until,
)

LOCK = "preprocess.lock"

KILL_MID_WRITE = """
import os, pickle, signal, sys

from abtf_ssd.data import preprocess

raw, split_csv, out, kill_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
real_dump = pickle.dump
written = 0


def dump_then_die(obj, file, protocol=None):
    # Sample number kill_at: half its bytes reach the disk, then the process dies (power cut, OOM).
    global written
    if written == kill_at:
        data = pickle.dumps(obj, protocol=protocol)
        file.write(data[: len(data) // 2])
        file.flush()
        os.fsync(file.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    written += 1
    real_dump(obj, file, protocol=protocol)


pickle.dump = dump_then_die
preprocess.build_preprocessed(raw, split_csv, out, "val", "demo", workers=1, progress=False)
"""

RUN_WITH_WORKERS = """
import sys

from abtf_ssd.data import preprocess

if __name__ == "__main__":  # spawn workers import this file
    raw, split_csv, out = sys.argv[1:4]
    preprocess.build_preprocessed(raw, split_csv, out, "val", "demo", workers=2, progress=False)
"""


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_sigkill_mid_write_resumes_byte_identical(tiny_dataset, long_split, long_reference, tmp_path):
    out = tmp_path / "val"
    script = tmp_path / "kill_mid_write.py"
    script.write_text(KILL_MID_WRITE)
    killed = run_python([str(script), str(tiny_dataset.raw_root), str(long_split), str(out), "5"], tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    # The crash left half of sample 5 in a temp file, never under its final name.
    assert val_sample_names(out) == sorted(f"val_{i}.pkl" for i in range(5))
    assert all(is_complete_pickle(out / name) for name in val_sample_names(out))
    (half,) = temp_files(out)
    assert "val_5.pkl." in half
    assert (out / PARTIAL_MANIFEST_NAME).is_file() and not (out / MANIFEST_NAME).exists()
    assert read_manifest(out) is None
    stamp = (out / "val_0.pkl").stat().st_mtime_ns

    build_demo_val_set(tiny_dataset.raw_root, long_split, out, workers=2)

    assert tree_digest(out) == tree_digest(long_reference)
    assert (out / "val_0.pkl").stat().st_mtime_ns == stamp, "a finished sample was redone"
    assert not temp_files(out) and not (out / LOCK).exists()


def test_sigkill_of_the_parent_leaves_no_orphan_workers_and_resumes(
    tiny_dataset, long_split, long_reference, tmp_path
):
    out = tmp_path / "val"
    script = tmp_path / "run_with_workers.py"
    script.write_text(RUN_WITH_WORKERS)
    child = subprocess.Popen(
        [PYTHON, str(script), str(tiny_dataset.raw_root), str(long_split), str(out)],
        cwd=tmp_path,
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_until(
            lambda: len(val_sample_names(out)) >= 6 if out.is_dir() else False, 120, "six finished samples"
        )
        child.send_signal(signal.SIGKILL)  # the parent only, as the OOM killer would
        assert child.wait(timeout=30) == -signal.SIGKILL
        # Its spawn workers notice the dead parent and exit by themselves.
        wait_until(lambda: not group_alive(child.pid), 60, "the orphaned workers to exit")
    finally:
        kill_group(child.pid)
    assert not (out / MANIFEST_NAME).exists(), "the run finished before it was killed: lengthen long_split"
    assert 6 <= len(val_sample_names(out)) < 36

    build_demo_val_set(tiny_dataset.raw_root, long_split, out, workers=2)

    assert tree_digest(out) == tree_digest(long_reference)
    assert not temp_files(out)


def test_an_interrupted_set_is_not_taken_for_a_finished_one(tiny_dataset, long_split, tmp_path):
    from abtf_ssd.data.metric import count_samples

    out = tmp_path / "val"
    script = tmp_path / "kill_mid_write.py"
    script.write_text(KILL_MID_WRITE)
    run_python([str(script), str(tiny_dataset.raw_root), str(long_split), str(out), "5"], tmp_path)
    assert val_sample_names(out) == sorted(f"val_{i}.pkl" for i in range(5))

    with pytest.raises((FileNotFoundError, ValueError), match=PARTIAL_MANIFEST_NAME):
        count_samples(out, "val")


def test_disk_full_mid_run_names_the_sample_and_keeps_finished_work(tiny_dataset, tmp_path, monkeypatch):
    """A real ENOSPC (another writer fills the disk after the space check): a clear error, the finished
    samples intact, no half files, and the rerun after freeing space completes byte-identical."""
    split = tiny_dataset.raw_root / "val_set.csv"
    per_sample = preprocess.estimated_sample_bytes(get_config(DEMO_CONFIG))
    with tmpfs(tmp_path / "small fs", per_sample * 16) as disk:
        out = disk / "val"
        filler = disk / "someone-elses-file"
        real_write = preprocess.write_sample
        calls = []

        def write_then_fill(path, img, gt_boxes):
            real_write(path, img, gt_boxes)
            calls.append(path)
            if len(calls) == 4:  # leave less than one sample of room
                with filler.open("wb", buffering=0) as f:
                    with pytest.raises(OSError):
                        while True:
                            f.write(b"\0" * 65536)

        monkeypatch.setattr(preprocess, "write_sample", write_then_fill)
        with pytest.raises(PreprocessError) as info:
            build_preprocessed(
                tiny_dataset.raw_root, split, out, "val", DEMO_CONFIG, workers=1, progress=False
            )
        message = str(info.value)
        assert "val_4.pkl" in message and "row 4" in message and str(split) in message
        assert "full" in message and "rerun" in message
        assert val_sample_names(out) == [f"val_{i}.pkl" for i in range(4)]
        assert all(is_complete_pickle(out / name) for name in val_sample_names(out))
        assert not temp_files(out) and not (out / MANIFEST_NAME).exists()

        monkeypatch.setattr(preprocess, "write_sample", real_write)
        filler.unlink()
        build_demo_val_set(tiny_dataset.raw_root, split, out)
        assert tree_digest(out) == tree_digest(tiny_dataset.preprocessed)


def test_disk_too_small_is_refused_before_the_first_write(tiny_dataset, tmp_path):
    """The CLI on a real 1 MB file system: one clear line, exit 1, nothing written."""
    with tmpfs(tmp_path / "tiny fs", 1 << 20) as disk:
        out = disk / "val"
        proc = run_python(
            [
                "-m",
                "abtf_ssd.cli",
                "preprocess",
                "--raw",
                str(tiny_dataset.raw_root),
                "--split-csv",
                str(tiny_dataset.raw_root / "val_set.csv"),
                "--out",
                str(out),
                "--prefix",
                "val",
                "--config",
                DEMO_CONFIG,
                "--workers",
                "1",
            ],
            tmp_path,
        )
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr
        (line,) = proc.stderr.strip().splitlines()
        assert str(out) in line and "12 samples" in line and "free" in line
        assert sorted(os.listdir(out)) == []


def test_disk_too_small_without_tmpfs(tiny_dataset, tmp_path, monkeypatch):
    """The same refusal where no tmpfs can be mounted: the free space reported by the OS is faked."""
    needed = 12 * preprocess.estimated_sample_bytes(get_config(DEMO_CONFIG))
    monkeypatch.setattr(preprocess.shutil, "disk_usage", lambda _: SimpleNamespace(free=needed - 1))
    out = tmp_path / "val"
    with pytest.raises(DiskSpaceError, match=str(needed - 1)):
        build_preprocessed(
            tiny_dataset.raw_root, tiny_dataset.raw_root / "val_set.csv", out, "val", DEMO_CONFIG, workers=1
        )
    assert sorted(os.listdir(out)) == []


def test_missing_frame_mid_split_names_it_and_loses_nothing(tiny_dataset, tmp_path):
    raw = shutil.copytree(tiny_dataset.raw_root, tmp_path / "raw")
    split = raw / "val_set.csv"
    png = raw / split.read_text().splitlines()[8].split(",")[0]
    moved = png.rename(tmp_path / "frame7.png")
    out = tmp_path / "val"

    with pytest.raises(PreprocessError) as info:
        build_preprocessed(raw, split, out, "val", DEMO_CONFIG, workers=2, progress=False)
    message = str(info.value)
    assert "row 7" in message and str(png) in message and "does not exist" in message
    assert all(is_complete_pickle(out / name) for name in val_sample_names(out))
    assert "val_7.pkl" not in val_sample_names(out) and not temp_files(out)
    assert read_manifest(out) is None

    moved.rename(png)
    build_demo_val_set(raw, split, out, workers=2)
    assert tree_digest(out) == tree_digest(tiny_dataset.preprocessed)


KILL_STORE_COMMIT = store_kill_script(
    "store_writer.convert_pickles_to_store(sys.argv[1], sys.argv[2], workers=1, progress=False)"
)


def test_store_conversion_killed_mid_commit_resumes_byte_identical(long_reference, tmp_path):
    from abtf_ssd.data.store import STORE_MANIFEST, SampleStore
    from abtf_ssd.data.store_writer import convert_pickles_to_store

    reference = convert_pickles_to_store(long_reference, tmp_path / "reference", progress=False)
    store_dir = tmp_path / "store"
    script = tmp_path / "kill_store_commit.py"
    script.write_text(KILL_STORE_COMMIT)
    killed = run_python([str(script), str(long_reference), str(store_dir)], tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (store_dir / STORE_MANIFEST).exists()

    convert_pickles_to_store(long_reference, store_dir, workers=2, progress=False)

    assert tree_digest(store_dir) == tree_digest(reference)
    opened = SampleStore.open(store_dir)
    assert len(opened) == 36
    np.testing.assert_array_equal(opened.image(5), load_sample(long_reference / "val_5.pkl")["img"])
