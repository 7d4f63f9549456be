"""What the MLC layer costs: the same work through ``mlcr`` and straight through ``abtf-ssd``.

Three measurements, each printed side by side with its ratio:

1. building the synthetic preprocessed dataset: ``abtf-ssd synth`` + ``abtf-ssd preprocess`` vs
   ``mlcr get,preprocessed,dataset,cognata,_synthetic`` (first call, nothing cached);
2. the same ``mlcr`` call again: a cache hit vs building;
3. the demo benchmark (performance + accuracy runs, mAP) with model and data ready:
   ``abtf-ssd run`` x2 + ``abtf-ssd accuracy`` vs ``mlcr run-abtf-inference,...,_synthetic``.

Everything runs in a temporary folder with an MLC repos folder of its own. "ours" is the mlcr
side; a ratio below 1 is the price of the MLC layer (process starts, script lookup, caching).
Usage: python bench/bench_mlcr.py [--frames 16] [--queries 8] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_all import make_row, write_results  # noqa: E402


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{(proc.stdout + proc.stderr)[-4000:]}")
    return seconds, proc.stdout + proc.stderr


def show(row: dict, baseline_label: str, ours_label: str) -> None:
    print(
        f"{row['name']:<30} {baseline_label:>16} {row['baseline']:7.2f} s  "
        f"{ours_label:>16} {row['ours']:7.2f} s  ratio {row['ratio']:5.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16, help="synthetic validation frames")
    parser.add_argument("--queries", type=int, default=8, help="test-mode queries per run")
    parser.add_argument("--json", help="also write the rows here (bench/README.md)")
    args = parser.parse_args()
    cli = [sys.executable, "-m", "abtf_ssd.cli"]
    with tempfile.TemporaryDirectory(prefix="bench-mlcr-") as tmp:
        work = Path(tmp)
        env = dict(os.environ, HOME=str(work), MLC_REPOS=str(work / "repos"))
        timed([str(BIN / "mlc"), "add", "repo", str(REPO)], env, work)
        frames = [f"--frames={args.frames}", "--calibration_frames=1"]

        synth = [*cli, "synth", "--out", "raw", "--frames", str(args.frames), "--calibration-frames", "1"]
        direct_data, _ = timed(synth, env, work)
        build, _ = timed(
            [*cli, "preprocess", "--raw", "raw", "--split-csv", "raw/val_set.csv", "--out", "val"]
            + ["--prefix", "val", "--config", "demo"],
            env,
            work,
        )
        direct_data += build
        dataset_tags = "get,preprocessed,dataset,cognata,_synthetic,_validation"
        mlc_data, out = timed([str(BIN / "mlcr"), dataset_tags, *frames, "--quiet"], env, work)
        dataset = re.findall(r"\* Preprocessed Cognata dataset: (\S+)", out)[-1]
        cached, _ = timed([str(BIN / "mlcr"), dataset_tags, *frames, "--quiet"], env, work)

        _, out = timed([str(BIN / "mlcr"), "get,ml-model,ssd,resnet50,_synthetic", "--quiet"], env, work)
        model = re.findall(r"\* SSD-ResNet50 model: (\S+)", out)[-1]
        run = [*cli, "run", "--dataset-dir", dataset, "--model-path", model, "--config-name", "demo"]
        run += ["--test-query-count", str(args.queries), "--results-dir", "direct"]
        direct_demo = timed([*run, "--mode", "performance"], env, work)[0]
        direct_demo += timed([*run, "--mode", "accuracy"], env, work)[0]
        accuracy_dir = "direct/default/ssd/SingleStream/accuracy"
        direct_demo += timed([*cli, "accuracy", "--result-dir", accuracy_dir], env, work)[0]
        demo = [str(BIN / "mlcr"), "run-abtf-inference,reference,_v0.5,_synthetic,_performance-and-accuracy"]
        demo += [*frames, f"--test_query_count={args.queries}", "--quiet"]
        mlc_demo, _ = timed(demo, env, work)

    rows = [
        make_row("build preprocessed dataset", mlc_data, direct_data, "s", note="mlcr cold vs abtf-ssd"),
        make_row("preprocessed dataset again", cached, mlc_data, "s", target=2.0, note="cache hit vs cold"),
        make_row(
            "demo benchmark, inputs ready", mlc_demo, direct_demo, "s", note="mlcr chain vs abtf-ssd x3"
        ),
    ]
    title = (
        f"MLC layer: {args.frames} synthetic frames, {args.queries} queries per run, {os.cpu_count()} CPUs"
    )
    print(title)
    show(rows[0], "abtf-ssd", "mlcr (cold)")
    show(rows[1], "mlcr (cold)", "mlcr (cache hit)")
    show(rows[2], "abtf-ssd x3", "mlcr chain")
    if args.json:
        write_results(args.json, rows, title=title, params=vars(args))


if __name__ == "__main__":
    main()
