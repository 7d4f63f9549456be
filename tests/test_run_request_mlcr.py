"""run-abtf-inference requests through the real ``mlcr``: ``--docker`` runs exactly the request typed, and
variations that decide the execution mode mean the same in any order.

A fake ``docker`` first on PATH records its arguments and, for ``docker run``, what mlcflow's own
command-line steps (``mlc.main``) make of the inner command; the request typed is parsed by the same
steps, so "the same request" is judged by mlcflow, not by our parser.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import BIN
from test_mlc_scripts import registered_mlc_home

from abtf_ssd.mlc.container import CONTAINER_RESULTS

RUN = "run-abtf-inference,reference,_v0.5"
USER_INPUTS = ("--model=ssd", "--framework=onnxruntime", "--scenario=SingleStream")

# mlcflow's own steps from sys.argv to the inputs of a run (mlc.main: mlcr() -> main() -> build_run_args).
MLCFLOW_PARSE = """
import json, sys
from mlc import main as mlc_main


def mlcflow_parse(argv):
    sys.argv = [argv[0], "run", "script", *argv[1:]]
    mlc_main.mlc_run_cmd = None
    mlc_main.convert_hyphen_to_underscore_in_args()
    pre_args, _ = mlc_main.build_pre_parser().parse_known_args()
    args = mlc_main.build_parser(pre_args).parse_args()
    mlc_main.configure_logging(args)
    run_args = mlc_main.build_run_args(args)
    run_args.pop("mlc_run_cmd", None)
    return run_args
