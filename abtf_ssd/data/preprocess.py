"""Raw Cognata frames -> the official preprocessed pickles, and a safe reader for them.

One pickle per sample, ``<prefix>_<i>.pkl`` (``i`` = row index in the split CSV; the official splits'
prefixes are :data:`~abtf_ssd.cognata.SPLIT_PREFIXES`), holding the dict
``{"img": float32 (1, 3, H, W), "gt_boxes": float32 (N, 7)}`` that MLCommons distributes as
``val_2d`` / ``calib_2d``. ``img`` is the frame as RGB, PIL-bilinear-resized to the config's
``image_size`` when that differs from the frame, divided by 255 and normalised with
:data:`~abtf_ssd.config.MEAN` / :data:`~abtf_ssd.config.STD`, every step in float32 exactly as
torchvision's ``ToTensor`` then ``Normalize`` compute it. ``gt_boxes`` comes from
:func:`abtf_ssd.cognata.read_annotation`.

:func:`build_preprocessed` writes a set with N worker processes, atomically (:mod:`abtf_ssd.fileio`),
resumably (a rerun skips samples whose file is complete), and finishes with a manifest
``dataset.json``; while a run is unfinished the folder holds ``dataset.partial.json`` instead.
One set per folder. :func:`preprocess_sample` is the step for one frame, shared with
:func:`abtf_ssd.data.store_writer.preprocess_to_store`, which writes the same samples as a
memory-mapped store.

Pickles from a download can run code when loaded: :func:`load_sample` unpickles with an
allow-list of the few numpy globals an ndarray needs and refuses everything else.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib
import io
import json
import multiprocessing
import os
import pickle
import pickletools
import shutil
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from abtf_ssd.cognata import GT_COLUMNS, CognataFormatError, read_annotation, read_split
from abtf_ssd.config import MEAN, STD, SSDConfig, get_config
from abtf_ssd.fileio import atomic_output, atomic_write_json, exclusive_lock

PICKLE_PROTOCOL = 4
"""Protocol 4 is what ``pickle.dump`` writes by default on Python 3.8-3.13 (the reference's); pinned so
that the bytes do not change with Python 3.14's default of 5."""

MANIFEST_NAME = "dataset.json"
PARTIAL_MANIFEST_NAME = "dataset.partial.json"
_LOCK_NAME = "preprocess.lock"

_FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)

_SAMPLE_OVERHEAD_BYTES = 64 * 1024
"""Pickle framing plus a generous ground-truth table, added to the image bytes per sample."""


class PreprocessError(RuntimeError):
    """Preprocessing cannot go on; the message names the file and, for a frame, the split CSV row."""


class DiskSpaceError(PreprocessError):
    """The output folder's file system has too little free space for the samples still to write."""


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A pickle asked for a global outside the allow-list; nothing it asked for was called.

    Also a ValueError: bad input, reported like every other malformed file (one line from the CLI)."""


SafeUnpickleError = UnsafePickleError
"""Alias: the name docs/ARCHITECTURE.md uses."""


class SampleFormatError(ValueError):
    """A preprocessed sample that is not a complete pickle of the official dict layout."""


# ---------------------------------------------------------------------------------------------
# One frame


def preprocess_frame(png_path: str | Path, config: SSDConfig) -> np.ndarray:
    """The network input of one frame.

    Args:
        png_path: an image file PIL can read; converted to RGB.
        config: its ``image_size`` (H, W) is the output size.

    Returns:
        float32 array (1, 3, H, W): ``(pixel / 255 - MEAN[c]) / STD[c]``, each step rounded to float32.
    """
    with Image.open(png_path) as image:
        rgb = image.convert("RGB")
    return normalize_image(rgb, config.image_size)


def normalize_image(rgb: Image.Image, image_size: tuple[int, int]) -> np.ndarray:
    """An RGB PIL image -> float32 (1, 3, H, W) network input; ``image_size`` is (H, W)."""
    height, width = image_size
    if rgb.size != (width, height):
        rgb = rgb.resize((width, height), Image.Resampling.BILINEAR)
    pixels = np.asarray(rgb)
    out = np.empty((1, 3, height, width), dtype=np.float32)
    for channel, (mean, std) in enumerate(zip(MEAN, STD, strict=True)):
        # In place, one channel at a time: the same float32 operations as the array expression,
        # without three extra image-sized temporaries on 8-megapixel frames.
        plane = out[0, channel]
        np.divide(pixels[:, :, channel], np.float32(255), out=plane, dtype=np.float32)
        plane -= np.float32(mean)
        plane /= np.float32(std)
    return out


def sample_name(prefix: str, index: int) -> str:
    """File name of sample ``index``: ``<prefix>_<index>.pkl``."""
    return f"{prefix}_{index}.pkl"


def write_sample(path: str | Path, img: np.ndarray, gt_boxes: np.ndarray) -> None:
    """Write one sample pickle atomically (:func:`abtf_ssd.fileio.atomic_output`)."""
    sample = {"img": img, "gt_boxes": gt_boxes}
    with atomic_output(path) as temp, temp.open("wb") as f:
        pickle.dump(sample, f, protocol=PICKLE_PROTOCOL)


# ---------------------------------------------------------------------------------------------
# Safe loading


def _numpy_internal(module_name: str, name: str) -> Any:
    # numpy 2 keeps these in numpy._core; numpy 1 only has numpy.core. Importing numpy._core first
    # keeps numpy 2's deprecation shim for numpy.core out of the way.
    for package in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{package}.{module_name}"), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"numpy has no {module_name}.{name}")


def _latin1_encode(text: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """Stand-in for ``_codecs.encode``, which protocols 0-2 use to spell bytes; latin-1 only, so that
    no other codec can be reached."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise UnsafePickleError(f"refused _codecs.encode with encoding {encoding!r}, errors {errors!r}")
    return text.encode("latin-1")


