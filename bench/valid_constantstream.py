"""A full valid ConstantStream run on a round's automotive LoadGen: rate search to official checker.

Too long for CI (100000 queries and at least 600 s, plus the rate search), so a make target:
``make valid-constantstream`` (``ROUND=v0.5`` by default). In the environment of
``tests/upstream_tools.py`` (the round's automotive LoadGen built from ``../shared/upstream``) it runs
the ``abtf-ssd`` commands a user would:

1. ``synth`` (512x288 synthetic frames), ``preprocess`` the validation and calibration splits for the
   model config (default ``small``: the demo network and its trained weights on a 72x128 input, the
   fastest model of the project; ``--config demo`` for the demo model itself);
2. ``export-onnx`` from the demo checkpoint, then ``quantize`` to INT8 (``--precision fp32`` skips it);
3. ``run --scenario ConstantStream --mode find-performance --execution-mode valid``: the rate search;
4. ``run`` performance (valid) at the rate found, then accuracy over the whole split;
5. the open-division submission tree, our checker and the round's official ``submission_checker.py``.

The outcome (model, rate, p99.9, queries, LoadGen's verdict, the official checker's words, and the
longest time no query completed beside the CPU time the hypervisor stole meanwhile: a virtual machine
stalled by its host fails a constant-rate run however fast the model) goes to
``bench/out/valid_constantstream_<round>.json`` and is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from upstream_tools import official_tools  # noqa: E402

from abtf_ssd.loadgen.report import (  # noqa: E402
    DETAIL_LOG,
    TRACE_LOG,
    detail_values,
    longest_completion_gap,
    read_detail_log,
    read_trace_latencies,
)
from abtf_ssd.model.ssd import DEMO_WEIGHTS  # noqa: E402
from abtf_ssd.submission.checker import run_checks  # noqa: E402
from abtf_ssd.submission.official import disagreement, run_submission_checker  # noqa: E402
from abtf_ssd.submission.sysinfo import cpu_vector_text  # noqa: E402

SYSTEM = "cpu-constantstream"


def host_steal_s() -> float | None:
    """CPU time the hypervisor took from this machine since boot (``steal`` in /proc/stat), in s."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round", default="v0.5", choices=("v0.5", "v1.0"))
    parser.add_argument("--config", default="small", help="model config (small: fastest; demo)")
    parser.add_argument("--precision", default="int8", choices=("int8", "fp32"))
    parser.add_argument("--frames", type=int, default=200, help="synthetic validation frames (>= 128)")
    parser.add_argument("--threads", type=int, default=None, help="inference threads (default: every core)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "valid_constantstream")
    args, extra = parser.parse_known_args()  # extra: passed to the find-performance run (--rate-*)
    tools = official_tools(args.round)
    work = args.out.resolve() / args.round
    work.mkdir(parents=True, exist_ok=True)
    env = tools.env()
    abtf = str(tools.bin / "abtf-ssd")
    log = (work / "commands.log").open("a")

    def step(*command: str, check: bool = True) -> subprocess.CompletedProcess:
        print("$ abtf-ssd " + " ".join(command[1:]), flush=True)
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        done = subprocess.run(command, env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT, check=False)
        if check and done.returncode != 0:
            raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}; see {work / 'commands.log'}")
        return done

    started = time.time()
    raw, val, calib = work / "raw", work / "val", work / "calib"
    if not (raw / "val_set.csv").is_file():
        step(abtf, "synth", "--out", str(raw), "--frames", str(args.frames), "--calibration-frames", "16")
    for split_csv, prefix, folder in (("val_set.csv", "val", val), ("calibration_set.csv", "calib", calib)):
        if not (folder / "dataset.json").is_file():
            step(abtf, "preprocess", "--raw", str(raw), "--split-csv", str(raw / split_csv),
                 "--out", str(folder), "--prefix", prefix, "--config", args.config)  # fmt: skip
    model = work / f"ssd_{args.config}.onnx"
    if not model.is_file():
        step(abtf, "export-onnx", "--config", args.config, "--out", str(model),
             "--checkpoint", str(DEMO_WEIGHTS))  # fmt: skip
    if args.precision == "int8":
        int8 = work / f"ssd_{args.config}_int8.onnx"
        if not int8.is_file():
            step(abtf, "quantize", "--model", str(model), "--out", str(int8), "--calibration", str(calib))
        model = int8
    common = ["--dataset-dir", str(val), "--model-path", str(model), "--scenario", "ConstantStream",
              "--round", args.round, "--execution-mode", "valid", "--results-dir", str(work / "results"),
              "--system-name", SYSTEM]  # fmt: skip
    if args.threads:
        common += ["--threads", str(args.threads)]
    found = step(abtf, "run", *common, "--mode", "find-performance", *extra, check=False)
    scenario = work / "results" / SYSTEM / "ssd" / "ConstantStream"
    search = json.loads((scenario / "rate_search.json").read_text()) if found.returncode == 0 else None
    steal_before = host_steal_s()
    performance = step(abtf, "run", *common, check=False) if search else None
    steal_after = host_steal_s()
    accuracy = step(abtf, "run", *common, "--mode", "accuracy", check=False) if search else None
    outcome: dict = {
        "round": args.round,
        "cpu": cpu_vector_text(),
        "cores": os.cpu_count(),
        "model": f"SSD-ResNet50 config {args.config} ({args.precision}), demo checkpoint",
        "rate_search": search and {k: search[k] for k in ("rate_qps", "reason", "settings", "trials")},
    }
    if performance is not None and (scenario / "performance/run_1" / DETAIL_LOG).is_file():
        values = detail_values(read_detail_log(scenario / "performance/run_1" / DETAIL_LOG))
        outcome["performance"] = {
            "target_qps": values.get("effective_target_qps"),
            "queries": values.get("result_query_count"),
            "p99.9_ms": values.get("result_99.90_percentile_latency_ns", 0) / 1e6,
            "overlatency_queries": values.get("result_overlatency_query_count"),
            "completed_samples_per_s": values.get("result_completed_samples_per_sec"),
            "result": values.get("result_validity"),
            "invalid_reason": values.get("result_invalid_reason"),
        }
        trace = read_trace_latencies(scenario / "performance/run_1" / TRACE_LOG)
        if trace is not None:
            gap_ns, ended_ns = longest_completion_gap(trace)
            outcome["performance"]["longest_stall_s"] = round(gap_ns / 1e9, 3)
            outcome["performance"]["stall_ended_at_s"] = round(ended_ns / 1e9, 1)
        if steal_before is not None and steal_after is not None:
            outcome["performance"]["host_steal_s"] = round(steal_after - steal_before, 2)
    if accuracy is not None and accuracy.returncode == 0:
        sut_info = work / "results" / SYSTEM / "mlc-sut-info.json"
        step(abtf, "sysinfo", "--out", str(sut_info), "--framework", "onnxruntime", "--device", "cpu")
        tree = work / "submission"
        step(str(tools.bin / "python"), "-m", "abtf_ssd.submission.tree",
             "--results_dir", str(work / "results"), "--submission_dir", str(tree),
             "--submitter", "ABTF_Demo", "--division", "open", "--system_name", SYSTEM,
             "--sut_info", str(sut_info), "--version", args.round, check=False)  # fmt: skip
        verdict = run_submission_checker(tools.checkout, tree, args.round)
        ours = run_checks(tree, args.round)
        outcome.update(
            official_rules=sorted(verdict.rules),
            official_errors=verdict.errors,
            our_rules=sorted(ours.rules),
            our_warnings=[str(w) for w in ours.warnings],
            disagreement=[sorted(side) for side in disagreement(ours.rules, verdict.rules)],
        )
    outcome["wall_s"] = round(time.time() - started)
    outcome["written"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    (args.out / f"valid_constantstream_{args.round}.json").write_text(json.dumps(outcome, indent=2) + "\n")
    print(json.dumps(outcome, indent=2))
    valid = outcome.get("performance", {}).get("result") == "VALID"
    return 0 if valid and outcome.get("official_rules") == [] else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
