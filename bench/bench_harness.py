"""Harness overhead: LoadGen SingleStream latency vs bare model calls (predict + decode) on the same frames.

    .venv/bin/python bench/bench_harness.py [--dataset DIR --model MODEL.onnx] [--queries 100]

Without --dataset/--model it builds a tiny synthetic demo set and a random-weight demo ONNX model
in a temporary folder. Bare and harness measurements alternate (``--rounds``) so that a drift in
machine load hits both. Target: harness mean <= 1.05 x bare mean.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from abtf_ssd.accuracy import count_samples
from abtf_ssd.backends import create_backend
from abtf_ssd.boxes import decode_batch
from abtf_ssd.harness import RunOptions, run
from abtf_ssd.preprocess import load_sample, sample_name

TARGET_RATIO = 1.05


def build_demo(workdir: Path, frames: int) -> tuple[Path, Path]:
    """A synthetic preprocessed demo set and a random-weight demo ONNX model."""
    import torch

    from abtf_ssd.config import DEMO_CONFIG
    from abtf_ssd.model import build_ssd, export_onnx, init_weights
    from abtf_ssd.preprocess import build_preprocessed
    from abtf_ssd.synth import SPLIT_FILES, generate

    torch.set_num_threads(2)
    raw = generate(workdir / "raw", frames=frames, seed=3, calibration_frames=0, workers=1)
    dataset = build_preprocessed(
        raw, raw / SPLIT_FILES["validation"], workdir / "val", "val", DEMO_CONFIG, workers=1, progress=False
    )
    model = init_weights(build_ssd(DEMO_CONFIG), seed=0).eval()
    with contextlib.redirect_stdout(io.StringIO()):
        onnx_path = export_onnx(model, workdir / "demo.onnx")
    return dataset, onnx_path


def bare_latencies_ns(backend, images: list[np.ndarray], config_name: str, queries: int) -> np.ndarray:
    """Wall time of predict + decode per query, cycling over ``images``."""
    latencies = np.empty(queries, dtype=np.int64)
    for q in range(queries):
        image = images[q % len(images)]
        start = time.perf_counter_ns()
        loc, conf = backend.predict(image)
        decode_batch(loc, conf, config_name)
        latencies[q] = time.perf_counter_ns() - start
    return latencies


def harness_mean_ns(dataset: Path, backend, queries: int, frames: int, results: Path) -> tuple[float, float]:
    """LoadGen's mean and median query latency of a SingleStream test run of ``queries`` queries."""
    options = RunOptions(
        dataset_dir=dataset,
        scenario="SingleStream",
        mode="performance",
        execution_mode="test",
        test_query_count=queries,
        performance_sample_count=frames,
        results_dir=results,
        system_name="bench",
        command="bench/bench_harness.py",
    )
    with contextlib.redirect_stdout(io.StringIO()):
        result = run(options, backend=backend)
    return result.summary.mean_ms * 1e6, result.summary.p50_ms * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dataset", type=Path, help="preprocessed folder (val_<i>.pkl); default: synthetic demo"
    )
    parser.add_argument("--model", type=Path, help="ONNX model; default: random-weight demo model")
    parser.add_argument("--framework", default="onnxruntime", choices=("onnxruntime", "pytorch"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--queries", type=int, default=100, help="queries per measurement")
    parser.add_argument("--frames", type=int, default=12, help="frames to cycle over")
    parser.add_argument("--rounds", type=int, default=2, help="bare/harness alternations")
    args = parser.parse_args(argv)
    if (args.dataset is None) != (args.model is None):
        parser.error("give both --dataset and --model, or neither")

    with tempfile.TemporaryDirectory(prefix="bench_harness_") as tmp:
        workdir = Path(tmp)
        if args.dataset is None:
            print(
                f"building a {args.frames}-frame synthetic demo set and a random demo model ...", flush=True
            )
            dataset, model = build_demo(workdir, args.frames)
        else:
            dataset, model = args.dataset, args.model
        frames = min(args.frames, count_samples(dataset))
        backend = create_backend(args.framework, model, args.device, args.threads)
        config_name = backend.config_name
        images = [load_sample(dataset / sample_name("val", i))["img"] for i in range(frames)]
        bare_latencies_ns(backend, images, config_name, 3)  # warm-up

        bare, harness_mean, harness_p50 = [], [], []
        for round_index in range(args.rounds):
            bare.append(bare_latencies_ns(backend, images, config_name, args.queries))
            mean, p50 = harness_mean_ns(
                dataset, backend, args.queries, frames, workdir / f"results_{round_index}"
            )
            harness_mean.append(mean)
            harness_p50.append(p50)
        bare_all = np.concatenate(bare)

    bare_mean, bare_p50 = float(bare_all.mean()), float(np.median(bare_all))
    mean_ratio = float(np.mean(harness_mean)) / bare_mean
    p50_ratio = float(np.mean(harness_p50)) / bare_p50
    print(f"model {model.name if hasattr(model, 'name') else model}, {backend.name}, {args.threads} threads")
    print(f"{args.rounds} x {args.queries} SingleStream queries over {frames} frames")
    print(f"{'':26}{'bare predict+decode':>22}{'LoadGen harness':>18}{'ratio':>9}")
    print(
        f"{'mean latency (ms)':26}{bare_mean / 1e6:>22.3f}{np.mean(harness_mean) / 1e6:>18.3f}{mean_ratio:>9.3f}"
    )
    print(
        f"{'median latency (ms)':26}{bare_p50 / 1e6:>22.3f}{np.mean(harness_p50) / 1e6:>18.3f}{p50_ratio:>9.3f}"
    )
    verdict = "OK" if mean_ratio <= TARGET_RATIO else "ABOVE TARGET"
    print(f"harness overhead (mean ratio) {mean_ratio:.3f}, target <= {TARGET_RATIO}: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
