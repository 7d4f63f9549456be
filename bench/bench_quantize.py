"""Reduced precision vs FP32: INT8 on the CPU (demo, 8 MP), FP16 on CUDA; latency ratio and mAP delta.

Parts (``--parts``, default ``demo large cuda``):

- ``demo``: the demo model (committed weights, exported to ONNX here) and its INT8 model made by
  ``abtf_ssd.model.quantize.quantize_int8`` with the default recipe, calibrated on the synthetic calibration
  split of the demo dataset (``--frames`` validation and ``--calibration-frames`` calibration frames,
  as ``make demo`` makes them: 64 and 16). Both sides run the whole validation split (predict +
  ``decode_batch``, as the harness's SUT does) and ``metric.compute_map`` scores them; the latency
  is ``--runs`` predict + decode calls a side on one frame, in alternating blocks (each after an
  untimed call), so that a drift in machine load hits both sides.
- ``large``: the 8 MP benchmark-config model with seeded random weights (the scripts' ``_random``
  model) and its INT8 model made by ``quantize_int8`` with the default recipe, calibrated on
  ``--large-calibration-frames`` (2) synthetic 8 MP calibration frames in a child process whose
  time and peak resident memory (``VmHWM``) are printed and reported (the streaming calibration of
  ``abtf_ssd/model/calibrate.py``; target: under 8 GB). ``--large-calibration-frames 0`` quantizes
  with every activation range fixed at [-8, 8] instead (same graph, same speed, seconds instead
  of minutes). ``--large-runs`` predict + decode calls a side, alternating, each side's block
  after one untimed call (the harness warms its session up too; ``--large-cold`` times the first
  call instead, which pays for the first touch of the session's memory: 24 s vs 21.6 s for INT8
  here). Wall and CPU seconds are printed: on a shared machine CPU seconds / wall seconds shows
  the share of the cores a side got. Random weights make mAP meaningless there: speed only.
- ``cuda``: where ONNX Runtime has the CUDA provider: the 8 MP model FP32 vs its FP16 conversion
  (``convert_fp16``), ``--cuda-runs`` timed calls a side after ``--cuda-warmup``, mean and p99.9;
  reported ``skipped`` elsewhere.

"ours" is the reduced-precision side; ratio > 1: it is faster (latency) or the mAP ratio to FP32.

Every CPU row names the CPU's vector extensions (``sysinfo.cpu_vector_text``): INT8 convolutions
run about 2x faster than FP32 with AVX2 alone and about 4x with VNNI (bench/README.md).

    .venv/bin/python bench/bench_quantize.py [--parts demo large cuda] [--runs 20] [--large-runs 1]
        [--large-calibration-frames 2] [--large-cold] [--threads N] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from abtf_ssd.config import BENCHMARK_CONFIG, DEMO_CONFIG, get_config
from abtf_ssd.data.metric import compute_map
from abtf_ssd.data.preprocess import build_preprocessed
from abtf_ssd.data.store import open_dataset
from abtf_ssd.data.synth import SPLIT_FILES, generate
from abtf_ssd.model import quantize
from abtf_ssd.model.backends import create_backend, default_threads
from abtf_ssd.model.boxes import decode_batch
from abtf_ssd.submission.sysinfo import cpu_vector_text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_all import make_row, write_results  # noqa: E402  (bench/ helper, beside this script)

TITLE = __doc__.splitlines()[0]
MAP_TARGET = 0.99
"""INT8 mAP at least this fraction of FP32's (issue 17)."""
SPEED_TARGET = 2.0
"""INT8 at least this many times faster than FP32 (issue 17)."""
LARGE_SPEED_TARGET = 1.6
"""8 MP INT8 at least this many times faster than FP32 on an AVX2-only CPU (issue 23; about 4x
with VNNI)."""
CPU_FEATURES = cpu_vector_text()
"""The CPU's vector extensions, named beside every CPU figure (INT8 speed depends on VNNI)."""
PARTS = ("demo", "large", "cuda")


