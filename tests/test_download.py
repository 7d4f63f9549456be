"""Tests for abtf_ssd.data.download: command construction, dry-run, safe extraction, the full fetch path.

No test reaches the network: a fake ``rclone`` and a fake R2 downloader (small Python scripts put on
PATH) record their argv and copy local files, so the real subprocess, verification, extraction and
rename code runs end to end.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shlex
import stat
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

from abtf_ssd.data import download, extract, fetch
from abtf_ssd.data.download import (
    ARTIFACTS,
    DRIVE_ROOT_FOLDER_ID,
    MARKER_NAME,
    ChecksumError,
    DownloadError,
    RcloneLoginRequired,
    UnsafeArchiveError,
)

TOKEN = json.dumps(
    {
        "access_token": "ya29.a0AfB_SECRETACCESS",
        "token_type": "Bearer",
        "refresh_token": "1//0gSECRETREFRESHTOKEN123",
        "expiry": "2030-01-01T00:00:00Z",
    },
    separators=(",", ":"),
)
SECRETS = ("ya29.a0AfB_SECRETACCESS", "1//0gSECRETREFRESHTOKEN123", "SECRETACCESS", "SECRETREFRESH")

FAKE_RCLONE = r'''#!{python}
"""Fake rclone: records argv, edits the config like rclone does, copies local files."""
import json, os, shutil, sys
from pathlib import Path

args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps(["rclone", *args]) + "\n")
config = Path(args[args.index("--config") + 1])
rest = [a for i, a in enumerate(args) if a != "--config" and (i == 0 or args[i - 1] != "--config")]
if rest[:2] == ["config", "create"]:
    name, kind, *options = rest[2:]
    options = [o for o in options if not o.startswith("--")]
    with config.open("a") as f:
        f.write(f"[{{name}}]\ntype = {{kind}}\n" + "".join(o.replace("=", " = ", 1) + "\n" for o in options))
    print('{{"State": "*oauth-islocal", "Option": {{"Name": "config_is_local"}}}}')
elif rest[:2] == ["config", "reconnect"]:
    print("Use auto config?\ny/n> ", end="", flush=True)
    with config.open("a") as f:
        f.write("token = " + os.environ["FAKE_TOKEN"] + "\n")
    # Old rclone versions echo the remote after configuring it: the token must not reach the user.
    print("\n[mlc-cognata]\ntoken = " + os.environ["FAKE_TOKEN"])
    print("NOTICE: got token " + os.environ["FAKE_TOKEN"])
elif rest[0] in ("copyto", "copy"):
    source = Path(os.environ["FAKE_REMOTE_ROOT"]) / rest[1].split(":", 1)[1]
    dest = Path(rest[2])
    fail_after = int(os.environ.get("FAKE_FAIL_AFTER", "-1"))
    if rest[0] == "copy":
        shutil.copytree(source, dest, dirs_exist_ok=True)
    elif fail_after >= 0:
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(source.read_bytes()[:fail_after])
        print("ERROR : connection reset", file=sys.stderr)
        sys.exit(1)
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest)
    print("NOTICE: 1 / 1, 100%")
else:
    sys.exit("fake rclone: unexpected arguments " + " ".join(args))
'''

FAKE_R2 = r'''#!{python}
"""Fake MLCommons R2 downloader: -d <dir> <url>; writes <name>.md5 and the files like the real one."""
import hashlib, json, os, shutil, sys
from pathlib import Path

args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps(["r2", *args]) + "\n")
dest = Path(args[args.index("-d") + 1])
name = args[-1].rsplit("/", 1)[1].removesuffix(".uri")
dest.mkdir(parents=True, exist_ok=True)
lines = []
for source in sorted((Path(os.environ["FAKE_R2_ROOT"]) / name).iterdir()):
    shutil.copyfile(source, dest / source.name)
    lines.append(hashlib.md5(source.read_bytes()).hexdigest() + "  " + source.name + "\n")
(dest / (name + ".md5")).write_text("".join(lines))
'''


# --------------------------------------------------------------------------- helpers


def _pickle_bytes(index: int) -> bytes:
    """A tiny stand-in for one preprocessed sample file (content irrelevant to the download code)."""
    buffer = io.BytesIO()
    np.save(buffer, np.random.default_rng(index).random((1, 3, 16, 16), dtype=np.float32))
    return buffer.getvalue()


def make_tarball(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], gz: bool = True) -> Path:
    with tarfile.open(path, "w:gz" if gz else "w") as archive:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def file_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode = 0o644
    return info, data


def dir_member(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    return info, None


def link_member(name: str, target: str, hard: bool = False) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info, None


def fake_split(
    path: Path, samples: int = 3, top: str = "val_2d", prefix: str = "val", gz: bool = True
) -> Path:
    """A tarball with the official layout: top-level ``val_2d/`` holding ``val_<i>.pkl``."""
    members = [dir_member(top)] + [
        file_member(f"{top}/{prefix}_{i}.pkl", _pickle_bytes(i)) for i in range(samples)
    ]
    return make_tarball(path, members, gz=gz)


fake_val_2d = fake_split


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def listing(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


@pytest.fixture
def fake_tools(tmp_path, monkeypatch):
    """Fake rclone + R2 downloader on PATH, a fake remote tree, and a log of their argv."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("rclone", FAKE_RCLONE), ("mlc-r2-downloader", FAKE_R2)):
        script = bin_dir / name
        script.write_text(body.format(python=sys.executable))
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    remote = tmp_path / "remote"
    r2_root = tmp_path / "r2"
    log = tmp_path / "argv.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("FAKE_REMOTE_ROOT", str(remote))
    monkeypatch.setenv("FAKE_R2_ROOT", str(r2_root))
    monkeypatch.setenv("FAKE_TOKEN", TOKEN)
    monkeypatch.delenv("FAKE_FAIL_AFTER", raising=False)

    class Tools:
        def publish(self, artifact: str, content: Path) -> None:
            """Put ``content`` where the fake remote serves ``artifact`` (rclone and R2)."""
            art = ARTIFACTS[artifact]
            target = remote / art.remote_path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content.read_bytes())
            if art.r2_uri_name is not None:
                (r2_root / art.r2_uri_name).mkdir(parents=True, exist_ok=True)
                (r2_root / art.r2_uri_name / art.filename).write_bytes(content.read_bytes())

        def calls(self) -> list[list[str]]:
            return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    tools = Tools()
    tools.bin = bin_dir
    tools.remote = remote
    return tools


