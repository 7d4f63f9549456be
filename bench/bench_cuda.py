"""CUDA latency per query: ONNX Runtime with I/O binding vs session.run, ONNX Runtime vs PyTorch.

The 8 MP benchmark-config model with seeded random weights (``init_weights``; ``--config`` picks
another), exported to ONNX here, on ``--device`` (default ``cuda``), batch 1, one seeded random
frame. Each side makes ``--warmup`` untimed calls, then ``--runs`` timed calls, in two alternating
blocks; a call is timed on its own (mean and p99 reported), after ``torch.cuda.synchronize()``.
Every call returns host arrays, so the device's work is inside the time.

1. ONNX Runtime, one session: I/O binding (ours; ``OnnxRuntimeBackend.io_binding``: the input
   copied once into a device buffer, outputs written straight into host arrays) vs
   ``session.run`` (baseline);
2. ONNX Runtime with I/O binding (ours) vs PyTorch (baseline), same weights, outputs checked to
   agree within ``--tolerance`` of each output's largest magnitude (TF32 convolutions, the
   default of both on NVIDIA GPUs since Ampere, round more than float32 on the CPU);
3. a whole query, ``predict`` + ``boxes.decode_batch``, ONNX Runtime (ours) vs PyTorch.

A framework that cannot use the device (``abtf_ssd.model.backends.check_device``) leaves its sides out
(null in the rows, the reason in the notes); when neither can, nothing is built, the ``--json``
output has no rows and a ``skipped`` reason, and the exit status is 0. Outputs that disagree
beyond the tolerance make the exit status 1 after the results are written.

    .venv/bin/python bench/bench_cuda.py [--device cuda] [--config NAME] [--runs 50] [--warmup 5]
        [--tolerance 0.01] [--threads N] [--json PATH]

On an H200 the defaults take about 2 minutes: the 8 MP export and session set-up (with cuDNN's
algorithm search on the first calls) dominate; ``bench/README.md`` says how to run it there.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from abtf_ssd.config import BENCHMARK_CONFIG, CONFIGS, get_config
from abtf_ssd.model.backends import FRAMEWORKS, BackendError, ModelBackend, check_device, default_threads
from abtf_ssd.model.boxes import decode_batch
from abtf_ssd.model.ssd import build_ssd, init_weights

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_backends import export_quietly, random_frame  # noqa: E402  (bench/ helpers, beside this script)
from run_all import make_row, write_results  # noqa: E402

TITLE = __doc__.splitlines()[0]
BLOCKS = 2
Outputs = tuple[np.ndarray, np.ndarray]
Predict = Callable[[np.ndarray], Outputs]
Call = Callable[[np.ndarray], object]


def device_problems(device: str) -> dict[str, str]:
    """Framework -> why it cannot run on ``device`` here, for the frameworks that cannot."""
    return {fw: problem for fw in FRAMEWORKS if (problem := check_device(fw, device)) is not None}


def synchronizer(device: str) -> Callable[[], None]:
    """Waits for queued CUDA work before a timer starts (nothing to wait for on the CPU)."""
    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        return lambda: torch.cuda.synchronize(index)
    return lambda: None


def measure(
    sides: dict[str, Call], frame: np.ndarray, runs: int, warmup: int, device: str
) -> dict[str, list[float]]:
    """Milliseconds of each timed call, per side.

    The sides take turns in :data:`BLOCKS` blocks (one when ``runs`` is 1), each block after
    ``warmup`` untimed calls, so that a drift in clocks or load hits every side alike.
    """
    sync = synchronizer(device)
    blocks = min(BLOCKS, runs)
    per_block = [runs // blocks + (1 if b < runs % blocks else 0) for b in range(blocks)]
    times: dict[str, list[float]] = {name: [] for name in sides}
    for calls in per_block:
        for name, call in sides.items():
            for _ in range(warmup):
                call(frame)
            for _ in range(calls):
                sync()
                start = time.perf_counter()
                call(frame)
                times[name].append((time.perf_counter() - start) * 1e3)
    return times


def gpu_name(device: str) -> str | None:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device).index or 0)
    return None


def summary(times_ms: list[float]) -> dict[str, float]:
    values = np.asarray(times_ms)
    return {
        "mean_ms": float(values.mean()),
        "p99_ms": float(np.percentile(values, 99)),
        "min_ms": float(values.min()),
        "calls": len(times_ms),
    }


def difference(ours: Outputs, reference: Outputs) -> float:
    """Largest |ours - reference| over both outputs, relative to each reference output's largest value."""
    return max(
        float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-12))
        for a, b in zip(ours, reference, strict=True)
    )


