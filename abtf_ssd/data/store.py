"""A memory-mapped sample store: one preprocessed split as one raw float32 file, read without copies.

The official set is one ~100 MB pickle per sample; loading the 128 performance samples unpickles
12.7 GB into private memory (and each pickle briefly twice). A store folder holds the same samples::

    store.json      manifest, written last: prefix, count, image_size, dtype, shape, config, ...
    images.f32      raw float32 (count, 3, H, W), C order, no header
    gt_boxes.npy    float32 (total_boxes, 7): every sample's ground truth, concatenated
    gt_offsets.npy  int64 (count + 1,): sample i's rows are gt_boxes[offsets[i]:offsets[i + 1]]

:class:`SampleStore` maps ``images.f32``; ``image(i)`` is a view into the mapping, so "loading" a
sample is at most touching its pages, and the page cache is shared by every process that reads it.

Two ways in, one writer behind them (a :data:`SampleSource`, ``index -> (img, gt_boxes)``):
:func:`convert_pickles_to_store` reads a pickle folder once with the safe loader
:func:`abtf_ssd.data.preprocess.load_sample` (``abtf-ssd convert-store``), and :func:`preprocess_to_store`
preprocesses raw frames with :func:`abtf_ssd.data.preprocess.preprocess_sample` straight into a store,
without pickles (``abtf-ssd preprocess --store mmap``). Both give the same bytes for the same frames.
A folder's store is ``<folder>/mmap`` (:func:`default_store_dir`); :func:`prepare_store` is what
``abtf-ssd run --store mmap`` calls: a store as it is, a pickle folder converted once.

Writing is resumable: the images file is preallocated under a ``.partial`` name, each sample is
written at its offset, and ``convert.state.json`` records how many leading samples are complete
(``filled``) only after their bytes are on disk. A rerun continues from ``filled``. ``store.json``
appears only when every sample is in; without it the folder is refused.

:func:`open_dataset` opens either a store or a pickle folder behind one interface (:class:`Dataset`)
so that the LoadGen QSL and the accuracy script can use either.
"""

from __future__ import annotations

import contextlib
import errno
import json
import mmap
import multiprocessing
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol, runtime_checkable

import numpy as np
from tqdm import tqdm

from abtf_ssd.cognata import GT_COLUMNS
from abtf_ssd.config import get_config
from abtf_ssd.data import preprocess
from abtf_ssd.fileio import atomic_output, atomic_write_json, exclusive_lock, fsync_path

STORE_MANIFEST = "store.json"
IMAGES_FILE = "images.f32"
GT_BOXES_FILE = "gt_boxes.npy"
GT_OFFSETS_FILE = "gt_offsets.npy"
STORE_FORMAT = "abtf-ssd-sample-store"
STORE_VERSION = 1
DEFAULT_STORE_SUBDIR = "mmap"
"""Where a folder's store lives: ``<pickle folder>/mmap``, and ``<--out>/mmap`` for
``abtf-ssd preprocess --store mmap`` (:func:`default_store_dir`)."""
STORE_KINDS = ("pickle", "mmap")
"""The ``--store`` choices: ``pickle`` (the default: one pickle per sample, unpickled into memory) or
``mmap`` (this module's store, memory-mapped)."""

_PARTIAL_SUFFIX = ".partial"
_STATE_FILE = "convert.state.json"
_GT_ROWS_PARTIAL = "gt_boxes.f32.partial"
_GT_COUNTS_PARTIAL = "gt_counts.i64.partial"
_LOCK_FILE = "convert.lock"

_PROVENANCE_KEYS = ("source", "split_rows")
"""Recorded in the manifest but not compared on a rerun: moving the pickle folder changes no sample,
and the split's row count follows from its checksum."""
_DTYPE = np.dtype(np.float32)
_CHANNELS = 3
_PAGE = mmap.PAGESIZE
_SAMPLE_FILE = re.compile(r"([A-Za-z0-9-]+)_(\d+)\.pkl")
_NOT_WRITABLE_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS)
_NO_SAMPLES = "holds no preprocessed samples"


