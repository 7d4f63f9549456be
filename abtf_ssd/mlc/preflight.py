"""The one pre-flight check of a run-abtf-inference request: everything that can refuse it, before any
getter runs (so nothing is downloaded, generated or written for a request that cannot succeed).

run-abtf-inference's ``predeps`` calls :func:`prepare_run` with the script's env and its
``input_mapping``; every refusal is a :class:`PreflightError`, one line that names the flag the user
typed (``--execution_mode=bogus: ...``), says what is wrong and what to do. In order, cheapest first:

1. ``--docker_*`` inputs without ``--docker``;
2. each input parsed: names (model, implementation, category, round, scenario, framework, device,
   division, store, execution mode), integers and numbers, and paths (``--user_conf``,
   ``--dataset_path`` must be a preprocessed folder, ``--model_path`` a file in the framework's format,
   ``--config`` a known config);
3. the execution mode resolved in one place: ``--execution_mode`` > ``_short`` / ``_full`` >
   the run kind (``_submission``: valid; any other: test);
4. what the rules of the round make impossible: a valid run with fewer samples than the round's
   performance sample count (a 64-frame ``_synthetic`` set), a scenario the round does not have in a
   valid or submission run, ConstantStream or a closed-division submission without the automotive
   LoadGen (the one installed here, or the images' with ``--docker``);
5. the device: the framework must be able to use it here (without ``--docker``), or the host must
   have a GPU for the CUDA image; then the Docker engine (``--docker`` without ``--docker_dryrun``).

:func:`prepare_run` then sets what the dependencies read (meta.yaml): the normalised device, the
resolved execution mode, the results paths, the run kinds, and for ``--docker`` which downloads stay
on this machine. To add a check, add it to :func:`check_request` (or a helper of it) in that order.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from abtf_ssd.loadgen import rules
from abtf_ssd.mlc import container

IMPLEMENTATIONS = ("reference",)
CATEGORIES = ("adas",)
ROUND_SCENARIOS = rules.ROUND_SCENARIOS
LENGTH_EXECUTION_MODES = {"full": "valid", "short": "test"}
"""``_full`` / ``_short`` (env ``MLC_ABTF_RUN_LENGTH``) -> execution mode."""
SUBMISSION_EXECUTION_MODE = "valid"
DEFAULT_EXECUTION_MODE = "test"
RUN_KINDS = ("FIND_PERFORMANCE", "PERFORMANCE", "ACCURACY", "TEST01", "SUBMISSION")
"""The ``MLC_ABTF_RUN_DO_<kind>`` switches of run-abtf-inference's dependencies."""
SYNTHETIC_DATASET_META = container.BUNDLE_ROOT / "script" / "get-raw-dataset-cognata" / "meta.yaml"
"""Where the synthetic sources' default frame counts live (their variations' ``default_env``)."""

_PREFIX = "MLC_ABTF_RUN_"


class PreflightError(ValueError):
    """A request that cannot succeed: one line naming the flag, what is wrong and what to do."""


@dataclass(frozen=True)
class RunRequest:
    """A checked request: the values the run will use."""

    round: str
    scenario: str
    framework: str
    device: str
    """Normalised: ``gpu`` is ``cuda`` (:func:`abtf_ssd.model.backends.normalize_device`)."""
    execution_mode: str
    execution_mode_from: str
    """What decided the execution mode: ``--execution_mode``, ``_full``, ``_short``, ``_submission``
    or ``default``."""
    submission: bool
    division: str
    dataset_samples: int | None
    """Samples of the dataset the run will read, where known before it is fetched."""
    docker: container.DockerOptions | None
    """``--docker`` on this machine: the ``--docker_*`` options; None: the run happens here."""

    def summary(self) -> str:
        where = "in a container" if self.docker else "here"
        return (
            f"{rules.MODEL_NAME} {self.scenario}, round {self.round}, {self.framework} on {self.device} "
            f"{where}; execution mode {self.execution_mode} (from {self.execution_mode_from})"
        )


def flag_names(input_mapping: Mapping[str, str]) -> dict[str, str]:
    """env key -> the ``--flag`` that sets it, from a script's ``input_mapping`` (flag -> env key)."""
    return {key: f"--{flag}" for flag, key in input_mapping.items()}