def configured(tmp_path: Path) -> Path:
    config = tmp_path / "rclone.conf"
    config.write_text(
        "[other]\ntype = s3\n\n"
        f"[mlc-cognata]\ntype = drive\nscope = drive.readonly\nroot_folder_id = {DRIVE_ROOT_FOLDER_ID}\n"
        f"token = {TOKEN}\n"
    )
    return config


# --------------------------------------------------------------------------- artifacts and commands


def test_artifacts_describe_the_official_files():
    assert (
        ARTIFACTS["val_2d"].rclone_source == "mlc-cognata:mlc_cognata_dataset/preprocessed_2d/val_2d.tar.gz"
    )
    assert (
        ARTIFACTS["calib_2d"].r2_metadata_url == "https://cognata.mlcommons-storage.org/metadata/calib_2d.uri"
    )
    assert (
        ARTIFACTS["ssd_onnx"].r2_metadata_url
        == "https://cognata.mlcommons-storage.org/metadata/ssd_checkpoint_onnx.uri"
    )
    assert ARTIFACTS["ssd_pytorch"].filename == "baseline_8MP_ss_scales_fm1_5x5_all_ep60.pth"
    assert ARTIFACTS["cognata_raw"].r2_metadata_url is None
    assert {a.kind for a in ARTIFACTS.values()} == {"tarball", "file", "folder"}
    # No checksum is published yet: the fields are None, not invented.
    assert all(a.sha256 is None and a.size is None for a in ARTIFACTS.values())


