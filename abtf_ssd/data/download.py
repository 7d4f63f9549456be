"""Safe, resumable downloads of the official MLCommons Cognata artifacts.

Artifacts (``ARTIFACTS``): the preprocessed validation and calibration sets (``val_2d.tar.gz``,
``calib_2d.tar.gz``), the raw Cognata recordings (a Drive folder) and the two SSD-ResNet50
checkpoints (ONNX, PyTorch). Access needs MLCommons membership and the Cognata EULA.

Two transports:

- ``rclone`` from the shared Google Drive folder, through the remote ``mlc-cognata``
  (``ensure_rclone_remote`` configures it; the OAuth login runs only when no usable remote exists).
- ``r2-downloader``: the MLCommons R2 downloader script (Cloudflare R2 behind Cloudflare Access),
  given a ``<name>.uri`` metadata URL; it verifies every file against the bucket's MD5 list.

Every ``fetch`` follows one protocol, so a final entry in ``out_dir`` exists only when the whole
download succeeded (an MLC cache entry built on it is never half made):

1. download into a hidden partial folder in ``out_dir`` (kept on failure, so a rerun resumes);
2. verify (non-empty, size and sha256 when ``ARTIFACTS`` knows them);
3. tarballs: one streaming pass reads every byte (gzip CRC and length checked), hashes it, checks
   every member before extracting it (no absolute paths, no ``..``, no link leaving the
   destination, no device files) and extracts into a hidden temp folder;
4. write a completion marker, rename into place atomically, delete the tarball.

Reruns skip finished artifacts (final entry plus marker) and resume where the tool can: the R2
downloader continues partial files (``wget --continue``), rclone skips a partial file that already
matches the remote. A download that fails verification (corrupt, truncated, unsafe) is deleted so
that the rerun fetches it again; one that only lacks room to be extracted is kept
(:class:`InsufficientSpaceError`), so the rerun after freeing space downloads nothing.

Commands are always argument lists, never shell strings; everything printed or raised passes
through ``redact`` so OAuth tokens never reach a log.
"""

from __future__ import annotations

import codecs
import configparser
import datetime
import errno
import gzip
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
import tarfile
import tempfile
import urllib.request
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from abtf_ssd.cognata import SPLIT_PREFIXES
from abtf_ssd.fileio import atomic_write_bytes, atomic_write_json, exclusive_lock

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

_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_CHUNK = 1 << 20
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


# --------------------------------------------------------------------------- verification and extraction


