"""Paths that a shell would execute (spaces, quotes, ``$(...)``, backticks, ``;``) go through the CLI,
the MLC scripts and the printed download commands as plain data: the run works, every file lands
where asked, and no injected ``touch`` ever runs."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import pytest

from abtf_ssd.config import DEMO_CONFIG
from abtf_ssd.data.fetch import fetch_dataset, fetch_model
from faults.support import HOSTILE_NAME, find_named, mlcr, run_python, sample_tarball


@pytest.fixture
def hostile_dir(tmp_path: Path) -> Path:
    folder = tmp_path / HOSTILE_NAME
    folder.mkdir()
    return folder


def test_cli_pipeline_with_hostile_paths(tiny_dataset, demo_onnx_model, hostile_dir, tmp_path):
    raw = shutil.copytree(tiny_dataset.raw_root, hostile_dir / "raw $(touch pwned)")
    model = Path(shutil.copyfile(demo_onnx_model, hostile_dir / "model `touch pwned2`.onnx"))
    preprocessed = hostile_dir / "pre'processed"
    results = hostile_dir / 'res"ults'

    preprocess = ["preprocess", "--raw", str(raw), "--split-csv", str(raw / "val_set.csv")]
    preprocess += ["--out", str(preprocessed), "--prefix", "val", "--config", DEMO_CONFIG, "--count", "3"]
    preprocess += ["--workers", "1"]
    proc = run_python(["-m", "abtf_ssd.cli", *preprocess], hostile_dir)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in preprocessed.glob("val_*.pkl")) == ["val_0.pkl", "val_1.pkl", "val_2.pkl"]

    run = [
        "run",
        "--dataset-dir",
        str(preprocessed),
        "--model-path",
        str(model),
        "--config-name",
        DEMO_CONFIG,
    ]
    run += ["--mode", "accuracy", "--results-dir", str(results), "--threads", "1", "--test-query-count", "3"]
    proc = run_python(["-m", "abtf_ssd.cli", *run], hostile_dir)
    assert proc.returncode == 0, proc.stderr
    out = results / "default" / "ssd" / "SingleStream" / "accuracy"
    assert (out / "accuracy.txt").read_text().startswith("mAP: ")
    # command.txt holds the command quoted so that pasting it into a shell reruns it as it was.
    assert shlex.split((out / "command.txt").read_text())[1:] == run

    assert find_named([tmp_path]) == []


def test_mlc_scripts_with_hostile_paths(mlc_home, tiny_dataset, demo_onnx_model, hostile_dir, tmp_path):
    env, home = mlc_home
    raw = shutil.copytree(tiny_dataset.raw_root, hostile_dir / "raw")
    model = shutil.copyfile(demo_onnx_model, hostile_dir / "model.onnx")
    preprocessed = hostile_dir / "preprocessed"
    results = hostile_dir / "results"

    got = mlcr(
        env,
        hostile_dir,
        "get,preprocessed,dataset,cognata,_validation,_local",
        f"--raw_path={raw}",
        f"--split_csv={raw / 'val_set.csv'}",
        f"--outdirname={preprocessed}",
        f"--config={DEMO_CONFIG}",
        "--count=3",
        "--workers=1",
    )
    assert got.returncode == 0, got.stdout[-3000:] + got.stderr[-3000:]
    assert (preprocessed / "val_2.pkl").is_file()

    ran = mlcr(
        env,
        hostile_dir,
        "app,abtf-inference,reference,ssd",
        f"--dataset_path={preprocessed}",
        f"--model_path={model}",
        f"--results_dir={results}",
        f"--config={DEMO_CONFIG}",
        "--test_query_count=3",
        "--threads=1",
    )
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert (
        results / "default" / "ssd" / "SingleStream" / "performance" / "run_1" / "mlperf_log_summary.txt"
    ).is_file()

    assert find_named([tmp_path, home]) == []


def test_printed_download_commands_quote_hostile_paths(fake_remote, hostile_dir, tmp_path, capsys):
    fake_remote.publish("val_2d", sample_tarball())
    out = hostile_dir / "downloads"
    fetch_dataset("validation", out, "rclone", dry_run=True, interactive=False)
    fetch_model("onnx", out, "rclone", dry_run=True, interactive=False)
    printed = capsys.readouterr().out
    commands = [shlex.split(line) for line in printed.splitlines() if line.startswith("rclone ")]
    assert len(commands) == 2
    for argv in commands:
        assert argv[argv.index("--config") + 1] == str(fake_remote.config)
        assert argv[5].startswith(str(out.absolute()) + "/.")  # the destination: one argument, intact
    assert not out.exists(), "a dry run must not touch the disk"

    # The real download to the same hostile folder works too.
    folder = fetch_dataset("validation", out, "rclone", interactive=False)
    assert sorted(p.name for p in folder.glob("val_*.pkl")) == [f"val_{i}.pkl" for i in range(4)]
    assert find_named([tmp_path]) == []
