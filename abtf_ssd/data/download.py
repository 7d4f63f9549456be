"""The official MLCommons Cognata artifacts and the two tools that download them.

Artifacts (``ARTIFACTS``): the preprocessed validation and calibration sets (``val_2d.tar.gz``,
``calib_2d.tar.gz``), the raw Cognata recordings (a Drive folder) and the two SSD-ResNet50
checkpoints (ONNX, PyTorch). Access needs MLCommons membership and the Cognata EULA.

Two transports:

- ``rclone`` from the shared Google Drive folder, through the remote ``mlc-cognata``
  (``ensure_rclone_remote`` configures it; the OAuth login runs only when no usable remote exists).
- ``r2-downloader``: the MLCommons R2 downloader script (Cloudflare R2 behind Cloudflare Access),
  given a ``<name>.uri`` metadata URL; it verifies every file against the bucket's MD5 list.

This module holds the catalogue (``ARTIFACTS``, ``DATASET_SPLITS``, ``MODEL_FORMATS``), the download
errors, the rclone remote and each tool's command line. :mod:`abtf_ssd.data.extract` verifies and
extracts what they download; :mod:`abtf_ssd.data.fetch` runs the whole protocol (``fetch``,
``fetch_dataset``, ``fetch_model``).

Commands are always argument lists, never shell strings; everything printed or raised passes
through ``redact`` so OAuth tokens never reach a log.
"""

from __future__ import annotations

import codecs
import configparser
import hashlib
import io
import json
import os
import re
import select
import shlex
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from abtf_ssd.cognata import SPLIT_PREFIXES
from abtf_ssd.fileio import atomic_write_bytes

RCLONE_REMOTE = "mlc-cognata"
DRIVE_ROOT_FOLDER_ID = "1u5FDoeXHVtDrd4zClE47Gmyr7iLFidz1"
DRIVE_SCOPE = "drive.readonly"
R2_METADATA_BASE_URL = "https://cognata.mlcommons-storage.org/metadata/"
R2_DOWNLOADER_URL = (
    "https://raw.githubusercontent.com/mlcommons/r2-downloader/refs/heads/main/mlc-r2-downloader.sh"
)
R2_DOWNLOADER_NAMES = ("mlc-r2-downloader.sh", "mlc-r2-downloader", "r2-downloader")
TOOLS = ("rclone", "r2-downloader")
MARKER_NAME = ".abtf_download_complete.json"

Tool = Literal["rclone", "r2-downloader"]
ArtifactKind = Literal["tarball", "file", "folder"]

# rclone's ``--progress`` redraws a terminal; piped through ``_run`` one stats line every 30 s reads better.
_RCLONE_STATS_ARGS = ("--stats", "30s", "--stats-one-line", "--stats-log-level", "NOTICE")


@dataclass(frozen=True)
class Artifact:
    """One official download.

    ``size`` and ``sha256`` are None where MLCommons publishes no value (so far: all of them; the
    R2 downloader still checks its own MD5 list and rclone checks Drive's MD5 after each transfer).
    The completion marker records the sha256 computed here, ready to be pinned.
    """

    name: str
    remote_path: str  # path under the root of the rclone remote
    r2_uri_name: str | None  # R2 metadata file ``<name>.uri``; None: not distributed through R2
    kind: ArtifactKind
    final_name: str  # entry created in out_dir: extracted folder, file, or mirrored folder
    size: int | None = None
    sha256: str | None = None

    @property
    def filename(self) -> str:
        return PurePosixPath(self.remote_path).name

    @property
    def rclone_source(self) -> str:
        return f"{RCLONE_REMOTE}:{self.remote_path}"

    @property
    def r2_metadata_url(self) -> str | None:
        return None if self.r2_uri_name is None else f"{R2_METADATA_BASE_URL}{self.r2_uri_name}.uri"


ARTIFACTS: dict[str, Artifact] = {
    a.name: a
    for a in (
        Artifact(
            "val_2d", "mlc_cognata_dataset/preprocessed_2d/val_2d.tar.gz", "val_2d", "tarball", "val_2d"
        ),
        Artifact(
            "calib_2d",
            "mlc_cognata_dataset/preprocessed_2d/calib_2d.tar.gz",
            "calib_2d",
            "tarball",
            "calib_2d",
        ),
        Artifact(
            "ssd_onnx",
            "mlc_cognata_dataset/model_checkpoint_ssd/ssd_resnet50.onnx",
            "ssd_checkpoint_onnx",
            "file",
            "ssd_resnet50.onnx",
        ),
        Artifact(
            "ssd_pytorch",
            "mlc_cognata_dataset/model_checkpoint_ssd/baseline_8MP_ss_scales_fm1_5x5_all_ep60.pth",
            "ssd_checkpoint_pth",
            "file",
            "baseline_8MP_ss_scales_fm1_5x5_all_ep60.pth",
        ),
        # The raw recordings are a Drive folder (as upstream's get-dataset-cognata-mlcommons syncs it);
        # it is mirrored as is: the archives inside it are not unpacked here.
        Artifact("cognata_raw", "mlc_cognata_dataset/unprocessed", None, "folder", "unprocessed"),
    )
}

