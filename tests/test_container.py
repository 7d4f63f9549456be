"""``--docker``: the planned docker build / run commands, the image tag, the missing-engine errors, the
Dockerfiles' package lists (resolved against the registry) and, where a Docker engine runs, a real
container."""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from abtf_ssd import __version__
from abtf_ssd.mlc import container
from abtf_ssd.mlc.container import (
    CONTAINER_DATASET,
    CONTAINER_MODEL,
    CONTAINER_RESULTS,
    DockerOptions,
    DockerUnavailableError,
    MlcRequest,
    dockerfile_env,
    dockerfile_instructions,
    execute,
    flag_value,
    image_tag,
    inner_command,
    mlc_arguments,
    parse_mlc_command,
    plan_docker_run,
    request_from_mlc_input,
    run_from_mlc,
)

REPO = Path(__file__).resolve().parent.parent
DOCKER_DIR = REPO / "docker"
USER_ARGS = [
    "run-abtf-inference,reference,_v0.5,_full",
    "--model=ssd",
    "--framework=onnxruntime",
    "--scenario=SingleStream",
    "--env.MLC_USE_DATASET_FROM_HOST=yes",
    "--env.MLC_USE_MODEL_FROM_HOST=yes",
]
HOSTILE = 'it\'s a "quoted" $(touch pwned) `touch pwned` ;|&'


def _argv(device: str, *extra: str) -> list[str]:
    return ["/home/u/venv/bin/mlcr", *USER_ARGS, f"--device={device}", "--docker", *extra]


def _request(device: str, *extra: str) -> MlcRequest:
    return parse_mlc_command(_argv(device, *extra))


@pytest.fixture
def host_inputs(tmp_path: Path) -> tuple[Path, Path]:
    """A dataset folder and an ONNX model file, as fetched on the host."""
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "val_0.pkl").write_bytes(b"x")
    model = tmp_path / "ssd_resnet50.onnx"
    model.write_bytes(b"onnx")
    return dataset, model


def _plan(tmp_path: Path, host_inputs: tuple[Path, Path], device: str, *extra: str) -> container.DockerPlan:
    dataset, model = host_inputs
    return plan_docker_run(
        _request(device, *extra),
        device,
        tmp_path / "results",
        tmp_path / "mlc-cache",
        dataset_path=dataset,
        model_path=model,
        dataset_from_host=True,
        model_from_host=True,
    )


def _option_values(run_cmd: list[str], option: str) -> list[str]:
    return [run_cmd[i + 1] for i, item in enumerate(run_cmd[:-1]) if item == option]