def _allow_list() -> dict[tuple[str, str], Any]:
    """(module, name) a sample pickle may reference -> the object handed to the unpickler."""
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    # numpy 2 writes arrays as numpy._core.multiarray._reconstruct, numpy 1 as numpy.core.multiarray...;
    # protocol 5 uses numeric._frombuffer (np.frombuffer + reshape). Both spellings map to the
    # installed numpy's function.
    for module_name, name in (("multiarray", "_reconstruct"), ("numeric", "_frombuffer")):
        function = _numpy_internal(module_name, name)
        for package in ("numpy._core", "numpy.core"):
            allowed[(f"{package}.{module_name}", name)] = function
    return allowed


_ALLOWED_GLOBALS = _allow_list()


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, source: Path) -> None:
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self._source}: refused global {module}.{name}; a sample pickle may reference only "
                f"{sorted(f'{m}.{n}' for m, n in _ALLOWED_GLOBALS)}"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self._source}: refused persistent id {pid!r}")


def safe_unpickle(path: str | Path) -> Any:
    """Unpickle a file admitting only the numpy globals that arrays and dtypes need.

    Raises:
        UnsafePickleError: any other global, before anything is called.
        SampleFormatError: a truncated or corrupt pickle.
    """
    path = Path(path)
    with path.open("rb") as f:
        try:
            return _NumpyOnlyUnpickler(f, path).load()
        except UnsafePickleError as e:
            if str(path) in str(e):
                raise
            raise UnsafePickleError(f"{path}: {e}") from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
            problem = f"{type(e).__name__}: {e}"
            raise SampleFormatError(f"{path}: not a complete sample pickle ({problem})") from None