class StoreError(RuntimeError):
    """A store that cannot be written or read; the message names the file and what is wrong."""


class MissingSamplesError(StoreError, FileNotFoundError):
    """A pickle folder without the sample files its numbering needs (none, or a gap)."""


class UnknownPrefixError(StoreError):
    """A folder holding samples of several prefixes and no prefix asked for; ``prefixes`` lists them."""

    def __init__(self, message: str, prefixes: list[str]) -> None:
        super().__init__(message)
        self.prefixes = prefixes


class StoreNotWritableError(StoreError, PermissionError):
    """A store that has to be written into a folder this process cannot write (read-only, no access)."""


@runtime_checkable
class Dataset(Protocol):
    """What the QSL and the accuracy script need from a preprocessed split, pickles or store."""

    prefix: str

    def __len__(self) -> int: ...

    def image(self, index: int) -> np.ndarray:
        """float32 (1, 3, H, W) network input of sample ``index``."""
        ...

    def gt_boxes(self, index: int) -> np.ndarray:
        """float32 (N, 7) rows ``[x1, y1, x2, y2, label, 0, 0]`` in original pixels."""
        ...

    def load(self, indices: Iterable[int]) -> None:
        """Make the images of ``indices`` ready in memory (LoadGen's LoadSamplesToRam)."""
        ...

    def unload(self, indices: Iterable[int]) -> None:
        """Release what :meth:`load` holds for ``indices``."""
        ...


# ---------------------------------------------------------------------------------------------
# Reading a store


class SampleStore:
    """A finished store folder, memory-mapped read-only from the file's point of view.

    The mapping is copy-on-write (``MAP_PRIVATE``): the arrays are writable for libraries that insist
    (``torch.from_numpy`` warns on read-only ones), but a write stays in this process and never
    reaches ``images.f32``.
    """

    def __init__(
        self,
        store_dir: Path,
        manifest: dict[str, Any],
        mapping: mmap.mmap,
        gt_rows: np.ndarray,
        offsets: np.ndarray,
    ) -> None:
        count, height, width = manifest["count"], *manifest["image_size"]
        self.store_dir = store_dir
        self.manifest = manifest
        self.prefix: str = manifest["prefix"]
        self.image_size: tuple[int, int] = tuple(manifest["image_size"])
        self.config_name: str | None = manifest.get("config")
        self._mapping = mapping
        self._images = np.frombuffer(mapping, dtype=_DTYPE).reshape(count, _CHANNELS, height, width)
        self._sample_bytes = self._images[0].nbytes
        self._gt_rows = gt_rows
        self._offsets = offsets
        self.loaded: set[int] = set()

    @classmethod
    def open(cls, store_dir: str | Path) -> SampleStore:
        """Map a store folder, checking the manifest against the files.

        Raises:
            StoreError: no ``store.json`` (unfinished or not a store), a manifest that is not this
                format, an images file of the wrong size, ground-truth arrays that do not fit.
        """
        store_dir = Path(store_dir)
        manifest = read_store_manifest(store_dir)
        count = manifest["count"]
        height, width = manifest["image_size"]
        images_path = store_dir / manifest["images"]
        expected = count * _CHANNELS * height * width * _DTYPE.itemsize
        try:
            size = images_path.stat().st_size
        except FileNotFoundError:
            raise StoreError(
                f"{images_path} does not exist ({store_dir / STORE_MANIFEST} names it)"
            ) from None
        if size != expected:
            raise StoreError(
                f"{images_path}: {size} bytes, but {STORE_MANIFEST} describes {count} float32 images of "
                f"3x{height}x{width} = {expected} bytes ({'truncated' if size < expected else 'too long'})"
            )
        with images_path.open("rb") as f:
            mapping = mmap.mmap(f.fileno(), expected, access=mmap.ACCESS_COPY)
        gt_rows, offsets = _read_ground_truth(store_dir, manifest)
        return cls(store_dir, manifest, mapping, gt_rows, offsets)

    def __len__(self) -> int:
        return self._images.shape[0]

    def __repr__(self) -> str:
        height, width = self.image_size
        return f"SampleStore({str(self.store_dir)!r}, {len(self)} x 3x{height}x{width} {self.prefix!r})"

    def _check(self, index: int) -> int:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"{self.store_dir}: sample {index} out of range 0..{len(self) - 1}")
        return index

    def image(self, index: int) -> np.ndarray:
        """float32 (1, 3, H, W) view into the mapping; no copy."""
        index = self._check(index)
        return self._images[index : index + 1]

    def gt_boxes(self, index: int) -> np.ndarray:
        """float32 (N, 7) view of the sample's ground-truth rows."""
        index = self._check(index)
        return self._gt_rows[self._offsets[index] : self._offsets[index + 1]]

    def load(self, indices: Iterable[int], touch: bool = True) -> None:
        """Bring the images of ``indices`` into the page cache and this process's page tables.

        ``touch=False`` only records them: the first inference on a sample then pays its page faults
        (and, on a cold cache, the disk read) inside the timed query.
        """
        indices = [self._check(index) for index in indices]
        if touch:
            # Ask for every image first so that the disk reads overlap, then fault each one in.
            for index in indices:
                _advise_will_need(self._mapping, index * self._sample_bytes, self._sample_bytes)
            for index in indices:
                _touch_pages(self._images[index])
        self.loaded.update(indices)

    def unload(self, indices: Iterable[int]) -> None:
        """Forget ``indices``; the kernel reclaims the clean pages when it needs the memory."""
        for index in indices:
            self.loaded.discard(int(index))