class _Inputs:
    """The env of the request, read value by value; every error names the user's flag."""

    def __init__(self, env: Mapping[str, Any], flags: Mapping[str, str]) -> None:
        self.env = env
        self.flags = flags

    def flag(self, key: str) -> str:
        return self.flags.get(key, f"--env.{key}")

    def text(self, key: str) -> str | None:
        value = self.env.get(key)
        text = "" if value is None else str(value).strip()
        return text or None

    def fail(self, key: str, problem: str) -> PreflightError:
        return PreflightError(f"{self.flag(key)}={self.text(key) or ''}: {problem}")

    def choice(self, key: str, choices: tuple[str, ...], what: str) -> str:
        value = self.text(key) or ""
        if value not in choices:
            raise self.fail(key, f"unknown {what}; use {' or '.join(choices)}")
        return value

    def integer(self, key: str, minimum: int) -> int | None:
        value = self.text(key)
        if value is None:
            return None
        try:
            number = int(value)
        except ValueError:
            raise self.fail(key, f"not a whole number; give one of at least {minimum}") from None
        if number < minimum:
            raise self.fail(key, f"must be at least {minimum}")
        return number

    def _number(self, key: str, example: str, within: Callable[[float], bool], problem: str) -> float | None:
        """The number ``key`` gives (None when not given); ``problem`` when ``within`` refuses it."""
        value = self.text(key)
        if value is None:
            return None
        try:
            number = float(value)
        except ValueError:
            raise self.fail(key, f"not a number; give one like {example}") from None
        if not within(number):
            raise self.fail(key, problem)
        return number

    def positive(self, key: str, unit: str) -> float | None:
        """A positive finite number of ``unit`` (``milliseconds``), or None when not given."""
        problem = f"must be a positive number of {unit}"
        return self._number(key, f"250 or 12.5 ({unit})", lambda n: 0 < n < float("inf"), problem)

    def fraction(self, key: str, what: str) -> float | None:
        """A number in [0, 1) (a fraction ``what``), or None when not given."""
        problem = f"must be a fraction {what} in [0, 1), like 0.1"
        return self._number(key, "0.1", lambda n: 0 <= n < 1, problem)

    def yes_no(self, key: str) -> bool:
        value = self.env.get(key)
        if value is None or value == "":
            return False
        try:
            return container.flag_value(self.flag(key), value)
        except ValueError as error:
            raise PreflightError(str(error)) from None

    def path(self, key: str) -> Path | None:
        value = self.text(key)
        return Path(value).expanduser() if value else None


def docker_options(env: Mapping[str, Any], flags: Mapping[str, str]) -> container.DockerOptions | None:
    """``--docker`` and its ``--docker_*`` options; None without ``--docker`` (or inside the container).
    A PreflightError for a ``--docker_*`` input without ``--docker``."""
    inputs = _Inputs(env, flags)
    docker = inputs.yes_no(f"{_PREFIX}DOCKER")
    dry_run = inputs.yes_no(f"{_PREFIX}DOCKER_DRYRUN")
    rebuild = inputs.yes_no(f"{_PREFIX}DOCKER_REBUILD")
    image = inputs.text(f"{_PREFIX}DOCKER_IMAGE")
    if not docker:
        given = [
            inputs.flag(f"{_PREFIX}DOCKER_{name}")
            for name, value in (("DRYRUN", dry_run), ("REBUILD", rebuild), ("IMAGE", image))
            if value
        ]
        if given:
            raise PreflightError(
                f"{' and '.join(given)} without --docker: add --docker to run in a container "
                f"(or leave out {' and '.join(given)} to run here)"
            )
        return None
    if inputs.text("MLC_RUN_STATE_DOCKER") == "yes":
        return None  # already in the container
    return container.DockerOptions(dry_run=dry_run, rebuild=rebuild, image=image)


def _execution_mode(inputs: _Inputs, submission: bool) -> tuple[str, str]:
    """(execution mode, what decided it): ``--execution_mode`` > ``_full`` / ``_short`` > run kind."""
    key = f"{_PREFIX}EXECUTION_MODE"
    if inputs.text(key) is not None:
        return inputs.choice(key, rules.EXECUTION_MODES, "execution mode"), inputs.flag(key)
    length = inputs.text(f"{_PREFIX}LENGTH")
    if length is not None:
        return LENGTH_EXECUTION_MODES[length], f"_{length}"
    if submission:
        return SUBMISSION_EXECUTION_MODE, "_submission"
    return DEFAULT_EXECUTION_MODE, "default"


