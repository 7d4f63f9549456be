"""Run the benchmark's mlcr command inside a container (``--docker``), on CPU or CUDA.

``mlcr`` ignores ``--docker``; run-abtf-inference's customize.py calls :func:`run_from_mlc`, which plans
(:func:`plan_docker_run`) and carries out (:func:`execute`) two commands:

- ``docker build`` of ``docker/Dockerfile.<device>``, only when the image is missing: its tag holds a
  hash of the Dockerfile, the files the Dockerfile installs and the bundle version, so an edit to any
  of them (and nothing else) means a new image;
- ``docker run`` of the same request without its ``--docker*`` inputs: non-interactive
  (``--quiet``, no terminal), as the host's numeric user and group so the files it writes belong to
  whoever ran it, with the results folder and an MLC cache kept for containers mounted read-write, and
  the dataset and model (fetched on the host first when ``MLC_USE_*_FROM_HOST`` say so) mounted
  read-only, the inner command pointing at their mount points.

The same request: sys.argv of the mlcr process no longer holds it (mlcflow's ``mlcr`` turns it into
``mlc run script ...``), so the request is what mlcflow parsed: its record of the command line,
``mlc_run_cmd``, read by :func:`parse_mlc_command` with mlcflow's rules and checked against the inputs
mlcflow hands the script (:func:`request_from_mlc_input`); :func:`mlc_arguments` writes it back as a
command line that mlcflow parses into the same tags, variations and inputs.

Commands are argument lists, never shell strings, so a path with spaces, quotes or ``$(...)`` reaches
docker as one argument. ``--docker_dryrun`` prints them (shell-quoted) and writes the Dockerfile next
to the results instead of running them; that also works where no Docker engine is installed.

Kept whole, a little over 600 lines: one path, from the request mlcflow parsed to the docker
commands that repeat it inside the container, read best in one go as this docstring walks it. The
request's parsing and writing back (which ``_all-scenarios`` also uses, to repeat a request once a
scenario) are its first half; should the module grow, they are the part to move out.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from abtf_ssd import __version__
from abtf_ssd.fileio import atomic_write_text

DEVICES = ("cpu", "cuda")
DOCKER = "docker"
IMAGE_NAME = "abtf-ssd"
PYPI_LOADGEN = "mlcommons-loadgen"
"""PyPI's LoadGen distribution: the inference LoadGen, without ConstantStream."""
BUNDLE_ROOT = Path(__file__).resolve().parents[2]

# Where the host folders appear inside the container.
CONTAINER_DATASET = "/mnt/abtf-ssd/dataset"
CONTAINER_MODEL = "/mnt/abtf-ssd/model"
CONTAINER_RESULTS = "/mnt/abtf-ssd/results"

# run-abtf-inference inputs that the inner command gets rewritten to the mount points.
DATASET_FLAG = "dataset_path"
MODEL_FLAG = "model_path"
RESULTS_FLAG = "results_dir"

_TRUE = ("", "yes", "true", "on", "1")
_FALSE = ("no", "false", "off", "0")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


class ContainerError(RuntimeError):
    """A docker build or run failed, or could not start."""


class DockerUnavailableError(ContainerError):
    """No Docker engine: no ``docker`` program, or ``docker info`` cannot reach the daemon."""


@dataclass(frozen=True)
class DockerOptions:
    """The ``--docker_*`` flags of an mlcr command line."""

    dry_run: bool = False
    rebuild: bool = False
    image: str | None = None


@dataclass(frozen=True)
class Mount:
    """A bind mount: ``host`` appears at ``container`` inside the container."""

    host: Path
    container: str
    read_only: bool

    @property
    def volume(self) -> str:
        """The value of ``docker run -v``."""
        return f"{self.host}:{self.container}" + (":ro" if self.read_only else "")