@pytest.mark.parametrize(
    ("name", "verb", "source"),
    [
        ("val_2d", "copyto", "mlc-cognata:mlc_cognata_dataset/preprocessed_2d/val_2d.tar.gz"),
        ("calib_2d", "copyto", "mlc-cognata:mlc_cognata_dataset/preprocessed_2d/calib_2d.tar.gz"),
        ("ssd_onnx", "copyto", "mlc-cognata:mlc_cognata_dataset/model_checkpoint_ssd/ssd_resnet50.onnx"),
        (
            "ssd_pytorch",
            "copyto",
            "mlc-cognata:mlc_cognata_dataset/model_checkpoint_ssd/baseline_8MP_ss_scales_fm1_5x5_all_ep60.pth",
        ),
        ("cognata_raw", "copy", "mlc-cognata:mlc_cognata_dataset/unprocessed"),
    ],
)
def test_dry_run_rclone_prints_exact_command(tmp_path, capsys, name, verb, source):
    config = configured(tmp_path)
    out = tmp_path / "out"
    final = fetch.fetch(name, out, "rclone", dry_run=True, rclone_config=config)
    art = ARTIFACTS[name]
    assert final == out / art.final_name
    partial = out / f".{name}.rclone.partial"
    if art.kind != "folder":
        partial = partial / art.filename
    expected = [
        "rclone",
        "--config",
        str(config),
        verb,
        source,
        str(partial),
        "--stats",
        "30s",
        "--stats-one-line",
        "--stats-log-level",
        "NOTICE",
    ]
    assert download.rclone_command(art, partial, config) == expected
    assert shlex.join(expected) in capsys.readouterr().out.splitlines()
    assert not out.exists()  # dry-run touches nothing


@pytest.mark.parametrize(
    ("name", "uri"),
    [
        ("val_2d", "val_2d"),
        ("calib_2d", "calib_2d"),
        ("ssd_onnx", "ssd_checkpoint_onnx"),
        ("ssd_pytorch", "ssd_checkpoint_pth"),
    ],
)
def test_dry_run_r2_prints_exact_command(tmp_path, capsys, name, uri):
    script = tmp_path / "mlc-r2-downloader.sh"
    script.write_text("#!/bin/bash\nexit 99\n")
    out = tmp_path / "out"
    fetch.fetch(name, out, "r2-downloader", dry_run=True, r2_downloader=script)
    expected = [
        "bash",
        str(script),
        "-d",
        str(out / f".{name}.r2-downloader.partial"),
        f"https://cognata.mlcommons-storage.org/metadata/{uri}.uri",
    ]
    assert fetch.partial_dir(name, out, "r2-downloader") == out / f".{name}.r2-downloader.partial"
    assert download.r2_command(ARTIFACTS[name], out / f".{name}.r2-downloader.partial", script) == expected
    assert shlex.join(expected) in capsys.readouterr().out.splitlines()
    assert not out.exists()


def test_r2_command_runs_an_executable_directly_and_refuses_raw(tmp_path):
    art = ARTIFACTS["ssd_onnx"]
    assert download.r2_command(art, tmp_path, "/opt/r2-downloader") == [
        "/opt/r2-downloader",
        "-d",
        str(tmp_path),
        "https://cognata.mlcommons-storage.org/metadata/ssd_checkpoint_onnx.uri",
    ]
    with pytest.raises(DownloadError, match="not distributed through R2"):
        fetch.fetch("cognata_raw", tmp_path, "r2-downloader", dry_run=True)


def test_dry_run_without_remote_prints_login_commands_and_changes_nothing(tmp_path, capsys):
    config = tmp_path / "none" / "rclone.conf"
    fetch.fetch_model("onnx", tmp_path / "out", "rclone", dry_run=True, rclone_config=config)
    lines = capsys.readouterr().out.splitlines()
    create = [
        "rclone",
        "--config",
        str(config),
        "config",
        "create",
        "mlc-cognata",
        "drive",
        "scope=drive.readonly",
        f"root_folder_id={DRIVE_ROOT_FOLDER_ID}",
        "--non-interactive",
    ]
    reconnect = ["rclone", "--config", str(config), "config", "reconnect", "mlc-cognata:"]
    assert download.rclone_config_commands(config) == [create, reconnect]
    assert shlex.join(create) in lines and shlex.join(reconnect) in lines
    assert not config.parent.exists()


