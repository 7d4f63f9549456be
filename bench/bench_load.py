"""Loading the performance samples: the official pickles vs the memory-mapped store.

Writes N synthetic 8-megapixel samples in the official pickle format (random float32 images of the
benchmark config's ``image_size``, a few ground-truth rows; content does not matter for loading),
converts them to a store (``abtf_ssd.data.store``), then loads all N the way the LoadGen QSL does
(``open_dataset(path).load(range(N))``) in a fresh process per side and page-cache state, measuring
seconds and the memory the loading adds (peak ``VmHWM`` and private ``RssAnon`` from
``/proc/self/status``). Cold runs first evict the files' pages (``posix_fadvise DONTNEED``, this
benchmark's files only). Results are projected linearly to LoadGen's 128 performance samples.

Needs about 2 x N x 100 MB in ``--dir`` (default: the temp folder); everything is removed afterwards.

    .venv/bin/python bench/bench_load.py [--samples 16] [--dir DIR] [--keep] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from abtf_ssd.config import BENCHMARK_CONFIG, get_config
from abtf_ssd.data import preprocess
from abtf_ssd.data.store import SampleStore, open_dataset
from abtf_ssd.data.store_writer import convert_pickles_to_store
from abtf_ssd.loadgen import rules

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_all import make_row, write_results  # noqa: E402  (bench/ helper, beside this script)

PERFORMANCE_SAMPLES = rules.get_round(rules.DEFAULT_ROUND).performance_sample_count
_STATUS_FIELDS = ("VmRSS", "VmHWM", "RssAnon", "RssFile")
_GB = 1e9


def _status_kb() -> dict[str, int]:
    """Memory fields of /proc/self/status, in kB."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in _STATUS_FIELDS:
            values[key] = int(rest.split()[0])
    return values


def child(path: Path, samples: int, prefetch: bool) -> dict[str, Any]:
    """Load ``samples`` samples from ``path`` in this (fresh) process; what it took."""
    before = _status_kb()
    start = time.perf_counter()
    dataset = open_dataset(path)
    if isinstance(dataset, SampleStore):
        dataset.load(range(samples), touch=prefetch)
    else:
        dataset.load(range(samples))
    seconds = time.perf_counter() - start
    after = _status_kb()
    # Outside the timing: proves both sides hold the same data.
    checksum = float(np.sum(dataset.image(samples - 1), dtype=np.float64))
    return {
        "seconds": seconds,
        "peak_added_kb": after["VmHWM"] - before["VmRSS"],
        "anon_added_kb": after["RssAnon"] - before["RssAnon"],
        "file_added_kb": after["RssFile"] - before["RssFile"],
        "checksum": checksum,
    }


def run_child(path: Path, samples: int, prefetch: bool = True) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", str(path), "--samples", str(samples)]
    if not prefetch:
        command.append("--no-prefetch")
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"child {command} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def evict(folder: Path) -> None:
    """Drop this folder's file pages from the page cache (clean pages only; the writers fsynced)."""
    for path in folder.iterdir():
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def cached_bytes(folder: Path) -> int | None:
    """Bytes of the folder's files in the page cache, from util-linux ``fincore``; None without it."""
    fincore = shutil.which("fincore")
    if fincore is None:
        return None
    files = [str(p) for p in folder.iterdir() if p.is_file()]
    out = subprocess.run(
        [fincore, "--bytes", "--noheadings", "--output", "RES", *files], capture_output=True, text=True
    )
    if out.returncode != 0:
        return None
    return sum(int(line) for line in out.stdout.split())


def write_samples(folder: Path, samples: int, image_size: tuple[int, int]) -> float:
    """Write ``samples`` random official pickles; the seconds spent writing them (not making the data)."""
    folder.mkdir()
    seconds = 0.0
    rng = np.random.default_rng(0)
    height, width = image_size
    for i in range(samples):
        img = rng.standard_normal((1, 3, height, width), dtype=np.float32)
        gt_boxes = np.zeros((5, 7), dtype=np.float32)
        gt_boxes[:, :4] = np.sort(rng.uniform(0, min(image_size), (5, 4)), axis=1)
        gt_boxes[:, 4] = rng.integers(1, 15, 5)
        start = time.perf_counter()
        preprocess.write_sample(folder / preprocess.sample_name("val", i), img, gt_boxes)
        seconds += time.perf_counter() - start
    return seconds


