"""Writing a memory-mapped sample store (:mod:`abtf_ssd.data.store`): resumable, from pickles or raw frames.

Two ways in, one writer behind them (a :data:`SampleSource`, ``index -> (img, gt_boxes)``):
:func:`convert_pickles_to_store` reads a pickle folder once with the safe loader
:func:`abtf_ssd.data.preprocess.load_sample` (``abtf-ssd convert-store``), and :func:`preprocess_to_store`
preprocesses raw frames with :func:`abtf_ssd.data.preprocess.preprocess_sample` straight into a store,
without pickles (``abtf-ssd preprocess --store mmap``). Both give the same bytes for the same frames.
A folder's store is ``<folder>/mmap`` (:func:`~abtf_ssd.data.store.default_store_dir`);
:func:`prepare_store` is what ``abtf-ssd run --store mmap`` calls: a store as it is, a pickle folder
converted once.

Writing is resumable: the images file is preallocated under a ``.partial`` name, each sample is
written at its offset, and ``convert.state.json`` records how many leading samples are complete
(``filled``) only after their bytes are on disk. A rerun continues from ``filled``. ``store.json``
appears only when every sample is in; without it the folder is refused.
"""

from __future__ import annotations

import contextlib
import errno
import json
import multiprocessing
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from tqdm import tqdm

from abtf_ssd.cognata import GT_COLUMNS
from abtf_ssd.config import get_config
from abtf_ssd.data import preprocess
from abtf_ssd.data.store import (
    _CHANNELS,
    _DTYPE,
    _PARTIAL_SUFFIX,
    _STATE_FILE,
    GT_BOXES_FILE,
    GT_OFFSETS_FILE,
    IMAGES_FILE,
    STORE_FORMAT,
    STORE_MANIFEST,
    STORE_VERSION,
    StoreError,
    _describe_pickles,
    _holds_pickles,
    _looks_like_store,
    default_store_dir,
)
from abtf_ssd.fileio import atomic_output, atomic_write_json, exclusive_lock, fsync_path

_GT_ROWS_PARTIAL = "gt_boxes.f32.partial"
_GT_COUNTS_PARTIAL = "gt_counts.i64.partial"
_LOCK_FILE = "convert.lock"

_PROVENANCE_KEYS = ("source", "split_rows")
"""Recorded in the manifest but not compared on a rerun: moving the pickle folder changes no sample,
and the split's row count follows from its checksum."""
_NOT_WRITABLE_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS)


class StoreNotWritableError(StoreError, PermissionError):
    """A store that has to be written into a folder this process cannot write (read-only, no access)."""


# ---------------------------------------------------------------------------------------------
# Writing a store: from pickles, straight from raw frames, or whichever a run needs


SampleSource = Callable[[int], tuple[np.ndarray, np.ndarray]]
"""``source(i) -> (img float32 (1, 3, H, W), gt_boxes (N, 7))``: where the samples a store is written
from come from. Picklable (an instance of a top-level class) so that spawn workers can receive it."""


@dataclass(frozen=True)
class PickleSource:
    """Samples read from ``<prefix>_<i>.pkl`` files with the safe loader."""

    folder: str
    prefix: str
    image_size: tuple[int, int]

    def __call__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        path = Path(self.folder) / preprocess.sample_name(self.prefix, index)
        sample = preprocess.load_sample(path, self.image_size)
        return sample["img"], sample["gt_boxes"]


@dataclass(frozen=True)
class FrameSource:
    """Samples preprocessed from raw frames by :func:`abtf_ssd.data.preprocess.preprocess_sample`, the step
    ``build_preprocessed`` pickles: the same bytes, without the pickle."""

    raw_root: str
    frames: tuple[tuple[str, str], ...]
    """``(png, annotation)`` of each split row, relative to ``raw_root``."""
    split_csv: str
    config_name: str

    def __call__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        png, ann = self.frames[index]
        root = Path(self.raw_root)
        return preprocess.preprocess_sample(index, root / png, root / ann, self.split_csv, self.config_name)


