"""Preprocessing throughput: one worker vs all cores, on synthetic 8-megapixel frames.

Writes a handful of 3840x2160 frames (``abtf_ssd.data.synth.generate``), preprocesses them with the
benchmark config twice (``workers=1``, then every core), checks that both sets are byte-identical,
and prints both rates, their ratio and the projected time for the 6000-frame validation set.
Each 8 MP sample is ~100 MB on disk, so a run needs about 2 x frames x 100 MB free in ``--out``.

    .venv/bin/python bench/bench_preprocess.py [--frames 8] [--workers N] [--out DIR] [--keep] [--json PATH]
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from abtf_ssd.config import BENCHMARK_CONFIG, get_config
from abtf_ssd.data.preprocess import build_preprocessed
from abtf_ssd.data.synth import generate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_all import make_row, write_results  # noqa: E402  (bench/ helper, beside this script)

VALIDATION_FRAMES = 6000


def timed_build(raw: Path, out: Path, workers: int) -> float:
    """Seconds to preprocess the whole synthetic validation split with ``workers`` processes."""
    start = time.perf_counter()
    build_preprocessed(
        raw, raw / "val_set.csv", out, "val", BENCHMARK_CONFIG, workers=workers, progress=False
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    parser.add_argument("--workers", type=int, default=cores)
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the frames and pickles")
    parser.add_argument("--json", type=Path, default=None, help="write the results here (bench/README.md)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_preprocess_", dir=args.out))
    try:
        height, width = get_config(BENCHMARK_CONFIG).og_image_size
        raw = work / "raw"
        generate(raw, frames=args.frames, width=width, height=height, seed=0, calibration_frames=0)
        serial = timed_build(raw, work / "serial", workers=1)
        parallel = timed_build(raw, work / "parallel", workers=args.workers)
        names = sorted(p.name for p in (work / "serial").glob("val_*.pkl"))
        _, mismatch, errors = filecmp.cmpfiles(work / "serial", work / "parallel", names, shallow=False)
        if mismatch or errors or len(names) != args.frames:
            raise SystemExit(f"outputs differ: {mismatch + errors}")

        rate_serial, rate_parallel = args.frames / serial, args.frames / parallel
        print(f"{args.frames} frames {width}x{height}, config {BENCHMARK_CONFIG}, outputs byte-identical")
        print(f"{'':24}{'1 worker':>12}{f'{args.workers} workers':>14}")
        print(f"{'frames/s':24}{rate_serial:12.2f}{rate_parallel:14.2f}")
        print(f"{'6000 frames (minutes)':24}{VALIDATION_FRAMES / rate_serial / 60:12.1f}", end="")
        print(f"{VALIDATION_FRAMES / rate_parallel / 60:14.1f}")
        print(f"ratio (parallel / serial): {rate_parallel / rate_serial:.2f}x")
        if args.json is not None:
            write_json(args.json, args.frames, args.workers, serial, parallel, (width, height))
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def write_json(
    path: Path, frames: int, workers: int, serial_s: float, parallel_s: float, size: tuple[int, int]
) -> None:
    """The ``--json`` rows: rates, and the 6000-frame validation set's time projected from them."""
    rate_serial, rate_parallel = frames / serial_s, frames / parallel_s
    rows = [
        make_row(
            f"preprocess 8 MP frames, {workers} workers vs 1",
            rate_parallel,
            rate_serial,
            "frames/s",
            "higher",
        ),
        make_row(
            f"{VALIDATION_FRAMES} validation frames (projected from {frames})",
            VALIDATION_FRAMES / rate_parallel / 60,
            VALIDATION_FRAMES / rate_serial / 60,
            "min",
        ),
    ]
    notes = [
        f"{frames} synthetic {size[0]}x{size[1]} frames, config {BENCHMARK_CONFIG}; outputs byte-identical",
        f"{workers} workers = the CPUs available to the process; on a shared machine they compete with "
        "other jobs",
    ]
    params = {"frames": frames, "workers": workers, "serial_s": serial_s, "parallel_s": parallel_s}
    write_results(path, rows, title=__doc__.splitlines()[0], notes=notes, params=params)


if __name__ == "__main__":
    main()
