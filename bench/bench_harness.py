"""Harness overhead: LoadGen SingleStream latency vs bare model calls (predict + decode) on the same frames.

    .venv/bin/python bench/bench_harness.py [--dataset DIR --model MODEL.onnx] [--queries 100] [--json PATH]

Without --dataset/--model it builds a tiny synthetic demo set and a random-weight demo ONNX model
in a temporary folder. Bare and harness measurements alternate (``--rounds``) so that a drift in
machine load hits both. Target: harness mean <= 1.05 x bare mean (in the ``--json`` rows, whose
ratio is bare / harness: >= 1 / 1.05); the p99.9 row is reported against the same target.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_all import make_row, write_results  # noqa: E402  (bench/ helper, beside this script)

TARGET_RATIO = 1.05
"""Most harness latency per bare predict + decode latency that counts as met."""


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


class TimedBackend:
    """The backend with a clock around ``predict``: splits the harness latency into model and the rest."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.config_name = inner.config_name
        self.name = inner.name
        self.predict_ns: list[int] = []

    def predict(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        start = time.perf_counter_ns()
        outputs = self.inner.predict(batch)
        self.predict_ns.append(time.perf_counter_ns() - start)
        return outputs


def bare_latencies_ns(
    backend, images: list[np.ndarray], config_name: str, queries: int
) -> tuple[np.ndarray, np.ndarray]:
    """Wall time of predict + decode, and of predict alone, per query, cycling over ``images``."""
    total = np.empty(queries, dtype=np.int64)
    predict = np.empty(queries, dtype=np.int64)
    for q in range(queries):
        image = images[q % len(images)]
        start = time.perf_counter_ns()
        loc, conf = backend.predict(image)
        predicted = time.perf_counter_ns()
        decode_batch(loc, conf, config_name)
        total[q] = time.perf_counter_ns() - start
        predict[q] = predicted - start
    return total, predict


def harness_latencies_ms(
    dataset: Path, backend, queries: int, frames: int, results: Path
) -> tuple[float, float, float]:
    """LoadGen's mean, median and p99.9 query latency (ms) of a SingleStream test run of ``queries``
    queries."""
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
    return result.summary.mean_ms, result.summary.p50_ms, result.summary.p999_ms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", type=Path, help="preprocessed folder (val_<i>.pkl); default: synthetic")
    parser.add_argument("--model", type=Path, help="ONNX model; default: random-weight demo model")
    parser.add_argument("--framework", default="onnxruntime", choices=("onnxruntime", "pytorch"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--queries", type=int, default=50, help="queries per measurement")
    parser.add_argument("--frames", type=int, default=12, help="frames to cycle over")
    parser.add_argument("--rounds", type=int, default=4, help="bare/harness alternations")
    parser.add_argument("--json", type=Path, default=None, help="write the results here (bench/README.md)")
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
        backend = TimedBackend(create_backend(args.framework, model, args.device, args.threads))
        images = [load_sample(dataset / sample_name("val", i))["img"] for i in range(frames)]
        bare_latencies_ns(backend.inner, images, backend.config_name, 3)  # warm-up

        bare_total, bare_predict, harness_mean, harness_p50, harness_predict = [], [], [], [], []
        harness_p999 = []
        for round_index in range(args.rounds):
            total, predict = bare_latencies_ns(backend.inner, images, backend.config_name, args.queries)
            bare_total.append(total)
            bare_predict.append(predict)
            backend.predict_ns.clear()
            results = workdir / f"results_{round_index}"
            mean, p50, p999 = harness_latencies_ms(dataset, backend, args.queries, frames, results)
            harness_mean.append(mean)
            harness_p50.append(p50)
            harness_p999.append(p999)
            harness_predict.extend(backend.predict_ns[1:])  # [0] is the harness' warm-up

    bare_mean = float(np.concatenate(bare_total).mean()) / 1e6
    bare_p50 = float(np.median(np.concatenate(bare_total))) / 1e6
    bare_p999 = float(np.percentile(np.concatenate(bare_total), 99.9)) / 1e6
    bare_model = float(np.concatenate(bare_predict).mean()) / 1e6
    loadgen_mean, loadgen_p50 = float(np.mean(harness_mean)), float(np.mean(harness_p50))
    loadgen_p999 = float(np.mean(harness_p999))
    loadgen_model = float(np.mean(harness_predict)) / 1e6
    mean_ratio = loadgen_mean / bare_mean
    rows = [
        ("mean latency (ms)", bare_mean, loadgen_mean),
        ("median latency (ms)", bare_p50, loadgen_p50),
        ("p99.9 latency (ms)", bare_p999, loadgen_p999),
        ("mean predict() alone (ms)", bare_model, loadgen_model),
    ]
    print(f"{model.name}, {backend.name}, {args.threads} threads")
    print(f"{args.rounds} x {args.queries} queries over {frames} frames, bare and harness alternate")
    print(f"{'':28}{'bare predict+decode':>20}{'LoadGen harness':>17}{'ratio':>8}")
    for label, bare, harness in rows:
        print(f"{label:28}{bare:>20.3f}{harness:>17.3f}{harness / bare:>8.3f}")
    rest = (loadgen_mean - loadgen_model) - (bare_mean - bare_model)
    print(f"harness time outside predict() minus bare decode time: {rest:.3f} ms a query")
    verdict = "OK" if mean_ratio <= TARGET_RATIO else "ABOVE TARGET"
    print(f"harness overhead (mean ratio) {mean_ratio:.3f}, target <= {TARGET_RATIO}: {verdict}")
    if args.json is not None:
        target = 1 / TARGET_RATIO
        json_rows = [
            make_row(
                "SingleStream mean latency, LoadGen harness vs bare calls",
                loadgen_mean,
                bare_mean,
                "ms",
                target=target,
            ),
            make_row(
                "SingleStream p99.9 latency, LoadGen harness vs bare calls",
                loadgen_p999,
                bare_p999,
                "ms",
                target=target,
            ),
            make_row("median latency, LoadGen harness vs bare calls", loadgen_p50, bare_p50, "ms"),
            make_row("predict() alone, inside the harness vs bare", loadgen_model, bare_model, "ms"),
        ]
        notes = [
            f"{model.name}, {backend.name}, {args.threads} threads; {args.rounds} x {args.queries} queries "
            f"over {frames} frames, bare and harness alternate",
            "bare = predict + decode_batch in a loop; harness = LoadGen SingleStream (test mode) latency",
            f"target: harness <= {TARGET_RATIO} x bare, i.e. ratio (bare / harness) >= {target:.3f}; the "
            "p99.9 of a few hundred queries is close to their maximum, so noisy on a shared machine",
        ]
        params = {
            "queries": args.queries,
            "rounds": args.rounds,
            "frames": frames,
            "threads": args.threads,
            "harness_minus_bare_outside_predict_ms": rest,
        }
        write_results(args.json, json_rows, title=__doc__.splitlines()[0], notes=notes, params=params)
    return 0


if __name__ == "__main__":
    sys.exit(main())