def test_unknown_names_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown artifact"):
        fetch.fetch("val_3d", tmp_path, dry_run=True)
    with pytest.raises(ValueError, match="unknown download tool"):
        fetch.fetch("val_2d", tmp_path, "wget", dry_run=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown split"):
        fetch.fetch_dataset("test", tmp_path, dry_run=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown model format"):
        fetch.fetch_model("tflite", tmp_path, dry_run=True)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- extraction


def test_good_tarball_extracts_atomically_and_is_removed(tmp_path):
    tarball = fake_val_2d(tmp_path / "val_2d.tar.gz")
    digest = sha256(tarball)
    out = tmp_path / "out"
    out.mkdir()
    final = extract.extract_tarball(tarball, out, "val_2d", expected_sha256=digest, source="local")
    assert final == out / "val_2d"
    assert sorted(p.name for p in final.glob("val_*.pkl")) == ["val_0.pkl", "val_1.pkl", "val_2.pkl"]
    assert (final / "val_1.pkl").read_bytes() == _pickle_bytes(1)
    assert not tarball.exists()
    assert listing(out) == {"val_2d"}  # no temp folder left
    marker = json.loads((final / MARKER_NAME).read_text())
    assert marker["files"]["val_2d.tar.gz"]["sha256"] == digest
    assert marker["files"]["val_2d.tar.gz"]["members"] == 4
    assert fetch.find_sample_folder(out / "val_2d", "val") == final


def test_flat_plain_tar_becomes_the_final_folder(tmp_path):
    tarball = make_tarball(
        tmp_path / "calib.tar", [file_member(f"calib_{i}.pkl", _pickle_bytes(i)) for i in range(2)], gz=False
    )
    final = extract.extract_tarball(tarball, tmp_path, "calib_2d")
    assert sorted(p.name for p in final.iterdir()) == [MARKER_NAME, "calib_0.pkl", "calib_1.pkl"]
    assert fetch.find_sample_folder(final, "calib") == final


@pytest.mark.parametrize("keep", [40, 400, -30])
def test_truncated_tarball_fails_clearly_and_leaves_nothing(tmp_path, keep):
    good = fake_val_2d(tmp_path / "good.tar.gz", samples=8)
    data = good.read_bytes()
    tarball = tmp_path / "val_2d.tar.gz"
    tarball.write_bytes(data[:keep])
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ChecksumError, match="corrupt or truncated archive") as info:
        extract.extract_tarball(tarball, out, "val_2d")
    assert str(tarball) in str(info.value)
    assert listing(out) == set()
    assert tarball.exists()  # extract_tarball never deletes its input on failure


def test_corrupt_gzip_payload_is_detected(tmp_path):
    tarball = fake_val_2d(tmp_path / "val_2d.tar.gz", samples=4)
    data = bytearray(tarball.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tarball.write_bytes(bytes(data))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ChecksumError):
        extract.extract_tarball(tarball, out, "val_2d")
    assert listing(out) == set()


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (file_member("../evil", b"x"), "'..' path component"),
        (file_member("val_2d/../../evil", b"x"), "'..' path component"),
        (file_member("/abs/evil", b"x"), "absolute path"),
        (link_member("val_2d/passwd", "/etc/passwd"), "symlink to absolute path"),
        (link_member("val_2d/up", "../../etc/passwd"), "points outside the destination"),
        (link_member("val_2d/hard", "/etc/passwd", hard=True), "hard link"),
    ],
)
def test_unsafe_members_are_refused_naming_the_member(tmp_path, member, reason):
    tarball = make_tarball(
        tmp_path / "val_2d.tar.gz", [dir_member("val_2d"), file_member("val_2d/val_0.pkl", b"ok"), member]
    )
    work = tmp_path / "work"
    out = work / "out"
    out.mkdir(parents=True)
    with pytest.raises(UnsafeArchiveError) as info:
        extract.extract_tarball(tarball, out, "val_2d")
    assert repr(member[0].name) in str(info.value) and reason in str(info.value)
    assert listing(out) == set()
    assert (
        not (work / "evil").exists() and not (tmp_path / "evil").exists() and not Path("/abs/evil").exists()
    )