def convert_pickles_to_store(
    pickle_dir: str | Path,
    store_dir: str | Path,
    workers: int = 1,
    prefix: str | None = None,
    count: int | None = None,
    progress: bool = True,
) -> Path:
    """Convert a pickle folder (made by ``build_preprocessed`` or the official download) into a store.

    Args:
        pickle_dir: ``<prefix>_<i>.pkl`` files, with or without ``dataset.json``.
        store_dir: created if needed; holds one store.
        workers: processes reading pickles; the store's bytes do not depend on it.
        prefix: sample prefix; None takes the manifest's, or the only one among the files.
        count: the first ``count`` samples; None for all.
        progress: show a tqdm bar.

    Returns:
        ``store_dir``. A rerun after an interruption continues where the last one stopped; a rerun on a
        finished store of the same source returns at once (without writing: a read-only folder is fine).

    Raises:
        StoreError: a folder holding another store, too little disk space, an unfinished pickle set.
        StoreNotWritableError: ``store_dir`` cannot be created or written (read-only, no permission).
        preprocess.SampleFormatError, preprocess.UnsafePickleError: a bad pickle (named).
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    pickle_dir = Path(pickle_dir)
    source = _describe_pickles(pickle_dir, prefix)
    available = source["count"]
    if count is None:
        count = available
    if not 0 < count <= available:
        raise ValueError(f"count {count} must be in 1..{available} ({pickle_dir} has {available} samples)")
    image_size = source["image_size"]
    if image_size is None:  # an official download: no manifest, the first sample tells the size
        first = preprocess.load_sample(pickle_dir / preprocess.sample_name(source["prefix"], 0))
        image_size = tuple(first["img"].shape[2:])
        del first
    manifest = source["manifest"] or {}
    identity = _identity(
        str(pickle_dir.resolve()),
        source["prefix"],
        count,
        image_size,
        manifest.get("config"),
        manifest.get("split_csv"),
        manifest.get("split_csv_sha256"),
        manifest.get("split_rows"),
    )
    reader = PickleSource(str(pickle_dir), source["prefix"], tuple(int(n) for n in image_size))
    return _write_store(Path(store_dir), identity, reader, workers, progress, f"store {source['prefix']}")


def preprocess_to_store(
    raw_root: str | Path,
    split_csv: str | Path,
    out_dir: str | Path,
    prefix: str,
    config_name: str,
    workers: int | None = None,
    count: int | None = None,
    progress: bool = True,
) -> Path:
    """Preprocess the first ``count`` frames of a split straight into a store, ``<out_dir>/mmap``.

    The arguments are :func:`abtf_ssd.data.preprocess.build_preprocessed`'s, and so is every sample: the
    store's images and ground truth are byte for byte those of converting the pickles it would write,
    without the pickles on disk. Resumable and atomic like :func:`convert_pickles_to_store`.

    Returns:
        the store folder, ``<out_dir>/mmap``.

    Raises:
        PreprocessError: a missing or unreadable frame or annotation, a frame of the wrong size (named
            with its split CSV row).
        StoreError: a folder holding another store (another split, config or count), too little disk.
        StoreNotWritableError: the folder cannot be written.
    """
    config = get_config(config_name)
    raw_root, split_csv = Path(raw_root), Path(split_csv)
    frames, count, workers = preprocess.check_request(split_csv, prefix, count, workers)
    identity = _identity(
        str(raw_root.resolve()),
        prefix,
        count,
        config.image_size,
        config.name,
        split_csv.name,
        preprocess.file_sha256(split_csv),
        len(frames),
    )
    source = FrameSource(str(raw_root), tuple(frames[:count]), str(split_csv), config.name)
    desc = f"preprocess {prefix}"
    return _write_store(default_store_dir(out_dir), identity, source, workers, progress, desc)


def prepare_store(
    dataset_dir: str | Path, prefix: str | None = None, workers: int = 1, progress: bool = True
) -> Path:
    """The store a run with ``--store mmap`` reads for ``dataset_dir``, converting pickles once.

    * a store folder: itself;
    * the ``--out`` folder of ``preprocess --store mmap`` (no pickles): its ``mmap`` store;
    * a pickle folder: :func:`convert_pickles_to_store` into ``default_store_dir(dataset_dir)``; a
      rerun finds it finished and returns at once.

    Raises:
        FileNotFoundError: ``dataset_dir`` is not a folder.
        StoreNotWritableError: the store must be made but the pickle folder is read-only; the message
            says how to convert into a folder that can be written.
        StoreError, preprocess.SampleFormatError: as :func:`convert_pickles_to_store`.
    """
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise FileNotFoundError(f"dataset folder {dataset_dir} does not exist")
    if _looks_like_store(dataset_dir):
        return dataset_dir  # finished or not: opening it says which
    store_dir = default_store_dir(dataset_dir)
    if _looks_like_store(store_dir) and not _holds_pickles(dataset_dir):
        return store_dir  # written by preprocess --store mmap
    try:
        return convert_pickles_to_store(dataset_dir, store_dir, workers, prefix, progress=progress)
    except StoreNotWritableError as e:
        raise StoreNotWritableError(
            f"{e}: the pickle folder {dataset_dir} is read-only (an MLC cache entry of another user, a "
            f"read-only mount); convert it once into a folder you can write, `abtf-ssd convert-store "
            f"{dataset_dir} --out <folder>`, and run on that folder (--dataset-dir <folder>, with MLC "
            "--dataset_path=<folder>)"
        ) from None


def _identity(
    source: str,
    prefix: str,
    count: int,
    image_size: Iterable[int],
    config: str | None,
    split_csv: str | None,
    split_csv_sha256: str | None,
    split_rows: int | None,
) -> dict[str, Any]:
    """The manifest fields that say which samples a store holds (``source`` only records where from;
    ``split_rows``, the split's length, lets a valid run check that the store covers all of it)."""
    height, width = (int(n) for n in image_size)
    return {
        "format": STORE_FORMAT,
        "version": STORE_VERSION,
        "source": source,
        "prefix": prefix,
        "count": count,
        "image_size": [height, width],
        "dtype": _DTYPE.name,
        "shape": [count, _CHANNELS, height, width],
        "config": config,
        "split_csv": split_csv,
        "split_csv_sha256": split_csv_sha256,
        "split_rows": split_rows,
    }


def _write_store(
    store_dir: Path, identity: dict[str, Any], source: SampleSource, workers: int, progress: bool, desc: str
) -> Path:
    """Write (or resume, or find finished) the store of ``identity`` with the samples of ``source``."""
    finished = store_dir / STORE_MANIFEST
    if finished.is_file():  # nothing to write, so a folder this process cannot write is fine
        _check_same_store(finished, identity)
        return store_dir
    with contextlib.ExitStack() as stack:
        try:
            store_dir.mkdir(parents=True, exist_ok=True)
            stack.enter_context(_exclusive_lock(store_dir))
        except OSError as e:
            if e.errno not in _NOT_WRITABLE_ERRNOS:
                raise
            raise StoreNotWritableError(
                f"{store_dir}: cannot write the sample store there ({e.strerror})"
            ) from None
        if finished.is_file():  # finished between the check above and the lock
            _check_same_store(finished, identity)
            return store_dir
        filled, gt_rows = _resume(store_dir, identity)
        _fill(source, store_dir, identity, filled, gt_rows, workers, progress, desc)
        _finish(store_dir, identity)
    return store_dir


def _sample_bytes(identity: dict[str, Any]) -> int:
    height, width = identity["image_size"]
    return _CHANNELS * height * width * _DTYPE.itemsize


def _check_same_store(path: Path, identity: dict[str, Any]) -> None:
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"{path}: not valid JSON ({e}); delete {path.parent} to start over") from None
    differs = {
        k: (recorded.get(k), v)
        for k, v in identity.items()
        if k not in _PROVENANCE_KEYS and recorded.get(k) != v
    }
    if differs:
        raise StoreError(
            f"{path.parent} holds another store ({path.name}: recorded vs requested {differs}); "
            "use another folder or empty this one"
        )