def _fake_docker(bin_dir: Path, log: Path) -> None:
    """A ``docker`` that logs its argv; ``info`` fails under FAKE_DOCKER_INFO_FAILS, ``image inspect``
    finds the image under FAKE_DOCKER_HAS_IMAGE, ``run`` exits with FAKE_DOCKER_RUN_RC."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "docker"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        "args = sys.argv[1:]\n"
        f"with open({str(log)!r}, 'a') as f:\n"
        "    f.write(json.dumps({'argv': args, 'buildkit': os.environ.get('DOCKER_BUILDKIT')}) + '\\n')\n"
        "if args[0] == 'info':\n"
        "    if os.environ.get('FAKE_DOCKER_INFO_FAILS'):\n"
        "        print('Cannot connect to the Docker daemon at unix:///var/run/docker.sock.'\n"
        "              ' Is the docker daemon running?', file=sys.stderr)\n"
        "        sys.exit(1)\n"
        "    print('28.2.2')\n"
        "elif args[:2] == ['image', 'inspect']:\n"
        "    sys.exit(0 if os.environ.get('FAKE_DOCKER_HAS_IMAGE') else 1)\n"
        "elif args[0] == 'run':\n"
        "    sys.exit(int(os.environ.get('FAKE_DOCKER_RUN_RC', '0')))\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def _calls(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


# -- the planned commands ------------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_dry_run_prints_the_exact_commands_and_writes_the_dockerfile(
    tmp_path: Path, host_inputs: tuple[Path, Path], device: str
) -> None:
    dataset, model = host_inputs
    plan = _plan(tmp_path, host_inputs, device, "--docker_dryrun")
    out = io.StringIO()
    execute(plan, dry_run=True, out=out)

    dockerfile = DOCKER_DIR / f"Dockerfile.{device}"
    assert plan.build_cmd == ["docker", "build", "--file", str(dockerfile), "--tag", plan.image, str(REPO)]
    assert re.fullmatch(rf"abtf-ssd:{re.escape(__version__)}-{device}-[0-9a-f]{{12}}", plan.image)
    commands = [shlex.split(line) for line in out.getvalue().splitlines() if not line.startswith("#")]
    assert commands == [plan.build_cmd, plan.run_cmd]
    written = tmp_path / "results" / f"Dockerfile.{device}"
    assert written.read_text() == dockerfile.read_text()

    run = plan.run_cmd
    assert run[:2] == ["docker", "run"] and "--rm" in run
    assert not {"-it", "-i", "-t", "--interactive", "--tty"} & set(run)
    assert _option_values(run, "--user") == [f"{os.getuid()}:{os.getgid()}"]
    assert re.fullmatch(r"\d+:\d+", _option_values(run, "--user")[0])
    assert _option_values(run, "--gpus") == (["all"] if device == "cuda" else [])
    mlc_repos = dockerfile_env(dockerfile)["MLC_REPOS"]
    assert sorted(_option_values(run, "-v")) == sorted(
        [
            f"{dataset}:{CONTAINER_DATASET}:ro",
            f"{model}:{CONTAINER_MODEL}/ssd_resnet50.onnx:ro",
            f"{tmp_path / 'results'}:{CONTAINER_RESULTS}",
            f"{tmp_path / 'mlc-cache'}:{mlc_repos}/local/cache",
        ]
    )
    env = _option_values(run, "-e")
    assert {
        "MLC_USE_DATASET_FROM_HOST=yes",
        "MLC_USE_MODEL_FROM_HOST=yes",
        "MLC_RUN_STATE_DOCKER=yes",
    } <= set(env)

    inner = run[run.index(plan.image) + 1 :]
    assert inner == [
        "mlcr",
        *USER_ARGS,
        f"--device={device}",
        f"--dataset_path={CONTAINER_DATASET}",
        f"--model_path={CONTAINER_MODEL}/ssd_resnet50.onnx",
        f"--results_dir={CONTAINER_RESULTS}",
        "--quiet",
    ]


def test_without_host_inputs_nothing_is_mounted_read_only(tmp_path: Path) -> None:
    plan = plan_docker_run(_request("cpu"), "cpu", tmp_path / "r", tmp_path / "c")
    assert not [volume for volume in _option_values(plan.run_cmd, "-v") if volume.endswith(":ro")]
    assert not any(arg.startswith(("--dataset_path", "--model_path")) for arg in plan.inner_cmd)
    assert "MLC_USE_DATASET_FROM_HOST=yes" not in _option_values(plan.run_cmd, "-e")


def test_inner_command_drops_docker_inputs_and_replaces_the_mounted_paths() -> None:
    request = parse_mlc_command(
        [
            "mlcr",
            "run-abtf-inference,_full",
            "--docker",
            "--docker_dryrun",
            "--docker-rebuild",
            "--docker_image=mine:1",
            "--dockerish=1",
            "--dataset_path=/host/data",
            "--results_dir=/host/results",
            "--adr.python.version_min=3.10",
            "-v",
        ]
    )
    inner = inner_command(request, {"dataset_path": "/mnt/d", "results_dir": "/mnt/r"})
    assert inner == [
        "mlcr",
        "run-abtf-inference,_full",
        "--dockerish=1",
        "--adr.python.version_min=3.10",
        "--dataset_path=/mnt/d",
        "--results_dir=/mnt/r",
        "--quiet",
        "--verbose",
    ]


def test_parse_mlc_command_reads_inputs_as_mlcflow_does() -> None:
    request = parse_mlc_command(
        [
            "/venv/bin/mlcr",
            "run-abtf-inference,reference,_v0.5,_synthetic,_full",
            "--model=ssd",
            "--docker-dryrun",
            "--env.MLC_A=x=y",
            "--env.MLC-B=1",
            "--list,=a,b",
            "-js",
            "stray",
            "--note=",
        ]
    )
    assert request.tags == "run-abtf-inference,reference,_v0.5,_synthetic,_full"
    assert request.variations == ["v0.5", "synthetic", "full"]
    assert request.inputs == {
        "model": "ssd",
        "docker_dryrun": True,
        "env": {"MLC_A": "x=y", "MLC-B": "1"},
        "list": ["a", "b"],
        "j": True,
        "s": True,
        "note": "",
    }
    assert parse_mlc_command(["mlc", "run", "script", "a,_b", "--tags=c,_d"]).tags == "c,_d"
    for words in (["mlcr"], ["mlcr", "--quiet", "tags"], ["mlc", "show", "script", "x"]):
        with pytest.raises(ValueError):
            parse_mlc_command(words)


def test_requests_no_command_line_gives_are_refused() -> None:
    for inputs in ({"a": ["x,y"]}, {"env": {"A": True}}, {"a-b": "1"}, {"a": 3}, {"tags": "x"}):
        with pytest.raises(ValueError, match="mlcr"):
            mlc_arguments(MlcRequest("run-abtf-inference", inputs))


_flag_name = st.from_regex(r"[a-z][a-z0-9_.,-]{0,12}", fullmatch=True)
_argument = st.one_of(
    st.builds(lambda name, value: f"--{name}={value}", _flag_name, st.text(max_size=12)),
    st.builds(lambda name: f"--{name}", _flag_name),
    st.builds(lambda name: f"-{name}", st.from_regex(r"[a-z]{1,3}", fullmatch=True)),
)


@given(st.lists(_argument, max_size=10))
def test_mlc_arguments_give_back_the_parsed_request(arguments: list[str]) -> None:
    request = parse_mlc_command(["mlcr", "run-abtf-inference,_x", *arguments])
    try:
        written = mlc_arguments(request)
    except ValueError:
        return  # an input mlcflow parses but no command line can give again (``--a.b`` then ``--a=x``)
    again = parse_mlc_command(["mlcr", *written])
    assert (again.tags, again.inputs) == (request.tags, request.inputs)


def test_request_from_mlc_input_checks_the_command_line_against_the_parsed_inputs() -> None:
    command = "/venv/bin/mlcr run-abtf-inference,_full --model=ssd --env.A=1 --docker"
    run_input = {
        "mlc_run_cmd": command,
        "tags": "run-abtf-inference,_full",
        "details": "run-abtf-inference,_full",
        "model": "ssd",
        "docker": True,
        "env": {"A": "1", "MLC_MORE": "set by mlcflow"},
    }
    request = request_from_mlc_input(run_input)
    assert request.inputs == {"model": "ssd", "env": {"A": "1"}, "docker": True}
    with pytest.raises(ValueError, match="inputs frames differ"):
        request_from_mlc_input({**run_input, "frames": "3"})
    with pytest.raises(ValueError, match="runs tags"):
        request_from_mlc_input({**run_input, "tags": "other"})
    with pytest.raises(ValueError, match="run the request with mlcr"):
        request_from_mlc_input({k: v for k, v in run_input.items() if k != "mlc_run_cmd"})


def test_flag_value() -> None:
    assert flag_value("--docker_dryrun", True) and flag_value("--x", "Yes") and flag_value("--x", "1")
    assert not flag_value("--x", "no") and not flag_value("--x", "off")
    with pytest.raises(ValueError, match="--docker_dryrun=maybe"):
        flag_value("--docker_dryrun", "maybe")


def test_image_loadgen_kind_follows_the_requirements() -> None:
    pinned = "mlcommons-loadgen==" in (DOCKER_DIR / "requirements-common.txt").read_text()
    assert container.image_has_automotive_loadgen() is not pinned


def test_hostile_paths_stay_single_arguments(tmp_path: Path) -> None:
    base = tmp_path / HOSTILE
    dataset = base / "data set"
    dataset.mkdir(parents=True)
    model = base / f"model {HOSTILE}.onnx"
    model.write_bytes(b"onnx")
    results = base / "res ults"
    plan = plan_docker_run(
        _request("cuda", f"--note={HOSTILE}"),
        "cuda",
        results,
        base / "cache",
        dataset_path=dataset,
        model_path=model,
        dataset_from_host=True,
        model_from_host=True,
    )
    volumes = _option_values(plan.run_cmd, "-v")
    assert f"{dataset}:{CONTAINER_DATASET}:ro" in volumes
    (model_volume,) = [volume for volume in volumes if volume.startswith(f"{model}:")]
    model_in_container = model_volume.removeprefix(f"{model}:").removesuffix(":ro")
    assert model_volume.endswith(":ro")
    assert re.fullmatch(rf"{CONTAINER_MODEL}/model_[A-Za-z0-9._-]+\.onnx", model_in_container)
    assert f"--model_path={model_in_container}" in plan.inner_cmd
    assert f"--note={HOSTILE}" in plan.inner_cmd
    for command in (plan.build_cmd, plan.run_cmd):
        assert shlex.split(shlex.join(command)) == command

    # Through a real process boundary: the fake docker receives exactly these strings.
    log = tmp_path / "calls.jsonl"
    _fake_docker(tmp_path / "bin", log)
    env = {**os.environ, "PATH": str(tmp_path / "bin")}
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    subprocess.run(plan.run_cmd, env=env, cwd=workdir, check=True)
    assert _calls(log)[-1]["argv"] == plan.run_cmd[1:]
    assert not list(tmp_path.rglob("pwned"))


def test_paths_docker_cannot_mount_and_missing_inputs_are_clear_errors(tmp_path: Path) -> None:
    colon = tmp_path / "a:b"
    colon.mkdir()
    with pytest.raises(ValueError, match=re.escape(str(colon))):
        plan_docker_run(_request("cpu"), "cpu", tmp_path / "r", tmp_path / "c", dataset_path=colon)
    with pytest.raises(FileNotFoundError, match="model .*missing.onnx does not exist"):
        plan_docker_run(
            _request("cpu"), "cpu", tmp_path / "r", tmp_path / "c", model_path=tmp_path / "missing.onnx"
        )
    with pytest.raises(ValueError, match="MLC_USE_DATASET_FROM_HOST=yes"):
        plan_docker_run(_request("cpu"), "cpu", tmp_path / "r", tmp_path / "c", dataset_from_host=True)
    with pytest.raises(ValueError, match="--device=rocm with --docker"):
        plan_docker_run(_request("rocm"), "rocm", tmp_path / "r", tmp_path / "c")
    with pytest.raises(ValueError, match="--device=tensorrt with --docker"):
        plan_docker_run(_request("tensorrt"), "tensorrt", tmp_path / "r", tmp_path / "c")
    plan = plan_docker_run(_request("gpu:1"), "gpu:1", tmp_path / "r", tmp_path / "c")
    assert plan.device == "cuda" and "--device=gpu:1" in plan.inner_cmd


# -- the image tag ---------------------------------------------------------------------------------------


def test_image_tag_follows_the_image_definition_and_the_version(tmp_path: Path) -> None:
    shutil.copytree(DOCKER_DIR, tmp_path / "docker")
    dockerfile = tmp_path / "docker" / "Dockerfile.cpu"
    original = image_tag(dockerfile)
    assert original == image_tag(DOCKER_DIR / "Dockerfile.cpu")
    assert image_tag(tmp_path / "docker" / "Dockerfile.cuda") != original

    text = dockerfile.read_text()
    dockerfile.write_text(text + "LABEL changed=1\n")
    assert image_tag(dockerfile) != original
    dockerfile.write_text(text)
    assert image_tag(dockerfile) == original

    (tmp_path / "docker" / "README.md").write_text("edited\n")
    assert image_tag(dockerfile) == original
    assert image_tag(dockerfile, version="9.9.9") != original
    requirements = tmp_path / "docker" / "requirements-common.txt"
    requirements.write_text(requirements.read_text().replace("tqdm==", "tqdm>="))
    assert image_tag(dockerfile) != original


def test_plan_uses_the_given_image_instead_of_the_hashed_tag(tmp_path: Path) -> None:
    plan = plan_docker_run(
        _request("cpu"), "cpu", tmp_path / "r", tmp_path / "c", image="registry.local/abtf:7"
    )
    assert plan.build_cmd[plan.build_cmd.index("--tag") + 1] == "registry.local/abtf:7"
    assert "registry.local/abtf:7" in plan.run_cmd


# -- running: engine checks, build only when missing ------------------------------------------------------


def test_no_docker_program_is_an_error_naming_docker_dryrun(
    tmp_path: Path, host_inputs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    plan = _plan(tmp_path, host_inputs, "cpu")
    with pytest.raises(DockerUnavailableError, match="no `docker` program on PATH.*--docker_dryrun"):
        execute(plan)
    result = run_from_mlc(
        _request("cpu"),
        DockerOptions(),
        device="cpu",
        results_dir=tmp_path / "r",
        mlc_cache_dir=tmp_path / "c",
    )
    assert result["return"] == 1 and "--docker_dryrun" in result["error"]


def test_unreachable_daemon_is_an_error_naming_docker_dryrun(
    tmp_path: Path, host_inputs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "calls.jsonl"
    _fake_docker(tmp_path / "bin", log)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setenv("FAKE_DOCKER_INFO_FAILS", "1")
    with pytest.raises(DockerUnavailableError, match="Cannot connect to the Docker daemon.*--docker_dryrun"):
        execute(_plan(tmp_path, host_inputs, "cpu"))
    assert [call["argv"][0] for call in _calls(log)] == ["info"]


def test_execute_builds_only_a_missing_image_then_runs(
    tmp_path: Path, host_inputs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "calls.jsonl"
    _fake_docker(tmp_path / "bin", log)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    plan = _plan(tmp_path, host_inputs, "cuda")

    execute(plan, out=io.StringIO())
    calls = _calls(log)
    assert [call["argv"] for call in calls] == [
        ["info", "--format", "{{.ServerVersion}}"],
        ["image", "inspect", plan.image],
        plan.build_cmd[1:],
        plan.run_cmd[1:],
    ]
    assert calls[2]["buildkit"] == "1"
    assert (tmp_path / "results").is_dir() and (tmp_path / "mlc-cache").is_dir()

    log.unlink()
    monkeypatch.setenv("FAKE_DOCKER_HAS_IMAGE", "1")
    execute(plan, out=io.StringIO())
    assert [call["argv"][0] for call in _calls(log)] == ["info", "image", "run"]
    log.unlink()
    execute(plan, rebuild=True, out=io.StringIO())
    assert [call["argv"][0] for call in _calls(log)] == ["info", "build", "run"]

    monkeypatch.setenv("FAKE_DOCKER_RUN_RC", "3")
    with pytest.raises(container.ContainerError, match="exit status 3"):
        execute(plan, out=io.StringIO())


def test_run_from_mlc_dry_run(
    tmp_path: Path, host_inputs: tuple[Path, Path], capsys: pytest.CaptureFixture
) -> None:
    dataset, model = host_inputs
    result = run_from_mlc(
        _request("cpu", "--docker_dryrun"),
        DockerOptions(dry_run=True),
        device="cpu",
        results_dir=tmp_path / "results",
        mlc_cache_dir=tmp_path / "cache",
        dataset_path=dataset,
        model_path=model,
        dataset_from_host=True,
        model_from_host=True,
    )
    assert result["return"] == 0, result
    printed = capsys.readouterr().out
    assert result["run_cmd"] in printed.splitlines()
    assert "--docker" not in result["run_cmd"].split()
    assert (tmp_path / "results" / "Dockerfile.cpu").is_file()


# -- the Dockerfiles and their package lists ---------------------------------------------------------------


def _pins(requirements: Path) -> dict[str, str]:
    """``{canonical name: version}`` of a requirements file, following ``-r``; every entry must be ``==``."""
    pins: dict[str, str] = {}
    for line in requirements.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-r "):
            pins.update(_pins(requirements.parent / line[3:].strip()))
            continue
        requirement = Requirement(line)
        specifiers = list(requirement.specifier)
        assert len(specifiers) == 1 and specifiers[0].operator == "==", (
            f"{requirements}: {line} is not pinned"
        )
        pins[canonicalize_name(requirement.name)] = specifiers[0].version
    return pins


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_dockerfile_shape(device: str) -> None:
    dockerfile = DOCKER_DIR / f"Dockerfile.{device}"
    instructions = dockerfile_instructions(dockerfile.read_text())
    keywords = [keyword for keyword, _ in instructions]
    bases = [arguments.split()[0] for keyword, arguments in instructions if keyword == "FROM"]
    external = [base for base in bases if ":" in base]
    assert external and all(re.search(r":\d+\.\d+\.\d+-", base) for base in external), bases
    assert len(bases) >= 2 and any(a.startswith("--from=builder") for k, a in instructions if k == "COPY")
    assert "ENTRYPOINT" not in keywords and "CMD" not in keywords
    users = [arguments for keyword, arguments in instructions if keyword == "USER"]
    assert users and users[-1] not in ("root", "0")
    runs = " ".join(arguments for keyword, arguments in instructions if keyword == "RUN")
    assert "mlc add repo /opt/abtf-ssd" in runs and re.search(r"apt-get install [^&]*\brclone\b", runs)
    assert f"-r docker/requirements-{device}.txt" in runs
    assert dockerfile_env(dockerfile)["MLC_REPOS"] == "/opt/mlc"
    pins = _pins(DOCKER_DIR / f"requirements-{device}.txt")
    if device == "cpu":
        assert external[0].startswith("python:3.11.")
        assert "--index-url https://download.pytorch.org/whl/cpu" in runs
        assert "onnxruntime" in pins and "onnxruntime-gpu" not in pins
    else:
        assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", external[0])
        assert "onnxruntime-gpu" in pins and "onnxruntime" not in pins
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    assert ignore.read_text() == (DOCKER_DIR / "Dockerfile.cpu.dockerignore").read_text()


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_image_packages_cover_the_bundle_dependencies(device: str) -> None:
    pyproject = REPO / "pyproject.toml"
    if not pyproject.exists():
        pytest.skip("pyproject.toml is not written yet")
    import tomllib

    pins = _pins(DOCKER_DIR / f"requirements-{device}.txt")
    for line in tomllib.loads(pyproject.read_text())["project"]["dependencies"]:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        if device == "cuda" and name == "onnxruntime":
            name = "onnxruntime-gpu"
        assert name in pins, f"{requirement.name} (pyproject.toml) is missing from requirements-{device}.txt"
        assert requirement.specifier.contains(pins[name]), (
            f"{name}=={pins[name]} breaks {line} (pyproject.toml)"
        )


# -- slow: the image's Python steps, resolved against the registry in a plain venv ------------------------

# (Python version, glibc of the base image) per image.
_TARGETS = {"cpu": ("3.11", 36), "cuda": ("3.12", 39)}


def _platform_options(glibc_minor: int) -> list[str]:
    tags = [f"manylinux_2_{minor}_x86_64" for minor in range(glibc_minor, 4, -1)]
    tags += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64"]
    return [option for tag in tags for option in ("--platform", tag)]


def _pip_steps(dockerfile: Path) -> list[list[str]]:
    """The ``python -m pip install`` commands of the Dockerfile's RUN instructions, in order."""
    steps = []
    for keyword, arguments in dockerfile_instructions(dockerfile.read_text()):
        if keyword != "RUN":
            continue
        for command in arguments.split("&&"):
            words = shlex.split(command)
            if words[1:4] == ["-m", "pip", "install"]:
                steps.append(words[4:])
    return steps