def test_symlink_chain_cannot_escape(tmp_path):
    # Read lexically, val_2d/up/up2 -> .. is val_2d; through the extracted link val_2d/up -> .. it is
    # the parent of the destination.
    members = [
        dir_member("val_2d"),
        link_member("val_2d/up", ".."),
        link_member("val_2d/up/up2", ".."),
        file_member("val_2d/up/up2/escaped", b"x"),
    ]
    tarball = make_tarball(tmp_path / "val_2d.tar.gz", members)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UnsafeArchiveError, match="'val_2d/up/up2': symlink to '..' points outside"):
        extract.extract_tarball(tarball, out, "val_2d")
    assert listing(out) == set()


def test_device_files_are_refused(tmp_path):
    device = tarfile.TarInfo("val_2d/null")
    device.type = tarfile.CHRTYPE
    device.devmajor, device.devminor = 1, 3
    tarball = make_tarball(tmp_path / "val_2d.tar.gz", [dir_member("val_2d"), (device, None)])
    with pytest.raises(UnsafeArchiveError, match="'val_2d/null': device file"):
        extract.extract_tarball(tarball, tmp_path, "val_2d")
    assert not (tmp_path / "val_2d").exists()


def test_links_inside_the_destination_are_kept(tmp_path):
    members = [
        dir_member("val_2d"),
        file_member("val_2d/val_0.pkl", b"zero"),
        link_member("val_2d/latest.pkl", "val_0.pkl"),
        link_member("val_2d/copy.pkl", "val_2d/val_0.pkl", hard=True),
    ]
    final = extract.extract_tarball(make_tarball(tmp_path / "v.tar.gz", members), tmp_path, "val_2d")
    assert os.readlink(final / "latest.pkl") == "val_0.pkl"
    assert (final / "copy.pkl").read_bytes() == b"zero"


def test_sha256_and_size_mismatch_are_refused(tmp_path):
    tarball = fake_val_2d(tmp_path / "val_2d.tar.gz")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ChecksumError, match="sha256"):
        extract.extract_tarball(tarball, out, "val_2d", expected_sha256="0" * 64)
    assert listing(out) == set()
    with pytest.raises(ChecksumError, match="expected 5$"):
        extract.extract_tarball(tarball, out, "val_2d", expected_size=5)
    model = tmp_path / "m.onnx"
    model.write_bytes(b"onnx")
    assert extract.verify_file(model) == hashlib.sha256(b"onnx").hexdigest()
    with pytest.raises(ChecksumError, match="sha256"):
        extract.verify_file(model, expected_sha256="f" * 64)
    model.write_bytes(b"")
    with pytest.raises(ChecksumError, match="empty"):
        extract.verify_file(model)


def test_existing_final_folder_is_not_overwritten(tmp_path):
    (tmp_path / "val_2d").mkdir()
    tarball = fake_val_2d(tmp_path / "val_2d.tar.gz")
    with pytest.raises(DownloadError, match="already exists"):
        extract.extract_tarball(tarball, tmp_path, "val_2d")
    with pytest.raises(DownloadError, match="no marker"):
        fetch.fetch("val_2d", tmp_path, dry_run=True)


# --------------------------------------------------------------------------- full fetch through fake tools


def test_fetch_dataset_with_rclone_end_to_end(tmp_path, fake_tools, capsys):
    fake_tools.publish("val_2d", fake_val_2d(tmp_path / "src.tar.gz", samples=3))
    config = configured(tmp_path)
    out = tmp_path / "cache"
    folder = fetch.fetch_dataset("validation", out, "rclone", rclone_config=config, interactive=False)
    assert folder == out / "val_2d"
    assert sorted(p.name for p in folder.glob("val_*.pkl")) == ["val_0.pkl", "val_1.pkl", "val_2.pkl"]
    assert listing(out) == {"val_2d"}  # tarball, temp folders and lock file gone
    [call] = fake_tools.calls()
    assert call == download.rclone_command(
        ARTIFACTS["val_2d"], out / ".val_2d.rclone.partial/val_2d.tar.gz", config
    )
    output = capsys.readouterr().out
    assert all(secret not in output for secret in SECRETS)

    # Rerun: already complete, no tool runs.
    assert fetch.fetch_dataset("validation", out, "rclone", rclone_config=config) == folder
    assert len(fake_tools.calls()) == 1
    assert "already complete" in capsys.readouterr().out