def _resume(store_dir: Path, identity: dict[str, Any]) -> tuple[int, int]:
    """(filled, gt_rows) to continue from, after making the partial files agree with them."""
    state_path = store_dir / _STATE_FILE
    images = store_dir / (IMAGES_FILE + _PARTIAL_SUFFIX)
    rows_path, counts_path = store_dir / _GT_ROWS_PARTIAL, store_dir / _GT_COUNTS_PARTIAL
    filled, gt_rows = 0, 0
    if state_path.is_file():
        _check_same_store(state_path, identity)
        state = json.loads(state_path.read_text(encoding="utf-8"))
        filled, gt_rows = int(state["filled"]), int(state["gt_rows"])
    elif (store_dir / IMAGES_FILE).exists() or images.exists():
        raise StoreError(
            f"{store_dir} holds image data but neither {STORE_MANIFEST} nor {_STATE_FILE}; "
            "use another folder or empty this one"
        )
    row_bytes, count_bytes = gt_rows * GT_COLUMNS * _DTYPE.itemsize, filled * 8
    expected_images = identity["count"] * _sample_bytes(identity)
    images_in_place = _size(images) == expected_images or (
        filled == identity["count"]
        and _size(store_dir / IMAGES_FILE) == expected_images  # renamed by _finish
    )
    consistent = (
        filled > 0 and _size(rows_path) >= row_bytes and _size(counts_path) >= count_bytes and images_in_place
    )
    if not consistent:  # nothing committed yet, or partial files lost: start over
        filled, gt_rows, row_bytes, count_bytes = 0, 0, 0, 0
        # The state comes first: a crash while preallocating leaves a folder a rerun recognises.
        _write_json(state_path, {**identity, "filled": 0, "gt_rows": 0})
        (store_dir / IMAGES_FILE).unlink(missing_ok=True)
        _preallocate(images, expected_images)
    # Bytes past the committed ones belong to a sample whose commit never happened.
    for path, keep in ((rows_path, row_bytes), (counts_path, count_bytes)):
        with path.open("ab") as f:
            f.truncate(keep)
    return filled, gt_rows


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1


