"""A newcomer's first hour (issue 15, items 5, 6 and 8): bad input through the real entry points gives
one clear line naming the file or the flag, and a failed request leaves nothing behind.

Every case runs the console scripts a user types, ``abtf-ssd`` and ``mlcr``, in child processes; the
MLC ones in an MLC home of their own (``mlc_home``). A refusal is also held to a generous wall-time
bound and to leaving the MLC cache and its output folder as they were.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
import zipfile
from pathlib import Path

import pytest

from faults.support import BIN, child_env, mlcr

REFUSAL_S = 60
"""A generous bound on a refusal's wall time (a few seconds on a quiet machine; this one is shared)."""


def abtf_ssd(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``abtf-ssd <args>``, the console script, in a child process."""
    return subprocess.run(
        [str(BIN / "abtf-ssd"), *args],
        cwd=cwd,
        env=env or child_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


def error_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]


def cache_entries(home: Path) -> set[str]:
    """Every folder of the MLC cache, ``tmp`` entries included."""
    cache = home / "repos" / "local" / "cache"
    return {p.name for p in cache.iterdir()} if cache.is_dir() else set()


MLCFLOW_LOG = ".mlc-log.txt"
"""mlcflow's own log, written into the folder mlcr runs in."""


def written(folder: Path) -> list[str]:
    """The names in ``folder`` apart from mlcflow's log."""
    return sorted(p.name for p in folder.iterdir() if p.name != MLCFLOW_LOG)


def path_without_rclone() -> str:
    """This PATH without any folder holding an ``rclone``: a machine where rclone is not installed."""
    folders = os.environ["PATH"].split(os.pathsep)
    return os.pathsep.join(f for f in folders if not (Path(f) / "rclone").exists())


# --------------------------------------------------------------------------------------------
# Item 5: messages


def _random_bytes(path: Path) -> None:
    path.write_bytes(bytes(range(7, 256)) * 40)


def _text(path: Path) -> None:
    path.write_text("these are not the weights you are looking for\n")


def _foreign_zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("weights.txt", "1 2 3")


def _empty(path: Path) -> None:
    path.write_bytes(b"")


@pytest.mark.parametrize("make", [_random_bytes, _text, _foreign_zip, _empty], ids=lambda f: f.__name__[1:])
def test_a_pth_that_is_no_checkpoint_is_one_line(make, tiny_dataset, tmp_path: Path) -> None:
    model = tmp_path / "ssd weights.pth"
    make(model)
    started = time.monotonic()
    proc = abtf_ssd(
        "run", "--dataset-dir", str(tiny_dataset.preprocessed), "--model-path", str(model),
        "--framework", "pytorch", "--config-name", "demo", "--results-dir", str(tmp_path / "results"),
        cwd=tmp_path,
    )  # fmt: skip
    assert time.monotonic() - started < REFUSAL_S
    assert proc.returncode == 1
    (line,) = error_lines(proc)
    assert line.startswith(f"abtf-ssd run: error: {model}: not a PyTorch checkpoint: "), line
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "results").exists()


def test_a_checkpoint_of_another_model_is_a_short_message(tiny_dataset, tmp_path: Path) -> None:
    import torch

    from abtf_ssd.model.ssd import build_ssd

    state = build_ssd("demo").state_dict()
    renamed = {(f"module.{k}" if i % 2 else k): v for i, (k, v) in enumerate(state.items())}
    model = tmp_path / "renamed.pth"
    torch.save({"model_state_dict": renamed}, model)
    for config in (("--config-name", "demo"), ()):
        proc = abtf_ssd(
            "run", "--dataset-dir", str(tiny_dataset.preprocessed), "--model-path", str(model),
            "--framework", "pytorch", *config, cwd=tmp_path,
        )  # fmt: skip
        assert proc.returncode == 1
        (line,) = error_lines(proc)
        missing = len(state) // 2
        assert f"{missing} missing (" in line and f"{missing} unexpected (module." in line, line
        assert len(line) < 1000, f"{len(line)} characters"


