"""``abtf-ssd``: each subcommand reaches its library function, options map 1:1, errors are one line."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from abtf_ssd import cli
from abtf_ssd.model.export import export_model

REPO = Path(__file__).resolve().parents[1]


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "abtf-ssd"
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("synth", "preprocess", "export-onnx", "train", "run", "accuracy", "sysinfo"):
        assert command in out


def test_run_options_round_trip_through_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from abtf_ssd.loadgen.harness import RunOptions

    changed = RunOptions(
        dataset_dir=str(tmp_path / "data"),
        model_path=str(tmp_path / "m.onnx"),
        framework="pytorch",
        device="cuda:1",
        config_name="demo",
        mode="accuracy",
        round="v1.0",
        execution_mode="valid",
        test_query_count=7,
        performance_sample_count=64,
        batch_size=2,
        threads=3,
        results_dir=str(tmp_path / "results"),
        system_name="sut",
        expected_latency_ns=123456,
        dataset_prefix="calib",
    )
    args = cli.build_parser().parse_args(["run", *cli.run_arguments(changed)])
    options = {k: v for k, v in vars(args).items() if k not in ("command", "handler", "verbose")}
    assert RunOptions(**options) == changed
    # Every field has a flag: a new RunOptions field cannot be forgotten here.
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    usage = capsys.readouterr().out
    for field in dataclasses.fields(RunOptions):
        assert "--" + field.name.replace("_", "-") in usage


def test_defaults_are_not_written_into_the_command() -> None:
    from abtf_ssd.loadgen.harness import RunOptions

    assert cli.run_arguments(RunOptions(dataset_dir="d")) == ["--dataset-dir", "d"]


def test_run_rejects_unknown_choices(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["run", "--dataset-dir", "d", "--scenario", "Sometimes"])
    assert "invalid choice: 'Sometimes'" in capsys.readouterr().err


def test_synth_then_preprocess(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = tmp_path / "raw"
    synth = ["synth", "--out", str(raw), "--frames", "2", "--calibration-frames", "1"]
    assert cli.main([*synth, "--width", "512", "--height", "288", "--workers", "1"]) == 0
    assert len(list(raw.glob("*/*_png/*.png"))) == 3
    out = tmp_path / "pre"
    args = [
        "preprocess",
        "--raw",
        str(raw),
        "--split-csv",
        str(raw / "calibration_set.csv"),
        "--out",
        str(out),
    ]
    assert cli.main([*args, "--prefix", "calib", "--config", "demo", "--workers", "1"]) == 0
    assert [p.name for p in out.glob("*.pkl")] == ["calib_0.pkl"]
    assert capsys.readouterr().out.splitlines()[-1] == str(out)


def test_library_errors_are_one_line_and_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["export-onnx", "--config", "nope", "--out", str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("abtf-ssd export-onnx: error: unknown model config 'nope'")
    assert "\n" not in err
    assert cli.main(["synth", "--out", str(tmp_path / "s"), "--width", "10"]) == 1
    assert "too small" in capsys.readouterr().err


def test_export_pytorch_checkpoint_loads_back(tmp_path: Path) -> None:
    import torch

    from abtf_ssd.model.ssd import build_ssd, load_checkpoint

    torch.set_num_threads(2)
    out = tmp_path / "demo.pth"
    assert (
        cli.main(["export-onnx", "--config", "demo", "--out", str(out), "--format", "pytorch", "--seed", "3"])
        == 0
    )
    model = load_checkpoint(build_ssd("demo"), out)
    again = export_model("demo", tmp_path / "again.pth", seed=3, model_format="pytorch")
    reference = load_checkpoint(build_ssd("demo"), again)
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_export_onnx_prints_only_the_path(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    import onnx
    import torch

    torch.set_num_threads(2)
    out = tmp_path / "demo.onnx"
    assert cli.main(["export-onnx", "--config", "demo", "--out", str(out)]) == 0
    captured = capfd.readouterr()
    assert captured.out == f"{out}\n"
    assert "[torch.onnx]" not in captured.err and "torchvision" not in captured.err, captured.err
    outputs = onnx.load(str(out), load_external_data=False).graph.output
    assert [o.name for o in outputs] == ["bboxes", "scores"]


def test_run_and_accuracy_commands(tiny_dataset, demo_onnx_model: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    run = [
        sys.executable, "-m", "abtf_ssd.cli", "run", "--dataset-dir", str(tiny_dataset.preprocessed),
        "--model-path", str(demo_onnx_model), "--config-name", "demo", "--mode", "accuracy",
        "--test-query-count", "2", "--results-dir", str(results), "--system-name", "cli-test",
    ]  # fmt: skip
    out = subprocess.run(run, capture_output=True, text=True, check=True).stdout
    run_dir = results / "cli-test" / "ssd" / "SingleStream" / "accuracy"
    assert out.strip().splitlines()[-1] == f"results: {run_dir}"
    written = (run_dir / "accuracy.txt").read_text()
    (run_dir / "accuracy.txt").unlink()
    accuracy = [sys.executable, "-m", "abtf_ssd.cli", "accuracy", "--result-dir", str(run_dir)]
    printed = subprocess.run(accuracy, capture_output=True, text=True, check=True).stdout
    assert re.match(r"mAP: [0-9.]+\n", printed)
    assert (run_dir / "accuracy.txt").read_text() == written == printed

    png = tmp_path / "frame0.png"
    show = [
        "show",
        "--result-dir",
        str(run_dir),
        "--dataset",
        str(tiny_dataset.preprocessed),
        "--out",
        str(png),
    ]
    assert cli.main([*show, "--sample", "0"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli.main([*show, "--sample", "5"]) == 1  # the run answered samples 0 and 1 only


def test_run_with_failed_queries_prints_the_table_and_exits_1(
    tiny_dataset, demo_onnx_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    dataset = shutil.copytree(tiny_dataset.preprocessed, tmp_path / "val")
    for index in (1, 2, 3):  # cut short, as a bad copy leaves them; sample 0 serves the warm-up
        sample = dataset / f"val_{index}.pkl"
        sample.write_bytes(sample.read_bytes()[:5000])
    results = tmp_path / "results"
    run = [
        "run", "--dataset-dir", str(dataset), "--model-path", str(demo_onnx_model), "--config-name", "demo",
        "--mode", "performance", "--test-query-count", "4", "--threads", "1", "--results-dir", str(results),
    ]  # fmt: skip
    assert cli.main(run) == 1
    captured = capsys.readouterr()
    record = json.loads((results / "default/ssd/SingleStream/performance/run_1/results.json").read_text())
    failed = record["failed_queries"]
    assert failed > 0 and record["status"] == "failed"
    assert re.search(rf"SingleStream\s+performance\s+4\s.*\s{failed}\s+\S", captured.out)
    assert f"{failed} queries raised and were answered empty: run FAILED" in captured.out
    error = captured.err.strip()
    assert error.startswith("abtf-ssd run: error: performance run failed:") and "\n" not in error
    assert f"samples {record['failed_samples']}" in error


def test_sysinfo_names_match_the_submission_system_fields(tmp_path: Path) -> None:
    from abtf_ssd.submission.layout import SYSTEM_FIELDS

    path = tmp_path / "mlc-sut-info.json"
    assert cli.main(["sysinfo", "--out", str(path), "--framework", "onnxruntime"]) == 0
    info = json.loads(path.read_text())
    assert info["framework"].startswith("onnxruntime ")
    assert int(info["host_processor_core_count"]) >= 1
    assert info["operating_system"] and info["host_processor_model_name"]
    assert float(info["host_memory_capacity"].split()[0]) > 0
    shared = {k for k in info if k in SYSTEM_FIELDS}
    assert {
        "host_processor_model_name",
        "host_memory_capacity",
        "accelerators_per_node",
        "framework",
    } <= shared


def test_impossible_device_and_format_are_explained() -> None:
    from abtf_ssd.model.backends import check_device
    from abtf_ssd.submission.sysinfo import run_problem

    assert check_device("onnxruntime", "cpu") is None
    assert "unknown framework" in check_device("tensorflow", "cpu")
    assert "unsupported device" in check_device("pytorch", "tensorrt")
    assert "loads .onnx models, not model.pth" in run_problem("onnxruntime", "cpu", "model.pth")
    if check_device("onnxruntime", "cuda") is not None:
        assert "CUDAExecutionProvider" in check_device("onnxruntime", "cuda")
        assert run_problem("onnxruntime", "cuda") == check_device("onnxruntime", "cuda")


def test_train_writes_a_loadable_checkpoint(
    tiny_dataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from abtf_ssd.model.ssd import build_ssd, load_checkpoint

    out = tmp_path / "trained.pth"
    train = ["train", "--data", str(tiny_dataset.preprocessed), "--out", str(out), "--prefix", "val"]
    assert (
        cli.main([*train, "--config", "demo", "--max-iters", "1", "--batch-size", "2", "--threads", "2"]) == 0
    )
    assert json.loads(capsys.readouterr().out)["iterations"] == 1
    load_checkpoint(build_ssd("demo"), out)
