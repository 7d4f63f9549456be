"""The demo, exactly as users type it, through real mlcr in an MLC repos folder of its own.

The chain (system description, synthetic frames, preprocessing, demo model, LoadGen performance
and accuracy runs with ONNX Runtime, mAP) must leave the MLPerf logs with the v0.5 seeds; a
second run must reuse the cached model and dataset without rebuilding anything.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from abtf_ssd.loadgen.rules import ROUNDS

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DEMO = [
    "run-abtf-inference,reference,_v0.5,_synthetic,_performance-and-accuracy",
    "--model=ssd",
    "--device=cpu",
    "--framework=onnxruntime",
    "--scenario=SingleStream",
    "--quiet",
]
CACHED_SCRIPTS = ("get,raw,dataset,cognata", "get,preprocessed,dataset,cognata", "get,ml-model,ssd,resnet50")


def _run(cmd: list[str], env: dict[str, str], cwd: Path) -> str:
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=1200)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{output[-8000:]}"
    return output


def _cache_entries(env: dict[str, str], cwd: Path) -> dict[str, list[str]]:
    found = {}
    for tags in CACHED_SCRIPTS:
        out = _run([str(BIN / "mlc"), "search", "cache", f"--tags={tags},-tmp"], env, cwd)
        found[tags] = sorted(re.findall(r"Item path: (\S+)", out))
    return found


def _mtimes(paths: list[Path]) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in paths}


def test_demo_end_to_end_then_from_cache(tmp_path: Path) -> None:
    env = dict(os.environ, HOME=str(tmp_path), MLC_REPOS=str(tmp_path / "repos"), PYTHONUNBUFFERED="1")
    _run([str(BIN / "mlc"), "add", "repo", str(REPO)], env, tmp_path)

    output = _run([str(BIN / "mlcr"), *DEMO], env, tmp_path)

    folder = Path(re.findall(r"Results folder: (\S+)", output)[-1])
    assert folder == tmp_path / "results" / "default" / "ssd" / "SingleStream"
    performance, accuracy = folder / "performance" / "run_1", folder / "accuracy"
    for run in (performance, accuracy):
        for name in ("mlperf_log_summary.txt", "mlperf_log_detail.txt", "mlperf_log_accuracy.json"):
            assert (run / name).is_file(), run / name
    first_line = (accuracy / "accuracy.txt").read_text().splitlines()[0]
    assert re.fullmatch(r"mAP: [0-9]+\.[0-9]+", first_line)
    # The committed demo weights really detect: measured through LoadGen's accuracy log.
    assert float(first_line.split()[1]) >= 0.5, first_line
    detail = (performance / "mlperf_log_detail.txt").read_text()
    v05 = ROUNDS["v0.5"]
    for key in ("qsl_rng_seed", "sample_index_rng_seed", "schedule_rng_seed"):
        assert re.search(rf'"key": "effective_{key}", "value": {getattr(v05, key)}\b', detail), key
    assert (tmp_path / "results" / "default" / "mlc-sut-info.json").is_file()
    assert re.search(r"SingleStream\s+performance\s+\d+", output)  # the results table

    entries = _cache_entries(env, tmp_path)
    assert all(len(paths) == 1 for paths in entries.values()), entries
    model = Path(re.findall(r"\* SSD-ResNet50 model: (\S+)", output)[-1])
    dataset = Path(re.findall(r"\* Preprocessed Cognata dataset: (\S+)", output)[-1])
    pickles = sorted(dataset.glob("val_*.pkl"))
    assert model.is_file() and pickles
    before = _mtimes([model, *pickles])

    again = _run([str(BIN / "mlcr"), *DEMO], env, tmp_path)

    assert _cache_entries(env, tmp_path) == entries
    assert _mtimes([model, *pickles]) == before
    assert "torch.onnx" not in again  # the model was not exported again
    assert (accuracy / "accuracy.txt").read_text().startswith("mAP: ")
