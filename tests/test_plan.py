"""Submission plans (abtf_ssd.submission.plan, ``abtf-ssd plan``): the demo plan end to end through the real
CLI, resume after SIGINT and SIGKILL, a changed model, malformed plans, and the estimate of the templates.

The demo plan (automation/plans/demo.yaml) runs ONNX Runtime and PyTorch, SingleStream, test mode,
on 8 synthetic frames: real LoadGen, real backends, a real submission tree and tarball.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from abtf_ssd.cli import main as cli_main
from abtf_ssd.loadgen.find_rate import TARGET_QPS_FILE
from abtf_ssd.submission import checker
from abtf_ssd.submission.plan.estimate import (
    StepEstimate,
    constant_stream_rate,
    estimate,
    format_estimate,
    total_hours,
)
from abtf_ssd.submission.plan.format import PlanError, load_plan, plan_steps
from abtf_ssd.submission.plan.identity import MARKER_NAME
from abtf_ssd.submission.plan.runner import Progress
from abtf_ssd.submission.plan.summary import SUMMARY_NAME

REPO = Path(__file__).resolve().parents[1]
PLANS = REPO / "automation" / "plans"
DEMO = PLANS / "demo.yaml"
ABTF_SSD = Path(sys.executable).parent / "abtf-ssd"
ORT_SYSTEM, TORCH_SYSTEM = "demo-cpu-onnxruntime-cpu", "demo-cpu-pytorch-cpu"
RUN_TIMEOUT_S = 900


def _plan_command(*args: str) -> list[str]:
    return [str(ABTF_SSD), "plan", *args]


def _run_cli(args: list[str], cwd: Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        _plan_command(*args),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    if ok:
        assert proc.returncode == 0, (
            f"{args} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-6000:]}"
        )
    return proc


def _scenario(output: Path, system: str) -> Path:
    return output / "results" / system / "ssd" / "SingleStream"


def _run_files(output: Path, system: str) -> dict[Path, int]:
    """mtime of every file a system's runs wrote (LoadGen logs, results.json, markers)."""
    return {p: p.stat().st_mtime_ns for p in sorted(_scenario(output, system).rglob("*")) if p.is_file()}


def _tar_names(tarball: Path) -> list[str]:
    with tarfile.open(tarball) as archive:
        return sorted(archive.getnames())


def _assert_tarball_passes(tarball: Path, where: Path) -> None:
    with tarfile.open(tarball) as archive:
        archive.extractall(where, filter="data")
    assert checker.check_submission(where / "submission", "v0.5", allow_test_mode=True) == []