def _preallocate(path: Path, size: int) -> None:
    free = shutil.disk_usage(path.parent).free + max(_size(path), 0)
    if free < size:
        raise StoreError(
            f"{path}: the store needs {size} bytes ({size / 1e9:.1f} GB) but only {free} bytes "
            f"({free / 1e9:.1f} GB) are free in {path.parent}"
        )
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, size)
        if hasattr(os, "posix_fallocate"):
            # Reserve the blocks now so that a full disk fails here, not halfway through.
            with contextlib.suppress(OSError):
                os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)


_Task = tuple[int, str, int]
"""(index, images file, byte offset): plain values that pickle to a worker."""

_worker_source: SampleSource | None = None
"""The sample source of a worker process, set once by the pool's initializer."""


def _set_worker_source(source: SampleSource) -> None:
    global _worker_source
    _worker_source = source


def _write_sample(source: SampleSource, task: _Task) -> tuple[int, np.ndarray]:
    """Copy one sample's image into the images file at its offset; return the index and its ground
    truth for the parent to commit in order."""
    index, images_path, offset = task
    img, gt_boxes = source(index)
    image = np.ascontiguousarray(img, dtype=_DTYPE)
    fd = os.open(images_path, os.O_WRONLY)
    try:
        _pwrite_all(fd, memoryview(image).cast("B"), offset)
    finally:
        os.close(fd)
    return index, gt_boxes


def _write_sample_in_worker(task: _Task) -> tuple[int, np.ndarray]:
    """Worker entry point (top level, spawn-safe)."""
    assert _worker_source is not None, "the pool initializer sets the source"
    return _write_sample(_worker_source, task)


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written


