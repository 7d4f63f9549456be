"""Verified and safe extraction of a downloaded artifact, and the completion marker that proves it.

:func:`verify_file` checks one downloaded file: non-empty, and of the size and sha256 that
``ARTIFACTS`` knows, where it knows them. :func:`extract_tarball` reads a tarball in one streaming
pass: every byte is read (gzip CRC and length checked) and hashed, every member is checked
(:func:`check_member`: no absolute paths, no ``..``, no link leaving the destination, no device
files) before it is extracted into a hidden temp folder, and that folder is renamed into place with
its completion marker only when all of it succeeded. Step 3 of :mod:`abtf_ssd.data.fetch`'s protocol.
"""

from __future__ import annotations

import datetime
import errno
import gzip
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from abtf_ssd.data.download import (
    MARKER_NAME,
    ChecksumError,
    DownloadError,
    InsufficientSpaceError,
    UnsafeArchiveError,
    _say,
)
from abtf_ssd.fileio import atomic_write_json

_CHUNK = 1 << 20


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