# split -> (artifact name, pickle prefix: the preprocessed files are ``<prefix>_<i>.pkl``)
DATASET_SPLITS: dict[str, tuple[str, str | None]] = {
    "validation": ("val_2d", SPLIT_PREFIXES["validation"]),
    "calibration": ("calib_2d", SPLIT_PREFIXES["calibration"]),
    "raw": ("cognata_raw", None),
}
MODEL_FORMATS: dict[str, str] = {"onnx": "ssd_onnx", "pytorch": "ssd_pytorch"}


class DownloadError(RuntimeError):
    """A download, verification or extraction failed; the message never holds a secret."""

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))


class ChecksumError(DownloadError):
    """A downloaded file is empty, truncated or has the wrong size or sha256."""


class UnsafeArchiveError(DownloadError):
    """A tarball member would land outside the destination or is not a plain file, folder or link."""


class InsufficientSpaceError(DownloadError):
    """Too little free space to extract a verified tarball; the tarball is kept for the rerun."""


class RcloneNotInstalled(DownloadError):
    """No ``rclone`` executable on PATH: the message says how to install it and what runs offline."""


class RcloneLoginRequired(DownloadError):
    """The ``mlc-cognata`` remote needs an interactive login and ``interactive`` was False."""


# --------------------------------------------------------------------------- secrets

_SECRET_PATTERNS = (
    # rclone.conf lines: token = {...}, client_secret = ..., password/pass = ...
    (
        re.compile(r"(?im)^(\s*(?:token|client_secret|secret_access_key|password|pass)\s*=\s*).+$"),
        r"\1<redacted>",
    ),
    # OAuth JSON fields, wherever they appear (rclone logs, config dumps)
    (
        re.compile(r'(?i)("(?:access_token|refresh_token|id_token|client_secret)"\s*:\s*)"[^"]*"'),
        r'\1"<redacted>"',
    ),
    # Google access and refresh tokens by shape, in case a fragment escapes the patterns above
    (re.compile(r"ya29\.[\w.\-]+"), "<redacted>"),
    (re.compile(r"\b1//[\w\-]{16,}"), "<redacted>"),
    # Cloudflare Access (R2 downloader)
    (re.compile(r"(?i)(cf-access-token:\s*)\S+"), r"\1<redacted>"),
    (re.compile(r"(?i)(CF_Authorization=)[^;\s]+"), r"\1<redacted>"),
)


def redact(text: str) -> str:
    """``text`` with OAuth tokens, client secrets and Cloudflare Access tokens replaced by ``<redacted>``."""
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


# A partial line that may be the start of a secret is held back until its line is complete.
_SECRET_START = re.compile(r"(?i)(token|secret|password|pass|authorization)\s*[=:]|ya29\.|1//")


def _say(message: str) -> None:
    print(redact(message), flush=True)


# --------------------------------------------------------------------------- running tools


