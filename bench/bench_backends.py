"""Model backends on the CPU: ONNX Runtime vs PyTorch on the same weights; our ORT session vs a default one.

Three comparisons, each on one batch-1 frame of random input (seeded), outputs checked to agree:

1. demo model (committed weights ``abtf_ssd/assets/demo_ssd.pth``, exported to ONNX here):
   ``create_backend("onnxruntime")`` vs ``create_backend("pytorch")``, ``--runs`` calls a side in
   two alternating blocks, each after an untimed call, so that a drift in machine load hits both;
2. the same ONNX file: our session (``create_backend``: explicit threads, sequential execution,
   full graph optimisation) vs ``onnxruntime.InferenceSession(path)`` with default options;
3. the 8 MP benchmark-config model with seeded random weights (``init_weights``): ONNX Runtime vs
   PyTorch, ``--large-runs`` calls a side (default 1, no warm-up: each 8 MP forward takes 50-90 s
   on 2 cores, so the first call, allocations included, is what is timed; 0 skips this part).

"ours" is ONNX Runtime (1, 3) and the tuned session (2). Both sides use the same thread count
(``--threads``, default every available core; the default session picks its own).

    .venv/bin/python bench/bench_backends.py [--runs 20] [--large-runs 1] [--threads N] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from abtf_ssd.config import BENCHMARK_CONFIG, DEMO_CONFIG, get_config
from abtf_ssd.model.backends import create_backend, default_threads
from abtf_ssd.model.export import export_onnx
from abtf_ssd.model.ssd import DEMO_WEIGHTS, build_ssd, init_weights, load_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_all import make_row, write_results  # noqa: E402  (bench/ helper, beside this script)

TOLERANCE = 1e-3
"""Largest absolute difference between the two sides' outputs that counts as the same result."""

Predict = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def export_quietly(model: torch.nn.Module, path: Path) -> Path:
    """``export_onnx`` without the torch exporter's progress lines."""
    with contextlib.redirect_stdout(io.StringIO()):
        return export_onnx(model, path)


def random_frame(config_name: str, seed: int) -> np.ndarray:
    """(1, 3, H, W) float32 standard-normal input, like a normalised image."""
    height, width = get_config(config_name).image_size
    return np.random.default_rng(seed).standard_normal((1, 3, height, width), dtype=np.float32)