@pytest.mark.parametrize("kind", ["empty", "missing"])
def test_an_empty_or_missing_dataset_folder_is_named(kind, demo_onnx_model, mlc_home, tmp_path: Path) -> None:
    folder = tmp_path / "preprocessed"
    if kind == "empty":
        folder.mkdir()
    said = "holds no preprocessed samples" if kind == "empty" else "does not exist"
    proc = abtf_ssd("run", "--dataset-dir", str(folder), "--model-path", str(demo_onnx_model), cwd=tmp_path)
    assert proc.returncode == 1
    (line,) = error_lines(proc)
    assert str(folder) in line and said in line, line

    env, home = mlc_home
    before = cache_entries(home)
    started = time.monotonic()
    app = mlcr(
        env, tmp_path, "app,abtf-inference,reference,ssd", f"--dataset_path={folder}",
        f"--model_path={demo_onnx_model}", f"--results_dir={tmp_path / 'results'}",
    )  # fmt: skip
    assert time.monotonic() - started < REFUSAL_S
    output = app.stdout + app.stderr
    assert app.returncode != 0
    assert f"app-abtf-ssd-reference: dataset folder {folder} {said}" in output, output[-3000:]
    assert "unknown model config" not in output
    assert cache_entries(home) == before
    assert not (tmp_path / "results").exists()