def export(config: str, path: Path, checkpoint: Path | None = None) -> Path:
    from abtf_ssd.model.export import export_model

    with contextlib.redirect_stdout(io.StringIO()):
        return export_model(config, path, checkpoint=checkpoint, seed=0)


def synthetic_splits(root: Path, config: str, frames: int, calibration_frames: int, width: int, height: int):
    """(validation folder, calibration folder) of a synthetic dataset preprocessed for ``config``."""
    raw = generate(
        root / "raw", frames=frames, width=width, height=height, seed=0, calibration_frames=calibration_frames
    )
    folders = []
    for split, prefix in (("validation", "val"), ("calibration", "calib")):
        folders.append(
            build_preprocessed(raw, raw / SPLIT_FILES[split], root / prefix, prefix, config, progress=False)
        )
    return folders[0], folders[1]


def infer(backend, image: np.ndarray, config) -> np.ndarray:
    """One query as the harness's SUT answers it: predict, then decode."""
    loc, conf = backend.predict(image)
    return decode_batch(loc, conf, config)[0]


def alternate_s(
    sides: dict, image: np.ndarray, config, runs: int, warmup: bool, cpu: dict | None = None
) -> dict[str, list[float]]:
    """Seconds of each timed call a side; blocks alternate (two a side when ``runs`` >= 2).
    ``cpu``, when given, gets the process CPU seconds of each call a side as well (on a shared
    machine, wall time / CPU time shows the share of the cores the calls got)."""
    blocks = 2 if runs >= 2 else 1
    per_block = [runs // blocks + (1 if b < runs % blocks else 0) for b in range(blocks)]
    times: dict[str, list[float]] = {name: [] for name in sides}
    for block, calls in enumerate(per_block):
        order = list(sides) if block % 2 == 0 else list(reversed(sides))
        for name in order:
            if warmup:
                infer(sides[name], image, config)
            for _ in range(calls):
                start, start_cpu = time.perf_counter(), time.process_time()
                infer(sides[name], image, config)
                times[name].append(time.perf_counter() - start)
                if cpu is not None:
                    cpu.setdefault(name, []).append(time.process_time() - start_cpu)
    return times


def mean_ms(times: list[float]) -> float:
    return float(np.mean(times) * 1e3)


def demo_part(work: Path, args: argparse.Namespace, threads: int) -> tuple[list[dict], dict]:
    from abtf_ssd.model.ssd import DEMO_WEIGHTS

    config = get_config(DEMO_CONFIG)
    fp32 = export(DEMO_CONFIG, work / "demo.onnx", DEMO_WEIGHTS)
    height, width = config.og_image_size
    val, calib = synthetic_splits(
        work / "demo", DEMO_CONFIG, args.frames, args.calibration_frames, width, height
    )
    start = time.perf_counter()
    int8 = quantize.quantize_int8(fp32, calib, work / "demo_int8.onnx", threads=threads, progress=False)
    quantize_s = time.perf_counter() - start
    sides = {
        "int8": create_backend("onnxruntime", int8, "cpu", threads, DEMO_CONFIG),
        "fp32": create_backend("onnxruntime", fp32, "cpu", threads, DEMO_CONFIG),
    }
    dataset = open_dataset(val)
    maps = {}
    for name, backend in sides.items():
        detections = {i: infer(backend, dataset.image(i), config) for i in range(len(dataset))}
        maps[name] = compute_map(detections, val).map
    times = alternate_s(sides, dataset.image(0), config, args.runs, warmup=True)
    ms = {name: mean_ms(t) for name, t in times.items()}
    recipe = quantize.precision_record(int8)["recipe"]
    described = (
        f"{recipe['method']}, {recipe['frames']} calibration frames, FP32: {recipe['keep_fp32'] or 'none'}"
    )
    rows = [
        make_row(
            f"demo model INT8 vs FP32, predict + decode ({described}; {CPU_FEATURES})",
            ms["int8"],
            ms["fp32"],
            "ms",
            target=SPEED_TARGET,
        ),
        make_row(
            f"demo model INT8 vs FP32, mAP on {len(dataset)} validation frames",
            maps["int8"],
            maps["fp32"],
            "mAP",
            better="higher",
            target=MAP_TARGET,
        ),
    ]
    print(
        f"demo model, {threads} threads, {args.runs} calls a side (alternating blocks); "
        f"quantized in {quantize_s:.1f} s; CPU: {CPU_FEATURES}"
    )
    for name in sides:
        print(f"  {name:5} {ms[name]:9.2f} ms   mAP {maps[name]:.4f}")
    print(f"  speed-up {ms['fp32'] / ms['int8']:.2f}x, mAP ratio {maps['int8'] / maps['fp32']:.4f}")
    return rows, {"ms": ms, "map": maps, "quantize_s": quantize_s, "recipe": recipe}


def fixed_range_int8(fp32: Path, out: Path, work: Path) -> Path:
    """``fp32`` quantized as :func:`abtf_ssd.model.quantize.quantize_int8` does with the default recipe, but
    with every activation range [-8, 8] (an ONNX Runtime calibration cache) instead of calibrated."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import CalibraterBase, TensorData, TensorsData, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared, ranges = work / "large_prepared.onnx", work / "large_ranges.json"
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    calibrator = CalibraterBase(prepared, list(set(QLinearOpsRegistry) | set(QDQRegistry)))
    tensors, _ = calibrator.select_tensors_to_calibrate(calibrator.model)
    del calibrator
    lowest, highest = np.float32(-8.0), np.float32(8.0)
    data = {name: TensorData(lowest=lowest, highest=highest) for name in tensors}
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), ranges)
    model = quantize.load_onnx(prepared)
    recipe = quantize.DEFAULT_RECIPE
    quantize_static(
        str(prepared),
        str(out),
        None,
        quant_format=QuantFormat.QDQ,
        per_channel=recipe.per_channel,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        nodes_to_exclude=quantize.select_nodes(model, recipe.keep_fp32),
        calibration_cache_path=str(ranges),
    )
    return out


CALIBRATE_CHILD = """
import json, sys, time
from abtf_ssd.model.quantize import quantize_int8
start = time.perf_counter()
quantize_int8(sys.argv[1], sys.argv[2], sys.argv[3], frames=int(sys.argv[4]), threads=int(sys.argv[5]))
seconds = time.perf_counter() - start
peak = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "peak_bytes": peak}))
"""


def calibrate_in_child(fp32: Path, calib: Path, out: Path, frames: int, threads: int) -> dict:
    """``quantize_int8`` (the default recipe) in a process of its own: its time and peak resident
    memory (``VmHWM``), its progress lines passed through to stderr."""
    proc = subprocess.run(
        [sys.executable, "-c", CALIBRATE_CHILD, str(fp32), str(calib), str(out), str(frames), str(threads)],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def large_part(work: Path, args: argparse.Namespace, threads: int) -> tuple[list[dict], dict]:
    config = get_config(BENCHMARK_CONFIG)
    fp32 = export(BENCHMARK_CONFIG, work / "large.onnx")
    height, width = config.image_size
    params: dict = {}
    models = {}
    rows = []
    if args.large_calibration_frames:
        start = time.perf_counter()
        _, calib = synthetic_splits(
            work / "large_data", BENCHMARK_CONFIG, 1, args.large_calibration_frames, width, height
        )
        params["synthetic_split_s"] = time.perf_counter() - start
        calibration = calibrate_in_child(
            fp32, calib, work / "large_int8.onnx", args.large_calibration_frames, threads
        )
        params["calibration"] = calibration
        models["int8"] = work / "large_int8.onnx"
        gb = calibration["peak_bytes"] / 1e9
        print(
            f"8 MP model calibrated ({quantize.DEFAULT_RECIPE.method}, {args.large_calibration_frames} "
            f"synthetic calibration frames, {threads} threads): {calibration['seconds']:.0f} s, "
            f"peak resident memory {gb:.2f} GB"
        )
        rows.append(
            make_row(
                f"8 MP calibration peak resident memory ({args.large_calibration_frames} frames) vs 8 GB",
                gb,
                8.0,
                "GB",
                target=1.0,
                note=f"{calibration['seconds']:.0f} s, {threads} threads",
            )
        )
    else:
        start = time.perf_counter()
        models["int8"] = fixed_range_int8(fp32, work / "large_int8.onnx", work)
        params["quantize_s"] = time.perf_counter() - start
    sides = {
        "int8": create_backend("onnxruntime", models["int8"], "cpu", threads, BENCHMARK_CONFIG),
        "fp32": create_backend("onnxruntime", fp32, "cpu", threads, BENCHMARK_CONFIG),
    }
    image = np.random.default_rng(0).standard_normal((1, 3, height, width), dtype=np.float32)
    warmup = not args.large_cold
    cpu: dict[str, list[float]] = {}
    times = alternate_s(sides, image, config, args.large_runs, warmup=warmup, cpu=cpu)
    seconds = {name: float(np.mean(t)) for name, t in times.items()}
    cpu_s = {name: float(np.mean(t)) for name, t in cpu.items()}
    ranges = "calibrated" if args.large_calibration_frames else "fixed activation ranges"
    when = "after one untimed call a side" if warmup else "the first call included"
    rows.append(
        make_row(
            f"8 MP model (random weights) INT8 vs FP32, predict + decode ({ranges}; {CPU_FEATURES})",
            seconds["int8"],
            seconds["fp32"],
            "s",
            target=LARGE_SPEED_TARGET,
            note=f"{args.large_runs} call(s) a side, {when}, {threads} threads",
        )
    )
    print(
        f"8 MP model ({ranges}), {threads} threads, {args.large_runs} call(s) a side, {when}; "
        f"CPU: {CPU_FEATURES}"
    )
    for name in sides:
        share = cpu_s[name] / seconds[name] / threads
        print(
            f"  {name:5} {seconds[name]:9.2f} s   (CPU {cpu_s[name]:.2f} s: {share:.0%} of {threads} core(s))"
        )
    ratio = seconds["int8"] / seconds["fp32"]
    print(
        f"  speed-up {1 / ratio:.2f}x (INT8/FP32 latency ratio {ratio:.3f}); "
        f"by CPU time {cpu_s['fp32'] / cpu_s['int8']:.2f}x"
    )
    params.update({"s": seconds, "times": times, "cpu_s": cpu_s, "threads": threads, "ranges": ranges})
    return rows, params


def cuda_part(work: Path, args: argparse.Namespace) -> tuple[list[dict], dict] | str:
    """FP16 vs FP32 on CUDA, or why it cannot run here."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (pip install onnxruntime-gpu)"
    config = get_config(BENCHMARK_CONFIG)
    fp32 = export(BENCHMARK_CONFIG, work / "cuda.onnx")
    fp16 = quantize.convert_fp16(fp32, work / "cuda_fp16.onnx")
    sides = {
        "fp16": create_backend("onnxruntime", fp16, "cuda", None, BENCHMARK_CONFIG),
        "fp32": create_backend("onnxruntime", fp32, "cuda", None, BENCHMARK_CONFIG),
    }
    height, width = config.image_size
    image = np.random.default_rng(0).standard_normal((1, 3, height, width), dtype=np.float32)
    for backend in sides.values():
        for _ in range(args.cuda_warmup):
            infer(backend, image, config)
    times = alternate_s(sides, image, config, args.cuda_runs, warmup=False)
    stats = {
        name: {"mean_ms": mean_ms(t), "p999_ms": float(sorted(t)[int(len(t) * 0.999)] * 1e3)}
        for name, t in times.items()
    }
    rows = [
        make_row(f"8 MP model on CUDA, FP16 vs FP32, predict + decode, {kind}", s16, s32, "ms")
        for kind, s16, s32 in (
            ("mean", stats["fp16"]["mean_ms"], stats["fp32"]["mean_ms"]),
            ("p99.9", stats["fp16"]["p999_ms"], stats["fp32"]["p999_ms"]),
        )
    ]
    rows.append(
        make_row(
            "8 MP FP16 p99.9 vs the 25 ms target (H200)", stats["fp16"]["p999_ms"], 25.0, "ms", target=1.0
        )
    )
    print(f"8 MP model on CUDA, {args.cuda_runs} calls a side after {args.cuda_warmup} untimed")
    for name, s in stats.items():
        print(f"  {name:5} mean {s['mean_ms']:8.2f} ms   p99.9 {s['p999_ms']:8.2f} ms")
    return rows, stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--parts", nargs="*", choices=PARTS, default=list(PARTS))
    parser.add_argument("--runs", type=int, default=20, help="demo calls a side (alternating blocks)")
    parser.add_argument("--frames", type=int, default=64, help="demo validation frames")
    parser.add_argument("--calibration-frames", type=int, default=16, help="demo calibration frames")
    parser.add_argument("--large-runs", type=int, default=1, help="8 MP calls a side (10-60 s each here)")
    parser.add_argument(
        "--large-calibration-frames",
        type=int,
        default=2,
        help="calibrate the 8 MP INT8 model on this many synthetic calibration frames (0: fixed ranges; "
        "2 keeps make bench within half an hour: about 190 s a frame on one core; the peak memory is flat in "
        "the frame count, and 16 frames, 60 min, are measured in docs/reduced-precision.md)",
    )
    parser.add_argument(
        "--large-cold", action="store_true", help="time the first 8 MP call (default: after an untimed one)"
    )
    parser.add_argument("--cuda-runs", type=int, default=30)
    parser.add_argument("--cuda-warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads a side (default: every core)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here (bench/README.md)")
    args = parser.parse_args(argv)
    if min(args.runs, args.frames, args.calibration_frames, args.large_runs, args.cuda_runs) < 1:
        parser.error("counts must be >= 1")
    if args.large_calibration_frames < 0:
        parser.error("--large-calibration-frames must be >= 0")
    threads = args.threads or default_threads()
    rows: list[dict] = []
    params: dict = {"threads": threads, "parts": args.parts}
    params["cpu_vector_extensions"] = CPU_FEATURES
    notes = [
        f"CPU sides: ONNX Runtime, {threads} threads a side, batch 1; ours = the reduced-precision model",
        f"CPU vector extensions: {CPU_FEATURES} (INT8 convolutions are about 2x faster with VNNI or AMX)",
    ]
    print(f"CPU vector extensions: {CPU_FEATURES}")
    skipped = None
    with tempfile.TemporaryDirectory(prefix="bench_quantize_") as tmp:
        work = Path(tmp)
        if "demo" in args.parts:
            more, params["demo"] = demo_part(work, args, threads)
            rows += more
        if "large" in args.parts:
            more, params["large"] = large_part(work, args, threads)
            rows += more
        if "cuda" in args.parts:
            cuda = cuda_part(work, args)
            if isinstance(cuda, str):
                notes.append(f"CUDA FP16 rows skipped: {cuda}")
                print(f"cuda: skipped ({cuda})")
                skipped = cuda if not rows else None
            else:
                more, params["cuda"] = cuda
                rows += more
    if args.json is not None:
        write_results(args.json, rows, title=TITLE, notes=notes, params=params, skipped=skipped)
    return 0


if __name__ == "__main__":
    sys.exit(main())
