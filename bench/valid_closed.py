"""One full valid closed-division run of the demo model on a round's automotive LoadGen, officially checked.

Over 20 minutes on 2 cores (two 600 s runs: the performance run and TEST01), so it is a make target
(``make valid-closed``), not a CI test. In the environment of ``tests/upstream_tools.py`` (the round's
automotive LoadGen built from ``../shared/upstream``) it runs, as a user would::

    mlcr run-abtf-inference,reference,_<round>,_synthetic,_full,_submission --division=closed \\
         --frames=200 --scenario=SingleStream --official_tools=<checkout> ...

then the round's official ``submission_checker.py`` on the tree. The demo model's mAP is under the
closed target, so the expected verdict is: every rule passes but ``map-target``. The outcome goes to
``bench/out/valid_closed_<round>.json`` and is printed.
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

from abtf_ssd.submission.checker import run_checks  # noqa: E402
from abtf_ssd.submission.official import disagreement, run_submission_checker  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round", default="v0.5", choices=("v0.5", "v1.0"))
    parser.add_argument("--frames", type=int, default=200, help="synthetic validation frames (>= 128)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "valid_closed")
    args = parser.parse_args()
    tools = official_tools(args.round)
    work = args.out.resolve() / args.round
    work.mkdir(parents=True, exist_ok=True)
    env = tools.env()
    env["MLC_REPOS"] = str(work / "mlc")
    subprocess.run([str(tools.bin / "mlc"), "add", "repo", str(REPO)], env=env, cwd=work, check=False)
    command = [
        str(tools.bin / "mlcr"),
        f"run-abtf-inference,reference,_{args.round},_synthetic,_full,_submission",
        "--model=ssd", "--device=cpu", "--framework=onnxruntime", "--scenario=SingleStream",
        "--division=closed", f"--frames={args.frames}", f"--results_dir={work / 'results'}",
        f"--submission_dir={work / 'submission'}", f"--official_tools={tools.checkout}", "--quiet",
    ]  # fmt: skip
    started = time.time()
    with (work / "mlcr.log").open("w") as log:
        proc = subprocess.run(command, env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT, check=False)
    wall_s = time.time() - started
    tree = work / "submission"
    verdict = run_submission_checker(tools.checkout, tree, args.round)
    ours = run_checks(tree, args.round)
    outcome = {
        "round": args.round,
        "command": " ".join(command[1:]),
        "mlcr_returncode": proc.returncode,
        "wall_s": round(wall_s),
        "official_rules": sorted(verdict.rules),
        "official_errors": verdict.errors,
        "our_rules": sorted(ours.rules),
        "disagreement": [sorted(side) for side in disagreement(ours.rules, verdict.rules)],
        "expected": "official_rules == ['map-target'] (the demo model's mAP is under the closed target)",
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (args.out / f"valid_closed_{args.round}.json").write_text(json.dumps(outcome, indent=2) + "\n")
    print(json.dumps(outcome, indent=2))
    return 0 if verdict.rules == {"map-target"} and outcome["disagreement"] == [[], []] else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