@dataclass(frozen=True)
class DockerPlan:
    """Everything a containerised run needs; ``build_cmd`` and ``run_cmd`` are argument lists."""

    device: str
    image: str
    dockerfile: Path
    context: Path
    inner_cmd: tuple[str, ...]
    mounts: tuple[Mount, ...]
    env: tuple[tuple[str, str], ...]
    user: str | None
    results_dir: Path
    mlc_cache_dir: Path

    @property
    def build_cmd(self) -> list[str]:
        return [DOCKER, "build", "--file", str(self.dockerfile), "--tag", self.image, str(self.context)]

    @property
    def run_options(self) -> list[str]:
        """The ``docker run`` options, between ``run`` and the image."""
        options = ["--rm", "--init"]
        if self.user is not None:
            options += ["--user", self.user]
        if self.device == "cuda":
            options += ["--gpus", "all"]
        for mount in self.mounts:
            options += ["-v", mount.volume]
        for name, value in self.env:
            options += ["-e", f"{name}={value}"]
        return options

    @property
    def run_cmd(self) -> list[str]:
        return [DOCKER, "run", *self.run_options, self.image, *self.inner_cmd]


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """Split a Dockerfile into ``(INSTRUCTION, arguments)``, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def dockerfile_env(dockerfile: Path) -> dict[str, str]:
    """The ``ENV KEY=VALUE`` settings of a Dockerfile (the last one of each key, values unexpanded)."""
    env: dict[str, str] = {}
    for keyword, arguments in dockerfile_instructions(dockerfile.read_text()):
        if keyword != "ENV":
            continue
        for item in shlex.split(arguments):
            name, equals, value = item.partition("=")
            if not equals:
                raise ValueError(f"{dockerfile}: use the ENV KEY=VALUE form, got ENV {arguments!r}")
            env[name] = value
    return env


def image_definition_files(dockerfile: Path, context: Path) -> list[Path]:
    """The files that make up an image: the Dockerfile, its ignore file, the ``docker/`` files it names."""
    files = [dockerfile]
    ignore_file = dockerfile.with_name(dockerfile.name + ".dockerignore")
    if ignore_file.is_file():
        files.append(ignore_file)
    named = sorted(set(re.findall(r"\bdocker/[\w.*-]+", dockerfile.read_text())))
    for pattern in named:
        files += sorted(path for path in context.glob(pattern) if path.is_file() and path not in files)
    return files


def image_tag(dockerfile: Path, version: str = __version__, device: str | None = None) -> str:
    """``abtf-ssd:<version>-<device>-<12 hex digits of the image definition's sha256>``."""
    context = dockerfile.resolve().parent.parent
    device = device or dockerfile.suffix.lstrip(".")
    digest = hashlib.sha256(version.encode())
    for path in image_definition_files(dockerfile.resolve(), context):
        digest.update(b"\0" + path.relative_to(context).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return f"{IMAGE_NAME}:{version}-{device}-{digest.hexdigest()[:12]}"


def flag_value(flag: str, value: object) -> bool:
    """An MLC yes/no input (``--docker_dryrun``, ``--docker_dryrun=no``) as a bool.

    A ValueError names ``flag`` for any other value.
    """
    text = "" if value is True else str(value).strip().lower()
    if value is True or text in _TRUE:
        return True
    if value is False or text in _FALSE:
        return False
    raise ValueError(f"{flag}={value}: expected yes or no (true/false, on/off, 1/0)")


# -- the request as mlcflow parsed it, and a command line that mlcflow parses the same way ----------------

MlcValue = str | bool | list[str] | dict[str, "MlcValue"]
"""An input as mlcflow parses it: ``--a=x`` a string, ``--a`` True, ``--a,=x,y`` a list, ``--a.b=x``
a dict."""

# Keys mlcflow adds to a run's input itself: never typed by the user.
_MLCFLOW_KEYS = ("mlc_run_cmd", "details")
# Inputs mlcflow keeps as live dicts and changes during the run (so only their presence is compared).
_LIVE_KEYS = ("env", "state", "const", "const_state", "adr", "add_deps_recursive", "ad", "add_deps")
# mlcflow's log level flags: taken off the command line before the inputs are parsed.
_LOG_FLAGS = {"-v": "--verbose", "--verbose": "--verbose", "-s": "--silent", "--silent": "--silent"}


@dataclass(frozen=True)
class MlcRequest:
    """One ``mlcr`` request as mlcflow parses it: the tags (script tags and ``_variations``), the inputs,
    and mlcflow's log level flags (``--verbose`` / ``--silent``), which are not inputs."""

    tags: str
    inputs: Mapping[str, MlcValue]
    log_flags: tuple[str, ...] = ()

    @property
    def variations(self) -> list[str]:
        """The ``_variation`` tags, in the order given, without the underscore."""
        return [tag[1:] for tag in self.tags.split(",") if tag.startswith("_")]


def _input_name(argument: str) -> str:
    """``--docker-dryrun=yes`` -> ``--docker_dryrun=yes``: mlcflow's spelling of a ``--`` flag's name
    (``-`` read as ``_`` unless the name holds a ``.``)."""
    name, equals, value = argument[2:].partition("=")
    return f"--{name if '.' in name else name.replace('-', '_')}{equals}{value}"


def _put(inputs: dict[str, MlcValue], argument: str) -> None:
    """Add one ``-``/``--`` argument to ``inputs`` the way mlcflow reads it."""
    if "=" not in argument:
        if argument.startswith("--"):
            inputs[argument.strip("-")] = True
        else:
            inputs.update(dict.fromkeys(argument.lstrip("-"), True))
        return
    key, value = argument.split("=", 1)
    key = key.strip("-")
    if "," in key:
        list_key, _, tail = key.rpartition(",")
        if not tail:
            inputs[list_key] = value.split(",")
        return  # mlcflow ignores ``--a,b=x``
    if "." in key:
        *parents, leaf = key.split(".")
        node: dict[str, MlcValue] = inputs
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]  # type: ignore[assignment]
        node[leaf] = value
        return
    inputs[key] = value