def _check_folder_input(inputs: _Inputs, key: str) -> None:
    """An output folder input that names an existing file."""
    path = inputs.path(key)
    if path is not None and path.exists() and not path.is_dir():
        raise inputs.fail(key, "is a file; give a folder (it is made when missing)")


def _dataset_samples(inputs: _Inputs) -> int | None:
    """Samples of ``--dataset_path`` (checked: a preprocessed folder or a sample store), else of the
    synthetic set the request generates; None for a download (the official split)."""
    from abtf_ssd.cognata import SPLIT_PREFIXES
    from abtf_ssd.data.store import StoreError, open_dataset

    key = "MLC_ABTF_DATASET_PATH"
    path = inputs.path(key)
    if path is not None:
        if not path.exists():
            raise inputs.fail(key, "no such folder; give the preprocessed folder, or leave it out to get one")
        if not path.is_dir():
            raise inputs.fail(key, "is a file; give the folder of the preprocessed samples")
        prefix = inputs.text("MLC_ABTF_DATASET_PREFIX") or SPLIT_PREFIXES["validation"]
        try:
            return len(open_dataset(path, prefix))
        except (StoreError, OSError, ValueError) as error:
            raise inputs.fail(
                key,
                f"not a preprocessed Cognata folder ({error}); give the folder that "
                "get,preprocessed,dataset,cognata or abtf-ssd preprocess made (val_<i>.pkl files or a "
                "--store=mmap store)",
            ) from None
    frames = inputs.integer("MLC_ABTF_SYNTH_FRAMES", 1)
    source = inputs.text(f"{_PREFIX}DATASET_SOURCE") or ""
    if not source.startswith("synthetic"):
        return None
    return frames if frames is not None else _synthetic_default_frames(source)


def _synthetic_default_frames(source: str) -> int | None:
    """The frame count a synthetic source makes by default; None when unknown (no script folder)."""
    import yaml

    if not SYNTHETIC_DATASET_META.is_file():
        return None
    meta = yaml.safe_load(SYNTHETIC_DATASET_META.read_text(encoding="utf-8"))
    frames = meta["variations"].get(source, {}).get("default_env", {}).get("MLC_ABTF_SYNTH_FRAMES")
    return int(frames) if frames is not None else None


def _check_sample_counts(
    inputs: _Inputs, round_rules: rules.RoundRules, samples: int | None, valid_performance: bool
) -> None:
    key = f"{_PREFIX}PERFORMANCE_SAMPLE_COUNT"
    asked = inputs.integer(key, 1)
    needed = round_rules.performance_sample_count
    if asked is not None and samples is not None and asked > samples:
        raise inputs.fail(key, f"the dataset has only {samples} samples; give at most {samples}")
    if not valid_performance:
        return
    if asked is not None and asked < needed:
        raise inputs.fail(
            key,
            f"a valid run needs at least {needed} (round {round_rules.name}); leave it out, or add _short",
        )
    if samples is not None and samples < needed:
        dataset_key = "MLC_ABTF_DATASET_PATH"
        if inputs.text(dataset_key):
            where, more = (
                f"{inputs.flag(dataset_key)}={inputs.text(dataset_key)}",
                "a larger preprocessed set",
            )
        else:
            where, more = f"_{inputs.text(f'{_PREFIX}DATASET_SOURCE')}", f"--frames={needed} or more"
        raise PreflightError(
            f"{where}: {samples} samples, but a valid run needs at least {needed} performance samples "
            f"(round {round_rules.name}): add _short for a test run, or use {more}"
        )


