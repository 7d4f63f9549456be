"""Where ONNX Runtime spends a model's time on the CPU: op types of the optimized graph, time per op type.

For each model: the graph ONNX Runtime runs after its optimizations (``optimized_model_filepath``,
``ORT_ENABLE_ALL``, as the harness's session) counted by op type, then ``--warmup`` untimed calls
and ``--runs`` profiled calls on a seeded random frame (``enable_profiling``), the node times
summed per op type (mean per call), with the bytes each op type reads and writes (its input and
output tensors' sizes from the profile) and the share of the call. Used for bench/README.md's
"INT8 on AVX2" section.

    .venv/bin/python bench/profile_ort.py MODEL.onnx [MODEL.onnx ...] [--threads 1] [--runs 1]
        [--warmup 1] [--out DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from abtf_ssd.submission.sysinfo import cpu_vector_extensions  # noqa: E402


def optimized_op_counts(path: Path) -> Counter:
    model = onnx.load(str(path), load_external_data=False)
    return Counter(node.op_type for node in model.graph.node)


def profile(model: Path, threads: int, runs: int, warmup: int, out: Path) -> dict:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    optimized = out / f"{model.stem}.optimized.onnx"
    options.optimized_model_filepath = str(optimized)
    start = time.perf_counter()
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    setup_s = time.perf_counter() - start
    counts = optimized_op_counts(optimized)
    optimized.unlink()
    feed = session.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in feed.shape]
    image = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    warm_s = []
    for _ in range(warmup):
        start = time.perf_counter()
        session.run(None, {feed.name: image})
        warm_s.append(time.perf_counter() - start)
    del session
    options.optimized_model_filepath = ""
    options.enable_profiling = True
    options.profile_file_prefix = str(out / model.stem)
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    for _ in range(warmup):
        session.run(None, {feed.name: image})
    timed_s = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, {feed.name: image})
        timed_s.append(time.perf_counter() - start)
    trace = json.loads(Path(session.end_profiling()).read_text())
    runs_seen = [e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"]
    first_timed = runs_seen[warmup]["ts"] if len(runs_seen) > warmup else 0
    per_op: dict[str, float] = defaultdict(float)
    per_op_bytes: dict[str, float] = defaultdict(float)
    nodes: dict[str, float] = defaultdict(float)
    for event in trace:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        if event["ts"] < first_timed:
            continue
        args = event.get("args", {})
        op = args.get("op_name", "?")
        per_op[op] += event["dur"] / 1e6 / runs
        nodes[f"{op} {event['name'][: -len('_kernel_time')]}"] += event["dur"] / 1e6 / runs
        size = sum(int(args.get(k, 0)) for k in ("activation_size", "output_size"))
        per_op_bytes[op] += size / runs
    total = sum(per_op.values())
    return {
        "model": model.name,
        "threads": threads,
        "session_s": setup_s,
        "warmup_s": warm_s,
        "run_s": timed_s,
        "op_counts": dict(counts.most_common()),
        "op_s": dict(sorted(per_op.items(), key=lambda kv: -kv[1])),
        "op_gb": {k: per_op_bytes[k] / 1e9 for k in per_op},
        "op_share": {k: v / total for k, v in per_op.items()} if total else {},
        "top_nodes": dict(sorted(nodes.items(), key=lambda kv: -kv[1])[:15]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    print(
        f"CPU vector extensions: {', '.join(cpu_vector_extensions()) or 'none found'}; ORT {ort.__version__}"
    )
    results = []
    for model in args.models:
        result = profile(model, args.threads, args.runs, args.warmup, args.out)
        results.append(result)
        warm = [round(s, 3) for s in result["warmup_s"]]
        timed = [round(s, 3) for s in result["run_s"]]
        print(f"\n{model.name}: {args.threads} thread(s), session {result['session_s']:.1f} s")
        print(f"  warm-up {warm} s, runs {timed} s")
        print("  optimized graph: " + ", ".join(f"{k} {v}" for k, v in result["op_counts"].items()))
        for op, seconds in result["op_s"].items():
            share, gb = result["op_share"][op], result["op_gb"][op]
            print(f"  {op:28} {seconds:9.3f} s  {share:6.1%}  {gb:8.2f} GB in+out")
        print("  slowest nodes:")
        for node, seconds in result["top_nodes"].items():
            print(f"    {seconds:8.3f} s  {node}")
        sys.stdout.flush()
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