def load_sample(path: str | Path, image_size: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """Load and check one preprocessed sample.

    Args:
        path: a ``<prefix>_<i>.pkl`` file.
        image_size: (H, W) the image must have; None accepts any.

    Returns:
        ``{"img": float32 (1, 3, H, W), "gt_boxes": float32 (N, 7)}``. A ``gt_boxes`` of another real
        dtype (the reference's ``torch.tensor`` infers int64 when a frame's coordinates are all
        integers) is converted to float32; an empty one of shape (0,) becomes (0, 7).

    Raises:
        UnsafePickleError: the pickle references anything but numpy arrays.
        SampleFormatError: wrong keys, types, dtypes or shapes; the message names the file.
    """
    path = Path(path)
    sample = safe_unpickle(path)
    if not isinstance(sample, dict) or set(sample) != {"img", "gt_boxes"}:
        found = sorted(map(str, sample)) if isinstance(sample, dict) else type(sample).__name__
        raise SampleFormatError(f"{path}: expected a dict with keys ['gt_boxes', 'img'], found {found}")
    img, gt_boxes = sample["img"], sample["gt_boxes"]
    if not isinstance(img, np.ndarray) or img.dtype != np.float32 or img.ndim != 4 or img.shape[:2] != (1, 3):
        raise SampleFormatError(f"{path}: 'img' must be a float32 array (1, 3, H, W), found {_describe(img)}")
    if image_size is not None and img.shape[2:] != tuple(image_size):
        raise SampleFormatError(f"{path}: 'img' is {img.shape[2:]} pixels, expected {tuple(image_size)}")
    if not isinstance(gt_boxes, np.ndarray) or gt_boxes.dtype.kind not in "iuf":
        raise SampleFormatError(f"{path}: 'gt_boxes' must be a numeric array, found {_describe(gt_boxes)}")
    if gt_boxes.size == 0:
        gt_boxes = gt_boxes.reshape(0, GT_COLUMNS)
    if gt_boxes.ndim != 2 or gt_boxes.shape[1] != GT_COLUMNS:
        raise SampleFormatError(f"{path}: 'gt_boxes' must be (N, {GT_COLUMNS}), found {gt_boxes.shape}")
    return {"img": img, "gt_boxes": gt_boxes.astype(np.float32, copy=False)}


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array {value.shape}"
    return type(value).__name__


# ---------------------------------------------------------------------------------------------
# Completeness without loading: a 100 MB sample is checked by walking its opcodes and skipping
# over the long byte strings, so a resume over 6000 samples reads kilobytes, not 600 GB.

_OPCODES = {op.code.encode("latin-1"): op for op in pickletools.opcodes}
_LENGTH_PREFIX_BYTES = {
    pickletools.TAKEN_FROM_ARGUMENT1: (1, False),
    pickletools.TAKEN_FROM_ARGUMENT4: (4, True),
    pickletools.TAKEN_FROM_ARGUMENT4U: (4, False),
    pickletools.TAKEN_FROM_ARGUMENT8U: (8, False),
}
_MAX_OPCODES = 1_000_000


def is_complete_pickle(path: str | Path) -> bool:
    """Whether ``path`` holds one whole pickle: every opcode known, every argument present, and
    the STOP opcode is the last byte. A file cut short anywhere fails; nothing is unpickled."""
    try:
        with Path(path).open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            return _walk_to_stop(f, size)
    except OSError:
        return False


def _walk_to_stop(f: BinaryIO, size: int) -> bool:
    for _ in range(_MAX_OPCODES):
        code = f.read(1)
        op = _OPCODES.get(code)
        if op is None:
            return False
        if op.name == "STOP":
            return f.tell() == size
        arg = op.arg
        if arg is None:
            continue
        if arg.n >= 0:
            if len(f.read(arg.n)) != arg.n:
                return False
        elif arg.n == pickletools.UP_TO_NEWLINE:
            lines = 2 if arg.name.endswith("_pair") else 1
            for _ in range(lines):
                if not f.readline(1 << 16).endswith(b"\n"):
                    return False
        else:
            width, signed = _LENGTH_PREFIX_BYTES[arg.n]
            prefix = f.read(width)
            if len(prefix) != width:
                return False
            length = int.from_bytes(prefix, "little", signed=signed)
            if length < 0 or f.tell() + length > size:
                return False
            f.seek(length, io.SEEK_CUR)
    return False


# ---------------------------------------------------------------------------------------------
# A whole split


def build_preprocessed(
    raw_root: str | Path,
    split_csv: str | Path,
    out_dir: str | Path,
    prefix: str,
    config_name: str,
    workers: int | None = None,
    count: int | None = None,
    progress: bool = True,
) -> Path:
    """Preprocess the first ``count`` frames of a split into ``out_dir/<prefix>_<i>.pkl``.

    Args:
        raw_root: dataset root the split CSV's paths are relative to.
        split_csv: ``img,ann`` CSV; its row index is the sample index.
        out_dir: created if needed; holds one set (one prefix, config and split).
        prefix: an official split's, :data:`~abtf_ssd.cognata.SPLIT_PREFIXES` (any ``[A-Za-z0-9-]+``
            name is accepted).
        config_name: model config whose ``image_size`` the images are resized to.
        workers: processes; None uses every CPU this process may run on. Output does not depend on it.
        count: how many rows from the start of the split; None for all.
        progress: show a tqdm bar.

    Returns:
        ``out_dir``, holding the samples and ``dataset.json``.

    Raises:
        PreprocessError: a missing or unreadable frame or annotation (naming the file and split CSV
            row), a frame whose size is not the config's ``og_image_size``, a folder holding another
            set, or another run on the same folder.
        DiskSpaceError: the free space is below the estimate for the samples still to write.
    """
    config = get_config(config_name)
    raw_root, split_csv, out_dir = Path(raw_root), Path(split_csv), Path(out_dir)
    frames, count, workers = check_request(split_csv, prefix, count, workers)

    out_dir.mkdir(parents=True, exist_ok=True)
    identity = {
        "prefix": prefix,
        "config": config.name,
        "image_size": list(config.image_size),
        "split_csv_sha256": file_sha256(split_csv),
    }
    with _exclusive_lock(out_dir):
        previous_count = _check_folder_holds_this_set(out_dir, identity, prefix)
        _remove_stale_temp_files(out_dir, prefix)
        pending = [i for i in range(count) if not is_complete_pickle(out_dir / sample_name(prefix, i))]
        if pending:
            _check_disk_space(out_dir, config, len(pending))
            (out_dir / MANIFEST_NAME).unlink(missing_ok=True)
            _write_json(out_dir / PARTIAL_MANIFEST_NAME, identity)
            shared = (str(split_csv), str(out_dir), prefix, config.name)
            tasks: list[_Task] = [
                (i, str(raw_root / frames[i][0]), str(raw_root / frames[i][1]), *shared) for i in pending
            ]
            try:
                _run_tasks(tasks, workers, count, prefix, progress)
            finally:
                _remove_stale_temp_files(out_dir, prefix)
        manifest = {
            **identity,
            "count": max(count, previous_count),
            "split_csv": split_csv.name,
            "split_rows": len(frames),
        }
        _write_json(out_dir / MANIFEST_NAME, manifest)
        (out_dir / PARTIAL_MANIFEST_NAME).unlink(missing_ok=True)
    return out_dir


def check_request(
    split_csv: Path, prefix: str, count: int | None, workers: int | None
) -> tuple[list[tuple[str, str]], int, int]:
    """The split's ``(png, annotation)`` rows, the sample count and the worker count of a request to
    preprocess ``count`` frames (None: all) with ``workers`` processes (None: one per CPU).

    Raises:
        ValueError: a prefix other than ``[A-Za-z0-9-]+``, a count outside the split, workers < 1.
        PreprocessError: an unreadable split CSV.
    """
    if not prefix or not prefix.replace("-", "").isalnum():
        raise ValueError(f"prefix {prefix!r} must be letters, digits or '-'")
    try:
        frames = read_split(split_csv)
    except (CognataFormatError, OSError) as e:
        raise PreprocessError(f"cannot read split CSV: {e}") from None
    if count is None:
        count = len(frames)
    if not 0 < count <= len(frames):
        raise ValueError(f"count {count} must be in 1..{len(frames)} ({split_csv} has {len(frames)} rows)")
    workers = _default_workers() if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    return frames, count, workers


def read_manifest(out_dir: str | Path) -> dict[str, Any] | None:
    """The ``dataset.json`` of a finished set, or None when the folder has none (unfinished, or
    not made by :func:`build_preprocessed`, e.g. the official download)."""
    path = Path(out_dir) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PreprocessError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("count"), int):
        raise PreprocessError(f"{path}: not a preprocessing manifest (no integer 'count')")
    return manifest