def _relay_redacted(stream: io.BufferedReader, idle_flush_s: float = 0.2) -> None:
    """Copy a child's output to ``sys.stdout`` line by line through ``redact``.

    A partial line (an interactive prompt such as ``y/n>``) is shown once the child has been quiet
    for ``idle_flush_s``, so prompts stay visible while complete lines are always redacted whole.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    fd = stream.fileno()
    pending = ""
    while True:
        ready, _, _ = select.select([fd], [], [], idle_flush_s)
        if not ready:
            if pending and not _SECRET_START.search(pending):
                sys.stdout.write(redact(pending))
                sys.stdout.flush()
                pending = ""
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        pending += decoder.decode(chunk)
        cut = max(pending.rfind("\n"), pending.rfind("\r"))
        if cut >= 0:
            sys.stdout.write(redact(pending[: cut + 1]))
            sys.stdout.flush()
            pending = pending[cut + 1 :]
    pending += decoder.decode(b"", final=True)
    if pending:
        sys.stdout.write(redact(pending))
        sys.stdout.flush()


def _run(cmd: Sequence[str], what: str, hint: str = "") -> None:
    """Run ``cmd`` (an argument list), relaying its output redacted; raise DownloadError on failure."""
    _say(f"+ {shlex.join(cmd)}")
    try:
        proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except OSError as exc:
        raise DownloadError(f"{what}: cannot start {cmd[0]!r}: {exc}") from exc
    try:
        assert proc.stdout is not None
        _relay_redacted(proc.stdout)
        returncode = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if returncode != 0:
        raise DownloadError(f"{what} failed with exit status {returncode}: {shlex.join(cmd)}{hint}")


RCLONE_INSTALL_HINT = "install it: apt-get install rclone (or https://rclone.org/install/)"
OFFLINE_HINT = (
    "without the MLCommons data, the _synthetic variation runs offline (synthetic Cognata-like frames, "
    "the demo model)"
)


def require_rclone(rclone: str = "rclone") -> str:
    """The path of the ``rclone`` executable; :class:`RcloneNotInstalled` when there is none."""
    found = shutil.which(rclone)
    if found is None:
        raise RcloneNotInstalled(
            f"rclone is not installed (no {rclone!r} on PATH): {RCLONE_INSTALL_HINT}, then rerun to log in "
            f"once; {OFFLINE_HINT}"
        )
    return found


def _require_executable(name: str, hint: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise DownloadError(f"{name!r} not found: {hint}")
    return found


# --------------------------------------------------------------------------- rclone remote


def default_rclone_config_path() -> Path:
    """The config file rclone itself would use: ``$RCLONE_CONFIG``, else the first existing of the
    XDG location, ``~/.config/rclone/rclone.conf`` and the legacy ``~/.rclone.conf``, else the XDG one."""
    if os.environ.get("RCLONE_CONFIG"):
        return Path(os.environ["RCLONE_CONFIG"]).expanduser()
    home = Path.home()
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "rclone" / "rclone.conf"
    for candidate in (xdg, home / ".config" / "rclone" / "rclone.conf", home / ".rclone.conf"):
        if candidate.is_file():
            return candidate
    return xdg


def rclone_config_commands(
    config_path: Path, rclone: str = "rclone", *, create: bool = True
) -> list[list[str]]:
    """The commands that set up the ``mlc-cognata`` remote: create it (no questions asked), then the
    interactive OAuth login (``config reconnect``, which offers the browser or a headless flow)."""
    base = [rclone, "--config", str(config_path), "config"]
    commands = []
    if create:
        commands.append(
            base
            + [
                "create",
                RCLONE_REMOTE,
                "drive",
                f"scope={DRIVE_SCOPE}",
                f"root_folder_id={DRIVE_ROOT_FOLDER_ID}",
                "--non-interactive",
            ]
        )
    commands.append(base + ["reconnect", f"{RCLONE_REMOTE}:"])
    return commands


def _read_remote_section(config_path: Path, rclone: str) -> dict[str, str] | None:
    """The ``mlc-cognata`` section of the rclone config as a dict, or None if absent."""
    if not config_path.is_file():
        return None
    text = config_path.read_text(encoding="utf-8", errors="replace")
    if "RCLONE_ENCRYPT_V0:" in text:
        # An encrypted config only rclone can read (it asks for the password or reads RCLONE_CONFIG_PASS).
        binary = _require_executable(
            rclone, "rclone is needed to read the encrypted config " + str(config_path)
        )
        result = subprocess.run(
            [binary, "--config", str(config_path), "config", "dump"],
            capture_output=True,
        )
        if result.returncode != 0:
            raise DownloadError(
                f"{config_path}: rclone config dump failed: {result.stderr.decode(errors='replace')}"
            )
        try:
            remotes = json.loads(result.stdout)
        except json.JSONDecodeError as exc:
            raise DownloadError(f"{config_path}: rclone config dump printed no JSON ({exc.msg})") from None
        section = remotes.get(RCLONE_REMOTE)
        return None if section is None else {str(k): str(v) for k, v in section.items()}
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read_string(text, source=str(config_path))
    except configparser.Error as exc:
        raise DownloadError(f"{config_path}: not a readable rclone config: {exc}") from None
    if not parser.has_section(RCLONE_REMOTE):
        return None
    return dict(parser.items(RCLONE_REMOTE))


def _has_token(section: dict[str, str]) -> bool:
    return section.get("token", "").strip() not in ("", "{}")


def ensure_rclone_remote(
    config_path: str | Path | None = None,
    interactive: bool = True,
    *,
    rclone: str = "rclone",
    dry_run: bool = False,
) -> Path:
    """Make sure the rclone remote ``mlc-cognata`` (Drive, read-only, MLCommons folder) is usable.

    An existing remote with a token is reused as it is (no login). Otherwise the remote is created
    if missing and the OAuth login runs (browser, or rclone's headless instructions) - only when
    ``interactive``; else ``RcloneLoginRequired`` says which commands to run. ``dry_run`` prints
    those commands and changes nothing. Returns the config file that every rclone command gets.
    """
    config = Path(config_path).expanduser() if config_path is not None else default_rclone_config_path()
    section = _read_remote_section(config, rclone)
    if section is not None:
        if section.get("type") != "drive":
            delete = [rclone, "--config", str(config), "config", "delete", RCLONE_REMOTE]
            raise DownloadError(
                f"{config}: remote [{RCLONE_REMOTE}] has type {section.get('type')!r}, expected 'drive'; "
                f"delete it with: {shlex.join(delete)}"
            )
        if section.get("root_folder_id") != DRIVE_ROOT_FOLDER_ID:
            _say(
                f"warning: {config}: remote [{RCLONE_REMOTE}] has root_folder_id "
                f"{section.get('root_folder_id')!r}, the MLCommons folder is {DRIVE_ROOT_FOLDER_ID!r}; "
                "using it anyway"
            )
        if _has_token(section):
            _say(f"# rclone remote {RCLONE_REMOTE}: configured in {config}")
            return config
    commands = rclone_config_commands(config, rclone, create=section is None)
    if dry_run:
        _say(f"# rclone remote {RCLONE_REMOTE}: needs an interactive login ({config})")
        for cmd in commands:
            _say(shlex.join(cmd))
        return config
    if not interactive:
        raise RcloneLoginRequired(
            f"rclone remote {RCLONE_REMOTE!r} in {config} has no login token; run interactively: "
            + " && ".join(shlex.join(cmd) for cmd in commands)
        )
    require_rclone(rclone)
    config.parent.mkdir(parents=True, exist_ok=True)
    for cmd in commands:
        _run(cmd, f"rclone config ({cmd[4]})")
    section = _read_remote_section(config, rclone)
    if section is None or not _has_token(section):
        raise DownloadError(f"rclone login finished but {config} holds no token for [{RCLONE_REMOTE}]")
    return config


# --------------------------------------------------------------------------- commands


def rclone_command(
    artifact: Artifact, destination: Path, config_path: Path, rclone: str = "rclone"
) -> list[str]:
    """rclone command downloading ``artifact`` to ``destination``: the file path (``copyto``), or for a
    folder artifact the local folder (``copy``: files already there and identical are skipped)."""
    verb = "copy" if artifact.kind == "folder" else "copyto"
    return [
        rclone,
        "--config",
        str(config_path),
        verb,
        artifact.rclone_source,
        str(destination),
        *_RCLONE_STATS_ARGS,
    ]


def r2_command(artifact: Artifact, destination: Path, downloader: str | Path) -> list[str]:
    """R2 downloader command fetching ``artifact``'s files into the folder ``destination``."""
    url = artifact.r2_metadata_url
    if url is None:
        raise DownloadError(f"{artifact.name} is not distributed through R2; use tool='rclone'")
    downloader = str(downloader)
    launcher = ["bash", downloader] if downloader.endswith(".sh") else [downloader]
    return [*launcher, "-d", str(destination), url]


def find_r2_downloader(explicit: str | Path | None = None) -> str:
    """Path of the MLCommons R2 downloader: ``explicit``, else the first ``R2_DOWNLOADER_NAMES`` on PATH."""
    if explicit is not None:
        if not Path(explicit).is_file():
            raise DownloadError(f"R2 downloader {explicit} does not exist")
        return str(explicit)
    for name in R2_DOWNLOADER_NAMES:
        found = shutil.which(name)
        if found is not None:
            return found
    raise DownloadError(
        "MLCommons R2 downloader not found on PATH: pass r2_downloader=<path>, or fetch it with "
        f"abtf_ssd.data.download.install_r2_downloader(<dir>) (from {R2_DOWNLOADER_URL})"
    )


def install_r2_downloader(
    dest_dir: str | Path, url: str = R2_DOWNLOADER_URL, sha256: str | None = None
) -> Path:
    """Download the R2 downloader script to ``dest_dir/mlc-r2-downloader.sh`` (atomic, executable)."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / R2_DOWNLOADER_NAMES[0]
    with urllib.request.urlopen(url, timeout=60) as response:
        body = response.read()
    if not body.startswith(b"#!"):
        raise DownloadError(f"{url} did not return a script (starts with {body[:40]!r})")
    if sha256 is not None and hashlib.sha256(body).hexdigest() != sha256.lower():
        raise ChecksumError(f"{url}: sha256 {hashlib.sha256(body).hexdigest()} != expected {sha256}")
    atomic_write_bytes(target, body, mode=0o755)
    return target