def _check_loadgen(inputs: _Inputs, scenario: str, submission: bool, division: str, docker: bool) -> None:
    automotive = container.image_has_automotive_loadgen() if docker else rules.has_constant_stream()
    if automotive:
        return
    if docker:
        which = "the images' mlperf_loadgen is PyPI's mlcommons-loadgen (the inference LoadGen)"
        remedy = "run without --docker after you " + rules.AUTOMOTIVE_LOADGEN_HINT
    else:
        which = "the installed mlperf_loadgen is PyPI's mlcommons-loadgen (the inference LoadGen)"
        remedy = rules.AUTOMOTIVE_LOADGEN_HINT
    if scenario == "ConstantStream":
        raise inputs.fail(f"{_PREFIX}SCENARIO", f"needs the automotive LoadGen, and {which}: {remedy}")
    if submission and division == "closed":
        raise inputs.fail(
            "MLC_ABTF_SUBMISSION_DIVISION",
            f"a closed-division result needs the automotive LoadGen, and {which}: {remedy}; "
            "or use --division=open",
        )


def check_request(env: Mapping[str, Any], flags: Mapping[str, str]) -> RunRequest:
    """Check a run-abtf-inference request (its env; ``flags``: env key -> ``--flag``, :func:`flag_names`).

    Raises :class:`PreflightError` (a ValueError) for a request that cannot succeed; the Docker
    engine check raises :class:`abtf_ssd.mlc.container.DockerUnavailableError`.
    """
    from abtf_ssd.config import CONFIGS
    from abtf_ssd.mlc.scripts import env_store_kind
    from abtf_ssd.model.backends import FRAMEWORKS, check_device, normalize_device, parse_device
    from abtf_ssd.model.backends.onnxruntime_backend import DEVICE_KINDS
    from abtf_ssd.submission.layout import DIVISIONS
    from abtf_ssd.submission.sysinfo import model_problem, nvidia_gpus

    inputs = _Inputs(env, flags)
    docker = docker_options(env, flags)

    if inputs.text(f"{_PREFIX}MODEL") != rules.MODEL_NAME:
        raise inputs.fail(f"{_PREFIX}MODEL", f"not supported; supported models: {rules.MODEL_NAME}")
    if inputs.text(f"{_PREFIX}IMPLEMENTATION") not in IMPLEMENTATIONS:
        raise inputs.fail(f"{_PREFIX}IMPLEMENTATION", f"only {' or '.join(IMPLEMENTATIONS)}")
    inputs.choice(f"{_PREFIX}CATEGORY", CATEGORIES, "category (MLPerf Automotive has one)")
    try:
        round_rules = rules.get_round(inputs.text(f"{_PREFIX}ROUND") or rules.DEFAULT_ROUND)
    except rules.RulesError as error:
        raise PreflightError(f"round: {error}") from None
    scenario = inputs.choice(f"{_PREFIX}SCENARIO", rules.SCENARIOS, "scenario")
    framework = inputs.choice(f"{_PREFIX}FRAMEWORK", FRAMEWORKS, "framework")
    if inputs.text(f"{_PREFIX}MODEL_PRECISION"):
        from abtf_ssd.model.quantize import PRECISIONS

        precision = inputs.choice(f"{_PREFIX}MODEL_PRECISION", ("fp32", *PRECISIONS), "precision")
        if precision != "fp32" and framework != "onnxruntime":
            raise inputs.fail(
                f"{_PREFIX}MODEL_PRECISION", "reduced-precision models are ONNX: use --framework=onnxruntime"
            )
    device_key = f"{_PREFIX}DEVICE"
    device = normalize_device(inputs.text(device_key) or "")
    try:
        parse_device(device, DEVICE_KINDS)  # ONNX Runtime's: every kind; the framework's check comes last
    except ValueError as error:
        raise inputs.fail(device_key, f"{error} (gpu means cuda)") from None
    if docker is not None and device.partition(":")[0] not in container.DEVICES:
        raise inputs.fail(device_key, f"--docker runs {' or '.join(container.DEVICES)}[:N] (gpu means cuda)")
    division = inputs.choice("MLC_ABTF_SUBMISSION_DIVISION", DIVISIONS, "division")
    try:
        env_store_kind(env)
    except ValueError as error:
        raise PreflightError(str(error)) from None

    submission = inputs.text(f"{_PREFIX}DO_SUBMISSION") == "yes"
    performance = submission or inputs.text(f"{_PREFIX}DO_PERFORMANCE") == "yes"
    execution_mode, mode_from = _execution_mode(inputs, submission)
    valid = execution_mode == "valid"

    inputs.integer(f"{_PREFIX}TEST_QUERY_COUNT", 1)
    inputs.integer(f"{_PREFIX}THREADS", 1)
    inputs.integer(f"{_PREFIX}BATCH_SIZE", 1)
    inputs.integer("MLC_ABTF_SYNTH_CALIBRATION_FRAMES", 0)
    inputs.integer("MLC_ABTF_WORKERS", 1)
    inputs.positive(f"{_PREFIX}TARGET_LATENCY", "milliseconds")
    inputs.positive(f"{_PREFIX}CONSTANTSTREAM_TARGET_QPS", "queries per second")
    inputs.positive(f"{_PREFIX}CONSTANTSTREAM_TRIAL_SECONDS", "seconds")
    inputs.integer(f"{_PREFIX}CONSTANTSTREAM_TRIAL_QUERIES", 1)
    inputs.positive(f"{_PREFIX}CONSTANTSTREAM_RESOLUTION", "queries per second")
    inputs.integer(f"{_PREFIX}CONSTANTSTREAM_MAX_TRIALS", 1)
    inputs.fraction(f"{_PREFIX}CONSTANTSTREAM_MARGIN", "of the latency bound")

    user_conf = inputs.path(f"{_PREFIX}USER_CONF")
    if user_conf is not None:
        try:
            rules.check_user_conf(user_conf)
        except rules.RulesError as error:
            raise inputs.fail(f"{_PREFIX}USER_CONF", str(error)) from None
    config = inputs.text(f"{_PREFIX}CONFIG")
    if config is not None and config not in CONFIGS:
        raise inputs.fail(f"{_PREFIX}CONFIG", f"unknown model config; use one of {', '.join(CONFIGS)}")
    for key in (f"{_PREFIX}RESULTS_DIR", "MLC_ABTF_SUBMISSION_DIR"):
        _check_folder_input(inputs, key)
    system_name = inputs.text(f"{_PREFIX}SYSTEM_NAME")
    if system_name is not None and (
        "/" in system_name or os.sep in system_name or system_name in (".", "..")
    ):
        raise inputs.fail(f"{_PREFIX}SYSTEM_NAME", "a system name is one folder name; leave out '/'")
    model_key = "MLC_ABTF_ML_MODEL_PATH"
    model_path = inputs.path(model_key)
    if model_path is not None:
        problem = model_problem(framework, str(model_path))
        if problem:
            raise inputs.fail(model_key, f"{problem}; give a model in that format, or change --framework")
        if not model_path.is_file():
            problem = "is a folder" if model_path.is_dir() else "no such file"
            raise inputs.fail(model_key, f"{problem}; give the .onnx or .pth model file, or leave it out")
    samples = _dataset_samples(inputs)

    if (valid or submission) and scenario not in ROUND_SCENARIOS:
        remedy = "" if submission else ", or --execution_mode=test to try it"
        raise inputs.fail(
            f"{_PREFIX}SCENARIO",
            f"not a scenario of MLPerf Automotive, so it makes no valid or submission run; use "
            f"{' or '.join(ROUND_SCENARIOS)}{remedy}",
        )
    _check_sample_counts(inputs, round_rules, samples, valid and performance)
    _check_loadgen(inputs, scenario, submission, division, docker is not None)

    if docker is None:
        problem = check_device(framework, device)
        if problem:
            raise inputs.fail(device_key, problem)
    elif not docker.dry_run:
        if container.image_device(device) == "cuda" and not nvidia_gpus():
            raise inputs.fail(
                device_key,
                "the CUDA image needs an NVIDIA GPU and driver on this machine, and nvidia-smi finds none; "
                "use --device=cpu, or --docker_dryrun to print the commands",
            )
        container.require_docker_engine()
    return RunRequest(
        round=round_rules.name,
        scenario=scenario,
        framework=framework,
        device=device,
        execution_mode=execution_mode,
        execution_mode_from=mode_from,
        submission=submission,
        division=division,
        dataset_samples=samples,
        docker=docker,
    )