def alternate_ms(sides: dict[str, Predict], frame: np.ndarray, runs: int, warmup: bool) -> dict[str, float]:
    """Mean milliseconds a call for each side; checks that every side's outputs agree with the first
    side's within :data:`TOLERANCE`.

    With ``warmup`` the sides take turns in blocks (two blocks a side when ``runs`` >= 2), each block
    starting with an untimed call: thread pools of the side before keep spinning for a while after
    their last call, and a per-call alternation would charge that to the next side. Without it, each
    side runs ``runs`` timed calls in turn (for the slow 8 MP forwards, where the tail is negligible).
    """
    blocks = 2 if warmup and runs >= 2 else 1
    per_block = [runs // blocks + (1 if b < runs % blocks else 0) for b in range(blocks)]
    outputs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    seconds = dict.fromkeys(sides, 0.0)
    for calls in per_block:
        for name, predict in sides.items():
            if warmup:
                predict(frame)
            for _ in range(calls):
                start = time.perf_counter()
                outputs[name] = predict(frame)
                seconds[name] += time.perf_counter() - start
    first, *others = sides
    for name in others:
        for expected, actual in zip(outputs[first], outputs[name], strict=True):
            difference = float(np.max(np.abs(expected - actual)))
            if difference > TOLERANCE:
                raise SystemExit(f"{name} differs from {first}: max |difference| {difference:.2e}")
    return {name: total / runs * 1e3 for name, total in seconds.items()}


def default_session(onnx_path: Path) -> Predict:
    """A plain ``InferenceSession`` on the CPU with onnxruntime's default options."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def predict(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        loc, conf = session.run(None, {input_name: frame})
        return loc, conf

    return predict


def demo_rows(work: Path, runs: int, threads: int) -> tuple[list[dict], dict[str, float]]:
    """Comparisons 1 and 2, on the demo model."""
    model = load_checkpoint(build_ssd(DEMO_CONFIG), DEMO_WEIGHTS).eval()
    onnx_path = export_quietly(model, work / "demo.onnx")
    ours = create_backend("onnxruntime", onnx_path, "cpu", threads)
    pytorch = create_backend("pytorch", DEMO_WEIGHTS, "cpu", threads)
    default = default_session(onnx_path)
    frame = random_frame(DEMO_CONFIG, seed=0)
    ms = alternate_ms(
        {"onnxruntime": ours.predict, "pytorch": pytorch.predict, "default session": default},
        frame,
        runs,
        warmup=True,
    )
    size = "x".join(map(str, get_config(DEMO_CONFIG).image_size))
    rows = [
        make_row(f"demo model ({size}), ONNX Runtime vs PyTorch", ms["onnxruntime"], ms["pytorch"], "ms"),
        make_row(
            "demo model, tuned ORT session vs default InferenceSession",
            ms["onnxruntime"],
            ms["default session"],
            "ms",
        ),
    ]
    print(f"demo model {size}, {runs} calls a side (blocks), {threads} threads, outputs agree")
    for name, value in ms.items():
        print(f"  {name:18}{value:10.2f} ms")
    print(f"  ONNX Runtime vs PyTorch: {ms['pytorch'] / ms['onnxruntime']:.2f}x")
    print(f"  tuned vs default session: {ms['default session'] / ms['onnxruntime']:.2f}x")
    return rows, ms


def large_rows(work: Path, runs: int, threads: int) -> tuple[list[dict], dict[str, float]]:
    """Comparison 3, on the 8 MP benchmark-config model with seeded random weights."""
    model = init_weights(build_ssd(BENCHMARK_CONFIG), seed=0).eval()
    weights = work / "benchmark.pth"
    torch.save(model.state_dict(), weights)
    start = time.perf_counter()
    onnx_path = export_quietly(model, work / "benchmark.onnx")
    export_s = time.perf_counter() - start
    del model
    start = time.perf_counter()
    ours = create_backend("onnxruntime", onnx_path, "cpu", threads, BENCHMARK_CONFIG)
    session_s = time.perf_counter() - start
    pytorch = create_backend("pytorch", weights, "cpu", threads, BENCHMARK_CONFIG)
    frame = random_frame(BENCHMARK_CONFIG, seed=1)
    ms = alternate_ms({"onnxruntime": ours.predict, "pytorch": pytorch.predict}, frame, runs, warmup=False)
    size = "x".join(map(str, get_config(BENCHMARK_CONFIG).image_size))
    rows = [
        make_row(
            f"8 MP model ({size}, random weights), ONNX Runtime vs PyTorch",
            ms["onnxruntime"] / 1e3,
            ms["pytorch"] / 1e3,
            "s",
            note=f"{runs} call(s) a side, the first included",
        )
    ]
    print(f"8 MP model {size}, {runs} call(s) a side, no warm-up, {threads} threads, outputs agree")
    print(f"  ONNX export {export_s:.1f} s, ORT session {session_s:.1f} s")
    for name, value in ms.items():
        print(f"  {name:18}{value / 1e3:10.2f} s")
    print(f"  ONNX Runtime vs PyTorch: {ms['pytorch'] / ms['onnxruntime']:.2f}x")
    return rows, {**ms, "onnx_export_s": export_s, "ort_session_s": session_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=20,
        help="demo-model calls a side (in 2 blocks, each after an untimed call)",
    )
    parser.add_argument(
        "--large-runs", type=int, default=1, help="8 MP calls a side (50-90 s each on 2 cores); 0 skips them"
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads a side (default: every core)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here (bench/README.md)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.large_runs < 0:
        parser.error("--runs must be >= 1 and --large-runs >= 0")
    threads = args.threads or default_threads()

    with tempfile.TemporaryDirectory(prefix="bench_backends_") as tmp:
        rows, demo_ms = demo_rows(Path(tmp), args.runs, threads)
        params: dict = {
            "runs": args.runs,
            "large_runs": args.large_runs,
            "threads": threads,
            "demo_ms": demo_ms,
        }
        if args.large_runs:
            more, params["large"] = large_rows(Path(tmp), args.large_runs, threads)
            rows += more
    if args.json is not None:
        notes = [
            f"CPU only, {threads} threads a side, batch 1, one seeded random frame; outputs agree within "
            f"{TOLERANCE:g}",
            "ours: ONNX Runtime through create_backend (intra-op threads set, inter-op 1, sequential, "
            "ORT_ENABLE_ALL); the default session uses onnxruntime's defaults",
        ]
        if not args.large_runs:
            notes.append("8 MP comparison skipped (--large-runs 0)")
        write_results(args.json, rows, title=__doc__.splitlines()[0], notes=notes, params=params)
    return 0


if __name__ == "__main__":
    sys.exit(main())