def _fill(
    source: SampleSource,
    store_dir: Path,
    identity: dict[str, Any],
    filled: int,
    gt_rows: int,
    workers: int,
    progress: bool,
    desc: str,
) -> None:
    """Write samples ``filled .. count - 1``, committing each in index order."""
    count = identity["count"]
    if filled >= count:
        return
    images = store_dir / (IMAGES_FILE + _PARTIAL_SUFFIX)
    sample_bytes = _sample_bytes(identity)
    tasks: list[_Task] = [(i, str(images), i * sample_bytes) for i in range(filled, count)]
    state_path = store_dir / _STATE_FILE
    images_fd = os.open(images, os.O_RDWR)
    try:
        with (
            (store_dir / _GT_ROWS_PARTIAL).open("ab") as rows_file,
            (store_dir / _GT_COUNTS_PARTIAL).open("ab") as counts_file,
            tqdm(total=count, initial=filled, desc=desc, unit="sample", disable=not progress) as bar,
            _results(source, tasks, workers) as results,
        ):
            for index, gt_boxes in results:
                # Commit order: image bytes, then ground truth, then the state that counts them.
                os.fsync(images_fd)
                _append(rows_file, gt_boxes.astype(_DTYPE, copy=False))
                _append(counts_file, np.array([len(gt_boxes)], dtype=np.int64))
                filled, gt_rows = index + 1, gt_rows + len(gt_boxes)
                _write_json(state_path, {**identity, "filled": filled, "gt_rows": gt_rows})
                bar.update()
    finally:
        os.close(images_fd)


@contextlib.contextmanager
def _results(
    source: SampleSource, tasks: list[_Task], workers: int
) -> Iterator[Iterator[tuple[int, np.ndarray]]]:
    """Written samples in index order: inline for one worker, from a spawned pool otherwise."""
    workers = min(workers, len(tasks))
    if workers == 1:
        yield (_write_sample(source, task) for task in tasks)
        return
    # spawn: workers start clean, without inherited threads (tqdm's monitor, BLAS pools). The source
    # travels once per worker, not once per sample.
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_set_worker_source, initargs=(source,)) as pool:
        yield pool.imap(_write_sample_in_worker, tasks, chunksize=1)


def _append(f: BinaryIO, array: np.ndarray) -> None:
    f.write(np.ascontiguousarray(array).tobytes())
    f.flush()
    os.fsync(f.fileno())


def _finish(store_dir: Path, identity: dict[str, Any]) -> None:
    """Turn the complete partial files into the store; ``store.json`` last. Safe to rerun."""
    count = identity["count"]
    counts = np.fromfile(store_dir / _GT_COUNTS_PARTIAL, dtype=np.int64)
    rows = np.fromfile(store_dir / _GT_ROWS_PARTIAL, dtype=_DTYPE).reshape(-1, GT_COLUMNS)
    if counts.shape != (count,) or counts.sum() != len(rows):
        raise StoreError(
            f"{store_dir}: partial ground truth disagrees ({len(counts)} counts, {len(rows)} rows for "
            f"{count} samples); delete {store_dir} to start over"
        )
    offsets = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    _save_npy(store_dir / GT_BOXES_FILE, rows)
    _save_npy(store_dir / GT_OFFSETS_FILE, offsets)
    partial_images = store_dir / (IMAGES_FILE + _PARTIAL_SUFFIX)
    if partial_images.exists():
        os.replace(partial_images, store_dir / IMAGES_FILE)
        with contextlib.suppress(OSError):  # not every file system lets a folder be fsync'd
            fsync_path(store_dir)
    manifest = {
        **identity,
        "images": IMAGES_FILE,
        "gt_boxes": GT_BOXES_FILE,
        "gt_offsets": GT_OFFSETS_FILE,
        "gt_rows": int(len(rows)),
    }
    _write_json(store_dir / STORE_MANIFEST, manifest)
    for name in (_STATE_FILE, _GT_ROWS_PARTIAL, _GT_COUNTS_PARTIAL):
        (store_dir / name).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Atomic small files


def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_json(path, data, sort_keys=True)


def _save_npy(path: Path, array: np.ndarray) -> None:
    # A file object: given a name without .npy, np.save would add the suffix.
    with atomic_output(path) as temp, temp.open("wb") as f:
        np.save(f, array, allow_pickle=False)


def _exclusive_lock(store_dir: Path) -> contextlib.AbstractContextManager[None]:
    """One conversion per store folder at a time."""
    lock = store_dir / _LOCK_FILE
    return exclusive_lock(lock, lambda: StoreError(f"{store_dir}: another conversion holds {lock}"))