_Task = tuple[int, str, str, str, str, str, str]
"""(index, png path, annotation path, split CSV, out_dir, prefix, config name): plain strings so that
it pickles to a spawned worker."""


def preprocess_sample(
    index: int, png_path: str | Path, ann_path: str | Path, split_csv: str | Path, config_name: str
) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``index`` of a split, in memory: what ``<prefix>_<index>.pkl`` holds.

    Returns:
        ``img`` float32 (1, 3, H, W) (:func:`normalize_image` of the frame) and ``gt_boxes`` (N, 7)
        (:func:`~abtf_ssd.cognata.read_annotation`).

    Raises:
        PreprocessError: a missing or unreadable frame or annotation, or a frame whose size is not the
            config's ``og_image_size``; the message names the file and the split CSV row.
    """
    where = f"{split_csv} row {index} (0-based, after the header)"
    config = get_config(config_name)
    try:
        gt_boxes = read_annotation(ann_path)
    except FileNotFoundError:
        raise PreprocessError(f"{where}: annotation {ann_path} does not exist") from None
    except (CognataFormatError, OSError, UnicodeDecodeError) as e:
        raise PreprocessError(f"{where}: bad annotation: {e}") from None
    try:
        with Image.open(png_path) as image:
            rgb = image.convert("RGB")
    except FileNotFoundError:
        raise PreprocessError(f"{where}: frame {png_path} does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise PreprocessError(f"{where}: cannot read frame {png_path} ({e})") from None
    og_height, og_width = config.og_image_size
    if rgb.size != (og_width, og_height):
        raise PreprocessError(
            f"{where}: frame {png_path} is {rgb.size[0]}x{rgb.size[1]} pixels, config {config_name!r} "
            f"expects {og_width}x{og_height} (ground-truth boxes are in original pixels)"
        )
    return normalize_image(rgb, config.image_size), gt_boxes


def _process_task(task: _Task) -> int:
    """Worker entry point (top level, spawn-safe): preprocess and write one sample, return its index."""
    index, png_path, ann_path, split_csv, out_dir, prefix, config_name = task
    img, gt_boxes = preprocess_sample(index, png_path, ann_path, split_csv, config_name)
    path = Path(out_dir) / sample_name(prefix, index)
    try:
        write_sample(path, img, gt_boxes)
    except OSError as e:
        # A write error (a full disk above all) carries no file name of its own.
        problem = "the file system is full" if e.errno in _FULL_DISK_ERRNOS else "write failed"
        where = f"{split_csv} row {index} (0-based, after the header)"
        raise PreprocessError(
            f"{where}: cannot write {path}: {problem} ({e.strerror or e}); fix that and rerun: finished "
            "samples are kept and skipped"
        ) from None
    return index


def _run_tasks(tasks: list[_Task], workers: int, count: int, prefix: str, progress: bool) -> None:
    workers = min(workers, len(tasks))
    done = count - len(tasks)
    with tqdm(
        total=count, initial=done, desc=f"preprocess {prefix}", unit="frame", disable=not progress
    ) as bar:
        if workers == 1:
            for task in tasks:
                _process_task(task)
                bar.update()
            return
        # spawn: workers start clean, without inherited threads (tqdm's monitor, BLAS pools).
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for _ in pool.imap_unordered(_process_task, tasks, chunksize=1):
                bar.update()


def _default_workers() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def estimated_sample_bytes(config: SSDConfig) -> int:
    """Upper estimate of one sample pickle's size: the float32 image plus framing and ground truth."""
    height, width = config.image_size
    return 3 * height * width * np.dtype(np.float32).itemsize + _SAMPLE_OVERHEAD_BYTES