def _write_marker(path: Path, artifact_name: str, source: str, files: dict[str, dict[str, object]]) -> None:
    record = {
        "artifact": artifact_name,
        "source": source,
        "files": files,
        "completed": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_json(path, record)


def verify_file(
    path: str | Path, expected_size: int | None = None, expected_sha256: str | None = None
) -> str:
    """Check ``path`` is a non-empty file of the expected size and sha256 (where given); return its sha256."""
    path = Path(path)
    if not path.is_file():
        raise ChecksumError(f"{path}: missing after download")
    size = path.stat().st_size
    if size == 0:
        raise ChecksumError(f"{path}: downloaded file is empty")
    if expected_size is not None and size != expected_size:
        raise ChecksumError(f"{path}: {size} bytes, expected {expected_size}")
    sha = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            sha.update(chunk)
    digest = sha.hexdigest()
    if expected_sha256 is not None and digest != expected_sha256.lower():
        raise ChecksumError(f"{path}: sha256 {digest}, expected {expected_sha256}")
    return digest


class _HashingReader(io.RawIOBase):
    """Read-only file wrapper that hashes and counts every byte read through it."""

    def __init__(self, raw: io.BufferedReader) -> None:
        self._raw = raw
        self.sha256 = hashlib.sha256()
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = self._raw.readinto(buffer)
        if n:
            self.sha256.update(memoryview(buffer)[:n])
            self.bytes_read += n
        return n


def _inside(root: str, path: str) -> bool:
    return os.path.commonpath([root, path]) == root


def check_member(member: tarfile.TarInfo, dest_root: str) -> str | None:
    """Why ``member`` must not be extracted under the real path ``dest_root``, or None if it is safe.

    Resolves symlinks already extracted, so a chain of links cannot lead outside either.
    """
    name = member.name
    if not name or name.startswith("/") or os.path.isabs(name):
        return "absolute path"
    if ".." in PurePosixPath(name).parts:
        return "'..' path component"
    if member.isdev():
        return "device file or fifo"
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        return f"unsupported member type {member.type!r}"
    target = os.path.join(dest_root, name)
    if not _inside(dest_root, os.path.realpath(target)):
        return "path leaves the destination through a link"
    if member.issym():
        if member.linkname.startswith("/") or os.path.isabs(member.linkname):
            return f"symlink to absolute path {member.linkname!r}"
        resolved = os.path.realpath(os.path.join(os.path.dirname(target), member.linkname))
        if not _inside(dest_root, resolved):
            return f"symlink to {member.linkname!r} points outside the destination"
    if member.islnk():
        link = member.linkname
        if link.startswith("/") or ".." in PurePosixPath(link).parts:
            return f"hard link to {link!r} points outside the destination"
        if not _inside(dest_root, os.path.realpath(os.path.join(dest_root, link))):
            return f"hard link to {link!r} points outside the destination"
    return None


# tarfile's own "data" filter (Python >= 3.10.12 / 3.11.4) as a second line behind check_member.
_EXTRACT_FILTER = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
_FILTER_ERRORS = (tarfile.FilterError,) if hasattr(tarfile, "FilterError") else ()


def _is_gzip(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _stream_extract(tarball: Path, dest: Path) -> dict[str, object]:
    """Extract ``tarball`` (tar or tar.gz) into ``dest`` in one pass; return its size, sha256, member count.

    Each member is checked before it is written. The whole file is read and, for gzip, its CRC and
    length trailer verified, so a truncated or corrupted download fails here.
    """
    dest_root = os.path.realpath(dest)
    members = 0
    with tarball.open("rb", buffering=_CHUNK) as raw:
        reader = _HashingReader(raw)
        buffered = io.BufferedReader(reader, _CHUNK)
        payload = gzip.GzipFile(fileobj=buffered, mode="rb") if _is_gzip(tarball) else buffered
        try:
            with tarfile.open(fileobj=payload, mode="r|") as archive:
                for member in archive:
                    reason = check_member(member, dest_root)
                    if reason is not None:
                        raise UnsafeArchiveError(f"{tarball}: refusing member {member.name!r}: {reason}")
                    try:
                        archive.extract(member, dest, **_EXTRACT_FILTER)
                    except _FILTER_ERRORS as exc:
                        raise UnsafeArchiveError(
                            f"{tarball}: refusing member {member.name!r}: {exc}"
                        ) from None
                    members += 1
            # Read past the end-of-archive blocks: the gzip trailer check and the hash need every byte.
            while payload.read(_CHUNK):
                pass
            while buffered.read(_CHUNK):
                pass
        except (tarfile.ReadError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise ChecksumError(f"{tarball}: corrupt or truncated archive: {exc}") from None
    if members == 0:
        raise ChecksumError(f"{tarball}: archive holds no members")
    return {"bytes": reader.bytes_read, "sha256": reader.sha256.hexdigest(), "members": members}


def extract_tarball(
    tarballs: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    final_name: str,
    *,
    expected_size: int | None = None,
    expected_sha256: str | None = None,
    source: str = "",
    remove_tarball: bool = True,
) -> Path:
    """Verify and extract tarball(s) into ``out_dir/final_name``, atomically; return that folder.

    Several tarballs (parts of one artifact) land in the same folder; ``expected_size`` and
    ``expected_sha256`` apply to a single tarball. A tarball whose only top-level entry is a folder
    named ``final_name`` is unwrapped (``val_2d.tar.gz`` holds ``val_2d/``). On any failure nothing
    appears at ``out_dir/final_name`` and the tarballs stay; on success they are deleted unless
    ``remove_tarball`` is False. Raises ChecksumError, UnsafeArchiveError, InsufficientSpaceError
    (too little room to extract), DownloadError.
    """
    paths = [Path(tarballs)] if isinstance(tarballs, (str, Path)) else [Path(t) for t in tarballs]
    if not paths:
        raise DownloadError(f"no tarball to extract for {final_name}")
    if len(paths) > 1 and (expected_size is not None or expected_sha256 is not None):
        raise DownloadError("expected_size/expected_sha256 apply to a single tarball")
    out_dir = Path(out_dir)
    final = out_dir / final_name
    if os.path.lexists(final):
        raise DownloadError(f"{final} already exists; remove it to extract again")
    total = 0
    for path in paths:
        if not path.is_file() or path.stat().st_size == 0:
            raise ChecksumError(f"{path}: missing or empty tarball")
        total += path.stat().st_size
        if expected_size is not None and path.stat().st_size != expected_size:
            raise ChecksumError(f"{path}: {path.stat().st_size} bytes, expected {expected_size}")
    kept = ", ".join(str(p) for p in paths)
    # Tar overhead aside, the extracted data is at least about as large as the compressed tarball.
    free = shutil.disk_usage(out_dir).free
    if free < total * 0.99:
        raise InsufficientSpaceError(
            f"{out_dir}: {free / 1e9:.1f} GB free, extracting {final_name} needs over {total / 1e9:.1f} GB; "
            f"free space and rerun (the downloaded {kept} is kept, nothing is downloaded again)"
        )

    tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=f".{final_name}.extract-"))
    try:
        files: dict[str, dict[str, object]] = {}
        for path in paths:
            _say(f"# extracting {path} -> {final}")
            try:
                files[path.name] = _stream_extract(path, tmp)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise InsufficientSpaceError(
                        f"{out_dir}: the disk filled up while extracting {path} (the extracted data is "
                        f"larger than the tarball); free space and rerun (the downloaded {kept} is kept, "
                        "nothing is downloaded again)"
                    ) from None
                raise DownloadError(
                    f"{path}: extracting into {out_dir} failed ({exc}); rerun once that is fixed "
                    f"(the downloaded {kept} is kept)"
                ) from None
            if expected_sha256 is not None and files[path.name]["sha256"] != expected_sha256.lower():
                raise ChecksumError(
                    f"{path}: sha256 {files[path.name]['sha256']}, expected {expected_sha256}"
                )
        entries = list(tmp.iterdir())
        root = (
            entries[0] if len(entries) == 1 and entries[0].name == final_name and entries[0].is_dir() else tmp
        )
        root.chmod(0o755)
        _write_marker(root / MARKER_NAME, final_name, source, files)
        os.replace(root, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for name, info in files.items():
        counts = f"{info['bytes']} bytes, {info['members']} members"
        _say(f"# {final_name}: {name} sha256 {info['sha256']} ({counts})")
    if remove_tarball:
        for path in paths:
            path.unlink()
    return final


# --------------------------------------------------------------------------- fetch


def _resolve(artifact: Artifact | str) -> Artifact:
    if isinstance(artifact, Artifact):
        return artifact
    try:
        return ARTIFACTS[artifact]
    except KeyError:
        raise ValueError(f"unknown artifact {artifact!r}; known: {', '.join(ARTIFACTS)}") from None


def completion_marker(artifact: Artifact | str, out_dir: str | Path) -> Path:
    """Where the completion marker of ``artifact`` lives: inside its folder, or beside its file."""
    artifact = _resolve(artifact)
    out_dir = Path(out_dir)
    if artifact.kind == "file":
        return out_dir / f".{artifact.final_name}.complete.json"
    return out_dir / artifact.final_name / MARKER_NAME


def is_complete(artifact: Artifact | str, out_dir: str | Path) -> bool:
    """True when ``artifact`` was fetched completely into ``out_dir`` (final entry plus marker)."""
    artifact = _resolve(artifact)
    final = Path(out_dir) / artifact.final_name
    present = final.is_file() if artifact.kind == "file" else final.is_dir()
    return present and completion_marker(artifact, out_dir).is_file()


def partial_dir(artifact: Artifact | str, out_dir: str | Path, tool: Tool) -> Path:
    """Hidden folder in ``out_dir`` that ``tool`` downloads ``artifact`` into; it survives failures
    so a rerun resumes, and is deleted once the artifact is in place."""
    return Path(out_dir) / f".{_resolve(artifact).name}.{tool}.partial"


def _download_target(artifact: Artifact, partial: Path) -> Path:
    """What rclone writes: the folder itself for a mirrored folder, else the file inside it."""
    return partial if artifact.kind == "folder" else partial / artifact.filename


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def _r2_payload(artifact: Artifact, folder: Path) -> list[Path]:
    """The downloaded file(s) of ``artifact`` inside the R2 downloader's folder."""
    checksum_list = f"{artifact.r2_uri_name}.md5"
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != checksum_list)
    exact = [p for p in files if p.name == artifact.filename]
    if len(exact) == 1:
        return exact
    if artifact.kind == "tarball":
        parts = [p for p in files if p.name.endswith(_TAR_SUFFIXES)]
        if parts:
            return parts
    else:
        suffix = PurePosixPath(artifact.filename).suffix
        same_type = [p for p in files if p.suffix == suffix]
        if len(same_type) == 1:
            return same_type
    listing = ", ".join(str(p.relative_to(folder)) for p in files) or "nothing"
    raise DownloadError(
        f"{folder}: R2 download of {artifact.name} holds no {artifact.filename} (found: {listing})"
    )


def _install(artifact: Artifact, out_dir: Path, payload: list[Path], source: str) -> Path:
    """Verify the downloaded ``payload`` and move it into place; delete it if it fails verification."""
    final = out_dir / artifact.final_name
    exact = len(payload) == 1 and payload[0].name == artifact.filename
    expected_size = artifact.size if exact else None
    expected_sha = artifact.sha256 if exact else None
    try:
        if artifact.kind == "tarball":
            return extract_tarball(
                payload,
                out_dir,
                artifact.final_name,
                expected_size=expected_size,
                expected_sha256=expected_sha,
                source=source,
            )
        if artifact.kind == "file":
            digest = verify_file(payload[0], expected_size, expected_sha)
            size = payload[0].stat().st_size
            _write_marker(
                completion_marker(artifact, out_dir),
                artifact.name,
                source,
                {artifact.filename: {"bytes": size, "sha256": digest}},
            )
            os.replace(payload[0], final)
            _say(f"# {artifact.final_name}: sha256 {digest} ({size} bytes)")
            return final
        folder = payload[0]
        if not folder.is_dir() or not any(folder.iterdir()):
            raise ChecksumError(f"{folder}: download of {artifact.name} is empty")
        _write_marker(folder / MARKER_NAME, artifact.name, source, {})
        os.replace(folder, final)
        return final
    except (ChecksumError, UnsafeArchiveError):
        # A corrupt or unsafe download must not be skipped as "already there" by the next run. Any
        # other failure (no space, an entry in the way) keeps it: the rerun needs no new download.
        for path in payload:
            _remove(path)
        raise


def fetch(
    artifact: Artifact | str,
    out_dir: str | Path,
    tool: Tool = "rclone",
    dry_run: bool = False,
    *,
    rclone_config: str | Path | None = None,
    interactive: bool = True,
    rclone: str = "rclone",
    r2_downloader: str | Path | None = None,
) -> Path:
    """Download ``artifact`` (an ``ARTIFACTS`` key or Artifact) into ``out_dir``; return the final path.

    The final path is ``out_dir/<artifact.final_name>``: the extracted folder for tarballs, the
    file for checkpoints, the mirrored folder for raw data. ``dry_run`` prints the exact commands
    (``shlex.join``) and returns that path without touching the network or the disk. Raises
    DownloadError (and subclasses) with nothing left at the final path when anything fails.
    """
    artifact = _resolve(artifact)
    if tool not in TOOLS:
        raise ValueError(f"unknown download tool {tool!r}; use one of {', '.join(TOOLS)}")
    if tool == "r2-downloader" and artifact.r2_uri_name is None:
        raise DownloadError(f"{artifact.name} is not distributed through R2; use tool='rclone'")
    out_dir = Path(out_dir).absolute()
    final = out_dir / artifact.final_name
    partial = partial_dir(artifact, out_dir, tool)

    if is_complete(artifact, out_dir):
        _say(f"# {artifact.name}: already complete at {final}")
        if not dry_run and os.path.lexists(partial):
            _remove(partial)
        return final
    if os.path.lexists(final):
        raise DownloadError(
            f"{final} exists but was not completed by a download (no marker); remove it first"
        )

    if dry_run:
        if tool == "rclone":
            if shutil.which(rclone) is None:
                _say(f"# rclone is not installed: {RCLONE_INSTALL_HINT}")
            config = ensure_rclone_remote(rclone_config, interactive, rclone=rclone, dry_run=True)
            _say(shlex.join(rclone_command(artifact, _download_target(artifact, partial), config, rclone)))
        else:
            try:
                downloader: str | Path = find_r2_downloader(r2_downloader)
            except DownloadError:
                downloader = R2_DOWNLOADER_NAMES[0]
                _say(f"# R2 downloader not installed; it comes from {R2_DOWNLOADER_URL}")
            _say(shlex.join(r2_command(artifact, partial, downloader)))
        steps = {
            "tarball": "verify, extract, rename into place, delete the tarball",
            "file": "verify, rename",
        }
        _say(f"# then: {steps.get(artifact.kind, 'rename')} -> {final}")
        return final

    if tool == "rclone":
        # Before anything is written: a missing tool or login leaves out_dir as it was.
        require_rclone(rclone)
        config = ensure_rclone_remote(rclone_config, interactive, rclone=rclone)
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = out_dir / f".{artifact.final_name}.lock"

    def busy() -> DownloadError:
        return DownloadError(
            f"{out_dir}: another download of {artifact.name} is writing here ({lock}); "
            "wait for it, then rerun"
        )

    with exclusive_lock(lock, busy):
        if is_complete(artifact, out_dir):
            return final
        for stale in out_dir.glob(f".{artifact.final_name}.extract-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if tool == "rclone":
            target = _download_target(artifact, partial)
            reconnect = rclone_config_commands(config, rclone, create=False)[0]
            _run(
                rclone_command(artifact, target, config, rclone),
                f"rclone download of {artifact.name}",
                f"\n(rerun to resume; if the Drive login expired or lacks access: {shlex.join(reconnect)})",
            )
            payload = [target]
            source = artifact.rclone_source
        else:
            downloader = find_r2_downloader(r2_downloader)
            partial.mkdir(exist_ok=True)
            _run(r2_command(artifact, partial, downloader), f"R2 download of {artifact.name}")
            payload = _r2_payload(artifact, partial)
            source = str(artifact.r2_metadata_url)
        installed = _install(artifact, out_dir, payload, source)
        if os.path.lexists(partial):
            _remove(partial)
    return installed


def find_sample_folder(root: str | Path, prefix: str, max_depth: int = 3) -> Path:
    """The folder under ``root`` (itself first, then breadth first) holding ``<prefix>_<i>.pkl`` files."""
    level = [Path(root)]
    for _ in range(max_depth + 1):
        for folder in level:
            if any(folder.glob(f"{prefix}_*.pkl")):
                return folder
        level = sorted(child for folder in level for child in folder.iterdir() if child.is_dir())
    raise DownloadError(f"{root}: no {prefix}_<i>.pkl files found")


def fetch_dataset(
    split: Literal["validation", "calibration", "raw"],
    out_dir: str | Path,
    tool: Tool = "rclone",
    dry_run: bool = False,
    **options: object,
) -> Path:
    """Fetch a Cognata split; return the folder holding ``val_<i>.pkl`` / ``calib_<i>.pkl``, or for
    ``raw`` the mirrored folder. In dry-run: the folder the download would create. ``options`` go to
    ``fetch``."""
    if split not in DATASET_SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(DATASET_SPLITS)}")
    name, prefix = DATASET_SPLITS[split]
    root = fetch(name, out_dir, tool, dry_run, **options)  # type: ignore[arg-type]
    if dry_run or prefix is None:
        return root
    return find_sample_folder(root, prefix)


def fetch_model(
    format: Literal["onnx", "pytorch"],
    out_dir: str | Path,
    tool: Tool = "rclone",
    dry_run: bool = False,
    **options: object,
) -> Path:
    """Fetch an SSD-ResNet50 checkpoint; return the ``.onnx`` or ``.pth`` file path."""
    if format not in MODEL_FORMATS:
        raise ValueError(f"unknown model format {format!r}; use one of {', '.join(MODEL_FORMATS)}")
    return fetch(MODEL_FORMATS[format], out_dir, tool, dry_run, **options)  # type: ignore[arg-type]