def parse_mlc_command(words: Sequence[str]) -> MlcRequest:
    """The request of ``mlcr <tags> [inputs]`` or ``mlc run script <tags> [inputs]`` (argv words).

    The tags must come first, as in every documented command; ``--tags=...`` replaces them. Bare words
    after the tags are ignored, as mlcflow ignores them.
    """
    if not words:
        raise ValueError("the mlcr command line is empty")
    rest = list(words[1:])
    if Path(words[0]).name != "mlcr":
        if rest[:2] != ["run", "script"]:
            raise ValueError(f"not an mlcr or mlc run script command: {shlex.join(words)}")
        rest = rest[2:]
    if not rest or rest[0].startswith("-"):
        raise ValueError(f"no tags right after the command: {shlex.join(words)}")
    details, arguments = rest[0], rest[1:]
    inputs: dict[str, MlcValue] = {}
    log_flags: list[str] = []
    for argument in arguments:
        if argument.startswith("--"):
            argument = _input_name(argument)
        if argument in _LOG_FLAGS:
            log_flags.append(_LOG_FLAGS[argument])
        elif argument.startswith("-"):
            _put(inputs, argument)
    tags = inputs.pop("tags", None)
    return MlcRequest(
        tags=tags if isinstance(tags, str) and tags else details, inputs=inputs, log_flags=tuple(log_flags)
    )


def _flag_arguments(key: str, value: MlcValue) -> list[str]:
    """``--key...`` arguments for one input: ``--key``, ``--key=value``, ``--key,=a,b``, ``--key.sub=...``."""
    if value is True:
        return [f"--{key}"]
    if isinstance(value, str):
        return [f"--{key}={value}"]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return [f"--{key},={','.join(value)}"]
    if isinstance(value, dict):
        return [
            argument
            for sub_key, sub_value in value.items()
            for argument in _flag_arguments(f"{key}.{sub_key}", sub_value)
        ]
    raise ValueError(f"the input {key}={value!r} cannot be written as an mlcr argument")


def mlc_arguments(request: MlcRequest) -> list[str]:
    """The arguments after ``mlcr`` that mlcflow parses back into ``request``: the tags, then one
    ``--name`` / ``--name=value`` / ``--name,=a,b`` / ``--a.b=value`` per input, then the log flags.

    A ValueError for a request no command line gives (checked by parsing the arguments back).
    """
    if not request.tags or request.tags.startswith("-"):
        raise ValueError(f"tags {request.tags!r} cannot be the first mlcr argument")
    arguments = [request.tags]
    for key, value in request.inputs.items():
        arguments += _flag_arguments(key, value)
    parsed = parse_mlc_command(["mlcr", *arguments])
    if (parsed.tags, parsed.inputs) != (request.tags, dict(request.inputs)):
        raise ValueError(f"no mlcr command line gives the inputs {dict(request.inputs)}")
    return arguments + list(request.log_flags)