def _check_disk_space(out_dir: Path, config: SSDConfig, remaining: int) -> None:
    needed = estimated_sample_bytes(config) * remaining
    free = shutil.disk_usage(out_dir).free
    if free < needed:
        raise DiskSpaceError(
            f"{out_dir}: {remaining} samples still to write need about {needed} bytes "
            f"({needed / 1e9:.1f} GB) but only {free} bytes ({free / 1e9:.1f} GB) are free; free space or "
            "write to another folder (a rerun keeps and skips finished samples)"
        )


def _check_folder_holds_this_set(out_dir: Path, identity: dict[str, Any], prefix: str) -> int:
    """Refuse a folder holding another set; return the sample count of this set's finished manifest."""
    previous_count = 0
    for name in (MANIFEST_NAME, PARTIAL_MANIFEST_NAME):
        path = out_dir / name
        if not path.is_file():
            continue
        try:
            recorded = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise PreprocessError(f"{path}: not valid JSON ({e}); delete it to start over") from None
        differs = {k: (recorded.get(k), v) for k, v in identity.items() if recorded.get(k) != v}
        if differs:
            raise PreprocessError(
                f"{out_dir} holds another preprocessed set ({name}: recorded vs requested {differs}); "
                "use another folder or empty this one"
            )
        if name == MANIFEST_NAME and isinstance(recorded.get("count"), int):
            previous_count = recorded["count"]
    if not any((out_dir / name).is_file() for name in (MANIFEST_NAME, PARTIAL_MANIFEST_NAME)):
        strays = sorted(p.name for p in out_dir.glob(f"{prefix}_*.pkl"))
        if strays:
            raise PreprocessError(
                f"{out_dir} holds {len(strays)} sample files (e.g. {strays[0]}) but no {MANIFEST_NAME} or "
                f"{PARTIAL_MANIFEST_NAME}, so their config is unknown; use another folder or empty this one"
            )
    return previous_count


def _remove_stale_temp_files(out_dir: Path, prefix: str) -> None:
    """Delete the half-written sample files a killed run left: ``fileio``'s ``.<name>.<random>.tmp``."""
    for path in out_dir.glob(f".{prefix}_*.pkl.*.tmp"):
        path.unlink(missing_ok=True)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_json(path, data, sort_keys=True)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file: the split CSV's, recorded in the manifests."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _exclusive_lock(out_dir: Path) -> contextlib.AbstractContextManager[None]:
    """Hold an exclusive lock on ``out_dir`` so that two runs never write the same set."""
    lock = out_dir / _LOCK_NAME
    return exclusive_lock(lock, lambda: PreprocessError(f"{out_dir}: another preprocessing run holds {lock}"))