def build(
    config_name: str, device: str, threads: int, work: Path, usable: list[str], notes: list[str]
) -> tuple[dict[str, ModelBackend], dict[str, float]]:
    """Backends of the seeded random-weight model on ``device``, one per usable framework, and the
    seconds each step took. A backend that fails to come up (CUDA libraries missing, say) is left
    out, with a note."""
    from abtf_ssd.model.backends.onnxruntime_backend import OnnxRuntimeBackend
    from abtf_ssd.model.backends.pytorch_backend import PyTorchBackend

    seconds: dict[str, float] = {}
    start = time.perf_counter()
    model = init_weights(build_ssd(config_name), seed=0).eval()
    weights = work / "model.pth"
    if "pytorch" in usable:
        torch.save(model.state_dict(), weights)
    onnx_path = export_quietly(model, work / "model.onnx") if "onnxruntime" in usable else None
    seconds["build_and_export"] = time.perf_counter() - start
    del model
    makers = {
        "onnxruntime": lambda: OnnxRuntimeBackend(onnx_path, device, threads, config_name, io_binding=True),
        "pytorch": lambda: PyTorchBackend(weights, device, threads, config_name),
    }
    backends: dict[str, ModelBackend] = {}
    for framework in usable:
        start = time.perf_counter()
        try:
            backends[framework] = makers[framework]()
        except BackendError as error:
            notes.append(f"{framework} left out: {error}")
            print(f"{framework} left out: {error}", file=sys.stderr)
            continue
        seconds[f"{framework}_setup"] = time.perf_counter() - start
    return backends, seconds


def predict_sides(backends: dict[str, ModelBackend]) -> dict[str, Predict]:
    """``ort_binding``, ``ort_run`` (the same session, ``io_binding`` off for the call), ``pytorch``:
    those whose backend came up."""
    sides: dict[str, Predict] = {}
    if "onnxruntime" in backends:
        ort_backend = backends["onnxruntime"]

        def ort_run(batch: np.ndarray) -> Outputs:
            ort_backend.io_binding = False
            try:
                return ort_backend.predict(batch)
            finally:
                ort_backend.io_binding = True

        sides["ort_binding"], sides["ort_run"] = ort_backend.predict, ort_run
    if "pytorch" in backends:
        sides["pytorch"] = backends["pytorch"].predict
    return sides


def agreements(outputs: dict[str, Outputs]) -> dict[str, float]:
    """The compared pairs' :func:`difference`: session.run vs binding, binding vs PyTorch."""
    pairs = {
        "ort_run_vs_ort_binding": ("ort_run", "ort_binding"),
        "ort_binding_vs_pytorch": ("ort_binding", "pytorch"),
    }
    return {
        pair: difference(outputs[ours], outputs[reference])
        for pair, (ours, reference) in pairs.items()
        if ours in outputs and reference in outputs
    }


def result_rows(stats: dict[str, dict[str, float]], label: str) -> list[dict]:
    """Mean and p99 rows of the three comparisons; a side not measured is null."""
    comparisons = (
        (f"ONNX Runtime {label}: I/O binding vs session.run", "ort_binding", "ort_run"),
        (f"{label}: ONNX Runtime (I/O binding) vs PyTorch", "ort_binding", "pytorch"),
        (
            f"{label}: predict + decode_batch per query, ONNX Runtime vs PyTorch",
            "ort_binding_query",
            "pytorch_query",
        ),
    )
    rows = []
    for key, what in (("mean_ms", "mean"), ("p99_ms", "p99")):
        for name, ours, baseline in comparisons:
            ours_ms = stats[ours][key] if ours in stats else None
            baseline_ms = stats[baseline][key] if baseline in stats else None
            rows.append(make_row(f"{name}, {what}", ours_ms, baseline_ms, "ms"))
    return rows