"""


def fake_docker(bin_dir: Path, log: Path) -> Path:
    """A ``docker`` that appends ``{"argv": ..., "inner_run_args": ...}`` to ``log``: ``info`` fails under
    FAKE_DOCKER_INFO_FAILS, ``image inspect`` finds every image, ``run`` succeeds."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "docker"
    script.write_text(
        f"#!{sys.executable}\n"
        "import os\n"
        f"{MLCFLOW_PARSE}\n"
        "args = sys.argv[1:]\n"
        "record = {'argv': args}\n"
        "if args[0] == 'run':\n"
        "    record['inner_run_args'] = mlcflow_parse(args[args.index('mlcr'):])\n"
        f"with open({str(log)!r}, 'a') as f:\n"
        "    f.write(json.dumps(record) + '\\n')\n"
        "if args[0] == 'info' and os.environ.get('FAKE_DOCKER_INFO_FAILS'):\n"
        "    print('Cannot connect to the Docker daemon at unix:///var/run/docker.sock.', file=sys.stderr)\n"
        "    sys.exit(1)\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return bin_dir


def docker_calls(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def mlcflow_parse(env: dict[str, str], cwd: Path, argv: list[str]) -> dict:
    """What mlcflow makes of ``argv`` (an mlcr command line), in a process with the test's MLC home."""
    code = MLCFLOW_PARSE + "\nprint(json.dumps(mlcflow_parse(sys.argv[1:])))\n"
    done = subprocess.run(
        [sys.executable, "-c", code, *argv], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def cache_entries(home: Path) -> list[str]:
    """Every path in the MLC cache folder of the home ``registered_mlc_home`` made."""
    cache = home / "repos" / "local" / "cache"
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*")) if cache.exists() else []


def run_mlcr(env: dict[str, str], cwd: Path, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "mlcr"), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def mlc_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], Path]:
    return registered_mlc_home(tmp_path_factory, "mlc_request_home")


@pytest.fixture
def docker_env(mlc_home: tuple[dict[str, str], Path], tmp_path: Path) -> tuple[dict[str, str], Path]:
    """The MLC home's env with a fake docker first on PATH, and its call log."""
    env, _ = mlc_home
    log = tmp_path / "docker-calls.jsonl"
    bin_dir = fake_docker(tmp_path / "bin", log)
    return {**env, "PATH": f"{bin_dir}{os.pathsep}{env['PATH']}"}, log


def _without(run_args: dict, *keys: str) -> dict:
    return {k: v for k, v in run_args.items() if k not in keys and not k.startswith("docker_")}


@pytest.mark.parametrize(
    "tags",
    [
        f"{RUN},_synthetic,_full,_performance-only",
        "run-abtf-inference,_full,_synthetic,_v1.0,reference,_submission",
    ],
)
def test_docker_runs_the_request_typed(
    mlc_home: tuple[dict[str, str], Path], docker_env: tuple[dict[str, str], Path], tmp_path: Path, tags: str
) -> None:
    _, home = mlc_home
    env, log = docker_env
    results = tmp_path / "my results"
    typed = [
        "mlcr",
        tags,
        *USER_INPUTS,
        "--device=cpu",
        "--frames=128",
        "--env.MLC_ABTF_NOTE=a,b=c",
        "--adr.python.version_min=3.10",
        "--hw_name=box-1",
        f"--results_dir={results}",
        "--docker",
        "--quiet",
    ]
    before = cache_entries(home)
    done = run_mlcr(env, home, typed[1:])
    assert done.returncode == 0, done.stdout + done.stderr
    assert cache_entries(home) == before, "the host fetched something"
    calls = docker_calls(log)
    # The engine is checked before anything is fetched on the host, and again just before the build.
    assert [call["argv"][0] for call in calls] == ["info", "info", "image", "run"]
    inner = calls[-1]["inner_run_args"]
    request = mlcflow_parse(env, home, typed)
    assert inner["tags"] == tags  # every variation, in the order typed
    assert _without(inner, "results_dir") == _without(request, "docker", "results_dir")
    assert inner["results_dir"] == CONTAINER_RESULTS and inner["quiet"] is True
    assert f"{results}:{CONTAINER_RESULTS}" in calls[-1]["argv"]


def test_docker_dry_run_prints_the_request_typed_and_runs_nothing(
    mlc_home: tuple[dict[str, str], Path], docker_env: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    _, home = mlc_home
    env, log = docker_env
    typed = ["mlcr", f"{RUN},_synthetic,_short", *USER_INPUTS, "--device=gpu", "--docker", "--docker-dryrun"]
    done = run_mlcr(env, home, [*typed[1:], f"--results_dir={tmp_path / 'r'}"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert docker_calls(log) == []
    run = shlex.split(next(line for line in done.stdout.splitlines() if line.startswith("docker run ")))
    assert "--gpus" in run and re.search(r"abtf-ssd:\S+-cuda-", " ".join(run))
    inner = mlcflow_parse(env, home, run[run.index("mlcr") :])
    request = mlcflow_parse(env, home, typed)
    assert _without(inner, "results_dir", "quiet") == _without(request, "docker")


@pytest.mark.parametrize(
    ("orders", "inputs", "mode"),
    [
        (["_submission,_short", "_short,_submission"], [], "test (from _short)"),
        (["_submission,_full", "_full,_submission"], ["--frames=128"], "valid (from _full)"),
        (["_submission"], ["--frames=128"], "valid (from _submission)"),
        (["_performance-only", "_accuracy-only"], [], "test (from default)"),
        (["_full,_accuracy-only", "_accuracy-only,_full"], ["--execution_mode=test"],
         "test (from --execution_mode)"),
        (["_short,_submission", "_submission,_short"], ["--execution_mode=valid", "--frames=128"],
         "valid (from --execution_mode)"),
    ],
)  # fmt: skip
def test_execution_mode_does_not_depend_on_the_variation_order(
    mlc_home: tuple[dict[str, str], Path], tmp_path: Path, orders: list[str], inputs: list[str], mode: str
) -> None:
    """The pre-flight's resolved mode, through ``--docker --docker_dryrun`` (nothing runs)."""
    env, home = mlc_home
    for order in orders:
        args = [f"{RUN},_synthetic,{order}", *USER_INPUTS, "--device=cpu", *inputs]
        done = run_mlcr(
            env, home, [*args, "--docker", "--docker_dryrun", f"--results_dir={tmp_path}", "--quiet"]
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"; execution mode {mode}" in done.stdout, (order, done.stdout)


def test_valid_submission_of_a_small_set_is_refused_in_either_order(
    mlc_home: tuple[dict[str, str], Path],
) -> None:
    env, home = mlc_home
    for order in ("_submission,_full", "_full,_submission"):
        done = run_mlcr(env, home, [f"{RUN},_synthetic,{order}", "--device=cpu", "--quiet"])
        assert done.returncode != 0
        assert "_synthetic: 64 samples, but a valid run needs at least 128" in done.stderr + done.stdout
