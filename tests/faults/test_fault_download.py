"""Downloads under faults: the tool dies mid-transfer, the downloader is killed mid-extraction, the
remote serves a corrupt tarball, the disk is too small or fills up, the tarball is hostile, and
the MLC cache sees a failed download. The final entry (and so an MLC cache entry) must exist only
after a complete, verified download, and a rerun must finish the job without losing what is done."""

from __future__ import annotations

import io
import signal
import tarfile
from pathlib import Path

import numpy as np
import pytest

from abtf_ssd.data import extract
from abtf_ssd.data.download import (
    MARKER_NAME,
    ChecksumError,
    DownloadError,
    InsufficientSpaceError,
    UnsafeArchiveError,
)
from abtf_ssd.data.fetch import fetch_dataset, is_complete, partial_dir
from faults.support import (
    child_env,
    finished_cache_entries,
    mlcr,
    resize_tmpfs,
    run_script,
    sample_bytes,
    sample_tarball,
    scan_for_secrets,
    tarball_members,
    tmpfs,
)

KILL_MID_EXTRACTION = """
import os, signal, sys, tarfile

from abtf_ssd.data import fetch

real_extract = tarfile.TarFile.extract
extracted = []


def extract_then_die(self, member, *args, **kwargs):
    real_extract(self, member, *args, **kwargs)
    extracted.append(member)
    if len(extracted) == 3:  # the folder and two samples are out, the rest not yet
        os.kill(os.getpid(), signal.SIGKILL)


tarfile.TarFile.extract = extract_then_die
fetch.fetch_dataset("validation", sys.argv[1], "rclone", interactive=False)
"""


def extracted_as_published(folder: Path, tarball: bytes) -> bool:
    """Whether ``folder`` (the final ``val_2d``) holds exactly the tarball's files, byte for byte."""
    expected = {name.removeprefix("val_2d/"): data for name, data in tarball_members(tarball).items()}
    found = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != MARKER_NAME}
    return found == expected and (folder / MARKER_NAME).is_file()


def leftovers(out: Path) -> list[str]:
    """Hidden work folders in ``out`` that still hold data (half-extracted files, downloaded tarballs)."""
    work = [p for p in out.iterdir() if ".extract-" in p.name or p.name.endswith(".partial")]
    return sorted(p.name for p in work if any(f.is_file() for f in p.rglob("*")))


