"""Atomic file writes: a temporary file in the target's folder, fsync'd, then ``os.replace``.

A reader (or a run that crashed half-way) sees the old file or the whole new one, never a part.
The temporary file is created with the final mode (``0o644`` by default) through ``os.open``,
so the kernel applies the umask exactly as for a plain ``open(path, "w")``: the file ends up
``mode & ~umask``. (``tempfile.mkstemp`` would create it 0600, and ``os.replace`` keeps that.)
The temporary name is ``.<name>.<random>.tmp``: hidden, and removed again when the write fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

DEFAULT_MODE = 0o644
"""Mode of a written file before the umask: what ``open(path, "w")`` gives a non-executable file."""

_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
_NAME_ATTEMPTS = 100


def _create_temp(path: Path, mode: int) -> Path:
    """A new, empty, uniquely named file beside ``path`` with ``mode`` (umask applied)."""
    for _ in range(_NAME_ATTEMPTS):
        temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            os.close(os.open(temp, _CREATE_FLAGS, mode))
        except FileExistsError:
            continue
        return temp
    raise FileExistsError(
        f"{path.parent}: no free temporary name for {path.name} after {_NAME_ATTEMPTS} tries"
    )


def fsync_path(path: str | os.PathLike[str]) -> None:
    """Flush a file's (or a folder's: its entries') data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], mode: int = DEFAULT_MODE) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; write it, and on leaving it becomes ``path``.

    On a normal exit the temporary file is fsync'd and renamed over ``path`` (mode ``mode &
    ~umask``); on an exception it is removed and ``path`` is left as it was. The folder must
    exist. For writers that take a file name (``torch.save``, ``tarfile.open``, ``Image.save``).
    """
    path = Path(path)
    temp = _create_temp(path, mode)
    try:
        yield temp
        fsync_path(temp)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, mode: int = DEFAULT_MODE) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path`` as a Path."""
    path = Path(path)
    with atomic_output(path, mode) as temp, temp.open("wb") as handle:
        handle.write(data)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str, mode: int = DEFAULT_MODE) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path`` as a Path."""
    return atomic_write_bytes(path, text.encode("utf-8"), mode)


def atomic_write_json(
    path: str | os.PathLike[str],
    obj: Any,
    *,
    sort_keys: bool = False,
    default: Callable[[Any], Any] | None = None,
) -> Path:
    """Write ``obj`` as JSON (indent 2, a final newline) to ``path`` atomically; returns the Path.

    ``sort_keys`` and ``default`` are those of :func:`json.dumps`.
    """
    text = json.dumps(obj, indent=2, sort_keys=sort_keys, default=default) + "\n"
    return atomic_write_text(path, text)


@contextlib.contextmanager
def exclusive_lock(path: Path, busy: Callable[[], Exception]) -> Iterator[None]:
    """Hold an exclusive advisory lock on the file ``path`` so that two runs never write one folder.

    Raises ``busy()`` at once when another process holds it. The lock file is removed on exit.
    Where ``fcntl`` does not exist (Windows) there is no lock: one run per folder is the user's job.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    with path.open("a") as lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise busy() from None
        try:
            yield
        finally:
            path.unlink(missing_ok=True)
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