def test_fetch_models_with_rclone(tmp_path, fake_tools):
    onnx_bytes, pth_bytes = b"fake onnx model", b"fake torch checkpoint"
    for name, data in (("ssd_onnx", onnx_bytes), ("ssd_pytorch", pth_bytes)):
        src = tmp_path / name
        src.write_bytes(data)
        fake_tools.publish(name, src)
    config = configured(tmp_path)
    out = tmp_path / "models"
    onnx = fetch.fetch_model("onnx", out, rclone_config=config)
    pth = fetch.fetch_model("pytorch", out, rclone_config=config)
    assert onnx == out / "ssd_resnet50.onnx" and onnx.read_bytes() == onnx_bytes
    assert pth == out / "baseline_8MP_ss_scales_fm1_5x5_all_ep60.pth" and pth.read_bytes() == pth_bytes
    marker = json.loads(fetch.completion_marker("ssd_onnx", out).read_text())
    assert marker["files"]["ssd_resnet50.onnx"]["sha256"] == hashlib.sha256(onnx_bytes).hexdigest()
    assert not list(out.glob(".*partial*"))


def test_fetch_raw_folder_with_rclone(tmp_path, fake_tools):
    raw = fake_tools.remote / ARTIFACTS["cognata_raw"].remote_path / "10001_Urban_Clear_Noon"
    raw.mkdir(parents=True)
    (raw / "Cognata_Camera_01_8M.zip").write_bytes(b"zip")
    root = fetch.fetch_dataset("raw", tmp_path / "out", rclone_config=configured(tmp_path))
    assert (root / "10001_Urban_Clear_Noon" / "Cognata_Camera_01_8M.zip").read_bytes() == b"zip"
    assert fetch.is_complete("cognata_raw", tmp_path / "out")


def test_interrupted_download_leaves_no_final_entry_and_rerun_succeeds(tmp_path, fake_tools, monkeypatch):
    # Top-level folder named differently from calib_2d: kept, and the pickles are found one level down.
    fake_tools.publish("calib_2d", fake_split(tmp_path / "src.tar.gz", 5, top="preprocessed", prefix="calib"))
    config = configured(tmp_path)
    out = tmp_path / "cache"
    monkeypatch.setenv("FAKE_FAIL_AFTER", "100")
    with pytest.raises(DownloadError, match="exit status 1"):
        fetch.fetch_dataset("calibration", out, rclone_config=config)
    assert not (out / "calib_2d").exists()
    assert not fetch.is_complete("calib_2d", out)
    assert (out / ".calib_2d.rclone.partial" / "calib_2d.tar.gz").stat().st_size == 100  # hidden, kept

    monkeypatch.delenv("FAKE_FAIL_AFTER")
    folder = fetch.fetch_dataset("calibration", out, rclone_config=config)
    assert folder == out / "calib_2d" / "preprocessed"
    assert sorted(p.name for p in folder.iterdir()) == [f"calib_{i}.pkl" for i in range(5)]
    assert listing(out) == {"calib_2d"}


def test_truncated_download_is_refused_and_removed(tmp_path, fake_tools, monkeypatch):
    good = fake_val_2d(tmp_path / "good.tar.gz", samples=5)
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(good.read_bytes()[:-50])
    fake_tools.publish("val_2d", truncated)  # the tool "succeeds" but delivers a broken file
    config = configured(tmp_path)
    out = tmp_path / "cache"
    with pytest.raises(ChecksumError, match="truncated"):
        fetch.fetch("val_2d", out, rclone_config=config)
    # No final folder, and the bad file is gone so a rerun cannot skip it as already downloaded.
    assert listing(out) == {".val_2d.rclone.partial"}  # no lock file left
    assert listing(out / ".val_2d.rclone.partial") == set()

    fake_tools.publish("val_2d", good)
    assert fetch.fetch("val_2d", out, rclone_config=config) == out / "val_2d"