def read_store_manifest(store_dir: str | Path) -> dict[str, Any]:
    """The ``store.json`` of a finished store, checked for the fields the reader relies on."""
    store_dir = Path(store_dir)
    path = store_dir / STORE_MANIFEST
    if not path.is_file():
        hint = ""
        if (store_dir / _STATE_FILE).is_file():
            hint = (
                " (writing it is unfinished: rerun the conversion, or `abtf-ssd preprocess --store mmap`, "
                "that made it; it continues where it stopped)"
            )
        raise StoreError(f"{path} does not exist: {store_dir} is not a finished sample store{hint}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != STORE_FORMAT:
        raise StoreError(f"{path}: not a sample store manifest (no 'format': {STORE_FORMAT!r})")
    if manifest.get("version") != STORE_VERSION:
        raise StoreError(
            f"{path}: store version {manifest.get('version')!r}, this reader knows {STORE_VERSION}"
        )
    count, size = manifest.get("count"), manifest.get("image_size")
    valid = (
        isinstance(count, int)
        and count > 0
        and isinstance(size, list)
        and len(size) == 2
        and all(isinstance(n, int) and n > 0 for n in size)
        and manifest.get("dtype") == _DTYPE.name
        and manifest.get("shape") == [count, _CHANNELS, *size]
        and isinstance(manifest.get("prefix"), str)
        and all(_plain_name(manifest.get(key)) for key in ("images", "gt_boxes", "gt_offsets"))
    )
    if not valid:
        raise StoreError(
            f"{path}: inconsistent manifest (count {count!r}, image_size {size!r}, dtype "
            f"{manifest.get('dtype')!r}, shape {manifest.get('shape')!r}, prefix {manifest.get('prefix')!r}, "
            f"files {[manifest.get(key) for key in ('images', 'gt_boxes', 'gt_offsets')]!r})"
        )
    return manifest


def _plain_name(name: Any) -> bool:
    """A file name inside the store folder: no separators, not '.' or '..'."""
    return (
        isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name and "\\" not in name
    )


def _read_ground_truth(store_dir: Path, manifest: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    rows_path, offsets_path = store_dir / manifest["gt_boxes"], store_dir / manifest["gt_offsets"]
    rows, offsets = _load_npy(rows_path), _load_npy(offsets_path)
    if rows.dtype != _DTYPE or rows.ndim != 2 or rows.shape[1] != GT_COLUMNS:
        raise StoreError(f"{rows_path}: expected float32 (N, {GT_COLUMNS}), found {rows.dtype} {rows.shape}")
    count = manifest["count"]
    if offsets.dtype != np.int64 or offsets.shape != (count + 1,):
        raise StoreError(
            f"{offsets_path}: expected int64 ({count + 1},), found {offsets.dtype} {offsets.shape}"
        )
    if offsets[0] != 0 or offsets[-1] != len(rows) or np.any(np.diff(offsets) < 0):
        raise StoreError(
            f"{offsets_path}: offsets must rise from 0 to {len(rows)} (the rows of {rows_path.name}), "
            f"found {offsets[0]} .. {offsets[-1]}"
        )
    return rows, offsets


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise StoreError(f"{path} does not exist") from None
    except (ValueError, OSError, EOFError) as e:
        raise StoreError(f"{path}: not a readable .npy array ({e})") from None


def _advise_will_need(mapping: mmap.mmap, offset: int, length: int) -> None:
    """Start reading a byte range of the mapping in the background: one large read-ahead instead of a
    small one per page fault (a cold 8 MP image loads about twice as fast)."""
    if hasattr(mmap, "MADV_WILLNEED"):
        aligned = offset - offset % _PAGE
        with contextlib.suppress(OSError, ValueError):
            mapping.madvise(mmap.MADV_WILLNEED, aligned, length + offset - aligned)


def _touch_pages(image: np.ndarray) -> None:
    """Fault in every page of a mapped image by reading one float from each (the sum is discarded)."""
    np.add.reduce(image.reshape(-1)[:: _PAGE // _DTYPE.itemsize])


# ---------------------------------------------------------------------------------------------
# Reading pickles through the same interface


class PickleDataset:
    """A folder of ``<prefix>_<i>.pkl``: :meth:`load` unpickles into memory, as the reference QSL does.

    ``image`` of a sample that is not loaded reads it from disk without keeping it. Ground truth is
    small and kept once read.
    """

    def __init__(
        self, folder: str | Path, prefix: str | None = None, image_size: tuple[int, int] | None = None
    ):
        self.folder = Path(folder)
        source = _describe_pickles(self.folder, prefix)
        self.prefix: str = source["prefix"]
        self.count: int = source["count"]
        self.manifest: dict[str, Any] | None = source["manifest"]
        self.image_size = tuple(image_size) if image_size is not None else source["image_size"]
        self.images: dict[int, np.ndarray] = {}
        self._gt_boxes: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return f"PickleDataset({str(self.folder)!r}, {self.count} x {self.prefix!r})"

    def path(self, index: int) -> Path:
        return self.folder / preprocess.sample_name(self.prefix, index)

    def _read(self, index: int) -> dict[str, np.ndarray]:
        index = int(index)
        if not 0 <= index < self.count:
            raise IndexError(f"{self.folder}: sample {index} out of range 0..{self.count - 1}")
        sample = preprocess.load_sample(self.path(index), self.image_size)
        self._gt_boxes[index] = sample["gt_boxes"]
        return sample

    def image(self, index: int) -> np.ndarray:
        cached = self.images.get(int(index))
        return cached if cached is not None else self._read(index)["img"]

    def gt_boxes(self, index: int) -> np.ndarray:
        cached = self._gt_boxes.get(int(index))
        return cached if cached is not None else self._read(index)["gt_boxes"]

    def load(self, indices: Iterable[int]) -> None:
        """Unpickle each sample into memory; stops at the first bad one (the message names its file)."""
        for index in indices:
            if int(index) not in self.images:
                self.images[int(index)] = self._read(index)["img"]

    def unload(self, indices: Iterable[int]) -> None:
        for index in indices:
            self.images.pop(int(index), None)


def open_dataset(
    path: str | Path, prefix: str | None = None, image_size: tuple[int, int] | None = None
) -> SampleStore | PickleDataset:
    """A store folder as :class:`SampleStore`, a pickle folder as :class:`PickleDataset`.

    A folder is a store when it has ``store.json`` or any file a conversion writes (an unfinished or
    damaged store is then refused, not read as pickles).

    Args:
        path: the folder.
        prefix: the sample prefix expected (an official split's: :data:`~abtf_ssd.cognata.SPLIT_PREFIXES`);
            None accepts the folder's.
        image_size: (H, W) the images must have; None accepts the folder's.

    Raises:
        FileNotFoundError: ``path`` is not a folder.
        StoreError: an unfinished or damaged store, or a prefix / image size other than expected.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"dataset folder {path} does not exist")
    if _looks_like_store(path):
        dataset: SampleStore | PickleDataset = SampleStore.open(path)
    else:
        dataset = PickleDataset(path, prefix, image_size)
    if prefix is not None and dataset.prefix != prefix:
        raise StoreError(f"{path}: holds {dataset.prefix!r} samples, expected {prefix!r}")
    if (
        image_size is not None
        and isinstance(dataset, SampleStore)
        and dataset.image_size != tuple(image_size)
    ):
        raise StoreError(f"{path}: images are {dataset.image_size} pixels, expected {tuple(image_size)}")
    return dataset


def _looks_like_store(folder: Path) -> bool:
    markers = (STORE_MANIFEST, _STATE_FILE, IMAGES_FILE, IMAGES_FILE + _PARTIAL_SUFFIX)
    return any((folder / name).exists() for name in markers)


def _describe_pickles(folder: Path, prefix: str | None) -> dict[str, Any]:
    """prefix, count, image_size (or None), config, split checksum and manifest of a pickle folder."""
    if not folder.is_dir():
        raise FileNotFoundError(f"pickle folder {folder} does not exist")
    try:
        manifest = preprocess.read_manifest(folder)
    except preprocess.PreprocessError as e:
        raise StoreError(str(e)) from None
    if manifest is None and (folder / preprocess.PARTIAL_MANIFEST_NAME).is_file():
        raise StoreError(
            f"{folder / preprocess.PARTIAL_MANIFEST_NAME}: preprocessing into {folder} is unfinished; "
            "rerun it before using the samples"
        )
    if manifest is not None:
        if prefix is not None and manifest.get("prefix") != prefix:
            raise StoreError(
                f"{folder / preprocess.MANIFEST_NAME}: holds {manifest.get('prefix')!r} samples, "
                f"expected {prefix!r}"
            )
        size = manifest.get("image_size")
        return {
            "prefix": manifest["prefix"],
            "count": manifest["count"],
            "image_size": tuple(size) if size else None,
            "manifest": manifest,
        }
    prefix, count = count_sample_files(folder, prefix)
    return {"prefix": prefix, "count": count, "image_size": None, "manifest": None}


def count_sample_files(folder: Path, prefix: str | None = None) -> tuple[str, int]:
    """Prefix and number of the ``<prefix>_<i>.pkl`` files of a folder, by their names alone.

    ``prefix`` None: the folder's only one. The files must be numbered 0 .. n - 1 without a gap;
    otherwise :class:`MissingSamplesError` (a FileNotFoundError too) names the first missing one.
    """
    numbers: dict[str, list[int]] = {}
    for entry in folder.iterdir():
        match = _SAMPLE_FILE.fullmatch(entry.name)
        if match:
            numbers.setdefault(match.group(1), []).append(int(match.group(2)))
    if prefix is None:
        if not numbers:
            raise MissingSamplesError(f"{folder}: {_NO_SAMPLES} (no <prefix>_<i>.pkl files)")
        if len(numbers) != 1:
            prefixes = sorted(numbers)
            raise UnknownPrefixError(
                f"{folder}: cannot tell the sample prefix (prefixes found: {', '.join(prefixes)})", prefixes
            )
        prefix = next(iter(numbers))
    indices = sorted(numbers.get(prefix, []))
    if not indices:
        others = f"; it holds {', '.join(sorted(numbers))} samples" if numbers else ""
        raise MissingSamplesError(
            f"{folder}: {_NO_SAMPLES} (no {preprocess.sample_name(prefix, 0)} ... files{others})"
        )
    if indices[-1] != len(indices) - 1:
        missing = next(i for i, found in enumerate(indices) if i != found)
        raise MissingSamplesError(
            f"{folder}: {preprocess.sample_name(prefix, missing)} is missing ({len(indices)} files up to "
            f"{preprocess.sample_name(prefix, indices[-1])})"
        )
    return prefix, len(indices)


# ---------------------------------------------------------------------------------------------
# Writing a store: from pickles, straight from raw frames, or whichever a run needs


def check_store_kind(kind: str, flag: str = "--store") -> str:
    """``kind`` when it is one of :data:`STORE_KINDS`; a ValueError naming ``flag`` otherwise."""
    if kind not in STORE_KINDS:
        raise ValueError(f"{flag}={kind}: unknown sample store; use {' or '.join(STORE_KINDS)}")
    return kind


def default_store_dir(pickle_dir: str | Path) -> Path:
    """The store folder of a pickle folder (or of the ``--out`` folder of ``preprocess --store mmap``):
    ``<pickle_dir>/mmap``."""
    return Path(pickle_dir) / DEFAULT_STORE_SUBDIR


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


def find_store(folder: str | Path) -> Path | None:
    """The finished store holding ``folder``'s samples: ``folder`` itself or ``default_store_dir(folder)``
    (with ``store.json``); None when neither is one."""
    for candidate in (Path(folder), default_store_dir(folder)):
        if (candidate / STORE_MANIFEST).is_file():
            return candidate
    return None


def dataset_problem(folder: str | Path) -> str | None:
    """Why ``folder`` cannot be a preprocessed dataset at all, in one line, or None.

    Missing, not a folder, or holding neither ``<prefix>_<i>.pkl`` files (nor a manifest of them)
    nor a memory-mapped store, in itself or in ``<folder>/mmap``. Whether the samples are complete
    is :func:`open_dataset`'s to say.
    """
    folder = Path(folder)
    if not folder.exists():
        return f"dataset folder {folder} does not exist"
    if not folder.is_dir():
        return f"dataset path {folder} is a file, not a folder of preprocessed samples"
    if _looks_like_store(folder) or _looks_like_store(default_store_dir(folder)) or _holds_pickles(folder):
        return None
    return (
        f"dataset folder {folder} {_NO_SAMPLES} (no <prefix>_<i>.pkl files such as val_0.pkl, no "
        "memory-mapped store): give the folder that preprocessing or the download wrote"
    )


def check_dataset_folder(folder: str | Path) -> Path:
    """``folder`` as a Path when :func:`dataset_problem` finds nothing wrong.

    Raises:
        FileNotFoundError: it does not exist, or holds no samples (:class:`MissingSamplesError`).
        NotADirectoryError: it is a file.
    """
    folder = Path(folder)
    problem = dataset_problem(folder)
    if problem is None:
        return folder
    if not folder.exists():
        raise FileNotFoundError(problem)
    if not folder.is_dir():
        raise NotADirectoryError(problem)
    raise MissingSamplesError(problem)


def recorded_config(folder: str | Path) -> str | None:
    """The model config a dataset folder was made for: a store's ``store.json`` or a pickle folder's
    ``dataset.json`` says; None when it says nothing (the official download).

    Raises:
        FileNotFoundError, NotADirectoryError: as :func:`check_dataset_folder` (no samples at all).
    """
    folder = check_dataset_folder(folder)
    if _looks_like_store(folder):
        return read_store_manifest(folder).get("config")
    manifest = preprocess.read_manifest(folder)
    return manifest.get("config") if manifest else None


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


def _holds_pickles(folder: Path) -> bool:
    """Whether ``folder`` holds a pickle set, finished or not (a manifest or any sample file)."""
    manifests = (preprocess.MANIFEST_NAME, preprocess.PARTIAL_MANIFEST_NAME)
    if any((folder / name).is_file() for name in manifests):
        return True
    return any(_SAMPLE_FILE.fullmatch(entry.name) for entry in folder.iterdir())


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