def _build_context(destination: Path, ignore_file: Path) -> Path:
    """Copy what the allow-list ignore file lets into the build context (its ``!`` patterns)."""
    for line in ignore_file.read_text().splitlines():
        if not line.startswith("!"):
            continue
        for source in REPO.glob(line[1:]):
            target = destination / source.relative_to(REPO)
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(source, target)
    return destination


@pytest.fixture(scope="module")
def plain_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plain-venv")
    venv.EnvBuilder(with_pip=True).create(root)
    return root / "bin" / "python"


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_image_python_steps_resolve_against_the_registry(
    tmp_path: Path, plain_venv: Path, device: str
) -> None:
    """Every ``pip install`` of the builder stage, in order, from a copy of the build context.

    ``pip install pip==...`` runs for real (the later flags need that pip); the others resolve with
    ``--dry-run`` for the image's Python and glibc, binary wheels only where the Dockerfile says so.
    The PyTorch CPU index is not reachable here, so the torch step resolves torch from the default
    indexes: the same version (the CPU wheel where this machine's pip configuration has it).
    """
    python_version, glibc_minor = _TARGETS[device]
    dockerfile = DOCKER_DIR / f"Dockerfile.{device}"
    context = _build_context(tmp_path / "context", dockerfile.with_name(dockerfile.name + ".dockerignore"))
    assert (context / "pyproject.toml").is_file(), "the build context lacks pyproject.toml"
    steps = _pip_steps(dockerfile)
    assert len(steps) >= 3, steps

    pip = [str(plain_venv), "-m", "pip", "install"]
    resolved: dict[str, str] = {}
    for number, step in enumerate(steps):
        if any(word.startswith("pip==") for word in step):
            subprocess.run([*pip, "-q", *step], check=True, timeout=300)
            continue
        if "--index-url" in step:
            at = step.index("--index-url")
            assert step[at + 1] == "https://download.pytorch.org/whl/cpu"
            del step[at : at + 2]
        target = ["--python-version", python_version, *_platform_options(glibc_minor)]
        report = tmp_path / f"step{number}.json"
        dry_run = ["--dry-run", "--ignore-installed", "--report", str(report)]
        command = [*pip, *dry_run, *step, *(target if "--only-binary=:all:" in step else [])]
        done = subprocess.run(command, cwd=context, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{shlex.join(step)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        for item in json.loads(report.read_text())["install"]:
            resolved[canonicalize_name(item["metadata"]["name"])] = item["metadata"]["version"]

    for name, version in _pins(DOCKER_DIR / f"requirements-{device}.txt").items():
        assert name in resolved and Version(resolved[name]).public == version, (name, resolved.get(name))
    assert "abtf-ssd" in resolved


# -- slow: a real container, where a Docker engine runs ---------------------------------------------------


def _docker_engine_runs() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@pytest.mark.slow
@pytest.mark.skipif(
    not _docker_engine_runs(),
    reason="no Docker engine here (`docker info` fails): building and running the CPU image needs a daemon",
)
def test_cpu_container_runs_with_the_planned_mounts(tmp_path: Path, host_inputs: tuple[Path, Path]) -> None:
    plan = _plan(tmp_path, host_inputs, "cpu")
    plan.results_dir.mkdir()
    plan.mlc_cache_dir.mkdir()
    if not container.image_exists(plan.image):
        subprocess.run(plan.build_cmd, check=True, env={**os.environ, "DOCKER_BUILDKIT": "1"}, timeout=3600)
    probe = (
        "set -e; python -c 'import abtf_ssd, mlperf_loadgen, onnxruntime, torch'; "
        'grep -q /opt/abtf-ssd "$MLC_REPOS/repos.json"; command -v rclone; '
        f"test -f {CONTAINER_DATASET}/val_0.pkl; ! touch {CONTAINER_DATASET}/x 2>/dev/null; "
        f"id -u > {CONTAINER_RESULTS}/uid"
    )
    subprocess.run(
        ["docker", "run", *plan.run_options, plan.image, "sh", "-c", probe], check=True, timeout=600
    )
    written = plan.results_dir / "uid"
    assert written.read_text().strip() == str(os.getuid())
    assert written.stat().st_uid == os.getuid()