def test_known_checksum_is_enforced_by_fetch(tmp_path, fake_tools, monkeypatch):
    src = tmp_path / "model.onnx"
    src.write_bytes(b"tampered model")
    fake_tools.publish("ssd_onnx", src)
    pinned = dataclasses.replace(ARTIFACTS["ssd_onnx"], sha256="ab" * 32)
    out = tmp_path / "out"
    with pytest.raises(ChecksumError, match="sha256"):
        fetch.fetch(pinned, out, rclone_config=configured(tmp_path))
    assert not (out / "ssd_resnet50.onnx").exists()
    assert not fetch.completion_marker(pinned, out).exists()


def test_fetch_with_r2_downloader_end_to_end(tmp_path, fake_tools):
    fake_tools.publish("val_2d", fake_val_2d(tmp_path / "src.tar.gz", samples=2))
    model = tmp_path / "m.pth"
    model.write_bytes(b"pth")
    fake_tools.publish("ssd_pytorch", model)
    out = tmp_path / "cache"
    folder = fetch.fetch_dataset("validation", out, "r2-downloader")
    assert sorted(p.name for p in folder.glob("val_*.pkl")) == ["val_0.pkl", "val_1.pkl"]
    pth = fetch.fetch_model("pytorch", out, "r2-downloader")
    assert pth.read_bytes() == b"pth"
    downloader = str(fake_tools.bin / "mlc-r2-downloader")
    assert fake_tools.calls() == [
        [
            "r2",
            "-d",
            str(out / ".val_2d.r2-downloader.partial"),
            "https://cognata.mlcommons-storage.org/metadata/val_2d.uri",
        ],
        [
            "r2",
            "-d",
            str(out / ".ssd_pytorch.r2-downloader.partial"),
            "https://cognata.mlcommons-storage.org/metadata/ssd_checkpoint_pth.uri",
        ],
    ]
    assert download.find_r2_downloader() == downloader
    assert listing(out) == {
        "val_2d",
        pth.name,
        f".{pth.name}.complete.json",
    }


def test_missing_tools_give_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    with pytest.raises(DownloadError, match="R2 downloader not found"):
        fetch.fetch("val_2d", tmp_path / "out", "r2-downloader")
    with pytest.raises(
        download.RcloneNotInstalled, match=r"rclone is not installed.*apt-get install rclone"
    ) as info:
        fetch.fetch("val_2d", tmp_path / "out", rclone_config=configured(tmp_path))
    assert "_synthetic" in str(info.value)
    assert not [*(tmp_path / "out").iterdir()], "no lock file, no partial folder"


def test_install_r2_downloader_from_url(tmp_path):
    source = tmp_path / "source.sh"
    source.write_text("#!/bin/bash\necho downloader\n")
    installed = download.install_r2_downloader(tmp_path / "bin", source.as_uri(), sha256=sha256(source))
    assert installed.read_text() == source.read_text()
    assert os.access(installed, os.X_OK)
    with pytest.raises(ChecksumError):
        download.install_r2_downloader(tmp_path / "bin2", source.as_uri(), sha256="0" * 64)
    page = tmp_path / "page.html"
    page.write_text("<html>not found</html>")
    with pytest.raises(DownloadError, match="did not return a script"):
        download.install_r2_downloader(tmp_path / "bin3", page.as_uri())


# --------------------------------------------------------------------------- rclone remote and secrets


def test_existing_remote_is_reused_and_token_never_printed(tmp_path, fake_tools, capsys):
    config = configured(tmp_path)
    before = config.read_text()
    assert download.ensure_rclone_remote(config, interactive=False) == config
    assert config.read_text() == before
    assert fake_tools.calls() == []  # no login, not even an rclone call
    output = capsys.readouterr()
    assert "configured in" in output.out
    assert all(secret not in output.out + output.err for secret in SECRETS)


def test_login_runs_create_then_reconnect_and_redacts_output(tmp_path, fake_tools, capsys):
    config = tmp_path / "conf" / "rclone.conf"
    assert download.ensure_rclone_remote(config, interactive=True) == config
    assert fake_tools.calls() == download.rclone_config_commands(config)
    text = config.read_text()
    assert f"root_folder_id = {DRIVE_ROOT_FOLDER_ID}" in text and "ya29.a0AfB_SECRETACCESS" in text
    output = capsys.readouterr()
    assert "y/n>" in output.out and "<redacted>" in output.out
    assert all(secret not in output.out + output.err for secret in SECRETS)
    # Now configured: a second call reuses it without running rclone.
    download.ensure_rclone_remote(config, interactive=False)
    assert len(fake_tools.calls()) == 2