def skip(device: str, problems: dict[str, str], json_path: Path | None) -> int:
    reason = "; ".join(f"{fw}: {problem.rstrip('.')}" for fw, problem in problems.items())
    print(f"skipped: {reason}")
    if json_path is not None:
        write_results(json_path, [], title=TITLE, params={"device": device}, skipped=reason)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (to try the code path)")
    parser.add_argument(
        "--config", default=BENCHMARK_CONFIG, choices=sorted(CONFIGS), help="model config (default: 8 MP)"
    )
    parser.add_argument("--runs", type=int, default=50, help="timed calls a side")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls a side before each block")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-2,
        help="largest output difference, relative to the output's scale",
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads a side (default: every core)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here (bench/README.md)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be >= 1 and --warmup >= 0")
    device, threads = args.device, args.threads or default_threads()

    problems = device_problems(device)  # before anything is built: an 8 MP export takes a while
    usable = [fw for fw in FRAMEWORKS if fw not in problems]
    if not usable:
        return skip(device, problems, args.json)
    notes = [f"{fw} cannot run on {device!r} here: {problem}" for fw, problem in problems.items()]
    with tempfile.TemporaryDirectory(prefix="bench_cuda_") as tmp:
        backends, setup_s = build(args.config, device, threads, Path(tmp), usable, notes)
    if not backends:
        print("no backend came up on the device; see above", file=sys.stderr)
        return 1

    frame = random_frame(args.config, seed=1)
    sides = predict_sides(backends)
    # Each predict's first call (cuDNN's algorithm search, allocations) gives the outputs compared.
    outputs: dict[str, Outputs] = {}
    first_s: dict[str, float] = {}
    for name, predict in sides.items():
        start = time.perf_counter()
        outputs[name] = predict(frame)
        first_s[name] = time.perf_counter() - start
    timed: dict[str, Call] = dict(sides)
    for name in [n for n in ("ort_binding", "pytorch") if n in sides]:
        timed[f"{name}_query"] = lambda batch, p=sides[name]: decode_batch(*p(batch), args.config)
    stats = {name: summary(ms) for name, ms in measure(timed, frame, args.runs, args.warmup, device).items()}
    agreement = agreements(outputs)
    disagreeing = {pair: value for pair, value in agreement.items() if value > args.tolerance}

    label = f"{'x'.join(map(str, get_config(args.config).image_size))}, {device}"
    print(f"{label}, batch 1, {args.runs} timed calls a side, {args.warmup} untimed before each block")
    for name, stat in stats.items():
        first = f"   first call {first_s[name]:.2f} s" if name in first_s else ""
        print(f"  {name:20}mean {stat['mean_ms']:9.2f} ms   p99 {stat['p99_ms']:9.2f} ms{first}")
    for pair, value in agreement.items():
        print(f"  outputs {pair}: max difference {value:.2e} of their scale (tolerance {args.tolerance:g})")

    notes += [
        f"batch 1, one seeded random frame, random weights (seed 0); {args.runs} timed calls a side in "
        f"{min(BLOCKS, args.runs)} block(s), each after {args.warmup} untimed call(s); {threads} CPU threads",
        "the ORT sides share one session; 'session.run' switches its io_binding off for the call",
        "a query's decode runs on the CPU, on random-weight logits: its share is indicative only",
        *(
            f"OUTPUTS DISAGREE: {pair} {value:.2e} > {args.tolerance:g}"
            for pair, value in disagreeing.items()
        ),
    ]
    params = {
        "device": device,
        "gpu": gpu_name(device),
        "config": args.config,
        "runs": args.runs,
        "warmup": args.warmup,
        "threads": threads,
        "backends": {name: backend.name for name, backend in backends.items()},
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "stats": stats,
        "first_call_s": first_s,
        "setup_s": setup_s,
        "agreement": agreement,
        "tolerance": args.tolerance,
    }
    if args.json is not None:
        write_results(args.json, result_rows(stats, label), title=TITLE, notes=notes, params=params)
    if disagreeing:
        print(f"outputs disagree beyond {args.tolerance:g}: {disagreeing}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
