"""A memory-mapped sample store: one preprocessed split as one raw float32 file, read without copies.

The official set is one ~100 MB pickle per sample; loading the 128 performance samples unpickles
12.7 GB into private memory (and each pickle briefly twice). A store folder holds the same samples::

    store.json      manifest, written last: prefix, count, image_size, dtype, shape, config, ...
    images.f32      raw float32 (count, 3, H, W), C order, no header
    gt_boxes.npy    float32 (total_boxes, 7): every sample's ground truth, concatenated
    gt_offsets.npy  int64 (count + 1,): sample i's rows are gt_boxes[offsets[i]:offsets[i + 1]]

:class:`SampleStore` maps ``images.f32``; ``image(i)`` is a view into the mapping, so "loading" a
sample is at most touching its pages, and the page cache is shared by every process that reads it.

This module holds the format and the reading side: the file names and manifest checks,
:class:`SampleStore`, :class:`PickleDataset` and :func:`open_dataset`, which opens either a store or
a pickle folder behind one interface (:class:`Dataset`) so that the LoadGen QSL and the accuracy
script can use either; where a folder's store is (:func:`default_store_dir`, :func:`find_store`) and
what a dataset folder holds (:func:`dataset_problem`, :func:`recorded_config`). Writing a store
(``convert-store``, ``preprocess --store mmap``, ``run --store mmap``) is
:mod:`abtf_ssd.data.store_writer`'s.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from abtf_ssd.cognata import GT_COLUMNS
from abtf_ssd.data import preprocess

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
_DTYPE = np.dtype(np.float32)
_CHANNELS = 3
_PAGE = mmap.PAGESIZE
_SAMPLE_FILE = re.compile(r"([A-Za-z0-9-]+)_(\d+)\.pkl")
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
# Where a folder's store is, and what a dataset folder holds


def check_store_kind(kind: str, flag: str = "--store") -> str:
    """``kind`` when it is one of :data:`STORE_KINDS`; a ValueError naming ``flag`` otherwise."""
    if kind not in STORE_KINDS:
        raise ValueError(f"{flag}={kind}: unknown sample store; use {' or '.join(STORE_KINDS)}")
    return kind


def default_store_dir(pickle_dir: str | Path) -> Path:
    """The store folder of a pickle folder (or of the ``--out`` folder of ``preprocess --store mmap``):
    ``<pickle_dir>/mmap``."""
    return Path(pickle_dir) / DEFAULT_STORE_SUBDIR


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


def _holds_pickles(folder: Path) -> bool:
    """Whether ``folder`` holds a pickle set, finished or not (a manifest or any sample file)."""
    manifests = (preprocess.MANIFEST_NAME, preprocess.PARTIAL_MANIFEST_NAME)
    if any((folder / name).is_file() for name in manifests):
        return True
    return any(_SAMPLE_FILE.fullmatch(entry.name) for entry in folder.iterdir())
