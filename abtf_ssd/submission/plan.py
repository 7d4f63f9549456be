"""Submission plans: a YAML file that names every run of a submission, and the runner that makes it.

A plan (format in ``automation/README.md``) names the round, division, submitter and systems; each
system lists runs as framework x device x scenarios with their source (``mlc`` download, ``local``
paths, ``synthetic`` demo data), threads, batch size, user.conf and execution mode.
:func:`load_plan` validates it (errors name the plan file, the key and the allowed values) without
importing a framework, so a malformed plan is refused at once.

Each planned run (a system's scenario) is a few LoadGen runs, its *steps*: find-performance (valid
mode without a ``latency_ms``), performance, accuracy and, for the closed division, TEST01. A step
writes the harness's folder (:func:`abtf_ssd.loadgen.harness.output_dir`) and, last and atomically,
:data:`MARKER_NAME` with its identity (round, scenario, mode, framework, device, model sha256, dataset
identity, LoadGen kind, settings). A rerun skips a step whose marker matches and that finished VALID
(or finished at all in test mode); a changed model changes only its own steps' identity; an
interrupted step has no marker (it is removed before the step starts) and runs again from scratch.

Output folder::

    <output>/results/<system>/ssd/<scenario>/...   the harness's folders, each with plan-run.json
    <output>/sources/                               synthetic data and models, mlc downloads
    <output>/submission/ and submission.tar.gz       the checked tree and its tarball
    <output>/summary.json                            the last run's summary (tarball sha256, verdicts)

:func:`estimate` needs no run: query counts and minimum durations come from
:func:`abtf_ssd.loadgen.rules.get_round`, the latency from ``--latency-ms``, the plan, a cached
find-performance result or a finished performance run. :func:`plan_status` reads only the disk.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

from abtf_ssd.cognata import SPLIT_PREFIXES, official_split, read_split
from abtf_ssd.data.download import TOOLS
from abtf_ssd.fileio import atomic_write_json, exclusive_lock
from abtf_ssd.loadgen import rules
from abtf_ssd.loadgen.harness import COMPLIANCE_TEST, RESULTS_JSON, RunOptions, output_dir
from abtf_ssd.submission.checker import (
    DETAIL_LOG,
    DIVISIONS,
    OPTIONAL_SCENARIOS,
    REQUIRED_SCENARIOS,
    STATUSES,
)

MARKER_NAME = "plan-run.json"
"""Written last, atomically, into a finished step's folder: the step's identity and outcome."""
SUMMARY_NAME = "summary.json"
SUBMISSION_DIR_NAME = "submission"
SOURCES_DIR_NAME = "sources"
RESULTS_DIR_NAME = "results"
LOCK_NAME = ".plan.lock"

SCENARIOS = REQUIRED_SCENARIOS + OPTIONAL_SCENARIOS
SOURCE_KINDS = ("mlc", "local", "synthetic")
FIND_PERFORMANCE, PERFORMANCE, ACCURACY = "find-performance", "performance", "accuracy"
STEP_KINDS = (FIND_PERFORMANCE, PERFORMANCE, ACCURACY, COMPLIANCE_TEST)

PLAN_KEYS = ("round", "division", "submitter", "status", "execution_mode", "output", "systems")
SYSTEM_KEYS = ("name", "sut_info", "runs")
RUN_KEYS = (
    "framework",
    "device",
    "scenarios",
    "source",
    "threads",
    "batch_size",
    "user_conf",
    "execution_mode",
    "test_query_count",
    "latency_ms",
    "target_qps",
)
SOURCE_KEYS = {
    "mlc": ("kind", "download_tool", "dir"),
    "local": ("kind", "model", "dataset"),
    "synthetic": ("kind", "frames", "seed"),
}
PROGRESS_INTERVAL_S = 60.0
"""One progress line a minute when stdout is not a terminal (a log file, CI)."""
TTY_PROGRESS_INTERVAL_S = 2.0

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_DEVICE = re.compile(r"[a-z]+(:[0-9]+)?")


class PlanError(ValueError):
    """A plan that cannot run: names the plan file, the key and what is allowed."""


# ---------------------------------------------------------------------------------------------
# The plan


@dataclass(frozen=True)
class Source:
    """Where a run's model and dataset come from; paths are absolute."""

    kind: str
    download_tool: str | None = None
    dir: Path | None = None
    model: Path | dict[str, Path] | None = None
    """``local``: one model file, or one per framework."""
    dataset: Path | None = None
    frames: int | None = None
    seed: int | None = None


@dataclass(frozen=True)
class PlannedRun:
    """One scenario of one system: the unit of the submission's results table."""

    key: str
    """Where it is in the plan (``systems[0].runs[1]``), for messages."""
    system: str
    """The system's folder name in the results and in the submission."""
    framework: str
    device: str
    scenario: str
    source: Source
    execution_mode: str
    threads: int | None = None
    batch_size: int = 1
    user_conf: Path | None = None
    test_query_count: int | None = None
    latency_ms: float | None = None
    target_qps: float | None = None
    """ConstantStream's rate; None: the one find-performance stores, else the round's."""

    @property
    def label(self) -> str:
        return f"{self.system} {self.scenario}"


@dataclass(frozen=True)
class Plan:
    path: Path
    round: str
    division: str
    submitter: str
    status: str
    output: Path
    systems: dict[str, Path | None]
    """Submission system name -> its system description JSON (None: collected on this machine)."""
    runs: tuple[PlannedRun, ...]

    @property
    def results_dir(self) -> Path:
        return self.output / RESULTS_DIR_NAME

    @property
    def submission_dir(self) -> Path:
        return self.output / SUBMISSION_DIR_NAME

    @property
    def test_mode(self) -> bool:
        return any(run.execution_mode == "test" for run in self.runs)


@dataclass(frozen=True)
class Step:
    """One LoadGen run of a planned run."""

    run: PlannedRun
    kind: str
    """One of :data:`STEP_KINDS`."""

    @property
    def mode(self) -> str:
        return PERFORMANCE if self.kind == COMPLIANCE_TEST else self.kind

    @property
    def label(self) -> str:
        return f"{self.run.label} {self.kind}"


