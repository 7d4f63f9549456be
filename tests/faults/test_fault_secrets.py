"""rclone credentials (OAuth access and refresh tokens, the client secret) must never reach a console,
a log, a cache entry, a results folder or the submission tree - not even when the download tool
itself prints them, and not when they sit in the environment of every step."""

from __future__ import annotations

import subprocess

import pytest

from abtf_ssd.config import DEMO_CONFIG
from abtf_ssd.data.download import DownloadError
from abtf_ssd.data.fetch import fetch_dataset, fetch_model
from faults.support import (
    PYTHON,
    SECRETS,
    TOKEN_JSON,
    child_env,
    finished_cache_entries,
    mlcr,
    run_python,
    sample_tarball,
    scan_for_secrets,
)


def test_the_scan_finds_a_leak(tmp_path):
    """The control: the scanner sees every secret shape it must catch, in text and in files."""
    (tmp_path / "log.txt").write_text(f"token = {TOKEN_JSON}\n")
    hits = scan_for_secrets({"console": f"Bearer {SECRETS[0]}"}, [tmp_path])
    assert any("console" in hit for hit in hits) and any("log.txt" in hit for hit in hits)


def test_tool_chatter_is_redacted_on_success_and_failure(fake_remote, tmp_path, monkeypatch, capsys):
    fake_remote.publish("val_2d", sample_tarball())
    fake_remote.publish("ssd_onnx", b"not really onnx, but bytes to download")
    monkeypatch.setenv("FAULT_RCLONE_CHATTER", "1")
    out = tmp_path / "downloads"

    fetch_model("onnx", out, "rclone", interactive=False)
    fetch_dataset("validation", out, "rclone", dry_run=True, interactive=False)
    monkeypatch.setenv("FAULT_RCLONE_DIE_AFTER", "100")
    with pytest.raises(DownloadError) as info:
        fetch_dataset("validation", out, "rclone", interactive=False)

    console = capsys.readouterr()
    assert "DEBUG : Authorization: Bearer <redacted>" in console.out  # the chatter did happen
    texts = {"stdout": console.out, "stderr": console.err, "error": str(info.value)}
    assert scan_for_secrets(texts, [out]) == []


def test_a_download_in_a_child_process_prints_no_secret(fake_remote, tmp_path):
    fake_remote.publish("val_2d", sample_tarball())
    code = (
        "from abtf_ssd.data import fetch; fetch.fetch_dataset('validation', 'downloads', interactive=False)"
    )
    proc = run_python(["-c", code], tmp_path, child_env(FAULT_RCLONE_CHATTER="1"))
    assert proc.returncode == 0, proc.stderr
    assert "<redacted>" in proc.stdout
    assert scan_for_secrets({"stdout": proc.stdout, "stderr": proc.stderr}, [tmp_path / "downloads"]) == []


def test_mlc_download_keeps_secrets_out_of_output_cache_and_logs(mlc_home, fake_remote, tmp_path):
    env, home = mlc_home
    fake_remote.publish("val_2d", sample_tarball(samples=2))
    env = {**env, **fake_remote.env(), "FAULT_RCLONE_CHATTER": "1"}
    tags = "get,preprocessed,dataset,cognata,_validation"

    failed = mlcr({**env, "FAULT_RCLONE_DIE_AFTER": "100"}, tmp_path, tags)
    done = mlcr(env, tmp_path, tags)
    assert failed.returncode != 0 and done.returncode == 0, done.stderr[-3000:]
    assert finished_cache_entries(env, tmp_path, "preprocessed,dataset,cognata,_validation")

    outputs = {"failed": failed.stdout + failed.stderr, "done": done.stdout + done.stderr}
    # tmp_path holds mlcflow's .mlc-log.txt (it logs in the working folder); home holds the cache.
    assert scan_for_secrets(outputs, [tmp_path, home], exclude=(fake_remote.config,)) == []


def test_results_and_submission_hold_no_secret(tiny_dataset, demo_onnx_model, fake_remote, tmp_path):
    """Every step of a benchmark with the token in the environment (rclone also reads remotes from
    ``RCLONE_CONFIG_<REMOTE>_TOKEN``): the runs, the system description, the submission tree."""
    env = child_env(RCLONE_CONFIG_MLC_COGNATA_TOKEN=TOKEN_JSON, RCLONE_CONFIG_MLC_COGNATA_TYPE="drive")
    results, tree = tmp_path / "results", tmp_path / "submission"
    steps = {}
    for mode in ("performance", "accuracy"):
        steps[mode] = run_python(
            ["-m", "abtf_ssd.cli", "run", "--dataset-dir", str(tiny_dataset.preprocessed)]
            + ["--model-path", str(demo_onnx_model), "--config-name", DEMO_CONFIG, "--mode", mode]
            + ["--results-dir", str(results), "--system-name", "sut", "--test-query-count", "3"]
            + ["--threads", "1"],
            tmp_path,
            env,
        )
    steps["sysinfo"] = run_python(
        ["-m", "abtf_ssd.cli", "sysinfo", "--out", str(results / "sut" / "mlc-sut-info.json")], tmp_path, env
    )
    steps["submission"] = subprocess.run(
        [
            PYTHON,
            "-m",
            "abtf_ssd.submission.tree",
            "--results_dir",
            str(results),
            "--submission_dir",
            str(tree),
        ]
        + ["--submitter", "ABTF_Demo", "--division", "open", "--system_name", "sut", "--allow_test_mode"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    for name, proc in steps.items():
        assert proc.returncode == 0, f"{name}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
    assert (tree / "open" / "ABTF_Demo" / "systems" / "sut.json").is_file()

    outputs = {name: proc.stdout + proc.stderr for name, proc in steps.items()}
    assert scan_for_secrets(outputs, [results, tree], exclude=(fake_remote.config,)) == []
