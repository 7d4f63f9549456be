"""What a run checks of its dataset before LoadGen starts, so that a refused run leaves its folder alone.

The sample files the QSL will serve exist (:func:`check_sample_files`), a valid run covers every row
of its split (:func:`check_whole_split`), and the samples are the size the config's network takes
(:func:`check_image_size`). Each raises with the dataset folder and what to do about it.
"""

from __future__ import annotations

from pathlib import Path

from abtf_ssd.cognata import SPLIT_PREFIXES, official_split, read_split
from abtf_ssd.config import get_config
from abtf_ssd.data.preprocess import read_manifest
from abtf_ssd.data.store import Dataset, PickleDataset, SampleStore

MISSING_FILES_SHOWN = 5
"""Missing sample files named in the error (of possibly thousands)."""


def check_sample_files(dataset: Dataset, dataset_dir: Path, count: int) -> None:
    """Each of the ``count`` sample files the QSL will serve exists (a stat each), before LoadGen starts.

    Without this a missing file is found only when LoadGen's QSL opens it, and a performance run
    may never ask for it. A memory-mapped store was checked when it was opened.
    """
    if not isinstance(dataset, PickleDataset):
        return
    missing = [dataset.path(i).name for i in range(count) if not dataset.path(i).is_file()]
    if missing:
        shown = ", ".join(missing[:MISSING_FILES_SHOWN])
        if len(missing) > MISSING_FILES_SHOWN:
            shown += ", ..."
        raise FileNotFoundError(
            f"{dataset_dir}: {len(missing)} of the {count} sample files this run needs are missing: {shown}"
        )


def _official_rows(prefix: str) -> tuple[int, str] | None:
    """Rows of the official split whose samples are named ``<prefix>_<i>.pkl``, and the CSV's name."""
    split = next((name for name, p in SPLIT_PREFIXES.items() if p == prefix), None)
    if split is None:
        return None
    csv_path = official_split(split)
    return len(read_split(csv_path)), f"the official {split} split {csv_path.name}"


def _split_rows(dataset: Dataset) -> tuple[int, str] | None:
    """How many rows the split the dataset was made from has, and which split; None when unknown.

    A pickle folder of :func:`abtf_ssd.data.preprocess.build_preprocessed` records it in dataset.json; one
    without a manifest is the official download. A store records the split it was made from: none for
    an official download; its own ``split_rows`` when written (by preprocessing or a conversion) since
    that field exists, else the dataset.json of the pickle folder it was converted from.
    """
    if isinstance(dataset, PickleDataset):
        manifest = dataset.manifest
        if manifest is None:
            return _official_rows(dataset.prefix)
    elif isinstance(dataset, SampleStore):
        if dataset.manifest.get("split_csv_sha256") is None:
            return _official_rows(dataset.prefix)
        if isinstance(dataset.manifest.get("split_rows"), int):
            manifest = dataset.manifest
            rows = manifest["split_rows"]
            return rows, f"split {manifest.get('split_csv')}"
        source = dataset.manifest.get("source")
        manifest = read_manifest(source) if source and Path(source).is_dir() else None
        if manifest is None or manifest.get("split_csv_sha256") != dataset.manifest["split_csv_sha256"]:
            return None
    else:
        return None
    rows = manifest.get("split_rows")
    return (rows, f"split {manifest.get('split_csv')}") if isinstance(rows, int) else None


def check_whole_split(dataset: Dataset, dataset_dir: Path) -> None:
    """A valid run covers every row of its split: a part of it would give a number of other samples."""
    split = _split_rows(dataset)
    if split is not None and len(dataset) < split[0]:
        rows, which = split
        raise ValueError(
            f"{dataset_dir}: holds {len(dataset)} samples, but {which} has {rows} rows; a valid run needs "
            "them all: preprocess the whole split (or use execution_mode 'test' for a short run)"
        )


def check_image_size(dataset: Dataset, dataset_dir: Path, config_name: str) -> None:
    """The samples are the size the config's network takes; an official download is checked per sample."""
    expected = tuple(get_config(config_name).image_size)
    found = getattr(dataset, "image_size", None)
    if found is not None and tuple(found) != expected:
        raise ValueError(
            f"{dataset_dir}: samples are {found[0]}x{found[1]} (HxW), config {config_name!r} takes "
            f"{expected[0]}x{expected[1]}: preprocess the split for that config"
        )
    if isinstance(dataset, PickleDataset):
        dataset.image_size = expected