def request_from_mlc_input(run_input: Mapping[str, Any], why: str = "--docker") -> MlcRequest:
    """The user's request from a script's ``i["input"]``: mlcflow's record of the command line
    (``mlc_run_cmd``) parsed, checked against what mlcflow parsed itself (``tags`` and every input).

    mlcflow changes the ``env`` dict during the run, so the command line is the only record of the
    ``--env.*`` inputs. A ValueError when the two differ (inputs from ``--mlc_input_file`` or
    ``MLC_SCRIPT_EXTRA_CMD``) or when there is no command line (a call from Python); ``why`` names
    what needs the request repeated (``--docker``, ``_all-scenarios``).
    """
    command = run_input.get("mlc_run_cmd")
    if not command:
        raise ValueError(f"{why} needs the mlcr command line; run the request with mlcr")
    request = parse_mlc_command(shlex.split(command))
    if request.tags != run_input.get("tags"):
        raise ValueError(
            f"{why}: mlcflow runs tags {run_input.get('tags')!r}, the command line says {request.tags!r}"
        )
    ignored = (*_MLCFLOW_KEYS, "tags")
    differing = sorted(
        key
        for key in (set(run_input) | set(request.inputs)) - set(ignored)
        if key not in request.inputs
        or key not in run_input
        or (key not in _LIVE_KEYS and run_input[key] != request.inputs[key])
    )
    if differing:
        raise ValueError(
            f"{why}: the inputs {', '.join(differing)} differ from the mlcr command line (an input "
            "file or MLC_SCRIPT_EXTRA_CMD?); give every input on the command line"
        )
    return request


def inner_command(request: MlcRequest, replacements: Mapping[str, str]) -> list[str]:
    """The mlcr command to run in the container: ``request`` without ``--docker`` and the ``--docker_*``
    inputs, the inputs named in ``replacements`` (input name -> new value) replaced, and ``--quiet``
    (nothing interactive)."""
    inputs = {
        key: value
        for key, value in request.inputs.items()
        if key != "docker" and not key.startswith("docker_") and key not in replacements
    }
    inputs.update(replacements)
    inputs["quiet"] = True
    return ["mlcr", *mlc_arguments(MlcRequest(request.tags, inputs, request.log_flags))]


def request_without_variation(request: MlcRequest, variation: str, **inputs: MlcValue) -> MlcRequest:
    """``request`` without the ``_variation`` tag, with ``inputs`` set (``_all-scenarios`` -> one
    request a scenario)."""
    tags = ",".join(tag for tag in request.tags.split(",") if tag != f"_{variation}")
    return MlcRequest(tags, {**request.inputs, **inputs}, request.log_flags)


def _host_path(path: str | os.PathLike[str], what: str, must_exist: bool) -> Path:
    resolved = Path(path).expanduser().resolve()
    if must_exist and not resolved.exists():
        raise FileNotFoundError(f"{what} {resolved} does not exist")
    if ":" in str(resolved):
        raise ValueError(
            f"{what} {resolved} contains ':', which docker -v cannot mount; rename it or use a link"
        )
    return resolved


def _read_only_mount(host: Path, container_dir: str) -> Mount:
    """A folder at ``container_dir``; a file inside it, under its name made shell-safe."""
    if host.is_dir():
        return Mount(host, container_dir, read_only=True)
    name = _SAFE_NAME.sub("_", host.name).lstrip(".") or "file"
    return Mount(host, f"{container_dir}/{name}", read_only=True)


