"""The one pre-flight check of run-abtf-inference (abtf_ssd.mlc.preflight): every refusal through the real
``mlcr``, before any getter runs: non-zero exit, the flag the user typed in the message, well under
5 s, and the MLC cache, the output folders and the working folder unchanged."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import yaml
from test_mlc_scripts import registered_mlc_home
from test_run_request_mlcr import cache_entries, docker_calls, fake_docker, run_mlcr

from abtf_ssd.loadgen import rules
from abtf_ssd.mlc import preflight
from abtf_ssd.model.backends import check_device, normalize_device, parse_device
from abtf_ssd.submission.sysinfo import nvidia_gpus

REPO = Path(__file__).resolve().parents[1]
RUN = "run-abtf-inference,reference,_v0.5"
USER_INPUTS = ("--model=ssd", "--framework=onnxruntime", "--scenario=SingleStream", "--device=cpu")
REFUSAL_SECONDS = 5.0
MLCFLOW_LOG = ".mlc-log.txt"
"""mlcflow's own log, which it writes into the working folder for every command."""
FLAGS = preflight.flag_names(
    yaml.safe_load((REPO / "script" / "run-abtf-inference" / "meta.yaml").read_text())["input_mapping"]
)
automotive_loadgen = pytest.mark.skipif(
    rules.has_constant_stream(), reason="the automotive LoadGen is installed"
)