def test_remote_without_token_only_reconnects(tmp_path, fake_tools):
    config = tmp_path / "rclone.conf"
    config.write_text(
        f"[mlc-cognata]\ntype = drive\nscope = drive.readonly\nroot_folder_id = {DRIVE_ROOT_FOLDER_ID}\n"
    )
    with pytest.raises(RcloneLoginRequired, match="config reconnect mlc-cognata:"):
        download.ensure_rclone_remote(config, interactive=False)
    download.ensure_rclone_remote(config)
    assert fake_tools.calls() == download.rclone_config_commands(config, create=False)


def test_bad_configs_fail_without_leaking_tokens(tmp_path):
    wrong_type = tmp_path / "a.conf"
    wrong_type.write_text(f"[mlc-cognata]\ntype = s3\ntoken = {TOKEN}\n")
    with pytest.raises(DownloadError, match="type 's3', expected 'drive'") as info:
        download.ensure_rclone_remote(wrong_type)
    assert all(secret not in str(info.value) for secret in SECRETS)
    broken = tmp_path / "b.conf"
    broken.write_text(f"token = {TOKEN}\n[mlc-cognata]\n")  # no section header before the first key
    with pytest.raises(DownloadError, match="not a readable rclone config") as info:
        download.ensure_rclone_remote(broken)
    assert all(secret not in str(info.value) for secret in SECRETS)


def test_relay_shows_prompts_but_holds_back_split_secrets(capsys):
    """A prompt without newline appears after the idle delay; a secret split across writes is redacted."""
    child = (
        "import sys, time\n"
        "print('y/n> ', end='', flush=True); time.sleep(0.5)\n"
        "print('token = ', end='', flush=True); time.sleep(0.5)\n"
        'print(\'{"access_token":"ya29.SPLITSECRET"}\', flush=True)\n'
    )
    download._run([sys.executable, "-c", child], "relay test")
    out = capsys.readouterr().out
    assert "y/n> " in out and "token = <redacted>" in out and "SPLITSECRET" not in out


def test_redact_covers_config_lines_json_and_bare_tokens():
    text = textwrap.dedent(
        f"""\
        [mlc-cognata]
        type = drive
        token = {TOKEN}
        client_secret = GOCSPX-abcdef
        log: {{"access_token": "ya29.other", "refresh_token": "1//0gAnotherRefreshToken"}}
        header cf-access-token: eyJhbGciOi.payload.sig
        """
    )
    cleaned = download.redact(text)
    for secret in (*SECRETS, "GOCSPX-abcdef", "ya29.other", "1//0gAnotherRefreshToken", "eyJhbGciOi"):
        assert secret not in cleaned
    assert "type = drive" in cleaned and "token = <redacted>" in cleaned


def test_rclone_config_location_follows_rclone_rules(tmp_path, monkeypatch):
    monkeypatch.setenv("RCLONE_CONFIG", str(tmp_path / "explicit.conf"))
    assert download.default_rclone_config_path() == tmp_path / "explicit.conf"
    monkeypatch.delenv("RCLONE_CONFIG")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert download.default_rclone_config_path() == tmp_path / "xdg" / "rclone" / "rclone.conf"
    (tmp_path / ".rclone.conf").write_text("")
    assert download.default_rclone_config_path() == tmp_path / ".rclone.conf"


@pytest.mark.skipif(
    __import__("shutil").which("rclone") is None, reason="the real rclone binary is not installed"
)
def test_real_rclone_accepts_the_create_command(tmp_path):
    """The create command (no network, no login) is valid for the installed rclone and writes the remote."""
    import subprocess

    config = tmp_path / "rclone.conf"
    create = download.rclone_config_commands(config)[0]
    subprocess.run(create, check=True, capture_output=True, timeout=60)
    section = download._read_remote_section(config, "rclone")
    assert section == {"type": "drive", "scope": "drive.readonly", "root_folder_id": DRIVE_ROOT_FOLDER_ID}
