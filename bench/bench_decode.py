"""Decode + NMS time per 8-megapixel frame: ``decode_batch`` vs the plain reference loop.

Head outputs of the benchmark config (776 740 anchors) come in two kinds: random standard-normal
logits (dense: every class has hundreds of thousands of probabilities above 0.05, the reference
loop's worst case) and sparse "trained-like" logits (background nearly everywhere, a few
confident clusters). Both decoders run on the same frames; their results are checked equal, and
the milliseconds per frame and the ratio are printed.

Target: ``decode_batch`` under 50 ms wall per frame of random logits (the row "budget" compares
it with that budget; met when the ratio budget / ours >= 1).

    .venv/bin/python bench/bench_decode.py [--frames 3] [--repeats 5] [--config NAME] [--json PATH]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from abtf_ssd.config import BENCHMARK_CONFIG, get_config
from abtf_ssd.model.boxes import decode_batch, decode_reference_loop, default_boxes

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_all import make_row, write_results  # noqa: E402  (bench/ helper, beside this script)

BUDGET_MS = 50.0
"""Target wall time of ``decode_batch`` per 8 MP frame of random logits."""


def random_outputs(
    num_anchors: int, num_classes: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One frame of standard-normal head outputs: loc (1, 4, A), conf (1, C, A)."""
    loc = rng.standard_normal((1, 4, num_anchors), dtype=np.float32)
    conf = rng.standard_normal((1, num_classes, num_anchors), dtype=np.float32)
    return loc, conf


def sparse_outputs(
    anchors_xywh: np.ndarray, num_classes: int, rng: np.random.Generator, objects: int = 30
) -> tuple[np.ndarray, np.ndarray]:
    """One frame with the background confident everywhere except ``objects`` clusters of anchors whose
    centres fall in a random box, each cluster confident for one class."""
    count = len(anchors_xywh)
    loc = rng.normal(0.0, 0.5, (1, 4, count)).astype(np.float32)
    conf = rng.normal(-2.0, 1.0, (1, num_classes, count)).astype(np.float32)
    conf[0, 0] += 8.0
    for _ in range(objects):
        size = rng.uniform(0.01, 0.2, 2)
        corner = rng.uniform(0.0, 1.0 - size)
        centres = anchors_xywh[:, :2]
        inside = np.flatnonzero(np.all((centres > corner) & (centres < corner + size), axis=1))
        conf[0, rng.integers(1, num_classes), inside] = rng.normal(6.0, 2.0, len(inside))
    return loc, conf


def time_ms(
    decode, loc: np.ndarray, conf: np.ndarray, config_name: str, repeats: int
) -> tuple[float, float, list]:
    """Best wall and best process-CPU milliseconds over ``repeats`` calls, and the last result. CPU time
    is the steadier number on a machine shared with other jobs (numpy runs these on one core)."""
    best_wall = best_cpu = float("inf")
    result = []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = decode(loc, conf, config_name)
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return best_wall * 1e3, best_cpu * 1e3, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=3, help="frames of each kind")
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed calls of decode_batch per frame (best kept)"
    )
    parser.add_argument("--config", default=BENCHMARK_CONFIG)
    parser.add_argument("--json", type=Path, default=None, help="write the results here (bench/README.md)")
    args = parser.parse_args()

    config = get_config(args.config)
    anchors = default_boxes(config)
    rng = np.random.default_rng(0)
    print(f"config {config.name}: {config.num_anchors} anchors, {args.frames} frames a kind")
    print("ms per frame, wall (process CPU); decode_batch: best of --repeats calls")
    header = f"{'logits':8}{'frame':>6}{'rows':>6}{'reference loop':>22}{'decode_batch':>20}{'ratio':>8}"
    print(header)
    rows, params = [], {"frames": args.frames, "repeats": args.repeats, "config": config.name}
    for kind in ("random", "sparse"):
        loop_times, fast_times = [], []
        for frame in range(args.frames):
            if kind == "random":
                loc, conf = random_outputs(config.num_anchors, config.num_classes, rng)
            else:
                loc, conf = sparse_outputs(anchors, config.num_classes, rng)
            *loop_ms, expected = time_ms(decode_reference_loop, loc, conf, config.name, repeats=1)
            *fast_ms, result = time_ms(decode_batch, loc, conf, config.name, repeats=args.repeats)
            if not np.array_equal(result[0], expected[0]):
                raise SystemExit(f"{kind} frame {frame}: decode_batch differs from the reference loop")
            loop_times.append(loop_ms)
            fast_times.append(fast_ms)
            ratio = loop_ms[0] / fast_ms[0]
            print(f"{kind:8}{frame:>6}{len(result[0]):>6}{_cell(loop_ms)}{_cell(fast_ms)}{ratio:>7.0f}x")
        loop_mean, fast_mean = np.mean(loop_times, axis=0), np.mean(fast_times, axis=0)
        ratio = loop_mean[0] / fast_mean[0]
        print(f"{kind:8}{'mean':>6}{'':>6}{_cell(loop_mean)}{_cell(fast_mean)}{ratio:>7.0f}x")
        rows.append(
            make_row(
                f"decode + NMS, {kind} logits, vs per-class loop",
                float(fast_mean[0]),
                float(loop_mean[0]),
                "ms",
                note=f"CPU ms {fast_mean[1]:.1f} vs {loop_mean[1]:.1f}",
            )
        )
        if kind == "random":
            rows.append(
                make_row(
                    f"decode + NMS, random logits, vs {BUDGET_MS:.0f} ms budget",
                    float(fast_mean[0]),
                    BUDGET_MS,
                    "ms",
                    target=1.0,
                )
            )
        params[f"{kind}_ms"] = {"decode_batch": fast_mean.tolist(), "reference_loop": loop_mean.tolist()}
    if args.json is not None:
        notes = [
            f"config {config.name}: {config.num_anchors} anchors; {args.frames} frames a kind, results equal",
            f"wall ms, mean over frames; decode_batch best of {args.repeats} calls a frame, the loop 1 call",
        ]
        write_results(args.json, rows, title=__doc__.splitlines()[0], notes=notes, params=params)


def _cell(wall_cpu) -> str:
    wall, cpu = wall_cpu
    return f"{wall:>11.1f} ({cpu:7.1f})"


if __name__ == "__main__":
    main()
