"""The harness's runs of one system as the submission generator reads them.

Its scenario folders (:func:`find_scenarios`: performance, accuracy and TEST01 runs), the system
description beside them (:func:`load_sut_info`), the status each run's results.json records
(:func:`check_run_status`) and the options it was run with (:func:`read_run_info`). Also the error
every part of the generator raises (:class:`SubmissionError`) and the copy of a run's file into the
tree (:func:`copy_atomic`).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from abtf_ssd.fileio import atomic_output
from abtf_ssd.loadgen.harness import COMPLIANCE_TEST, RESULTS_JSON
from abtf_ssd.loadgen.rules import MODEL_NAME
from abtf_ssd.submission.layout import DETAIL_LOG
from abtf_ssd.submission.sysinfo import SUT_INFO_NAME


class SubmissionError(ValueError):
    """Results that cannot make a submission; the message names the file and what is wrong."""


@dataclass(frozen=True)
class ScenarioRuns:
    """The harness folders of one scenario."""

    name: str
    performance: Path
    accuracy: Path
    test01: Path | None


def find_scenarios(results_dir: Path, system_name: str) -> list[ScenarioRuns]:
    """Scenario folders under ``<results_dir>/<system_name>/ssd`` with their runs."""
    model_dir = results_dir / system_name / MODEL_NAME
    if not model_dir.is_dir():
        raise SubmissionError(
            f"{model_dir}: no results for system {system_name!r} (expected <system>/ssd/<scenario>)"
        )
    scenarios = []
    for scenario_dir in sorted(p for p in model_dir.iterdir() if p.is_dir()):
        performance = scenario_dir / "performance" / "run_1"
        accuracy = scenario_dir / "accuracy"
        for folder, what in ((performance, "performance run"), (accuracy, "accuracy run")):
            if not (folder / DETAIL_LOG).is_file():
                raise SubmissionError(f"{folder}: the {what} is missing ({DETAIL_LOG} not found)")
        test01 = None
        for candidate in (
            scenario_dir / COMPLIANCE_TEST / "performance" / "run_1",
            scenario_dir / COMPLIANCE_TEST,
        ):
            if (candidate / DETAIL_LOG).is_file():
                test01 = candidate
                break
        scenarios.append(ScenarioRuns(scenario_dir.name, performance, accuracy, test01))
    if not scenarios:
        raise SubmissionError(f"{model_dir}: no scenario folders")
    return scenarios


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SubmissionError(f"{path}: unreadable JSON ({exc})") from None
    if not isinstance(value, dict):
        raise SubmissionError(f"{path}: expected a JSON object")
    return value


def load_sut_info(results_dir: Path, system_name: str, sut_info: dict | str | Path | None) -> dict[str, Any]:
    """The system description: ``sut_info`` itself, the file it names, or mlc-sut-info.json of the results."""
    if isinstance(sut_info, dict):
        return dict(sut_info)
    if sut_info is not None:
        return _read_json(Path(sut_info))
    for candidate in (results_dir / system_name / SUT_INFO_NAME, results_dir / SUT_INFO_NAME):
        if candidate.is_file():
            return _read_json(candidate)
    raise SubmissionError(
        f"no system description: neither {results_dir / system_name / SUT_INFO_NAME} nor "
        f"{results_dir / SUT_INFO_NAME} exists; write it with `abtf-ssd sysinfo` or pass sut_info"
    )


def check_run_status(runs: ScenarioRuns) -> None:
    """Refuse a run whose harness results.json says it did not complete: ``failed`` (queries answered
    with no detections) or ``interrupted`` (CTRL-C). Runs without a results.json, or one without a
    status, are not judged here."""
    for folder in (runs.performance, runs.accuracy, runs.test01):
        path = folder / RESULTS_JSON if folder is not None else None
        if path is None or not path.is_file():
            continue
        record = _read_json(path)
        status = record.get("status", "ok")
        if status != "ok":
            raise SubmissionError(
                f"{path}: the run's status is {status!r}, not 'ok' (failed queries were answered with no "
                "detections, or it was interrupted); rerun it before packaging a submission"
            )


def read_run_info(runs: ScenarioRuns) -> dict[str, Any]:
    """What the harness's results.json says of a run: its ``options`` (model_path, framework,
    device, config_name, ...) and top-level entries (dataset_dir, ...); {} without one.

    The performance run's, else the accuracy run's.
    """
    for folder in (runs.performance, runs.accuracy):
        if (folder / RESULTS_JSON).is_file():
            data = _read_json(folder / RESULTS_JSON)
            options = data.get("options")
            return {**(options if isinstance(options, dict) else {}), **data}
    return {}


def find_dataset_dir(dataset_dir: str | Path | None, runs: ScenarioRuns) -> Path | None:
    """The preprocessed dataset of the runs: given, or the one their results.json names."""
    if dataset_dir is not None:
        return Path(dataset_dir)
    found = read_run_info(runs).get("dataset_dir")
    return Path(found) if found else None


def copy_atomic(source: Path, destination: Path) -> None:
    if not source.is_file():
        raise SubmissionError(f"{source}: missing")
    destination.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(destination) as temp:
        shutil.copyfile(source, temp)