@pytest.fixture(scope="module")
def demo_output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo plan run once, uninterrupted, through the real ``abtf-ssd`` console script."""
    home = tmp_path_factory.mktemp("plan_demo")
    started = time.monotonic()
    proc = _run_cli(["run", str(DEMO), "--output", "out"], cwd=home)
    (home / "wall_s.txt").write_text(f"{time.monotonic() - started:.1f}\n")
    (home / "stdout.txt").write_text(proc.stdout)
    return home / "out"


def test_demo_plan_end_to_end_makes_a_checked_tarball(demo_output: Path, tmp_path: Path) -> None:
    stdout = (demo_output.parent / "stdout.txt").read_text()
    summary = json.loads((demo_output / SUMMARY_NAME).read_text())
    tarball = Path(summary["tarball"])
    assert tarball == demo_output / "submission.tar.gz" and tarball.is_file()
    assert summary["tarball_sha256"] == checker.sha256_file(tarball)
    assert f"sha256 {summary['tarball_sha256']}" in stdout
    assert sorted(summary["ran"]) == sorted(
        f"{system} SingleStream {mode}"
        for system in (ORT_SYSTEM, TORCH_SYSTEM)
        for mode in ("performance", "accuracy")
    )
    rows = {row["system"]: row for row in summary["rows"]}
    assert set(rows) == {ORT_SYSTEM, TORCH_SYSTEM}
    for row in rows.values():
        assert row["scenario"] == "SingleStream" and row["verdict"] == "pass"
        assert row["map"] is not None and row["map"] > 0.5  # the committed demo weights detect
        assert row["metric"].endswith(" ms") and row["result"] == "INVALID"  # 8 queries: test mode
    for system in (ORT_SYSTEM, TORCH_SYSTEM):
        marker = json.loads((_scenario(demo_output, system) / "accuracy" / MARKER_NAME).read_text())
        assert marker["identity"]["framework"] in system and len(marker["identity"]["model_sha256"]) == 64
    _assert_tarball_passes(tarball, tmp_path)

    status = _run_cli(["status", str(DEMO), "--output", str(demo_output)], cwd=tmp_path).stdout
    assert "runs done 4/4; left 0" in status and summary["tarball_sha256"] in status


def test_sigint_then_sigkill_in_the_second_run_resume(demo_output: Path, tmp_path: Path) -> None:
    output = tmp_path / "out"
    torch_performance = _scenario(output, TORCH_SYSTEM) / "performance" / "run_1"
    command = _plan_command("run", str(DEMO), "--output", str(output))

    def interrupt(sig: signal.Signals) -> tuple[int, str]:
        """Start the plan and send ``sig`` once LoadGen has started the PyTorch performance run."""
        started = time.time_ns()
        log = tmp_path / f"log-{sig.name}.txt"
        with log.open("w") as handle:
            child = subprocess.Popen(command, cwd=tmp_path, stdout=handle, stderr=subprocess.STDOUT)
            detail = torch_performance / "mlperf_log_detail.txt"
            deadline = time.monotonic() + RUN_TIMEOUT_S
            while not (detail.is_file() and detail.stat().st_mtime_ns > started):
                assert child.poll() is None, (
                    f"the plan ended before its second run:\n{log.read_text()[-4000:]}"
                )
                assert time.monotonic() < deadline
                time.sleep(0.02)
            child.send_signal(sig)
            return child.wait(timeout=120), log.read_text()

    returncode, log = interrupt(signal.SIGINT)
    assert returncode == 130, log[-4000:]
    assert "rerun to resume" in log
    ort_files = _run_files(output, ORT_SYSTEM)
    assert ort_files and not (torch_performance / MARKER_NAME).exists()

    returncode, log = interrupt(signal.SIGKILL)
    assert returncode == -signal.SIGKILL
    assert f"{ORT_SYSTEM} SingleStream performance: finished before, kept" in log
    assert _run_files(output, ORT_SYSTEM) == ort_files
    status = _run_cli(["status", str(DEMO), "--output", str(output)], cwd=tmp_path).stdout
    assert f"done        {ORT_SYSTEM} SingleStream accuracy" in status
    assert f"interrupted {TORCH_SYSTEM} SingleStream performance" in status
    assert "runs done 2/4; left 2" in status

    stdout = _run_cli(["run", str(DEMO), "--output", str(output)], cwd=tmp_path).stdout
    assert "runs: 2 ran, 2 kept from before" in stdout
    assert _run_files(output, ORT_SYSTEM) == ort_files  # the first run was not redone
    assert (torch_performance / MARKER_NAME).is_file()
    tarball = output / "submission.tar.gz"
    assert _tar_names(tarball) == _tar_names(demo_output / "submission.tar.gz")
    _assert_tarball_passes(tarball, tmp_path / "extracted")


def test_a_changed_model_reruns_only_its_runs(
    demo_output: Path, demo_onnx_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out"
    shutil.copytree(demo_output, output)  # copy2: the mtimes stay
    onnx_models = list((output / "sources").rglob("*.onnx"))
    assert len(onnx_models) == 1
    shutil.copyfile(demo_onnx_model, onnx_models[0])  # other weights: a changed model file
    ort_before, torch_before = _run_files(output, ORT_SYSTEM), _run_files(output, TORCH_SYSTEM)

    assert cli_main(["plan", "run", str(DEMO), "--output", str(output)]) == 0

    stdout = capsys.readouterr().out
    assert "model_sha256 changed" in stdout
    assert _run_files(output, TORCH_SYSTEM) == torch_before
    ort_after = _run_files(output, ORT_SYSTEM)
    for name in (
        "performance/run_1/plan-run.json",
        "accuracy/plan-run.json",
        "accuracy/mlperf_log_accuracy.json",
    ):
        path = _scenario(output, ORT_SYSTEM) / name
        assert ort_after[path] > ort_before[path], name
    summary = json.loads((output / SUMMARY_NAME).read_text())
    assert sorted(summary["ran"]) == [
        f"{ORT_SYSTEM} SingleStream accuracy",
        f"{ORT_SYSTEM} SingleStream performance",
    ]


GOOD = {
    "round": "v0.5",
    "division": "open",
    "submitter": "org",
    "systems": [
        {
            "name": "sut",
            "runs": [
                {
                    "framework": "onnxruntime",
                    "device": "cpu",
                    "scenarios": ["SingleStream"],
                    "source": "synthetic",
                }
            ],
        }
    ],
}


def _with(path: tuple[str | int, ...], value: object, delete: bool = False) -> dict:
    data = json.loads(json.dumps(GOOD))
    target = data
    for key in path[:-1]:
        target = target[key]
    if delete:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


RUN = ("systems", 0, "runs", 0)
MALFORMED = [
    (_with(("rounds",), "v0.5"), "rounds: unknown key; allowed: round, division"),
    (_with(("round",), "v0.7"), "round: 'v0.7' is not allowed; allowed: v0.5, v1.0"),
    (_with(("division",), "closd"), "division: 'closd' is not allowed; allowed: closed, open"),
    (_with(("submitter",), "my org"), "submitter: 'my org' is not a name"),
    (_with(("status",), "final"), "status: 'final' is not allowed; allowed: hardened, development"),
    (_with(("systems",), []), "systems: expected a non-empty list"),
    (_with(("systems", 0, "runs"), {}), "systems[0].runs: expected a non-empty list"),
    (
        _with((*RUN, "framework"), ["onnxruntime", "tensorflow"]),
        "framework[1]: 'tensorflow' is not allowed; allowed: onnxruntime, pytorch",
    ),
    (
        _with((*RUN, "device"), "gpu 0"),
        "systems[0].runs[0].device: 'gpu 0' is not allowed; allowed: cpu, cuda, cuda:N",
    ),
    (
        _with((*RUN, "scenarios"), ["Offline"]),
        "scenarios[0]: 'Offline' is not allowed; allowed: SingleStream, ConstantStream",
    ),
    (_with((*RUN, "source"), "s3"), "source.kind: 's3' is not allowed; allowed: mlc, local, synthetic"),
    (
        _with((*RUN, "source"), {"kind": "mlc", "download_tool": "wget"}),
        "download_tool: 'wget' is not allowed; allowed: rclone, r2-downloader",
    ),
    (
        _with((*RUN, "source"), {"kind": "local", "model": "m.onnx"}),
        "systems[0].runs[0].source.dataset: missing",
    ),
    (
        _with((*RUN, "source"), {"kind": "synthetic", "frame": 3}),
        "source.frame: unknown key; allowed: kind, frames, seed",
    ),
    (_with((*RUN, "threads"), 0), "systems[0].runs[0].threads: 0 is not allowed; allowed: a positive int"),
    (_with((*RUN, "execution_mode"), "fast"), "execution_mode: 'fast' is not allowed; allowed: test, valid"),
    (_with((*RUN, "scenarios"), None, delete=True), "systems[0].runs[0].scenarios: missing"),
    (_with((*RUN, "batchsize"), 2), "systems[0].runs[0].batchsize: unknown key; allowed: framework, device"),
    (_with(("systems",), GOOD["systems"] * 2), "systems[1].name: system 'sut' is planned twice"),
    (_with((*RUN, "user_conf"), 5), "systems[0].runs[0].user_conf: 5 is not allowed; allowed: a path"),
    (_with(("systems", 0, "sut_info"), ""), "systems[0].sut_info: '' is not allowed; allowed: a path"),
]


@pytest.mark.parametrize(("data", "expected"), MALFORMED)
def test_malformed_plans_are_refused_naming_the_key(tmp_path: Path, data: dict, expected: str) -> None:
    import yaml

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    started = time.monotonic()
    with pytest.raises(PlanError) as error:
        load_plan(path)
    assert time.monotonic() - started < 1.0
    assert str(error.value).startswith(f"plan {path}: ")
    assert expected in str(error.value)


def test_a_malformed_plan_is_refused_by_the_cli_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("round: v0.5\ndivision: open\nsubmitter: org\nsystems: [\n")
    started = time.monotonic()
    proc = _run_cli(["run", str(path), "--output", "out"], cwd=tmp_path, ok=False)
    assert time.monotonic() - started < 10  # generous: the interpreter's start on a busy machine
    assert proc.returncode == 1 and proc.stdout == ""
    assert (
        proc.stderr.startswith(f"abtf-ssd plan: error: plan {path} line ") and "not valid YAML" in proc.stderr
    )
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
    proc = _run_cli(["run", str(tmp_path / "missing.yaml")], cwd=tmp_path, ok=False)
    assert proc.stderr == f"abtf-ssd plan: error: plan {tmp_path / 'missing.yaml'}: no such file\n"


# Hand arithmetic at 20 s a query (an 8 MP frame on a CPU), closed division: find-performance
# 10 queries = 200 s; performance and TEST01 6636 queries each = 132720 s; accuracy 6000 frames =
# 120000 s. ConstantStream, before any rate search: the search starts at 90 % of 1 / 20 s = 0.045 QPS,
# 0.04 at its 0.01 QPS resolution; its budget is 16 trials of 1000 queries (25000 s each at 0.04 QPS)
# = 400000 s; performance and TEST01 issue 100000 queries at 0.04 QPS = 2500000 s each, accuracy its
# 6000 at that rate = 150000 s.
SINGLE_STREAM_S = 200 + 132720 + 120000 + 132720
CONSTANT_STREAM_S = 200 + 400000 + 2500000 + 150000 + 2500000


@pytest.mark.parametrize(
    ("name", "seconds"),
    [
        ("cpu-v0.5", SINGLE_STREAM_S),
        ("cpu-v1.0", SINGLE_STREAM_S),
        ("cuda-v0.5", SINGLE_STREAM_S + CONSTANT_STREAM_S),
        ("cuda-v1.0", SINGLE_STREAM_S + CONSTANT_STREAM_S),
    ],
)
def test_estimate_of_the_templates(tmp_path: Path, name: str, seconds: int) -> None:
    template = load_plan(PLANS / f"{name}.yaml", tmp_path)
    assert template.division == "closed"
    estimates = estimate(template, latency_ms=20000)
    assert sum(e.seconds or 0 for e in estimates) == pytest.approx(seconds)
    assert total_hours(estimates) == pytest.approx(seconds / 3600)
    stdout = _run_cli(["estimate", str(PLANS / f"{name}.yaml"), "--latency-ms", "20000"], cwd=tmp_path).stdout
    total = next(line for line in stdout.splitlines() if line.startswith("total"))
    assert total.split()[-1] == f"{seconds / 3600:.2f}"
    if name.startswith("cuda"):  # ConstantStream: before the search, its first rate, said so
        assert "ConstantStream at 0.04 QPS (the rate search has not run: its first rate)" in stdout


def test_estimate_rules_at_a_fast_latency(tmp_path: Path) -> None:
    """15 ms a query: SingleStream runs 600 s (40000 queries); v1.0 ConstantStream issues 100000
    queries at its 15 a second (111 minutes); accuracy is 6000 frames at the latency."""
    template = load_plan(PLANS / "cuda-v1.0.yaml", tmp_path)
    by_label = {e.step.label: e for e in estimate(template, latency_ms=15)}
    single = by_label["gpu-onnxruntime SingleStream performance"]
    assert (single.queries, single.seconds) == (40000, pytest.approx(600))
    constant = by_label["gpu-onnxruntime ConstantStream performance"]
    assert (constant.queries, constant.seconds) == (100000, pytest.approx(100000 / 15))
    assert by_label["gpu-onnxruntime ConstantStream accuracy"].seconds == pytest.approx(6000 / 15)
    assert by_label["gpu-onnxruntime SingleStream accuracy"].seconds == pytest.approx(90)
    # v0.5 reports the ConstantStream throughput: before the rate search has run, its first rate
    # stands for it: 90 % of 1 / 15 ms = 60 QPS, and the 100000 queries take 1667 s.
    v05 = load_plan(PLANS / "cuda-v0.5.yaml", tmp_path)
    constant = {e.step.label: e for e in estimate(v05, latency_ms=15)}[
        "gpu-onnxruntime ConstantStream performance"
    ]
    assert (constant.queries, constant.seconds) == (100000, pytest.approx(100000 / 60))


def test_estimate_says_where_the_constant_stream_rate_comes_from(tmp_path: Path) -> None:
    """Before the rate search, the estimate says so and takes the search's first rate; after it, the
    rate found (v1.0: only the round's own 15 QPS, which a lower rate found does not replace)."""
    for name, searched, expected in (("cuda-v0.5", "7.5", 7.5), ("cuda-v1.0", "7.5", 15.0)):
        template = load_plan(PLANS / f"{name}.yaml", tmp_path / name)
        run = next(r for r in template.runs if r.scenario == "ConstantStream")
        assert constant_stream_rate(template, run, 100) == (
            9.0,
            "the rate search has not run: its first rate",
        )
        folder = template.results_dir / run.system / "ssd" / "ConstantStream"
        folder.mkdir(parents=True)
        (folder / TARGET_QPS_FILE).write_text(searched + "\n")
        qps, source = constant_stream_rate(template, run, 100)
        assert qps == expected
        assert source == (
            "the rate search's"
            if name == "cuda-v0.5"
            else "the round's; the rate search found only 7.5 QPS holds"
        )
        lines = format_estimate(template, estimate(template, latency_ms=100), latency_ms=100).splitlines()
        assert f"{run.label}: ConstantStream at {expected:g} QPS ({source})" in lines


def test_max_hours_refuses_before_anything_is_written(tmp_path: Path) -> None:
    args = [
        "run",
        str(PLANS / "cpu-v0.5.yaml"),
        "--output",
        "out",
        "--latency-ms",
        "20000",
        "--max-hours",
        "100",
    ]
    proc = _run_cli(args, cwd=tmp_path, ok=False)
    assert proc.returncode == 1
    assert "estimated 107.1 h for the runs left, over --max-hours 100" in proc.stderr
    assert not (tmp_path / "out").exists()
    proc = _run_cli(["run", str(DEMO), "--output", "out", "--max-hours", "1"], cwd=tmp_path, ok=False)
    assert "--max-hours needs a latency for every run left" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_automation_is_not_a_python_package() -> None:
    """mlcflow's own script engine is the top-level package ``automation``."""
    assert not list((REPO / "automation").rglob("*.py"))


def test_local_source_runs_and_is_kept_on_rerun(
    tiny_dataset, demo_onnx_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ``local`` source (paths relative to the plan), one model per framework; a rerun keeps it all."""
    import yaml

    data = _with((*RUN, "source"), {"kind": "local", "model": {"onnxruntime": "m.onnx"}, "dataset": "val"})
    data["systems"][0]["runs"][0].update(test_query_count=3, threads=1)
    data["execution_mode"] = "test"
    shutil.copyfile(demo_onnx_model, tmp_path / "m.onnx")
    shutil.copytree(tiny_dataset.preprocessed, tmp_path / "val")
    plan_file = tmp_path / "local.yaml"
    plan_file.write_text(yaml.safe_dump(data))
    output = tmp_path / "out"

    assert cli_main(["plan", "run", str(plan_file), "--output", str(output)]) == 0
    first = _run_files(output, "sut")
    marker = json.loads((_scenario(output, "sut") / "accuracy" / MARKER_NAME).read_text())
    assert marker["identity"]["dataset"]["samples"] == tiny_dataset.frames
    assert marker["identity"]["model_sha256"] == checker.sha256_file(demo_onnx_model)
    assert cli_main(["plan", "run", str(plan_file), "--output", str(output)]) == 0
    assert _run_files(output, "sut") == first
    assert "runs: 0 ran, 2 kept from before" in capsys.readouterr().out

    (tmp_path / "m.onnx").unlink()
    assert cli_main(["plan", "run", str(plan_file), "--output", str(output)]) == 1
    assert f"systems[0].runs[0].source.model: {tmp_path / 'm.onnx'} does not exist" in capsys.readouterr().err
    assert _run_files(output, "sut") == first


def test_progress_line_counts_queries_and_gives_an_eta() -> None:
    import io

    stream = io.StringIO()
    step = plan_steps(load_plan(DEMO))[0]
    progress = Progress(total=3, done=1, stream=stream, interval_s=0.05)
    with progress:
        later = [StepEstimate(step, 5, 100.0), StepEstimate(step, 6, None)]
        progress.start("sut SingleStream performance", queries=10, later=later)
        progress.answered_samples(1)  # the harness's warm-up inference
        for _ in range(4):
            progress.answered_samples(1)
        time.sleep(0.2)
        line = progress.line()
    # 4 queries in about 0.2 s: the 6 left and the 6 of the later run without a latency at that
    # pace (about 0.6 s), and the 100 s of the later run with one.
    assert line.startswith(
        "[plan] runs done 1/3, 2 left | sut SingleStream performance: 4/10 queries | ETA 0:01:4"
    )
    periodic = [text for text in stream.getvalue().splitlines() if text.startswith("[plan] runs done")]
    assert periodic and not stream.isatty()


def test_constant_stream_plan_on_the_automotive_loadgen_with_the_official_checker(tmp_path: Path) -> None:
    """SingleStream and ConstantStream in one plan, run by the automotive LoadGen of the pinned
    official tools (tests/upstream_tools.py), then the round's official checker on the tree."""
    import yaml
    from upstream_tools import official_tools

    tools = official_tools("v0.5")
    data = yaml.safe_load(DEMO.read_text())
    run = data["systems"][0]["runs"][0]
    run.update(framework="onnxruntime", scenarios=["SingleStream", "ConstantStream"], target_qps=2.0)
    plan_file = tmp_path / "constant.yaml"
    plan_file.write_text(yaml.safe_dump(data))
    output = tmp_path / "out"
    proc = subprocess.run(
        [str(tools.bin / "abtf-ssd"), "plan", "run", str(plan_file), "--output", str(output)]
        + ["--official-tools", str(tools.checkout)],
        cwd=tmp_path,
        env=tools.env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    summary = json.loads((output / SUMMARY_NAME).read_text())
    assert [(row["scenario"], row["verdict"]) for row in summary["rows"]] == [
        ("SingleStream", "pass"),
        ("ConstantStream", "pass"),
    ]
    # v0.5 reports the ConstantStream throughput, SingleStream the early-stopping latency.
    assert [row["metric"].split()[-1] for row in summary["rows"]] == ["ms", "samples/s"]
    marker = json.loads(
        (
            output / "results" / "demo-cpu" / "ssd" / "ConstantStream" / "performance" / "run_1" / MARKER_NAME
        ).read_text()
    )
    assert (
        marker["identity"]["loadgen"] == "automotive" and marker["identity"]["settings"]["target_qps"] == 2.0
    )
    # A test-mode tree fails the official checker on the run length only; reported, not a gate.
    assert summary["official_checker"].startswith("FAILS")
    from abtf_ssd.submission.official import run_submission_checker

    verdict = run_submission_checker(tools.checkout, output / "submission", "v0.5")
    assert verdict.rules == {"min-duration", "min-query-count", "perf-sample-count"}, verdict.errors
    _assert_tarball_passes(Path(summary["tarball"]), tmp_path / "extracted")