def test_tool_killed_mid_transfer_then_rerun_completes(fake_remote, tmp_path, monkeypatch, capsys):
    tarball = sample_tarball()
    fake_remote.publish("val_2d", tarball)
    out = tmp_path / "downloads"
    monkeypatch.setenv("FAULT_RCLONE_DIE_AFTER", str(len(tarball) // 3))

    with pytest.raises(DownloadError) as info:
        fetch_dataset("validation", out, "rclone", interactive=False)
    message = str(info.value)
    assert "rclone download of val_2d failed" in message and "rerun to resume" in message
    assert not (out / "val_2d").exists() and not is_complete("val_2d", out)
    partial = partial_dir("val_2d", out, "rclone") / "val_2d.tar.gz"
    assert partial.stat().st_size == len(tarball) // 3, "the partial transfer must stay for the rerun"

    monkeypatch.delenv("FAULT_RCLONE_DIE_AFTER")
    folder = fetch_dataset("validation", out, "rclone", interactive=False)

    assert folder == out / "val_2d" and extracted_as_published(folder, tarball)
    assert is_complete("val_2d", out) and leftovers(out) == []
    assert fake_remote.calls() == ["copyto died", "copyto copied"]
    assert not scan_for_secrets({"console": "".join(capsys.readouterr())}, [out])


def test_downloader_killed_mid_extraction_then_rerun_completes(fake_remote, tmp_path):
    tarball = sample_tarball(samples=6)
    fake_remote.publish("val_2d", tarball)
    out = tmp_path / "downloads"

    killed = run_script(KILL_MID_EXTRACTION, tmp_path, str(out), env=child_env())
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert not (out / "val_2d").exists() and not is_complete("val_2d", out)
    assert [name for name in leftovers(out) if ".extract-" in name], "the kill came after the extraction"

    folder = fetch_dataset("validation", out, "rclone", interactive=False)

    assert extracted_as_published(folder, tarball)
    assert leftovers(out) == []
    # The verified tarball from the killed run was reused, not downloaded again.
    assert fake_remote.calls() == ["copyto copied", "copyto skipped"]


def test_corrupt_tarball_from_the_remote_is_refused_and_fetched_again(fake_remote, tmp_path):
    tarball = sample_tarball()
    fake_remote.publish("val_2d", tarball[: len(tarball) - 100])  # rclone itself reports success
    out = tmp_path / "downloads"

    with pytest.raises(ChecksumError, match=r"val_2d\.tar\.gz: corrupt or truncated archive"):
        fetch_dataset("validation", out, "rclone", interactive=False)
    assert not (out / "val_2d").exists() and leftovers(out) == []

    fake_remote.publish("val_2d", tarball)
    folder = fetch_dataset("validation", out, "rclone", interactive=False)
    assert extracted_as_published(folder, tarball)
    assert fake_remote.calls() == ["copyto copied", "copyto copied"]


def incompressible_tarball(samples: int, side: int) -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(1)
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for index in range(samples):
            data = sample_bytes(
                rng.standard_normal((1, 3, side, side)).astype(np.float32), np.zeros((0, 7), np.float32)
            )
            member = tarfile.TarInfo(f"val_2d/val_{index}.pkl")
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    return buffer.getvalue()


def compressible_tarball(samples: int, side: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for index in range(samples):
            data = sample_bytes(np.zeros((1, 3, side, side), np.float32), np.zeros((0, 7), np.float32))
            member = tarfile.TarInfo(f"val_2d/val_{index}.pkl")
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    return buffer.getvalue()


def test_too_little_room_to_extract_keeps_the_download(fake_remote, tmp_path):
    tarball = incompressible_tarball(samples=4, side=128)  # about 790 kB
    fake_remote.publish("val_2d", tarball)
    with tmpfs(tmp_path / "small disk", 1 << 20) as out:
        with pytest.raises(InsufficientSpaceError) as info:
            fetch_dataset("validation", out, "rclone", interactive=False)
        message = str(info.value)
        assert str(out) in message and "free space and rerun" in message
        partial = partial_dir("val_2d", out, "rclone") / "val_2d.tar.gz"
        assert partial.read_bytes() == tarball, "a verified download must not be thrown away"
        assert not (out / "val_2d").exists()

        resize_tmpfs(out, 4 << 20)
        folder = fetch_dataset("validation", out, "rclone", interactive=False)
        assert extracted_as_published(folder, tarball) and leftovers(out) == []
    assert fake_remote.calls() == ["copyto copied", "copyto skipped"]


def test_disk_filling_up_mid_extraction_keeps_the_download(fake_remote, tmp_path):
    tarball = compressible_tarball(samples=5, side=256)  # a few kB, 3.9 MB extracted
    fake_remote.publish("val_2d", tarball)
    with tmpfs(tmp_path / "small disk", 1 << 20) as out:
        with pytest.raises(InsufficientSpaceError) as info:
            fetch_dataset("validation", out, "rclone", interactive=False)
        message = str(info.value)
        assert "disk filled up" in message and "val_2d.tar.gz" in message and "rerun" in message
        assert not (out / "val_2d").exists()
        assert leftovers(out) == [partial_dir("val_2d", out, "rclone").name], "half-extracted data left"
        assert (partial_dir("val_2d", out, "rclone") / "val_2d.tar.gz").read_bytes() == tarball

        resize_tmpfs(out, 8 << 20)
        folder = fetch_dataset("validation", out, "rclone", interactive=False)
        assert extracted_as_published(folder, tarball) and leftovers(out) == []
    assert fake_remote.calls() == ["copyto copied", "copyto skipped"]


def test_too_little_room_without_tmpfs(fake_remote, tmp_path, monkeypatch):
    """The space check where no tmpfs can be mounted: the free space the OS reports is faked."""
    from types import SimpleNamespace

    tarball = sample_tarball()
    fake_remote.publish("val_2d", tarball)
    out = tmp_path / "downloads"
    real_disk_usage = extract.shutil.disk_usage
    monkeypatch.setattr(extract.shutil, "disk_usage", lambda _: SimpleNamespace(free=10))
    with pytest.raises(InsufficientSpaceError, match="0.0 GB free"):
        fetch_dataset("validation", out, "rclone", interactive=False)
    assert (partial_dir("val_2d", out, "rclone") / "val_2d.tar.gz").read_bytes() == tarball
    monkeypatch.setattr(extract.shutil, "disk_usage", real_disk_usage)
    assert extracted_as_published(fetch_dataset("validation", out, "rclone", interactive=False), tarball)


# --------------------------------------------------------------------------------------------
# Hostile tarballs through the whole fetch path


def hostile_tarball(kind: str, outside: Path) -> bytes:
    """A val_2d.tar.gz whose ``kind`` member tries to write ``outside/escaped``."""
    buffer = io.BytesIO()
    good = sample_bytes(np.zeros((1, 3, 4, 4), np.float32), np.zeros((0, 7), np.float32))
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:

        def add(name: str, data: bytes | None = None, **fields) -> None:
            member = tarfile.TarInfo(name)
            for key, value in fields.items():
                setattr(member, key, value)
            if data is not None:
                member.size = len(data)
            archive.addfile(member, io.BytesIO(data) if data is not None else None)

        add("val_2d/val_0.pkl", good)
        payload = b"written outside the download folder"
        if kind == "dotdot":
            add("val_2d/../../../escaped", payload)
        elif kind == "absolute":
            add(str(outside / "escaped"), payload)
        elif kind == "symlink":
            add("val_2d/link", type=tarfile.SYMTYPE, linkname=str(outside))
            add("val_2d/link/escaped", payload)
        elif kind == "relative-symlink":
            add("val_2d/link", type=tarfile.SYMTYPE, linkname="../../..")
            add("val_2d/link/escaped", payload)
        elif kind == "hardlink":
            add("val_2d/val_1.pkl", type=tarfile.LNKTYPE, linkname=str(outside / "escaped"))
        elif kind == "device":
            add("val_2d/val_1.pkl", type=tarfile.CHRTYPE, devmajor=1, devminor=3)
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "relative-symlink", "hardlink", "device"])
def test_hostile_tarball_is_refused_and_writes_nothing_outside(fake_remote, tmp_path, kind):
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "escaped"
    if kind == "hardlink":
        victim.write_text("the victim's own data")
    fake_remote.publish("val_2d", hostile_tarball(kind, outside))
    out = tmp_path / "a" / "downloads"

    with pytest.raises(UnsafeArchiveError) as info:
        fetch_dataset("validation", out, "rclone", interactive=False)

    assert "val_2d.tar.gz: refusing member" in str(info.value)
    if kind == "hardlink":
        assert victim.read_text() == "the victim's own data"
    else:
        assert not victim.exists()
    assert not [p for p in tmp_path.rglob("escaped") if p != victim]
    assert not (out / "val_2d").exists() and leftovers(out) == [], "an unsafe download must be deleted"


# --------------------------------------------------------------------------------------------
# The MLC cache


def test_failed_download_makes_no_mlc_cache_entry_and_the_rerun_does(mlc_home, fake_remote, tmp_path):
    env, home = mlc_home
    tarball = sample_tarball(samples=3)
    fake_remote.publish("val_2d", tarball)
    tags = "get,preprocessed,dataset,cognata,_validation"
    env = {**env, **fake_remote.env()}

    failed = mlcr({**env, "FAULT_RCLONE_DIE_AFTER": "500"}, tmp_path, tags)
    assert failed.returncode != 0
    assert "rclone download of val_2d failed" in failed.stdout + failed.stderr
    assert "rerun to resume" in failed.stdout + failed.stderr
    assert finished_cache_entries(env, tmp_path, "preprocessed,dataset,cognata,_validation") == []
    # The unfinished entry holds the partial download: kept (tagged tmp) for the rerun, and said so.
    assert "kept the unfinished MLC cache entry" in failed.stderr

    done = mlcr(env, tmp_path, tags)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (entry,) = finished_cache_entries(env, tmp_path, "preprocessed,dataset,cognata,_validation")
    assert extracted_as_published(entry / "val_2d", tarball)
    assert leftovers(entry) == []
    outputs = {"failed run": failed.stdout + failed.stderr, "finished run": done.stdout + done.stderr}
    assert not scan_for_secrets(outputs, [home / "repos"])