class _Reader:
    """Typed reads of a YAML mapping with errors that name the plan file and the key."""

    def __init__(self, plan_file: Path) -> None:
        self.plan_file = plan_file

    def fail(self, key: str, problem: str) -> PlanError:
        return PlanError(f"plan {self.plan_file}: {key}: {problem}")

    def mapping(self, value: Any, key: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a mapping with the keys {', '.join(allowed)}")
        for name in value:
            if name not in allowed:
                raise self.fail(
                    f"{key}.{name}" if key else str(name), f"unknown key; allowed: {', '.join(allowed)}"
                )
        return value

    def choice(self, value: Any, key: str, allowed: tuple[str, ...]) -> str:
        if value not in allowed:
            raise self.fail(key, f"{value!r} is not allowed; allowed: {', '.join(allowed)}")
        return value

    def name(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not _NAME.fullmatch(value):
            raise self.fail(
                key, f"{value!r} is not a name: letters, digits, '_', '.', '-', not starting with '.'"
            )
        return value

    def positive(self, value: Any, key: str, kind: type = int) -> Any:
        numbers = (int, float) if kind is float else (int,)
        if isinstance(value, bool) or not isinstance(value, numbers) or value <= 0:
            raise self.fail(key, f"{value!r} is not allowed; allowed: a positive {kind.__name__}")
        return value

    def choices(self, value: Any, key: str, allowed: tuple[str, ...]) -> list[str]:
        """One value or a non-empty list of them."""
        values = value if isinstance(value, list) else [value]
        if not values:
            raise self.fail(key, f"empty list; allowed: {', '.join(allowed)}")
        return [
            self.choice(v, f"{key}[{i}]" if isinstance(value, list) else key, allowed)
            for i, v in enumerate(values)
        ]

    def devices(self, value: Any, key: str) -> list[str]:
        values = value if isinstance(value, list) else [value]
        if not values:
            raise self.fail(key, "empty list; allowed: cpu, cuda, cuda:N (one or a list)")
        for i, device in enumerate(values):
            if not isinstance(device, str) or not _DEVICE.fullmatch(device):
                where = f"{key}[{i}]" if isinstance(value, list) else key
                raise self.fail(
                    where, f"{device!r} is not allowed; allowed: cpu, cuda, cuda:N (one or a list)"
                )
        return values

    def path(self, value: Any, key: str) -> Path:
        if not isinstance(value, str) or not value:
            raise self.fail(key, f"{value!r} is not allowed; allowed: a path (relative to the plan's folder)")
        return (self.plan_file.parent / Path(value).expanduser()).resolve()


def load_plan(path: str | Path, output: str | Path | None = None) -> Plan:
    """Read and validate the plan at ``path``; ``output`` overrides its ``output`` key.

    The output folder is ``output``, else the plan's ``output`` (relative to the current folder),
    else ``<plan name>-submission`` in the current folder.

    Raises:
        PlanError: the file is missing or not YAML, or a key is unknown or has a value not allowed.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PlanError(f"plan {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PlanError(f"plan {path}: unreadable ({e})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise PlanError(f"plan {path}{where}: not valid YAML ({problem})") from None
    read = _Reader(path.resolve())
    plan = read.mapping(data, "", PLAN_KEYS)
    for required in ("round", "division", "submitter", "systems"):
        if required not in plan:
            raise read.fail(required, "missing; a plan needs round, division, submitter and systems")
    round_name = read.choice(plan["round"], "round", tuple(rules.ROUNDS))
    division = read.choice(plan["division"], "division", DIVISIONS)
    submitter = read.name(plan["submitter"], "submitter")
    from abtf_ssd.submission.tree import DEFAULT_STATUS

    status = read.choice(plan.get("status", DEFAULT_STATUS), "status", STATUSES)
    execution_mode = read.choice(plan.get("execution_mode", "valid"), "execution_mode", rules.EXECUTION_MODES)
    if output is None:
        output = plan.get("output") or f"{path.stem}-submission"
        if not isinstance(output, str):
            raise read.fail("output", f"{output!r} is not allowed; allowed: a folder path")
    systems_value = plan["systems"]
    if not isinstance(systems_value, list) or not systems_value:
        raise read.fail("systems", "expected a non-empty list of systems (name, runs)")
    systems: dict[str, Path | None] = {}
    runs: list[PlannedRun] = []
    names: set[str] = set()
    for s, system_value in enumerate(systems_value):
        name, system_runs, sut_info = _read_system(read, system_value, f"systems[{s}]", execution_mode)
        if name in names:
            raise read.fail(f"systems[{s}].name", f"system {name!r} is planned twice")
        names.add(name)
        for run in system_runs:
            if any((r.system, r.scenario) == (run.system, run.scenario) for r in runs):
                raise read.fail(run.key, f"{run.system} {run.scenario} is planned twice")
            systems.setdefault(run.system, sut_info)
            runs.append(run)
    return Plan(
        path=path.resolve(),
        round=round_name,
        division=division,
        submitter=submitter,
        status=status,
        output=Path(output).expanduser().resolve(),
        systems=systems,
        runs=tuple(runs),
    )


def _read_system(
    read: _Reader, value: Any, key: str, execution_mode: str
) -> tuple[str, list[PlannedRun], Path | None]:
    """The system's name, its runs (one a scenario) and its system description file."""
    system = read.mapping(value, key, SYSTEM_KEYS)
    if "name" not in system or "runs" not in system:
        raise read.fail(key, "a system needs a name and runs")
    name = read.name(system["name"], f"{key}.name")
    sut_info = read.path(system["sut_info"], f"{key}.sut_info") if "sut_info" in system else None
    entries = system["runs"]
    if not isinstance(entries, list) or not entries:
        raise read.fail(
            f"{key}.runs", "expected a non-empty list of runs (framework, device, scenarios, source)"
        )
    expanded = []
    for r, entry in enumerate(entries):
        expanded += _read_runs(read, entry, f"{key}.runs[{r}]", execution_mode)
    # One system folder per (framework, device): a system running two stacks is two submission systems.
    stacks = {(run.framework, run.device) for run in expanded}
    if len(stacks) == 1:
        return name, [dataclasses.replace(run, system=name) for run in expanded], sut_info
    return (
        name,
        [
            dataclasses.replace(run, system=f"{name}-{run.framework}-{run.device.replace(':', '')}")
            for run in expanded
        ],
        sut_info,
    )


def _read_runs(read: _Reader, value: Any, key: str, execution_mode: str) -> list[PlannedRun]:
    """The runs of one entry (framework x device x scenarios); their system is set by the caller."""
    from abtf_ssd.model.backends import FRAMEWORKS

    entry = read.mapping(value, key, RUN_KEYS)
    for required in ("framework", "device", "scenarios", "source"):
        if required not in entry:
            raise read.fail(
                f"{key}.{required}", "missing; a run needs framework, device, scenarios and source"
            )
    frameworks = read.choices(entry["framework"], f"{key}.framework", FRAMEWORKS)
    devices = read.devices(entry["device"], f"{key}.device")
    scenarios = read.choices(entry["scenarios"], f"{key}.scenarios", SCENARIOS)
    if len(set(scenarios)) != len(scenarios):
        raise read.fail(f"{key}.scenarios", f"{scenarios} names a scenario twice")
    fields: dict[str, Any] = {
        "source": _read_source(read, entry["source"], f"{key}.source"),
        "execution_mode": read.choice(
            entry.get("execution_mode", execution_mode), f"{key}.execution_mode", rules.EXECUTION_MODES
        ),
    }
    for name in ("threads", "batch_size", "test_query_count"):
        if name in entry:
            fields[name] = read.positive(entry[name], f"{key}.{name}")
    for name in ("latency_ms", "target_qps"):
        if name in entry:
            fields[name] = float(read.positive(entry[name], f"{key}.{name}", float))
    if "user_conf" in entry:
        fields["user_conf"] = read.path(entry["user_conf"], f"{key}.user_conf")
    source = fields["source"]
    if source.kind == "local" and isinstance(source.model, dict):
        for framework in frameworks:
            if framework not in source.model:
                raise read.fail(
                    f"{key}.source.model", f"no model for framework {framework}; give one per framework"
                )
    return [
        PlannedRun(key, "", framework, device, scenario, **fields)
        for framework in frameworks
        for device in devices
        for scenario in scenarios
    ]


def _read_source(read: _Reader, value: Any, key: str) -> Source:
    if isinstance(value, str):
        value = {"kind": value}
    if not isinstance(value, dict) or "kind" not in value:
        raise read.fail(key, f"expected a kind ({', '.join(SOURCE_KINDS)}) or a mapping with 'kind'")
    kind = read.choice(value["kind"], f"{key}.kind", SOURCE_KINDS)
    source = read.mapping(value, key, SOURCE_KEYS[kind])
    if kind == "mlc":
        tool = read.choice(source.get("download_tool", TOOLS[0]), f"{key}.download_tool", TOOLS)
        folder = read.path(source["dir"], f"{key}.dir") if "dir" in source else None
        return Source(kind, download_tool=tool, dir=folder)
    if kind == "local":
        for required in ("model", "dataset"):
            if required not in source:
                raise read.fail(f"{key}.{required}", "missing; a local source needs model and dataset")
        model_value = source["model"]
        if isinstance(model_value, dict):
            from abtf_ssd.model.backends import FRAMEWORKS

            model: Path | dict[str, Path] = {
                read.choice(framework, f"{key}.model", FRAMEWORKS): read.path(
                    path, f"{key}.model.{framework}"
                )
                for framework, path in model_value.items()
            }
        else:
            model = read.path(model_value, f"{key}.model")
        return Source(kind, model=model, dataset=read.path(source["dataset"], f"{key}.dataset"))
    frames = read.positive(source["frames"], f"{key}.frames") if "frames" in source else None
    if "seed" in source and (isinstance(source["seed"], bool) or not isinstance(source["seed"], int)):
        raise read.fail(f"{key}.seed", f"{source['seed']!r} is not allowed; allowed: an integer")
    return Source(kind, frames=frames, seed=source.get("seed"))


def plan_steps(plan: Plan) -> list[Step]:
    """Every LoadGen run of the plan, in the order they run."""
    steps = []
    for run in plan.runs:
        if run.execution_mode == "valid" and run.latency_ms is None:
            steps.append(Step(run, FIND_PERFORMANCE))
        steps += [Step(run, PERFORMANCE), Step(run, ACCURACY)]
        if plan.division == "closed":
            steps.append(Step(run, COMPLIANCE_TEST))
    return steps


# ---------------------------------------------------------------------------------------------
# Sources


@dataclass(frozen=True)
class Resolved:
    """A run's model file and preprocessed dataset."""

    model: Path
    dataset: Path
    config_name: str | None


def _synthetic_folder(plan: Plan, source: Source) -> Path:
    frames = source.frames if source.frames is not None else _generate_default("frames")
    seed = source.seed if source.seed is not None else _generate_default("seed")
    return plan.output / SOURCES_DIR_NAME / f"synthetic-frames{frames}-seed{seed}"


def _generate_default(name: str) -> Any:
    """A default of :func:`abtf_ssd.data.synth.generate` (the synthetic set's own, stated there only)."""
    from abtf_ssd.data import synth

    return inspect.signature(synth.generate).parameters[name].default


def _model_suffix(framework: str) -> str:
    from abtf_ssd.submission.sysinfo import MODEL_SUFFIXES

    return MODEL_SUFFIXES[framework][0]


def resolve_source(plan: Plan, run: PlannedRun, build: bool) -> Resolved | None:
    """The model and dataset of ``run``; ``build`` makes or downloads them (each resumes), else
    None when they are not there yet."""
    from abtf_ssd.config import BENCHMARK_CONFIG, DEMO_CONFIG
    from abtf_ssd.submission.sysinfo import MODEL_FORMAT_OF_FRAMEWORK

    source = run.source
    if source.kind == "local":
        model = source.model[run.framework] if isinstance(source.model, dict) else source.model
        assert model is not None and source.dataset is not None
        return Resolved(model, source.dataset, None)
    if source.kind == "synthetic":
        folder = _synthetic_folder(plan, source)
        dataset = folder / "val"
        model = folder / f"ssd_demo{_model_suffix(run.framework)}"
        if not build:
            from abtf_ssd.data.preprocess import read_manifest

            ready = dataset.is_dir() and read_manifest(dataset) is not None and model.is_file()
            return Resolved(model, dataset, DEMO_CONFIG) if ready else None
        _build_synthetic(source, folder, dataset)
        if not model.is_file():
            from abtf_ssd.model.export import export_model
            from abtf_ssd.model.ssd import DEMO_WEIGHTS

            export_model(
                DEMO_CONFIG,
                model,
                checkpoint=DEMO_WEIGHTS,
                model_format=MODEL_FORMAT_OF_FRAMEWORK[run.framework],
            )
        return Resolved(model, dataset, DEMO_CONFIG)
    folder = source.dir or plan.output / SOURCES_DIR_NAME / "mlc"
    record = folder / f"fetched-{run.framework}.json"
    if not build:
        if not record.is_file():
            return None
        paths = json.loads(record.read_text(encoding="utf-8"))
        return Resolved(Path(paths["model"]), Path(paths["dataset"]), BENCHMARK_CONFIG)
    from abtf_ssd.data import download

    interactive = sys.stdin.isatty()
    dataset = download.fetch_dataset(
        "validation", folder / "dataset", source.download_tool, interactive=interactive
    )
    model_format = MODEL_FORMAT_OF_FRAMEWORK[run.framework]
    model = download.fetch_model(
        model_format, folder / f"model-{model_format}", source.download_tool, interactive=interactive
    )
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(record, {"model": str(model), "dataset": str(dataset)})
    return Resolved(Path(model), Path(dataset), BENCHMARK_CONFIG)


def _build_synthetic(source: Source, folder: Path, dataset: Path) -> None:
    from abtf_ssd.config import DEMO_CONFIG
    from abtf_ssd.data.preprocess import build_preprocessed, read_manifest
    from abtf_ssd.data.synth import SPLIT_FILES, generate

    if dataset.is_dir() and read_manifest(dataset) is not None:
        return
    options = {
        name: value for name, value in (("frames", source.frames), ("seed", source.seed)) if value is not None
    }
    raw = generate(folder / "raw", calibration_frames=0, workers=1, **options)
    build_preprocessed(
        raw,
        raw / SPLIT_FILES["validation"],
        dataset,
        SPLIT_PREFIXES["validation"],
        DEMO_CONFIG,
        workers=1,
        progress=False,
    )


# ---------------------------------------------------------------------------------------------
# Identity


_SHA256_OF: dict[tuple[str, int, int], str] = {}


def sha256_of(path: Path) -> str:
    """sha256 of a file, remembered for this process while its size and mtime stay the same (a
    plan hashes the same model before each of its runs)."""
    from abtf_ssd.submission.checker import sha256_file

    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA256_OF:
        _SHA256_OF[key] = sha256_file(path)
    return _SHA256_OF[key]


def dataset_identity(dataset: Path) -> dict[str, Any]:
    """What the samples are, without reading 600 GB: the manifest's hash where preprocessing or a
    store conversion wrote one, else (an official download) the folder, its sample count and bytes."""
    from abtf_ssd.data.metric import count_samples
    from abtf_ssd.data.preprocess import MANIFEST_NAME
    from abtf_ssd.data.store import STORE_MANIFEST

    count = count_samples(dataset)
    for name in (MANIFEST_NAME, STORE_MANIFEST):
        if (dataset / name).is_file():
            return {"samples": count, "manifest": name, "manifest_sha256": sha256_of(dataset / name)}
    total = sum(p.stat().st_size for p in dataset.iterdir() if p.is_file())
    return {"samples": count, "folder": str(dataset.resolve()), "bytes": total}


def run_options(plan: Plan, step: Step, resolved: Resolved) -> RunOptions:
    """The harness options of ``step``."""
    run = step.run
    options = RunOptions(
        dataset_dir=resolved.dataset,
        model_path=resolved.model,
        framework=run.framework,
        device=run.device,
        config_name=resolved.config_name,
        scenario=run.scenario,
        mode=step.mode,
        round=plan.round,
        execution_mode=run.execution_mode,
        batch_size=run.batch_size,
        threads=run.threads,
        results_dir=plan.results_dir,
        system_name=run.system,
        user_conf=run.user_conf,
        expected_latency_ns=round(run.latency_ms * 1e6) if run.latency_ms is not None else None,
        target_qps=run.target_qps,
    )
    if run.test_query_count is not None:
        options = dataclasses.replace(options, test_query_count=run.test_query_count)
    return options


def step_folder(plan: Plan, step: Step) -> Path:
    """The folder the harness writes ``step`` into (known without its source)."""
    options = RunOptions(
        dataset_dir="",
        scenario=step.run.scenario,
        mode=step.mode,
        results_dir=plan.results_dir,
        system_name=step.run.system,
        # Any audit config puts the run in the compliance folder; which one does not matter here.
        audit_config=COMPLIANCE_TEST if step.kind == COMPLIANCE_TEST else None,
    )
    return output_dir(options)


def step_identity(plan: Plan, step: Step, resolved: Resolved, loadgen_kind: str) -> dict[str, Any]:
    """Everything that makes a step's result what it is; a finished step with the same identity is kept."""
    from abtf_ssd.loadgen.harness import stored_expected_latency, stored_target_qps

    run = step.run
    options = run_options(plan, step, resolved)
    expected = options.expected_latency_ns
    if expected is None and step.mode == PERFORMANCE:
        expected = stored_expected_latency(options)
    target_qps = None
    if run.scenario == "ConstantStream" and step.kind != FIND_PERFORMANCE:
        target_qps = options.target_qps or stored_target_qps(options)
    return {
        "round": plan.round,
        "system": run.system,
        "scenario": run.scenario,
        "mode": step.kind,
        "framework": run.framework,
        "device": run.device,
        "execution_mode": run.execution_mode,
        "model_sha256": sha256_of(resolved.model),
        "dataset": dataset_identity(resolved.dataset),
        "loadgen": loadgen_kind,
        "settings": {
            "config": resolved.config_name,
            "threads": run.threads,
            "batch_size": run.batch_size,
            "test_query_count": options.test_query_count
            if run.execution_mode == "test" or step.kind == FIND_PERFORMANCE
            else None,
            "user_conf_sha256": sha256_of(run.user_conf) if run.user_conf else None,
            "expected_latency_ns": expected,
            "target_qps": target_qps,
        },
    }


def read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        marker = json.loads((folder / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def finished(marker: dict[str, Any] | None, identity: dict[str, Any]) -> bool:
    """A step to skip: same identity, finished; VALID too for a valid-mode performance run."""
    if marker is None or marker.get("identity") != identity:
        return False
    if identity["execution_mode"] == "valid" and identity["mode"] in (PERFORMANCE, COMPLIANCE_TEST):
        return marker.get("result") == "VALID"
    return True


def identity_changes(marker: dict[str, Any] | None, identity: dict[str, Any]) -> list[str]:
    """The identity keys that differ from the marker's (``settings.threads``, ``model_sha256``...)."""
    if marker is None:
        return []
    old = marker.get("identity") or {}
    changed = []
    for key in sorted(set(old) | set(identity)):
        if isinstance(identity.get(key), dict) and isinstance(old.get(key), dict):
            changed += [
                f"{key}.{k}"
                for k in sorted(set(old[key]) | set(identity[key]))
                if old[key].get(k) != identity[key].get(k)
            ]
        elif old.get(key) != identity.get(key):
            changed.append(key)
    return changed


# ---------------------------------------------------------------------------------------------
# Estimate


@dataclass(frozen=True)
class StepEstimate:
    step: Step
    queries: int
    seconds: float | None
    """None when no latency is known."""


@dataclass(frozen=True)
class Latency:
    ms: float | None
    source: str


def dataset_samples(plan: Plan, run: PlannedRun) -> int:
    """Samples of the run's dataset: the synthetic frames, a local folder's, else the official split's."""
    if run.source.kind == "synthetic":
        return run.source.frames if run.source.frames is not None else _generate_default("frames")
    if run.source.kind == "local" and run.source.dataset is not None and run.source.dataset.is_dir():
        from abtf_ssd.data.metric import count_samples

        return count_samples(run.source.dataset)
    return len(read_split(official_split("validation")))


def run_latency(plan: Plan, run: PlannedRun, latency_ms: float | None = None) -> Latency:
    """The latency a run's estimate uses: given, the plan's, a cached find-performance result, or a
    finished performance run's measured mean; ``Latency(None, ...)`` when none is known."""
    if latency_ms is not None:
        return Latency(latency_ms, "--latency-ms")
    if run.latency_ms is not None:
        return Latency(run.latency_ms, "plan latency_ms")
    from abtf_ssd.loadgen.harness import stored_expected_latency

    stored = _stored(plan, run, stored_expected_latency)
    if stored is not None:
        return Latency(stored / 1e6, "find-performance")
    results = step_folder(plan, Step(run, PERFORMANCE)) / RESULTS_JSON
    try:
        mean = json.loads(results.read_text(encoding="utf-8"))["summary"]["mean_ms"]
    except (OSError, ValueError, KeyError, TypeError):
        mean = None
    if isinstance(mean, (int, float)) and mean > 0:
        return Latency(float(mean), "measured")
    return Latency(None, "unknown")


def _stored(plan: Plan, run: PlannedRun, reader: Callable[[RunOptions], float | None]) -> float | None:
    """What a find-performance run stored for ``run``'s system and scenario (``reader``: the harness's
    ``stored_expected_latency`` or ``stored_target_qps``); None when nothing or something unreadable."""
    options = RunOptions(
        dataset_dir="", scenario=run.scenario, results_dir=plan.results_dir, system_name=run.system
    )
    try:
        return reader(options)
    except ValueError:
        return None


def constant_stream_qps(plan: Plan, run: PlannedRun, latency_ms: float | None) -> float:
    """The rate a ConstantStream run issues queries at: the plan's ``target_qps``, else the one a
    find-performance run stored, else the one find-performance will find at ``latency_ms`` (valid
    mode: the highest rate within the round's latency bound), else the round's."""
    from abtf_ssd.loadgen.harness import stored_target_qps

    constant = rules.get_round(plan.round).constant_stream
    if run.target_qps is not None:
        return run.target_qps
    stored = _stored(plan, run, stored_target_qps)
    if stored is not None:
        return stored
    finds_rate = run.execution_mode == "valid" and run.latency_ms is None
    if finds_rate and latency_ms is not None:
        return constant.target_qps_within_bound(latency_ms * 1e6)
    return constant.target_qps


def step_queries(plan: Plan, step: Step, latency_ms: float | None = None) -> int:
    """Queries LoadGen issues in ``step``. A valid performance run issues them until both the round's
    query count and minimum duration are reached: more than the count when a query takes less than
    the duration over the count (SingleStream, needs ``latency_ms``) or when the ConstantStream rate
    fills the duration with more."""
    run = step.run
    test_queries = run.test_query_count or RunOptions.test_query_count
    if step.kind == FIND_PERFORMANCE:
        return test_queries
    if step.kind == ACCURACY:
        samples = dataset_samples(plan, run)
        return min(samples, test_queries) if run.execution_mode == "test" else samples
    if run.execution_mode == "test":
        return test_queries
    latency = _latency_rules(plan, run)
    if run.scenario == "ConstantStream":
        qps = constant_stream_qps(plan, run, latency_ms)
        return max(latency.min_query_count, math.ceil(latency.min_duration_ms / 1000 * qps))
    if latency_ms is None:
        return latency.min_query_count
    return max(latency.min_query_count, math.ceil(latency.min_duration_ms / latency_ms))


def _latency_rules(plan: Plan, run: PlannedRun) -> rules.LatencyRules:
    round_rules = rules.get_round(plan.round)
    return round_rules.constant_stream if run.scenario == "ConstantStream" else round_rules.single_stream


def step_seconds(plan: Plan, step: Step, latency_ms: float) -> float:
    """Wall time of ``step`` at ``latency_ms`` a query, for a SUT that answers one query at a time:
    ConstantStream issues queries at its rate (:func:`constant_stream_qps`; a SUT slower than that
    takes a latency a query), and a valid performance run lasts at least the round's minimum duration."""
    run = step.run
    queries = step_queries(plan, step, latency_ms)
    seconds = queries * latency_ms / 1000
    if run.scenario == "ConstantStream" and step.kind != FIND_PERFORMANCE:
        seconds = max(seconds, queries / constant_stream_qps(plan, run, latency_ms))
    if run.execution_mode == "valid" and step.kind in (PERFORMANCE, COMPLIANCE_TEST):
        seconds = max(seconds, _latency_rules(plan, run).min_duration_ms / 1000)
    return seconds


def estimate(
    plan: Plan, latency_ms: float | None = None, steps: list[Step] | None = None
) -> list[StepEstimate]:
    """Queries and seconds of each step (all of the plan's, or ``steps``)."""
    estimates = []
    latencies: dict[str, Latency] = {}
    for step in steps if steps is not None else plan_steps(plan):
        if step.run.label not in latencies:
            latencies[step.run.label] = run_latency(plan, step.run, latency_ms)
        latency = latencies[step.run.label].ms
        seconds = step_seconds(plan, step, latency) if latency is not None else None
        estimates.append(StepEstimate(step, step_queries(plan, step, latency), seconds))
    return estimates


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def format_estimate(plan: Plan, estimates: list[StepEstimate], latency_ms: float | None = None) -> str:
    """The table ``abtf-ssd plan estimate`` prints: a line a step, the total in hours."""
    rows = [("run", "latency", "queries", "time", "hours")]
    for item in estimates:
        latency = run_latency(plan, item.step.run, latency_ms)
        latency_text = f"{latency.ms:g} ms ({latency.source})" if latency.ms is not None else "unknown"
        hours = f"{item.seconds / 3600:.2f}" if item.seconds is not None else "?"
        rows.append((item.step.label, latency_text, str(item.queries), format_duration(item.seconds), hours))
    known = [e.seconds for e in estimates if e.seconds is not None]
    unknown = len(estimates) - len(known)
    total = sum(known)
    rows.append(
        ("total", "", str(sum(e.queries for e in estimates)), format_duration(total), f"{total / 3600:.2f}")
    )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    if unknown:
        lines.append(
            f"{unknown} run(s) without a known latency are not in the total: give --latency-ms, "
            "latency_ms in the plan, or run find-performance first"
        )
    return "\n".join(lines)


def total_hours(estimates: list[StepEstimate]) -> float | None:
    """Hours of all the steps; None if any step's latency is unknown."""
    if any(e.seconds is None for e in estimates):
        return None
    return sum(e.seconds or 0.0 for e in estimates) / 3600


# ---------------------------------------------------------------------------------------------
# Progress


class Progress:
    """Runs done/remaining, the current run's queries and an ETA: on a terminal a line redrawn every
    :data:`TTY_PROGRESS_INTERVAL_S`, else one line every :data:`PROGRESS_INTERVAL_S`."""

    def __init__(
        self, total: int, done: int, stream: TextIO | None = None, interval_s: float | None = None
    ) -> None:
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.interval_s = interval_s or (TTY_PROGRESS_INTERVAL_S if self.tty else PROGRESS_INTERVAL_S)
        self.total, self.done = total, done
        self.current: str | None = None
        self.expected_queries = 0
        self.answered = -1  # the harness's warm-up inference is the first call
        self.step_started = time.monotonic()
        self.later_seconds = 0.0
        self.later_unknown_queries = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.tty:
            self.stream.write("\n")

    def start(self, label: str, queries: int, later: list[StepEstimate]) -> None:
        """A run starts; ``later``: the estimates of the runs after it (those without a latency are
        counted at the current run's pace)."""
        self.current, self.expected_queries, self.answered = label, queries, -1
        self.later_seconds = sum(e.seconds for e in later if e.seconds is not None)
        self.later_unknown_queries = sum(e.queries for e in later if e.seconds is None)
        self.step_started = time.monotonic()
        self.say(f"[plan] run {self.done + 1}/{self.total}: {label} ({queries} queries)")

    def answered_samples(self, count: int) -> None:
        self.answered += count if self.answered >= 0 else 1

    def finish(self) -> None:
        self.done += 1
        self.current = None

    def line(self) -> str:
        text = f"[plan] runs done {self.done}/{self.total}, {self.total - self.done} left"
        if self.current is None:
            return text
        answered = max(0, self.answered)
        text += f" | {self.current}: {answered}/{self.expected_queries} queries"
        elapsed = time.monotonic() - self.step_started
        if answered:
            pace = elapsed / answered
            queries_left = max(0, self.expected_queries - answered) + self.later_unknown_queries
            text += f" | ETA {format_duration(queries_left * pace + self.later_seconds)}"
        return text

    def say(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
        self.stream.write(text + "\n")
        self.stream.flush()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            if self.tty:
                self.stream.write("\r\033[K" + self.line())
            else:
                self.stream.write(self.line() + "\n")
            self.stream.flush()


class _CountingBackend:
    """A backend that tells :class:`Progress` how many samples it answered."""

    def __init__(self, inner: Any, on_samples: Callable[[int], None]) -> None:
        self._inner = inner
        self._on_samples = on_samples

    def predict(self, batch: Any) -> Any:
        result = self._inner.predict(batch)
        self._on_samples(len(batch))
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


# ---------------------------------------------------------------------------------------------
# Running a plan


@dataclass
class RowSummary:
    system: str
    scenario: str
    metric: str | None = None
    """The round's metric of the scenario with its unit (``581.000 ms``, ``14.2 samples/s``)."""
    map: float | None = None
    result: str | None = None
    verdict: str = ""


@dataclass
class PlanOutcome:
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    rows: list[RowSummary] = field(default_factory=list)
    checker_errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    official: str | None = None
    tarball: Path | None = None
    tarball_sha256: str | None = None

    @property
    def ok(self) -> bool:
        return not self.failed and not self.checker_errors and self.tarball is not None


def preflight(plan: Plan, max_hours: float | None = None, latency_ms: float | None = None) -> str:
    """Refuse, before anything is written, a plan that cannot run here or would take too long.

    Returns the LoadGen kind installed (``automotive`` | ``inference``).
    """
    from abtf_ssd.loadgen.build import installed_loadgen_kind
    from abtf_ssd.submission.sysinfo import run_problem

    if max_hours is not None:
        left = [s for s in plan_steps(plan) if not _step_done_on_disk(plan, s)]
        hours = total_hours(estimate(plan, latency_ms, left))
        if hours is None:
            raise PlanError(
                f"plan {plan.path}: --max-hours needs a latency for every run left: give --latency-ms "
                "or latency_ms in the plan (abtf-ssd plan estimate shows which are unknown)"
            )
        if hours > max_hours:
            raise PlanError(
                f"plan {plan.path}: estimated {hours:.1f} h for the runs left, over --max-hours "
                f"{max_hours:g}; see abtf-ssd plan estimate"
            )
    kind = installed_loadgen_kind()
    if plan.division == "closed" and kind != "automotive":
        raise PlanError(
            f"plan {plan.path}: division: closed needs the automotive LoadGen, this environment has the "
            f"inference one: {rules.AUTOMOTIVE_LOADGEN_HINT}; or plan the open division"
        )
    for run in plan.runs:
        problem = run_problem(run.framework, run.device)
        if problem:
            raise PlanError(f"plan {plan.path}: {run.key}: {run.framework} on {run.device}: {problem}")
        try:
            rules.loadgen_scenario(run.scenario)
            if run.user_conf is not None:
                rules.check_user_conf(run.user_conf)
        except rules.RulesError as e:
            raise PlanError(f"plan {plan.path}: {run.key}: {e}") from None
        if run.source.kind == "local":
            model = (
                run.source.model[run.framework] if isinstance(run.source.model, dict) else run.source.model
            )
            for what, path in (("model", model), ("dataset", run.source.dataset)):
                if path is None or not path.exists():
                    raise PlanError(f"plan {plan.path}: {run.key}.source.{what}: {path} does not exist")
            problem = run_problem(run.framework, run.device, str(model))
            if problem:
                raise PlanError(f"plan {plan.path}: {run.key}.source.model: {problem}")
    return kind


def _step_done_on_disk(plan: Plan, step: Step) -> bool:
    """Whether a marker says the step finished (identity unchecked: for the estimate of what is left)."""
    marker = read_marker(step_folder(plan, step))
    return marker is not None and finished(marker, marker.get("identity") or {})


def run_plan(
    plan: Plan,
    max_hours: float | None = None,
    latency_ms: float | None = None,
    official_tools: str | Path | None = None,
    stream: TextIO | None = None,
    progress_interval_s: float | None = None,
) -> PlanOutcome:
    """Run every step not finished yet, then build, check and pack the submission.

    Raises:
        PlanError: the plan cannot run here, or is estimated over ``max_hours`` (nothing written).
        abtf_ssd.loadgen.harness.RunInterrupted: CTRL-C (exit status 130); finished steps are kept.
    """
    stream = stream or sys.stdout
    loadgen_kind = preflight(plan, max_hours, latency_ms)
    if official_tools is not None:
        from abtf_ssd.submission.official import check_tools

        official_tools = check_tools(official_tools)  # refused before anything runs
    plan.output.mkdir(parents=True, exist_ok=True)

    def busy() -> Exception:
        return PlanError(f"{plan.output}: another plan runner is using this folder")

    with exclusive_lock(plan.output / LOCK_NAME, busy):
        from abtf_ssd.submission.tree import tarball_path

        # The tarball of an earlier run stands for earlier results: made again only once all passes.
        tarball_path(plan.submission_dir).unlink(missing_ok=True)
        outcome = PlanOutcome()
        try:
            _run_steps(plan, loadgen_kind, latency_ms, outcome, stream, progress_interval_s)
            if not outcome.failed:
                _finish(plan, outcome, official_tools, stream)
        except (KeyboardInterrupt, SystemExit) as stop:
            print(
                f"[plan] interrupted: finished runs are kept; rerun to resume: {_rerun_hint(plan)}",
                file=sys.stderr,
            )
            if isinstance(stop, SystemExit):
                raise
            from abtf_ssd.loadgen.harness import EXIT_INTERRUPTED

            raise SystemExit(EXIT_INTERRUPTED) from None
        if outcome.failed:
            for label, error in outcome.failed.items():
                print(f"[plan] FAILED {label}: {error}", file=stream)
            print(
                "[plan] no submission built: fix the failed runs and rerun (finished runs are kept)",
                file=stream,
            )
    return outcome


def _rerun_hint(plan: Plan) -> str:
    return f"abtf-ssd plan run {plan.path} --output {plan.output}"


def _run_steps(
    plan: Plan,
    loadgen_kind: str,
    latency_ms: float | None,
    outcome: PlanOutcome,
    stream: TextIO,
    progress_interval_s: float | None,
) -> None:
    from abtf_ssd.loadgen.harness import RunFailedError, run_benchmark
    from abtf_ssd.model.backends import create_backend
    from abtf_ssd.submission.sysinfo import SUT_INFO_NAME, write_sut_info

    steps = plan_steps(plan)
    with Progress(len(steps), 0, stream, progress_interval_s) as progress:
        backends: dict[tuple[Any, ...], Any] = {}
        sources: dict[tuple[str, str], Resolved | None] = {}
        for index, step in enumerate(steps):
            run = step.run
            if run.label in outcome.failed:
                progress.finish()
                continue
            try:
                if (run.key, run.framework) not in sources:
                    sources[(run.key, run.framework)] = resolve_source(plan, run, build=True)
                resolved = sources[(run.key, run.framework)]
                assert resolved is not None
                identity = step_identity(plan, step, resolved, loadgen_kind)
                folder = step_folder(plan, step)
                marker = read_marker(folder)
                if finished(marker, identity):
                    outcome.skipped.append(step.label)
                    progress.say(f"[plan] run {index + 1}/{len(steps)}: {step.label}: finished before, kept")
                    progress.finish()
                    continue
                changes = identity_changes(marker, identity)
                if changes:
                    progress.say(f"[plan] {step.label}: runs again ({', '.join(changes)} changed)")
                sut_info = plan.results_dir / run.system / SUT_INFO_NAME
                if not sut_info.is_file():
                    sut_info.parent.mkdir(parents=True, exist_ok=True)
                    write_sut_info(sut_info, run.framework, run.device)
                later = estimate(plan, latency_ms, steps[index + 1 :])
                latency = run_latency(plan, run, latency_ms).ms
                progress.start(step.label, step_queries(plan, step, latency), later)
                # Removed first: a step killed from here on has no marker and runs again.
                (folder / MARKER_NAME).unlink(missing_ok=True)
                options = run_options(plan, step, resolved)
                backend_key = (
                    run.framework,
                    str(resolved.model),
                    run.device,
                    run.threads,
                    resolved.config_name,
                )
                if backend_key not in backends:
                    backends.clear()
                    backends[backend_key] = create_backend(*backend_key)
                backend = _CountingBackend(backends[backend_key], progress.answered_samples)
                with tempfile.TemporaryDirectory(prefix="abtf-plan-audit-") as audit_dir:
                    if step.kind == COMPLIANCE_TEST:
                        audit = Path(audit_dir) / "audit.config"
                        audit.write_text(
                            rules.audit_config_text(plan.round, COMPLIANCE_TEST), encoding="utf-8"
                        )
                        options = dataclasses.replace(options, audit_config=audit)
                    options = dataclasses.replace(options, command=f"{_rerun_hint(plan)}  # {step.label}")
                    result = run_benchmark(options, backend)
                if not result.ok:
                    raise RunFailedError(result.failure_message(), result)
                atomic_write_json(
                    folder / MARKER_NAME,
                    {
                        "identity": identity,
                        "result": result.summary.result,
                        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    },
                )
                outcome.ran.append(step.label)
                progress.finish()
                verdict = f" ({result.summary.result})" if result.summary.result else ""
                progress.say(f"[plan] {step.label}: done{verdict}")
            except (ValueError, OSError, RuntimeError) as error:
                # This run's later steps are skipped; the other runs go on.
                outcome.failed[run.label] = f"{step.kind}: {error}"
                progress.finish()
                progress.say(f"[plan] {step.label}: FAILED: {error}")


def _finish(plan: Plan, outcome: PlanOutcome, official_tools: str | Path | None, stream: TextIO) -> None:
    """The submission tree for every system, our checker, the official one if given, the tarball."""
    from abtf_ssd.submission.tree import (
        SubmissionCheckError,
        SubmissionError,
        checker,
        generate_submission,
        make_tarball,
    )

    staging = plan.output / ".submission-new"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    tree = staging / SUBMISSION_DIR_NAME
    tree.mkdir()
    for system, sut_info in plan.systems.items():
        try:
            generate_submission(
                plan.results_dir,
                tree,
                plan.submitter,
                plan.division,
                system,
                status=plan.status,
                sut_info=sut_info,
                allow_test_mode=plan.test_mode,
                version=plan.round,
                official_tools=official_tools,
            )
        except SubmissionCheckError:
            pass  # the tree is kept; the checker below names every error
        except SubmissionError as e:
            outcome.checker_errors.append(f"{system}: {e}")
    if plan.submission_dir.exists():
        shutil.rmtree(plan.submission_dir)
    tree.rename(plan.submission_dir)
    shutil.rmtree(staging, ignore_errors=True)
    report = checker.run_checks(plan.submission_dir, plan.round, plan.test_mode)
    outcome.checker_errors += [str(e) for e in report.errors]
    outcome.warnings = [str(w) for w in getattr(report, "warnings", [])]
    official_ok = True
    if official_tools is not None:
        official_ok, outcome.official = _official_check(plan, Path(official_tools))
    outcome.rows = summary_rows(plan, [str(e) for e in report.errors])
    # A test-mode tree never passes the official checker (its runs are short): reported, not a gate.
    if not outcome.checker_errors and (official_ok or plan.test_mode):
        outcome.tarball = make_tarball(plan.submission_dir)
        outcome.tarball_sha256 = checker.sha256_file(outcome.tarball)
    _write_summary(plan, outcome)
    print(format_summary(plan, outcome), file=stream)


def _official_check(plan: Plan, tools: Path) -> tuple[bool, str]:
    """The round's official submission checker on the tree: (passed, what it said in a line)."""
    from abtf_ssd.submission.official import run_submission_checker

    verdict = run_submission_checker(tools, plan.submission_dir, plan.round)
    if verdict.passed:
        return True, "passes"
    first = f": {verdict.errors[0]}" if verdict.errors else ""
    return False, f"FAILS (exit status {verdict.returncode}, {len(verdict.errors)} error(s){first})"


def summary_rows(plan: Plan, checker_errors: list[str]) -> list[RowSummary]:
    """A row per system and scenario from the results on disk."""
    rows = []
    for run in plan.runs:
        row = RowSummary(run.system, run.scenario)
        performance = _results_json(step_folder(plan, Step(run, PERFORMANCE)))
        accuracy = _results_json(step_folder(plan, Step(run, ACCURACY)))
        summary = performance.get("summary") or {}
        row.metric = _metric(plan, run)
        row.result = summary.get("result")
        row.map = (accuracy.get("accuracy") or {}).get("mAP")
        folder = f"/results/{run.system}/ssd/{run.scenario}"
        errors = [e for e in checker_errors if folder in e]
        row.verdict = "pass" if not errors else f"{len(errors)} error(s)"
        rows.append(row)
    return rows


def _metric(plan: Plan, run: PlannedRun) -> str | None:
    """The metric the round reports for the run's scenario, read from its performance detail log."""
    from abtf_ssd.loadgen.report import LogFormatError, format_metric
    from abtf_ssd.submission.checker import read_detail

    key = rules.get_round(plan.round).metric(run.scenario)
    try:
        values, _ = read_detail(step_folder(plan, Step(run, PERFORMANCE)) / DETAIL_LOG)
    except (OSError, ValueError, LogFormatError):
        return None
    return format_metric(key, values[key]) if values.get(key) is not None else None


def _results_json(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / RESULTS_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def format_summary(plan: Plan, outcome: PlanOutcome) -> str:
    rows = [("system", "scenario", "metric", "mAP", "LoadGen", "checker")]
    for row in outcome.rows:
        rows.append(
            (
                row.system,
                row.scenario,
                row.metric or "-",
                f"{row.map:.4f}" if row.map is not None else "-",
                row.result or "-",
                row.verdict,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in rows]
    lines.append(f"runs: {len(outcome.ran)} ran, {len(outcome.skipped)} kept from before")
    if plan.test_mode:
        lines.append("test mode: the checker relaxed the rules a short run cannot meet (not a valid result)")
    lines += [f"checker: warning {w}" for w in outcome.warnings]
    lines += [f"checker: ERROR {e}" for e in outcome.checker_errors]
    lines.append(f"submission tree: {plan.submission_dir}")
    if outcome.official is not None:
        lines.append(f"official checker: {outcome.official}")
    if outcome.tarball is not None:
        lines.append(f"tarball: {outcome.tarball} sha256 {outcome.tarball_sha256}")
    else:
        lines.append("no tarball: the submission fails the checks above")
    return "\n".join(lines)


def _write_summary(plan: Plan, outcome: PlanOutcome) -> None:
    atomic_write_json(
        plan.output / SUMMARY_NAME,
        {
            "plan": str(plan.path),
            "rows": [dataclasses.asdict(row) for row in outcome.rows],
            "ran": outcome.ran,
            "kept": outcome.skipped,
            "checker_errors": outcome.checker_errors,
            "checker_warnings": outcome.warnings,
            "official_checker": outcome.official,
            "tarball": str(outcome.tarball) if outcome.tarball else None,
            "tarball_sha256": outcome.tarball_sha256,
            "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )


# ---------------------------------------------------------------------------------------------
# Status


@dataclass(frozen=True)
class StepStatus:
    step: Step
    state: str
    """``done``, ``changed`` (done with another identity), ``interrupted``, ``failed``, ``pending``."""
    detail: str = ""


def plan_status(plan: Plan) -> list[StepStatus]:
    """What the disk says of each step; reads files only (model hashes included), runs nothing."""
    from abtf_ssd.loadgen.build import installed_loadgen_kind

    kind = installed_loadgen_kind()
    statuses = []
    for step in plan_steps(plan):
        folder = step_folder(plan, step)
        marker = read_marker(folder)
        resolved = resolve_source(plan, step.run, build=False)
        identity = None
        if marker is not None and resolved is not None:
            try:
                identity = step_identity(plan, step, resolved, kind)
            except (OSError, ValueError):
                identity = None  # the model or dataset is gone: nothing to compare with
        if marker is not None and identity is not None:
            if finished(marker, identity):
                verdict = marker.get("result")
                statuses.append(StepStatus(step, "done", f"LoadGen {verdict}" if verdict else ""))
                continue
            changes = identity_changes(marker, identity)
            if changes:
                statuses.append(StepStatus(step, "changed", ", ".join(changes) + " changed: runs again"))
                continue
            statuses.append(StepStatus(step, "pending", f"finished {marker.get('result')}: runs again"))
            continue
        if marker is not None and _step_done_on_disk(plan, step):
            statuses.append(StepStatus(step, "done", "the model or dataset is not there to verify it"))
            continue
        results = _results_json(folder)
        state = results.get("status")
        if state in ("interrupted", "failed"):
            statuses.append(StepStatus(step, state, "runs again from the start"))
        elif (folder / DETAIL_LOG).is_file():
            statuses.append(
                StepStatus(step, "interrupted", "unfinished (no marker): runs again from the start")
            )
        else:
            statuses.append(StepStatus(step, "pending"))
    return statuses


def format_status(plan: Plan, statuses: list[StepStatus], latency_ms: float | None = None) -> str:
    left = [s.step for s in statuses if s.state != "done"]
    lines = [f"plan {plan.path} -> {plan.output}"]
    for status in statuses:
        detail = f" ({status.detail})" if status.detail else ""
        lines.append(f"  {status.state:<11} {status.step.label}{detail}")
    done = len(statuses) - len(left)
    hours = total_hours(estimate(plan, latency_ms, left))
    hours_text = f"{hours:.2f} h estimated" if hours is not None else "time unknown (no latency for some)"
    lines.append(f"runs done {done}/{len(statuses)}; left {len(left)}: {hours_text}")
    summary = plan.output / SUMMARY_NAME
    tarball_line = "submission: not built yet"
    if summary.is_file():
        data = json.loads(summary.read_text(encoding="utf-8"))
        if data.get("tarball") and Path(data["tarball"]).is_file():
            tarball_line = f"submission: {data['tarball']} sha256 {data['tarball_sha256']}"
            if left:
                tarball_line += " (older than the runs left)"
        elif data.get("checker_errors"):
            tarball_line = f"submission: checker found {len(data['checker_errors'])} error(s), no tarball"
    lines.append(tarball_line)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Entry point of ``abtf-ssd plan``


ACTIONS = ("run", "status", "estimate")


def main_action(
    action: str,
    plan_file: str,
    output: str | None = None,
    max_hours: float | None = None,
    latency_ms: float | None = None,
    official_tools: str | None = None,
    stream: TextIO | None = None,
) -> None:
    """``abtf-ssd plan run|status|estimate <plan>``.

    Raises:
        PlanError: a malformed plan, a bad flag, a plan that cannot run here or is over ``max_hours``.
        RuntimeError: the plan ran, but runs failed or the checker found errors (printed above).
    """
    stream = stream or sys.stdout
    if action not in ACTIONS:
        raise PlanError(f"unknown action {action!r}; allowed: {', '.join(ACTIONS)}")
    for flag, value in (("--max-hours", max_hours), ("--latency-ms", latency_ms)):
        if value is not None and value <= 0:
            raise PlanError(f"{flag} {value:g}: must be positive")
    plan = load_plan(plan_file, output)
    if action == "estimate":
        estimates = estimate(plan, latency_ms)
        print(format_estimate(plan, estimates, latency_ms), file=stream)
        hours = total_hours(estimates)
        if max_hours is not None and hours is not None and hours > max_hours:
            raise PlanError(f"plan {plan.path}: estimated {hours:.1f} h, over --max-hours {max_hours:g}")
    elif action == "status":
        print(format_status(plan, plan_status(plan), latency_ms), file=stream)
    else:
        outcome = run_plan(plan, max_hours, latency_ms, official_tools, stream)
        if outcome.failed:
            raise RuntimeError(f"{len(outcome.failed)} run(s) failed (see above); rerun to retry them")
        if not outcome.ok:
            raise RuntimeError(f"the submission fails {len(outcome.checker_errors)} check(s) (see above)")