def plan_docker_run(
    request: MlcRequest,
    device: str,
    results_dir: str | os.PathLike[str],
    mlc_cache_dir: str | os.PathLike[str],
    dataset_path: str | os.PathLike[str] | None = None,
    model_path: str | os.PathLike[str] | None = None,
    dataset_from_host: bool = False,
    model_from_host: bool = False,
    image: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    bundle_root: str | os.PathLike[str] | None = None,
    user: str | None = None,
) -> DockerPlan:
    """Plan the build and run of ``request`` (the user's mlcr request) in a container on ``device``.

    ``mlc_cache_dir``: a host folder kept for the containers' MLC cache (mounted as the image's
    ``$MLC_REPOS/local/cache``); not the host's own cache, whose entries point at host paths.
    ``dataset_path`` / ``model_path``: mounted read-only when given; the ``*_from_host`` flags say
    they were fetched on the host first and so must be given. ``image``: a tag instead of the hashed
    one. ``env``: extra variables for the container. ``user``: ``uid:gid`` (default: this process's).
    """
    device = image_device(device)
    root = Path(bundle_root).resolve() if bundle_root is not None else BUNDLE_ROOT
    dockerfile = root / "docker" / f"Dockerfile.{device}"
    if not dockerfile.is_file():
        raise FileNotFoundError(f"{dockerfile} not found: --docker needs the bundle's source tree")
    for given, from_host, what in (
        (dataset_path, dataset_from_host, "dataset"),
        (model_path, model_from_host, "model"),
    ):
        if from_host and given is None:
            raise ValueError(
                f"MLC_USE_{what.upper()}_FROM_HOST=yes, but no {what} path was fetched on the host"
            )

    mounts: list[Mount] = []
    replacements: dict[str, str] = {}
    for given, container_dir, flag, what in (
        (dataset_path, CONTAINER_DATASET, DATASET_FLAG, "dataset"),
        (model_path, CONTAINER_MODEL, MODEL_FLAG, "model"),
    ):
        if given is not None:
            mount = _read_only_mount(_host_path(given, what, must_exist=True), container_dir)
            mounts.append(mount)
            replacements[flag] = mount.container
    results = _host_path(results_dir, "results folder", must_exist=False)
    cache = _host_path(mlc_cache_dir, "MLC cache folder", must_exist=False)
    mlc_repos = dockerfile_env(dockerfile).get("MLC_REPOS")
    if not mlc_repos:
        raise ValueError(f"{dockerfile}: no ENV MLC_REPOS=..., so the MLC cache has no mount point")
    mounts.append(Mount(results, CONTAINER_RESULTS, read_only=False))
    mounts.append(Mount(cache, f"{mlc_repos}/local/cache", read_only=False))
    replacements[RESULTS_FLAG] = CONTAINER_RESULTS

    container_env = {"MLC_RUN_STATE_DOCKER": "yes"}
    if dataset_from_host:
        container_env["MLC_USE_DATASET_FROM_HOST"] = "yes"
    if model_from_host:
        container_env["MLC_USE_MODEL_FROM_HOST"] = "yes"
    container_env.update(env or {})
    if user is None and hasattr(os, "getuid"):
        user = f"{os.getuid()}:{os.getgid()}"
    return DockerPlan(
        device=device,
        image=image or image_tag(dockerfile, device=device),
        dockerfile=dockerfile,
        context=root,
        inner_cmd=tuple(inner_command(request, replacements)),
        mounts=tuple(mounts),
        env=tuple(container_env.items()),
        user=user,
        results_dir=results,
        mlc_cache_dir=cache,
    )