def check_all_scenarios(env: Mapping[str, Any], flags: Mapping[str, str], scenario_given: bool) -> None:
    """``_all-scenarios``: the request must be possible for every scenario of the round (ConstantStream
    needs the automotive LoadGen), checked before anything runs; a ``--scenario`` given is refused."""
    if scenario_given:
        raise PreflightError(f"_all-scenarios runs {' and '.join(ROUND_SCENARIOS)}: leave out --scenario")
    for scenario in ROUND_SCENARIOS:
        try:
            check_request({**env, f"{_PREFIX}SCENARIO": scenario}, flags)
        except PreflightError as error:
            raise PreflightError(f"_all-scenarios, {scenario}: {error}") from None


def run_nothing_here(env: MutableMapping[str, Any]) -> None:
    """This request only starts others (``_all-scenarios``): its own getters and runs are skipped."""
    for what in ("MODEL", "DATASET"):
        env[f"{_PREFIX}SKIP_{what}"] = "yes"
    for kind in RUN_KINDS:
        env.pop(f"{_PREFIX}DO_{kind}", None)


def prepare_run(env: MutableMapping[str, Any], flags: Mapping[str, str]) -> RunRequest:
    """Check the request (:func:`check_request`), then set in ``env`` what the dependencies read."""
    from abtf_ssd.loadgen.harness import RunOptions
    from abtf_ssd.submission.sysinfo import MODEL_FORMAT_OF_FRAMEWORK, SUT_INFO_NAME

    request = check_request(env, flags)
    defaults = RunOptions(dataset_dir="")
    env[f"{_PREFIX}DEVICE"] = request.device
    env[f"{_PREFIX}EXECUTION_MODE"] = request.execution_mode
    env[f"{_PREFIX}MODEL_FORMAT"] = MODEL_FORMAT_OF_FRAMEWORK[request.framework]
    results_dir = os.path.abspath(
        os.path.expanduser(env.get(f"{_PREFIX}RESULTS_DIR") or defaults.results_dir)
    )
    env[f"{_PREFIX}RESULTS_DIR"] = results_dir
    system_name = env.setdefault(f"{_PREFIX}SYSTEM_NAME", defaults.system_name)
    env["MLC_ABTF_SUT_INFO_PATH"] = os.path.join(results_dir, system_name, SUT_INFO_NAME)
    valid = request.execution_mode == "valid"
    asked = env.get(f"{_PREFIX}DO_FIND_PERFORMANCE") == "yes"
    constant_stream = env.get(f"{_PREFIX}SCENARIO") == "ConstantStream"
    performance = env.get(f"{_PREFIX}DO_PERFORMANCE") == "yes"
    if valid and performance and not constant_stream and not env.get(f"{_PREFIX}TARGET_LATENCY"):
        # A valid run lasts as planned only with a measured expected latency.
        env[f"{_PREFIX}DO_FIND_PERFORMANCE"] = "yes"
    if constant_stream and performance and not env.get(f"{_PREFIX}CONSTANTSTREAM_TARGET_QPS"):
        # Without a given rate, search the highest one that holds: at the round's 15 QPS a slower
        # system piles queries up (and its latencies measure the queue). A search stored for the same
        # model stands (the app says so): only _find-performance searches again.
        env[f"{_PREFIX}DO_FIND_PERFORMANCE"] = "yes"
        if not asked:
            env[f"{_PREFIX}FIND_PERFORMANCE_IMPLIED"] = "yes"
    if request.submission:
        # What generate-mlperf-submission-automotive needs from this run.
        env["MLC_ABTF_SUBMISSION_RESULTS_DIR"] = results_dir
        env["MLC_ABTF_SUBMISSION_SYSTEM_NAME"] = system_name
        env["MLC_ABTF_SUBMISSION_SUT_INFO"] = env["MLC_ABTF_SUT_INFO_PATH"]
        env["MLC_ABTF_SUBMISSION_VERSION"] = request.round
        env["MLC_ABTF_SUBMISSION_TEST_MODE"] = "no" if valid else "yes"
        if request.division == "closed":
            env[f"{_PREFIX}DO_TEST01"] = "yes"
    if request.docker is not None:
        # This machine fetches only what MLC_USE_*_FROM_HOST asks for; the rest runs in the container.
        from abtf_ssd.mlc.scripts import env_flag

        env[f"{_PREFIX}DOCKER_HOST"] = "yes"
        for what in ("MODEL", "DATASET"):
            if not env_flag(env.get(f"MLC_USE_{what}_FROM_HOST", "")):
                env[f"{_PREFIX}SKIP_{what}"] = "yes"
        for kind in RUN_KINDS:
            env.pop(f"{_PREFIX}DO_{kind}", None)
    return request
