"""Safe, resumable downloads of the official MLCommons Cognata artifacts: ``fetch``, ``fetch_dataset``,
``fetch_model``.

The artifacts, the tools and their commands are :mod:`abtf_ssd.data.download`'s; verification and
extraction are :mod:`abtf_ssd.data.extract`'s. Every ``fetch`` follows one protocol, so a final entry
in ``out_dir`` exists only when the whole download succeeded (an MLC cache entry built on it is never
half made):

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
(:class:`~abtf_ssd.data.download.InsufficientSpaceError`), so the rerun after freeing space downloads
nothing.
"""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path, PurePosixPath
from typing import Literal

from abtf_ssd.data.download import (
    ARTIFACTS,
    DATASET_SPLITS,
    MARKER_NAME,
    MODEL_FORMATS,
    R2_DOWNLOADER_NAMES,
    R2_DOWNLOADER_URL,
    RCLONE_INSTALL_HINT,
    TOOLS,
    Artifact,
    ChecksumError,
    DownloadError,
    Tool,
    UnsafeArchiveError,
    _run,
    _say,
    ensure_rclone_remote,
    find_r2_downloader,
    r2_command,
    rclone_command,
    rclone_config_commands,
    require_rclone,
)
from abtf_ssd.data.extract import _write_marker, extract_tarball, verify_file
from abtf_ssd.fileio import exclusive_lock

_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")


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