def require_docker_engine() -> None:
    """Raise :class:`DockerUnavailableError` unless ``docker`` exists and ``docker info`` reaches a daemon."""
    advice = (
        "Install and start a Docker engine (plus the NVIDIA Container Toolkit for --device=cuda), "
        "or add --docker_dryrun to print the docker build / docker run commands instead of running them."
    )
    if shutil.which(DOCKER) is None:
        raise DockerUnavailableError(
            f"--docker needs Docker, and there is no `{DOCKER}` program on PATH. {advice}"
        )
    try:
        info = subprocess.run(
            [DOCKER, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired as error:
        raise DockerUnavailableError(f"`{DOCKER} info` did not answer within 60 s. {advice}") from error
    if info.returncode != 0:
        reason = (info.stderr or info.stdout).strip().splitlines()
        detail = reason[-1] if reason else f"exit status {info.returncode}"
        raise DockerUnavailableError(f"`{DOCKER} info` cannot reach the Docker daemon ({detail}). {advice}")


def image_exists(tag: str) -> bool:
    """Whether the local Docker engine has an image ``tag`` (``docker image inspect``)."""
    try:
        inspect = subprocess.run([DOCKER, "image", "inspect", tag], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return inspect.returncode == 0


def execute(
    plan: DockerPlan, dry_run: bool = False, rebuild: bool = False, out: TextIO | None = None
) -> None:
    """Build the image when missing (or ``rebuild``), then run the container.

    ``dry_run``: write the Dockerfile next to the results and print both commands, running nothing.
    Raises :class:`DockerUnavailableError` without a Docker engine, :class:`ContainerError` when the
    build or the run fails.
    """
    out = out or sys.stdout
    if dry_run:
        plan.results_dir.mkdir(parents=True, exist_ok=True)
        written = plan.results_dir / plan.dockerfile.name
        atomic_write_text(written, plan.dockerfile.read_text(encoding="utf-8"))
        print(f"# --docker_dryrun: nothing was run; {written} is the image's Dockerfile.", file=out)
        print(f"# Build the image (skipped when `docker image inspect {plan.image}` finds it):", file=out)
        print(shlex.join(plan.build_cmd), file=out)
        print("# Run the benchmark in it:", file=out)
        print(shlex.join(plan.run_cmd), file=out)
        return

    require_docker_engine()
    # Made here, not by docker, which would create missing mount sources owned by root.
    plan.results_dir.mkdir(parents=True, exist_ok=True)
    plan.mlc_cache_dir.mkdir(parents=True, exist_ok=True)
    if rebuild or not image_exists(plan.image):
        print(f"# Building {plan.image}: {shlex.join(plan.build_cmd)}", file=out, flush=True)
        build = subprocess.run(plan.build_cmd, env={**os.environ, "DOCKER_BUILDKIT": "1"})
        if build.returncode != 0:
            raise ContainerError(f"docker build of {plan.dockerfile} failed (exit status {build.returncode})")
    print(f"# Running in {plan.image}: {shlex.join(plan.run_cmd)}", file=out, flush=True)
    run = subprocess.run(plan.run_cmd)
    if run.returncode != 0:
        raise ContainerError(f"the run in container {plan.image} failed (exit status {run.returncode})")


def default_mlc_cache_dir(device: str) -> Path:
    """The host folder kept for the containers' MLC cache: ``$XDG_CACHE_HOME/abtf-ssd/mlc-cache/<device>``."""
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache_home / IMAGE_NAME / "mlc-cache" / device


def run_from_mlc(
    request: MlcRequest,
    options: DockerOptions,
    *,
    device: str,
    results_dir: str | os.PathLike[str],
    mlc_cache_dir: str | os.PathLike[str] | None = None,
    dataset_path: str | os.PathLike[str] | None = None,
    model_path: str | os.PathLike[str] | None = None,
    dataset_from_host: bool = False,
    model_from_host: bool = False,
    env: Mapping[str, str] | None = None,
) -> dict:
    """``--docker`` for an MLC script: plan, build if needed, run; an MLC result dict, never an exception.

    ``request``: the user's request (:func:`request_from_mlc_input`); ``options``: its ``--docker_*``
    inputs. Returns ``{"return": 0, "image": ..., "run_cmd": ...}`` or ``{"return": 1, "error": ...}``.
    """
    device = image_device(device)
    try:
        plan = plan_docker_run(
            request,
            device,
            results_dir,
            mlc_cache_dir if mlc_cache_dir is not None else default_mlc_cache_dir(device),
            dataset_path=dataset_path,
            model_path=model_path,
            dataset_from_host=dataset_from_host,
            model_from_host=model_from_host,
            image=options.image,
            env=env,
        )
        execute(plan, dry_run=options.dry_run, rebuild=options.rebuild)
    except (ContainerError, ValueError, OSError) as error:
        return {"return": 1, "error": str(error)}
    return {"return": 0, "image": plan.image, "run_cmd": shlex.join(plan.run_cmd)}


def image_device(device: str) -> str:
    """The image (:data:`DEVICES`) for a ``--device``: ``cpu``, or ``cuda`` for ``cuda[:N]`` / ``gpu[:N]``.

    A ValueError for any other device (the CUDA image has no TensorRT).
    """
    from abtf_ssd.model.backends import normalize_device

    kind = normalize_device(device).partition(":")[0]
    if kind not in DEVICES:
        raise ValueError(f"--device={device} with --docker: the images run {' or '.join(DEVICES)}[:N]")
    return kind


def image_has_automotive_loadgen() -> bool:
    """Whether the images hold the automotive LoadGen: not while they install PyPI's
    ``mlcommons-loadgen`` (the inference LoadGen, no ConstantStream) from ``requirements-common.txt``."""
    requirements = BUNDLE_ROOT / "docker" / "requirements-common.txt"
    names = {
        re.split(r"[=<>!~ ;\[]", line.strip(), maxsplit=1)[0].lower()
        for line in requirements.read_text().splitlines()
    }
    return PYPI_LOADGEN not in names