@pytest.fixture(scope="module")
def mlc_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], Path]:
    return registered_mlc_home(tmp_path_factory, "mlc_preflight_home")


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An empty folder, a folder that is no preprocessed set, and a model file of each kind."""
    root = tmp_path_factory.mktemp("preflight_inputs")
    (root / "empty").mkdir()
    (root / "not-preprocessed").mkdir()
    (root / "not-preprocessed" / "notes.txt").write_text("x")
    (root / "model.onnx").write_bytes(b"onnx")
    return root


REFUSALS = [
    # (variations, inputs, what the message must hold)
    ("_synthetic,_submission", [], ["_synthetic: 64 samples", "at least 128", "_short", "--frames=128"]),
    ("_synthetic,_full", ["--frames=100"], ["_synthetic: 100 samples", "_short"]),
    ("_synthetic", ["--execution_mode=bogus"], ["--execution_mode=bogus", "test or valid"]),
    ("_synthetic", ["--performance_sample_count=abc"], ["--performance_sample_count=abc", "whole number"]),
    ("_synthetic", ["--performance_sample_count=500"], ["--performance_sample_count=500", "only 64 samples"]),
    ("_synthetic,_full", ["--frames=128", "--performance_sample_count=64"],
     ["--performance_sample_count=64", "128"]),
    ("_synthetic", ["--test_query_count=0"], ["--test_query_count=0", "at least 1"]),
    ("_synthetic", ["--threads=two"], ["--threads=two"]),
    ("_synthetic", ["--batch_size=0"], ["--batch_size=0"]),
    ("_synthetic", ["--target_latency=fast"], ["--target_latency=fast", "milliseconds"]),
    ("_synthetic", ["--target_latency=0"], ["--target_latency=0", "positive"]),
    ("_synthetic", ["--constantstream_target_qps=lots"], ["--constantstream_target_qps=lots"]),
    ("_synthetic", ["--constantstream_margin=1.5"], ["--constantstream_margin=1.5", "in [0, 1)"]),
    ("_synthetic", ["--constantstream_trial_queries=0"], ["--constantstream_trial_queries=0", "at least 1"]),
    ("_synthetic", ["--constantstream_trial_seconds=x"], ["--constantstream_trial_seconds=x", "seconds"]),
    ("_synthetic", ["--frames=-1"], ["--frames=-1"]),
    ("_synthetic", ["--workers=0"], ["--workers=0"]),
    ("_synthetic", ["--config=huge"], ["--config=huge", "unknown model config"]),
    ("_synthetic", ["--user_conf={root}/missing.conf"], ["--user_conf=", "missing.conf: no such file"]),
    ("_full", ["--dataset_path={root}/missing"], ["--dataset_path=", "missing: no such folder"]),
    ("_full", ["--dataset_path={root}/empty"], ["--dataset_path=", "not a preprocessed Cognata folder"]),
    ("_full", ["--dataset_path={root}/not-preprocessed"], ["--dataset_path=", "not a preprocessed"]),
    ("_full", ["--dataset_path={root}/model.onnx"], ["--dataset_path=", "is a file"]),
    ("_full", ["--model_path={root}/missing.onnx"], ["--model_path=", "no such file"]),
    ("_full", ["--framework=pytorch", "--model_path={root}/model.onnx"], ["--model_path=", ".pth"]),
    ("_full", ["--results_dir={root}/model.onnx"], ["--results_dir=", "is a file"]),
    ("_synthetic,_full", ["--frames=128", "--scenario=Offline"], ["--scenario=Offline", "not a scenario"]),
    ("_synthetic,_full", ["--frames=128", "--scenario=MultiStream"], ["--scenario=MultiStream"]),
    ("_synthetic,_submission", ["--execution_mode=test", "--scenario=Offline"], ["--scenario=Offline"]),
    ("_synthetic", ["--scenario=Sometimes"], ["--scenario=Sometimes", "unknown scenario"]),
    ("_synthetic", ["--framework=tensorflow"], ["--framework=tensorflow", "onnxruntime or pytorch"]),
    ("_synthetic", ["--device=npu"], ["--device=npu", "unsupported device"]),
    ("_synthetic", ["--division=closedish"], ["--division=closedish", "closed or open"]),
    ("_synthetic", ["--store=tmpfs"], ["--store=tmpfs"]),
    ("_synthetic", ["--hw_name=a/b"], ["--hw_name=a/b"]),
    ("_synthetic", ["--docker_dryrun"], ["--docker_dryrun without --docker", "add --docker"]),
    ("_synthetic", ["--docker-rebuild"], ["--docker_rebuild without --docker", "add --docker"]),
    ("_synthetic", ["--docker", "--docker_dryrun=maybe"], ["--docker_dryrun=maybe"]),
    ("_synthetic", ["--docker", "--docker_dryrun", "--device=tensorrt"],
     ["--device=tensorrt", "--docker runs"]),
]  # fmt: skip


def _refused(
    mlc_home: tuple[dict[str, str], Path], tmp_path: Path, args: list[str], env: dict[str, str] | None = None
) -> str:
    """Run a request that must be refused; check rc, time, cache, output and working folders; the output."""
    base_env, home = mlc_home
    workdir = tmp_path / "cwd"
    workdir.mkdir(parents=True)
    outputs = [tmp_path / "results", tmp_path / "submission"]
    cache = cache_entries(home)
    started = time.monotonic()
    done = run_mlcr(
        env or base_env,
        workdir,
        [*args, f"--results_dir={outputs[0]}", f"--submission_dir={outputs[1]}", "--quiet"]
        if not any(a.startswith("--results_dir") for a in args)
        else [*args, "--quiet"],
    )
    seconds = time.monotonic() - started
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert seconds < REFUSAL_SECONDS, f"refused after {seconds:.1f} s"
    assert cache_entries(home) == cache
    assert not [path for path in outputs if path.exists()]
    assert [path.name for path in workdir.iterdir()] in ([], [MLCFLOW_LOG])
    assert "Traceback" not in output
    return output


@pytest.mark.parametrize(("variations", "inputs", "expected"), REFUSALS)
def test_refused_before_any_getter(
    mlc_home: tuple[dict[str, str], Path],
    folders: Path,
    tmp_path: Path,
    variations: str,
    inputs: list[str],
    expected: list[str],
) -> None:
    typed = [arg.format(root=folders) for arg in inputs]
    flags = [arg.split("=", 1)[0] for arg in typed]
    output = _refused(
        mlc_home,
        tmp_path,
        [f"{RUN},{variations}", *(a for a in USER_INPUTS if a.split("=")[0] not in flags), *typed],
    )
    for text in expected:
        assert text in output, f"{text!r} not in:\n{output[-2000:]}"


@automotive_loadgen
def test_constant_stream_and_closed_division_need_the_automotive_loadgen(
    mlc_home: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    output = _refused(mlc_home, tmp_path / "a", [f"{RUN},_synthetic", "--scenario=ConstantStream"])
    assert "--scenario=ConstantStream: needs the automotive LoadGen" in output
    assert rules.AUTOMOTIVE_LOADGEN_HINT in output
    output = _refused(mlc_home, tmp_path / "b", [f"{RUN},_submission", "--division=closed"])
    assert "--division=closed: a closed-division result needs the automotive LoadGen" in output
    assert rules.AUTOMOTIVE_LOADGEN_HINT in output and "--division=open" in output
    # _all-scenarios checks every scenario first: the SingleStream half does not run either.
    output = _refused(mlc_home, tmp_path / "c", [f"{RUN},_synthetic,_short,_all-scenarios"])
    assert "_all-scenarios, ConstantStream: --scenario=ConstantStream: needs the automotive LoadGen" in output


def test_all_scenarios_refuses_a_scenario(mlc_home: tuple[dict[str, str], Path], tmp_path: Path) -> None:
    output = _refused(
        mlc_home, tmp_path, [f"{RUN},_synthetic,_short,_all-scenarios", "--scenario=SingleStream"]
    )
    assert "leave out --scenario" in output


@pytest.mark.skipif(check_device("onnxruntime", "cuda") is None, reason="onnxruntime can use CUDA here")
def test_gpu_is_cuda_and_refused_without_one(mlc_home: tuple[dict[str, str], Path], tmp_path: Path) -> None:
    output = _refused(mlc_home, tmp_path, [f"{RUN},_synthetic", "--device=gpu"])
    assert "--device=gpu: device 'cuda' needs CUDAExecutionProvider" in output


def test_docker_refusals_come_before_any_fetch_or_build(
    mlc_home: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    """No engine: refused before the host fetches the dataset; a bad request: no docker call at all."""
    env, _ = mlc_home
    log = tmp_path / "docker-calls.jsonl"
    docker_env = {**env, "PATH": f"{fake_docker(tmp_path / 'bin', log)}{os.pathsep}{env['PATH']}"}
    args = [f"{RUN},_synthetic", *USER_INPUTS, "--docker", "--env.MLC_USE_DATASET_FROM_HOST=yes"]
    output = _refused(mlc_home, tmp_path / "a", args, {**docker_env, "FAKE_DOCKER_INFO_FAILS": "1"})
    assert "cannot reach the Docker daemon" in output and "--docker_dryrun" in output
    assert [call["argv"][0] for call in docker_calls(log)] == ["info"]

    log.unlink()
    for bad in ("--execution_mode=bogus", "--device=gpu" if not nvidia_gpus() else "--threads=0"):
        args = [f"{RUN},_synthetic", *USER_INPUTS, "--docker", bad]
        output = _refused(mlc_home, tmp_path / bad.strip("-").replace("=", "_"), args, docker_env)
        assert bad.split("=")[0] in output
        assert docker_calls(log) == [], "docker ran for a refused request"


# -- the library function itself -----------------------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    env = {
        "MLC_ABTF_RUN_MODEL": "ssd",
        "MLC_ABTF_RUN_IMPLEMENTATION": "reference",
        "MLC_ABTF_RUN_FRAMEWORK": "onnxruntime",
        "MLC_ABTF_RUN_DEVICE": "cpu",
        "MLC_ABTF_RUN_SCENARIO": "SingleStream",
        "MLC_ABTF_RUN_CATEGORY": "adas",
        "MLC_ABTF_SUBMISSION_DIVISION": "open",
        "MLC_ABTF_RUN_ROUND": "v0.5",
        "MLC_ABTF_RUN_DATASET_SOURCE": "synthetic",
        "MLC_ABTF_RUN_DO_PERFORMANCE": "yes",
    }
    env.update(extra)
    return env


@pytest.mark.parametrize(
    ("extra", "mode", "decided_by"),
    [
        ({}, "test", "default"),
        ({"MLC_ABTF_RUN_LENGTH": "full"}, "valid", "_full"),
        ({"MLC_ABTF_RUN_LENGTH": "short", "MLC_ABTF_RUN_DO_SUBMISSION": "yes"}, "test", "_short"),
        ({"MLC_ABTF_RUN_DO_SUBMISSION": "yes"}, "valid", "_submission"),
        ({"MLC_ABTF_RUN_LENGTH": "full", "MLC_ABTF_RUN_EXECUTION_MODE": "test"}, "test", "--execution_mode"),
    ],
)
def test_execution_mode_resolution(extra: dict[str, str], mode: str, decided_by: str) -> None:
    request = preflight.check_request(_env(MLC_ABTF_SYNTH_FRAMES="128", **extra), FLAGS)
    assert (request.execution_mode, request.execution_mode_from) == (mode, decided_by)


def test_prepare_run_sets_the_normalised_device_and_mode(tmp_path: Path) -> None:
    env = _env(MLC_ABTF_RUN_DEVICE=" CPU ", MLC_ABTF_RUN_RESULTS_DIR=str(tmp_path / "r"))
    request = preflight.prepare_run(env, FLAGS)
    assert request.device == env["MLC_ABTF_RUN_DEVICE"] == "cpu"
    assert env["MLC_ABTF_RUN_EXECUTION_MODE"] == "test" and request.dataset_samples == 64
    assert env["MLC_ABTF_SUT_INFO_PATH"] == str(tmp_path / "r" / "default" / "mlc-sut-info.json")
    assert not (tmp_path / "r").exists()


def test_a_dataset_path_is_counted(tiny_dataset) -> None:
    env = _env(MLC_ABTF_DATASET_PATH=str(tiny_dataset.preprocessed), MLC_ABTF_RUN_LENGTH="full")
    with pytest.raises(preflight.PreflightError, match=rf"--dataset_path=.*: {tiny_dataset.frames} samples"):
        preflight.check_request(env, FLAGS)
    env = _env(MLC_ABTF_DATASET_PATH=str(tiny_dataset.preprocessed))
    assert preflight.check_request(env, FLAGS).dataset_samples == tiny_dataset.frames


def test_gpu_is_cuda_everywhere() -> None:
    assert normalize_device(" GPU:1 ") == "cuda:1" and normalize_device("cpu") == "cpu"
    assert parse_device("gpu", ("cpu", "cuda")) == ("cuda", 0)
    assert (check_device("onnxruntime", "gpu") is None) == (check_device("onnxruntime", "cuda") is None)
    request = preflight.check_request(_env(MLC_ABTF_RUN_DOCKER="yes", MLC_ABTF_RUN_DOCKER_DRYRUN="yes",
                                           MLC_ABTF_RUN_DEVICE="gpu:0"), FLAGS)  # fmt: skip
    assert request.device == "cuda:0" and request.docker is not None and request.docker.dry_run
