"""The plan format: the YAML file that names every run of a submission, its validation, and its steps.

A plan (format in ``automation/README.md``) names the round, division, submitter and systems; each
system lists runs as framework x device x scenarios with their source (``mlc`` download, ``local``
paths, ``synthetic`` demo data), threads, batch size, user.conf and execution mode.
:func:`load_plan` validates it (errors name the plan file, the key and the allowed values) without
importing a framework, so a malformed plan is refused at once.

Each planned run (a system's scenario) is a few LoadGen runs, its *steps* (:func:`plan_steps`):
find-performance (valid mode without a ``latency_ms``), performance, accuracy and, for the closed
division, TEST01.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from abtf_ssd.data.download import TOOLS
from abtf_ssd.loadgen import rules
from abtf_ssd.loadgen.harness import COMPLIANCE_TEST
from abtf_ssd.submission.layout import (
    DIVISIONS,
    OPTIONAL_SCENARIOS,
    REQUIRED_SCENARIOS,
    STATUSES,
)

SUBMISSION_DIR_NAME = "submission"
RESULTS_DIR_NAME = "results"

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
