"""bench/bench_cuda.py: the skipped result where no framework can use CUDA, its place in the report,
and the whole measuring path on the CPU with the demo config."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from abtf_ssd.model.backends import check_device

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"
SCRIPT = BENCH_DIR / "bench_cuda.py"
NO_CUDA = all(check_device(framework, "cuda") for framework in ("onnxruntime", "pytorch"))

sys.path.insert(0, str(BENCH_DIR))
import run_all  # noqa: E402  (bench/run_all.py)


@pytest.mark.skipif(not NO_CUDA, reason="a framework here can use CUDA: the benchmark would run")
def test_without_cuda_the_benchmark_is_skipped_and_reported_so(tmp_path: Path) -> None:
    # 120 s: checking the device comes first; building the 8 MP model would take longer than that.
    result = run_all.run_script(SCRIPT, ["--device", "cuda"], 120, tmp_path)
    assert result.status == "skipped", result.output or result.error
    assert result.returncode == 0 and result.rows == []
    data = json.loads((tmp_path / "bench_cuda.json").read_text(encoding="utf-8"))
    assert data["rows"] == []
    assert data["skipped"] == result.skipped
    assert data["skipped"].startswith("onnxruntime: device 'cuda' needs CUDAExecutionProvider")
    assert "; pytorch: device 'cuda' asked for" in data["skipped"]

    report = {
        "generated": "now",
        "command": "bench/run_all.py --only cuda",
        "seconds": result.seconds,
        "machine": run_all.machine(),
        "cuda": run_all.cuda_status(),
        "benchmarks": [asdict(result)],
    }
    markdown = run_all.render_markdown(report)
    assert "|" not in result.skipped and "\n" not in result.skipped  # shown as it is in a table cell
    assert "| bench_cuda.py | skipped | - | - |" in markdown
    assert f"**skipped**: {result.skipped}" in markdown
    assert "| row | ours |" not in markdown, "no empty table for a skipped benchmark"


@pytest.mark.slow
def test_the_measuring_path_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "bench_cuda.json"
    command = [sys.executable, str(SCRIPT), "--device", "cpu", "--config", "demo", "--runs", "2"]
    command += ["--warmup", "0", "--threads", "2", "--json", str(out)]
    process = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert process.returncode == 0, process.stdout + process.stderr
    data = json.loads(out.read_text(encoding="utf-8"))
    assert "skipped" not in data
    assert len(data["rows"]) == 6
    for row in data["rows"]:
        assert set(run_all.ROW_KEYS) <= set(row)
        assert row["ours"] > 0 and row["baseline"] > 0 and row["ratio"] > 0, row
    params = data["params"]
    assert params["agreement"]["ort_run_vs_ort_binding"] == 0.0
    assert params["agreement"]["ort_binding_vs_pytorch"] < 1e-4
    assert {name: stat["calls"] for name, stat in params["stats"].items()} == {
        "ort_binding": 2,
        "ort_run": 2,
        "pytorch": 2,
        "ort_binding_query": 2,
        "pytorch_query": 2,
    }