def measure(work: Path, samples: int) -> tuple[list[dict[str, Any]], list[str], dict[str, Any]]:
    image_size = get_config(BENCHMARK_CONFIG).image_size
    pickles, store = work / "pickles", work / "store"
    write_seconds = write_samples(pickles, samples, image_size)
    start = time.perf_counter()
    convert_pickles_to_store(pickles, store, workers=1, progress=False)
    convert_seconds = time.perf_counter() - start

    runs: dict[str, dict[str, Any]] = {}
    cached_before_cold = {}
    for side, folder in (("pickles", pickles), ("store", store)):
        evict(folder)
        cached_before_cold[side] = cached_bytes(folder)
        runs[f"{side} cold"] = run_child(folder, samples)
        runs[f"{side} warm"] = run_child(folder, samples)
    runs["store no prefetch"] = run_child(store, samples, prefetch=False)
    checksums = {name: run["checksum"] for name, run in runs.items()}
    if len(set(checksums.values())) != 1:
        raise SystemExit(f"the sides loaded different data: {checksums}")

    scale = PERFORMANCE_SAMPLES / samples
    projected = f"{PERFORMANCE_SAMPLES} samples, projected from {samples}"

    def seconds(run: str) -> float:
        return runs[run]["seconds"] * scale

    def gigabytes(run: str, key: str) -> float:
        return runs[run][key] * 1024 * scale / _GB

    rows = [
        make_row(
            f"load, cold page cache ({projected})",
            seconds("store cold"),
            seconds("pickles cold"),
            "s",
            target=1.0,
        ),
        make_row(
            f"load, warm page cache ({projected})",
            seconds("store warm"),
            seconds("pickles warm"),
            "s",
            target=2.0,
        ),
        make_row(
            f"peak resident memory added by loading ({projected})",
            gigabytes("store cold", "peak_added_kb"),
            gigabytes("pickles cold", "peak_added_kb"),
            "GB",
            note="VmHWM counts the mapped store pages too, though they are shared, reclaimable page cache",
        ),
        make_row(
            f"private (anonymous) memory after loading ({projected})",
            gigabytes("store cold", "anon_added_kb"),
            gigabytes("pickles cold", "anon_added_kb"),
            "GB",
            target=10.0,
        ),
        make_row(
            f"open + load without prefetch, warm cache ({projected})",
            seconds("store no prefetch"),
            seconds("pickles warm"),
            "s",
            note="the first inference on each sample then pays its page faults",
        ),
        make_row(
            f"one-time cost: converting the pickles into the store vs writing the pickles ({projected})",
            convert_seconds * scale,
            write_seconds * scale,
            "s",
            note="each format is made once per dataset; converting = reading the pickles + writing the store",
        ),
    ]
    sample_mb = 3 * image_size[0] * image_size[1] * 4 / 1e6
    notes = [
        f"{samples} synthetic samples of (1, 3, {image_size[0]}, {image_size[1]}) float32 "
        f"({sample_mb:.1f} MB each), config {BENCHMARK_CONFIG}; each side loads them in a fresh process; "
        f"times and memory x {scale:g}.",
        "pickles: abtf_ssd.data.preprocess.load_sample (the safe unpickler) into RAM, as the QSL does; "
        "store: SampleStore.load (madvise WILLNEED for all, then one read per page of the memory map).",
        "page cache before the cold runs (fincore): "
        + ", ".join(f"{side} {_fmt_bytes(value)}" for side, value in cached_before_cold.items()),
        f"writing the pickles took {write_seconds:.1f} s ({samples * sample_mb / write_seconds:.0f} MB/s), "
        f"converting them {convert_seconds:.1f} s; the conversion pays for itself after "
        f"{convert_seconds / max(1e-9, runs['pickles warm']['seconds'] - runs['store warm']['seconds']):.1f} "
        "warm-cache loads.",
        f"load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())} "
        "(CPUs shared with other jobs).",
    ]
    params = {
        "samples": samples,
        "projected_to": PERFORMANCE_SAMPLES,
        "runs": runs,
        "convert_seconds": convert_seconds,
    }
    return rows, notes, params


def _fmt_bytes(value: int | None) -> str:
    return "unknown (no fincore)" if value is None else f"{value / 1e6:.0f} MB"


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'':66}{'store':>10}{'pickles':>10}  unit  {'ratio':>7}  target")
    for row in rows:
        ours = "-" if row["ours"] is None else f"{row['ours']:.3f}"
        baseline = "-" if row["baseline"] is None else f"{row['baseline']:.3f}"
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}x"
        target = (
            "-" if row["target"] is None else f">={row['target']:g}x {'met' if row['met'] else 'NOT met'}"
        )
        print(f"{row['name'][:66]:66}{ours:>10}{baseline:>10}  {row['unit']:4}  {ratio:>7}  {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=16, help="8 MP samples to write and load")
    parser.add_argument("--dir", type=Path, default=None, help="work folder parent (default: temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the samples and the store")
    parser.add_argument("--json", type=Path, default=None, help="write the results here (bench/README.md)")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--no-prefetch", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.samples < 1:
        parser.error("--samples must be at least 1")
    if args.child is not None:
        print(json.dumps(child(args.child, args.samples, prefetch=not args.no_prefetch)))
        return

    parent = args.dir or Path(tempfile.gettempdir())
    per_sample = preprocess.estimated_sample_bytes(get_config(BENCHMARK_CONFIG))
    needed, usage = 2 * args.samples * per_sample, shutil.disk_usage(parent)
    print(
        f"disk {parent}: {usage.free / 1e9:.1f} GB free of {usage.total / 1e9:.1f} GB; "
        f"this run needs {needed / 1e9:.1f} GB"
    )
    if usage.free < needed * 1.1:
        raise SystemExit(f"{parent}: not enough free space; use --samples or --dir")
    work = Path(tempfile.mkdtemp(prefix="bench_load_", dir=parent))
    try:
        rows, notes, params = measure(work, args.samples)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print_table(rows)
    for note in notes:
        print(f"- {note}")
    if args.json is not None:
        write_results(args.json, rows, title=__doc__.splitlines()[0], notes=notes, params=params)


if __name__ == "__main__":
    main()