def test_the_accuracy_step_refuses_a_performance_run(
    tiny_dataset, demo_onnx_model, mlc_home, tmp_path
) -> None:
    results = tmp_path / "results"
    run = abtf_ssd(
        "run", "--dataset-dir", str(tiny_dataset.preprocessed), "--model-path", str(demo_onnx_model),
        "--config-name", "demo", "--test-query-count", "2", "--threads", "1", "--results-dir", str(results),
        cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    performance = results / "default" / "ssd" / "SingleStream" / "performance" / "run_1"
    assert json.loads((performance / "mlperf_log_accuracy.json").read_text() or "[]") == []

    env, _ = mlc_home
    started = time.monotonic()
    proc = mlcr(env, tmp_path, "process,mlperf,accuracy,_cognata_ssd", f"--result_dir={performance}")
    assert time.monotonic() - started < REFUSAL_S
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "no accuracy entries: the log of a performance run" in output and "accuracy run" in output
    assert "mAP: -1" not in output
    cli = abtf_ssd("accuracy", "--result-dir", str(performance), cwd=tmp_path)
    assert cli.returncode == 1 and "no accuracy entries" in cli.stderr
    assert not list(results.rglob("accuracy.txt"))


def test_without_rclone_an_mlc_download_says_to_install_it(mlc_home, tmp_path: Path) -> None:
    env, home = mlc_home
    env = {**env, "PATH": path_without_rclone()}
    out = tmp_path / "downloads"
    before = cache_entries(home)
    started = time.monotonic()
    proc = mlcr(env, tmp_path, "get,ml-model,ssd,resnet50,_mlc,_rclone,_onnx", f"--outdirname={out}")
    assert time.monotonic() - started < REFUSAL_S
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert (
        "rclone is not installed" in output and "apt-get install rclone" in output and "_synthetic" in output
    )
    assert "login token" not in output
    assert cache_entries(home) == before, "the failed request left a cache entry"
    assert not [*out.iterdir()], "the failed download left files (a lock?) in --outdirname"


def test_a_performance_sample_count_above_the_samples_is_recorded_as_used(
    tiny_dataset, demo_onnx_model, tmp_path
):
    results = tmp_path / "results"
    proc = abtf_ssd(
        "run", "--dataset-dir", str(tiny_dataset.preprocessed), "--model-path", str(demo_onnx_model),
        "--config-name", "demo", "--test-query-count", "3", "--threads", "1",
        "--performance-sample-count", "500", "--results-dir", str(results), cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "performance_sample_count 500 lowered to 3" in proc.stderr
    run = results / "default" / "ssd" / "SingleStream" / "performance" / "run_1"
    recorded = json.loads((run / "results.json").read_text())
    assert recorded["options"]["performance_sample_count"] == 3
    assert recorded["effective_settings"]["performance_sample_count"] == 3


def test_convert_store_names_the_prefix_flag(tiny_dataset, tmp_path: Path) -> None:
    folder = tmp_path / "two prefixes"
    folder.mkdir()
    sample = tiny_dataset.preprocessed / "val_0.pkl"
    shutil.copy(sample, folder / "val_0.pkl")
    shutil.copy(sample, folder / "calib_0.pkl")
    proc = abtf_ssd("convert-store", str(folder), cwd=tmp_path)
    assert proc.returncode == 1
    (line,) = error_lines(proc)
    assert "give --prefix calib or --prefix val" in line and "prefix=" not in line, line
    assert sorted(p.name for p in folder.iterdir()) == ["calib_0.pkl", "val_0.pkl"]


# --------------------------------------------------------------------------------------------
# Item 6: leftovers


def test_a_request_failing_in_a_dependency_leaves_no_cache_entry(mlc_home, tmp_path: Path) -> None:
    env, home = mlc_home
    before = cache_entries(home)
    proc = mlcr(env, tmp_path, "get,preprocessed,dataset,cognata,_synthetic", "--width=wide", "--frames=2")
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "--width must be an integer, got 'wide'" in output
    # mlcflow made a tmp entry for the dataset and one for its raw-frames dependency: both are gone.
    assert cache_entries(home) == before
    search = subprocess.run(
        [str(BIN / "mlc"), "search", "cache", "--tags=tmp"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert "Item path" not in search.stdout + search.stderr


def test_a_dry_run_without_outdirname_names_the_cache_folder(mlc_home, tmp_path: Path) -> None:
    env, home = mlc_home
    proc = mlcr(env, tmp_path, "get,ml-model,ssd,resnet50,_mlc,_rclone,_onnx,_dry-run")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    cache = home / "repos" / "local" / "cache"
    assert f"{cache}/get-ml-model-ssd-resnet50_<new entry>/ssd_resnet50.onnx" in output
    assert str(tmp_path) not in output.replace(str(home), "")
    assert written(tmp_path) == []


def test_the_sut_description_goes_to_the_results_folder(mlc_home, tmp_path: Path) -> None:
    env, _ = mlc_home
    proc = mlcr(env, tmp_path, "get,abtf,sut,description", "--framework=onnxruntime")
    assert proc.returncode == 0, proc.stderr[-3000:]
    description = tmp_path / "results" / "default" / "mlc-sut-info.json"
    assert json.loads(description.read_text())
    assert written(tmp_path) == ["results"], "only the results folder is written"


# --------------------------------------------------------------------------------------------
# Item 8: help and the recorded command


def test_run_help_says_what_each_option_is(tmp_path: Path) -> None:
    import dataclasses

    from abtf_ssd.cli import RUN_HELP
    from abtf_ssd.loadgen.harness import RunOptions

    assert {f.name for f in dataclasses.fields(RunOptions)} <= RUN_HELP.keys(), "an option without help"
    proc = abtf_ssd("run", "--help", cwd=tmp_path)
    assert proc.returncode == 0
    assert "RunOptions" not in proc.stdout
    assert "folder of preprocessed samples" in proc.stdout and "model file: .onnx" in proc.stdout


def test_command_txt_is_the_abtf_ssd_command_a_person_retypes(
    tiny_dataset, demo_onnx_model, tmp_path
) -> None:
    results = tmp_path / "results"
    args = [
        "run", "--dataset-dir", str(tiny_dataset.preprocessed), "--model-path", str(demo_onnx_model),
        "--config-name", "demo", "--test-query-count", "2", "--threads", "1", "--results-dir", str(results),
    ]  # fmt: skip
    # How app-abtf-ssd-reference starts a run: python -m abtf_ssd.cli, whose argv[0] is cli.py's path.
    proc = subprocess.run(
        [str(BIN / "python"), "-m", "abtf_ssd.cli", *args], cwd=tmp_path, env=child_env(),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    command = (
        results / "default" / "ssd" / "SingleStream" / "performance" / "run_1" / "command.txt"
    ).read_text()
    assert shlex.split(command) == ["abtf-ssd", *args]
    assert "cli.py" not in command


def test_no_code_imports_rclone_python() -> None:
    from faults.support import REPO

    sources = [*(REPO / "abtf_ssd").rglob("*.py"), *(REPO / "script").rglob("*.py")]
    assert not [p for p in sources if "rclone_python" in p.read_text()]
    pyproject = (REPO / "pyproject.toml").read_text()
    assert "rclone-python" not in pyproject, "a declared dependency that is never imported"
