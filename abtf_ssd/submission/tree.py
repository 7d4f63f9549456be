"""Turn harness results into an MLPerf Automotive submission tree that the checker accepts.

Input, as written by :mod:`abtf_ssd.loadgen.harness` (one folder per scenario)::

    <results_dir>/<system>/ssd/<scenario>/
      performance/run_1/   mlperf_log_summary.txt mlperf_log_detail.txt user.conf [results.json ...]
      accuracy/            the same logs, mlperf_log_accuracy.json, accuracy.txt ("mAP: <value>")
      TEST01/performance/run_1/ (closed)  the compliance run (audit.config), its accuracy log
    <results_dir>/<system>/mlc-sut-info.json (or <results_dir>/mlc-sut-info.json): the system

Output: ``<submission_dir>/<division>/<submitter>/`` in the layout of the round's official
checker (:data:`abtf_ssd.submission.checker.LAYOUTS`: v1.0 ``{systems, src/ssd, results}``, v0.5 ``{systems,
code/ssd/<implementation>, measurements, results, compliance}``). The accuracy log is truncated
the way the upstream truncation tool does it (first and last 4096 bytes around
``"\\n\\n...\\n\\n"``) when it is over 10 KiB, and ``hash=<sha256 of the original log>`` is appended
to accuracy.txt. For the closed division, TEST01 is verified here: performance (early-stopping
estimates within 10 %, 20 % at or under 200 us) and accuracy (each compliance-log response equals
the accuracy run's response for that ``qsl_idx``); with ``official_tools`` (an unpacked
mlperf_automotive checkout) the round's own TEST01 scripts verify it instead
(:func:`abtf_ssd.submission.official.verify_test01`). A closed-division result needs the automotive LoadGen;
logs of the PyPI inference LoadGen are refused for it
(:func:`abtf_ssd.submission.checker.is_automotive_loadgen`) and accepted, with a note, for the open division.
The finished tree is checked with :func:`abtf_ssd.submission.checker.run_checks`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import abtf_ssd
from abtf_ssd.fileio import atomic_output, atomic_write_bytes, atomic_write_json, atomic_write_text
from abtf_ssd.loadgen.harness import COMMAND_TXT, COMPLIANCE_TEST, RESULTS_JSON, USER_CONF
from abtf_ssd.loadgen.report import LogFormatError
from abtf_ssd.loadgen.rules import AUTOMOTIVE_LOADGEN_HINT, METRIC_LABELS, MODEL_NAME, get_round
from abtf_ssd.submission import checker
from abtf_ssd.submission.checker import (
    ACCURACY_LOG,
    ACCURACY_TXT,
    DEFAULT_IMPLEMENTATION,
    DETAIL_LOG,
    DIVISIONS,
    MAP_TARGET,
    RESULT_KEY,
    STATUSES,
    SUMMARY_LOG,
    SYSTEM_FIELDS,
    SYSTEM_TYPE,
    TRUNCATION_MARKER,
    CheckError,
    TreeLayout,
    is_automotive_loadgen,
    loadgen_description,
    read_accuracy_entries,
    read_detail,
    read_map,
    sha256_file,
)
from abtf_ssd.submission.sysinfo import SUT_INFO_NAME

logger = logging.getLogger(__name__)

DEFAULT_STATUS = "development"
TRUNCATE_KEEP_BYTES = 4096
"""Bytes of the accuracy log kept at its head and at its tail when it is truncated."""

TEST01_TOLERANCE = 0.10
TEST01_SHORT_LATENCY_TOLERANCE = 0.20
TEST01_SHORT_LATENCY_NS = 200_000
"""At or under 200 us the TEST01 performance check allows 20 % (run-to-run OS noise)."""

NOT_APPLICABLE = "N/A"
DEFAULT_MEASUREMENTS = {
    "input_data_types": "fp32",
    "retraining": "no",
    "weight_data_types": "fp32",
    "weight_transformations": "none",
}
INFERENCE_LOADGEN_WHY = (
    "the PyPI mlcommons-loadgen wheel is the inference LoadGen: it has no ConstantStream and no "
    "ssd in its built-in config, and in performance mode it loads samples 0..127 instead of a "
    "seeded random 128, so its logs are not valid closed-division automotive results"
)


class SubmissionError(ValueError):
    """Results that cannot make a submission; the message names the file and what is wrong."""


class SubmissionCheckError(SubmissionError):
    """The generated tree does not pass the checker; :attr:`errors` lists why."""

    def __init__(self, errors: list[CheckError]):
        self.errors = errors
        lines = "\n".join(f"  {e}" for e in errors)
        super().__init__(f"the generated submission fails {len(errors)} check(s):\n{lines}")


@dataclass(frozen=True)
class ScenarioRuns:
    """The harness folders of one scenario."""

    name: str
    performance: Path
    accuracy: Path
    test01: Path | None


@dataclass(frozen=True)
class Test01Verdict:
    passed: bool
    text: str


# --------------------------------------------------------------------------------------------
# Reading the results


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


def _run_info(runs: ScenarioRuns) -> dict[str, Any]:
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


# --------------------------------------------------------------------------------------------
# systems/<system>.json, measurements.json, README.md


def _text(value: Any) -> str:
    # The checker wants meaningful fields truthy: a count of 0 must be "0", not 0.
    return (
        value
        if isinstance(value, str)
        else json.dumps(value)
        if isinstance(value, (list, dict))
        else str(value)
    )


def system_description(
    sut_info: dict[str, Any],
    submitter: str,
    division: str,
    system_name: str,
    status: str,
    run_info: dict[str, Any] | None = None,
) -> tuple[dict[str, str], list[str]]:
    """The 35 fields of ``systems/<system>.json`` and the names of those nothing described.

    Fields come from ``sut_info`` (:func:`abtf_ssd.submission.sysinfo.collect` uses the same names); the
    user's submitter, division, system name and status win; ``system_type`` is always "adas".
    The framework falls back to the run's results.json, ``sw_notes`` to the Python version and
    device of the description. Fields still unknown become "N/A" (and are returned).
    """
    if status not in STATUSES:
        raise SubmissionError(f"status {status!r} is not one of {', '.join(STATUSES)}")
    run_info = run_info or {}
    fixed = {
        "division": division,
        "submitter": submitter,
        "status": status,
        "system_name": system_name,
        "system_type": SYSTEM_TYPE,
    }
    fallback = {
        "framework": run_info.get("framework"),
        "sw_notes": ", ".join(
            f"{key} {sut_info[key]}" for key in ("python", "device") if sut_info.get(key) not in (None, "")
        ),
    }
    system: dict[str, str] = {}
    defaulted = []
    for key in SYSTEM_FIELDS:
        if key in fixed:
            system[key] = fixed[key]
        elif sut_info.get(key) not in (None, ""):
            system[key] = _text(sut_info[key])
        elif fallback.get(key):
            system[key] = _text(fallback[key])
        else:
            system[key] = NOT_APPLICABLE
            defaulted.append(key)
    precision = _reduced_precision_note(run_info)
    if precision:
        notes = system["sw_notes"]
        system["sw_notes"] = precision if notes == NOT_APPLICABLE else f"{notes}; {precision}"
    return system, defaulted


def _reduced_precision_note(run_info: dict[str, Any]) -> str | None:
    """``model: int8 weights, uint8,fp32 activations`` for a model that is not FP32 throughout."""
    model = run_info.get("model_path")
    if not model or not Path(str(model)).is_file():
        return None
    from abtf_ssd.model.quantize import model_data_types

    types = model_data_types(Path(str(model)))
    if types.weights == "fp32" and types.activations == "fp32":
        return None
    return f"model: {types.weights} weights, {types.activations} activations"


def model_measurements(model: Path) -> dict[str, str]:
    """What the model file says of itself: its data types, and for a reduced-precision model made by
    :mod:`abtf_ssd.model.quantize` the transformation and the FP32 weights it started from."""
    from abtf_ssd.model.quantize import model_data_types, precision_record

    types = model_data_types(model)
    values = {"weight_data_types": types.weights, "input_data_types": types.inputs}
    record = precision_record(model) if model.suffix == ".onnx" else None
    if record:
        recipe = record.get("recipe", {})
        if record.get("precision") == "int8":
            how = f"quantization ({recipe.get('method')}, {recipe.get('frames')} calibration frames)"
        else:
            how = f"{record.get('precision')} conversion"
        values["weight_transformations"] = how
        values["starting_weights_filename"] = str(record.get("source") or model.name)
    return values


def measurements(run_info: dict[str, Any], overrides: dict[str, str] | None) -> dict[str, str]:
    """measurements.json: the five fields, the weights file from the run's results.json and, where that
    file is still there, its data types (:func:`model_measurements`)."""
    values = dict(DEFAULT_MEASUREMENTS)
    model = run_info.get("model_path") or run_info.get("model")
    values["starting_weights_filename"] = Path(str(model)).name if model else NOT_APPLICABLE
    if model and Path(str(model)).is_file():
        values.update(model_measurements(Path(str(model))))
    values.update(overrides or {})
    return values


def _ms(nanoseconds: Any) -> str:
    return f"{nanoseconds / 1e6:.3f}" if isinstance(nanoseconds, (int, float)) else "n/a"


def scenario_readme(
    system_name: str,
    scenario: str,
    perf: dict[str, Any],
    map_value: float | None,
    run_info: dict[str, Any],
    command: str | None,
    notes: list[str],
    version: str = "v0.5",
) -> str:
    """README.md of one scenario: the results table (with the metric ``version`` reports), how it was
    run, notes."""
    metric = get_round(version).metric(scenario)
    value = perf.get(metric)
    if not value:
        shown = "n/a (too few queries for an estimate)"
    else:
        shown = f"{value:.3f}" if metric.endswith("_per_sec") else _ms(value)
    rows = [(f"{METRIC_LABELS[metric].capitalize()}, the metric round {version} reports", shown)]
    if metric != RESULT_KEY:
        rows.append(("Early-stopping 99.9th percentile latency (ms)", _ms(perf.get(RESULT_KEY))))
    rows += [
        ("99.9th percentile latency (ms)", _ms(perf.get("result_99.90_percentile_latency_ns"))),
        ("Mean latency (ms)", _ms(perf.get("result_mean_latency_ns"))),
        ("Queries", str(perf.get("result_query_count", "n/a"))),
        ("LoadGen result", str(perf.get("result_validity", "n/a"))),
        ("mAP", f"{map_value:.5f}" if map_value is not None else "n/a"),
        ("mAP target (99.9 % of 0.7179)", f"{MAP_TARGET:.7f}"),
        ("LoadGen", loadgen_description(perf)),
    ]
    for key, label in (("framework", "Framework"), ("device", "Device"), ("config_name", "Model config")):
        if run_info.get(key):
            rows.append((label, str(run_info[key])))
    lines = [
        f"# {MODEL_NAME} {scenario} on {system_name}",
        "",
        "| | |",
        "|---|---|",
        *(f"| {label} | {value} |" for label, value in rows),
        "",
    ]
    if command:
        lines += ["## Command", "", "```", command.strip(), "```", ""]
    if notes:
        lines += ["## Notes", "", *(f"- {note}" for note in notes), ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Accuracy log truncation


def truncate_accuracy_log(source: Path, destination: Path) -> str:
    """Copy ``source`` to ``destination``, truncated if over 10 KiB; return the original's sha256.

    As the upstream truncation tool: the first and the last 4096 bytes with
    ``"\\n\\n...\\n\\n"`` between them. A log that fits is copied whole, so its hash can be checked.
    """
    digest = sha256_file(source)
    size = source.stat().st_size
    if size <= checker.MAX_ACCURACY_LOG_BYTES:
        _copy_atomic(source, destination)
        return digest
    with source.open("rb") as handle:
        head = handle.read(TRUNCATE_KEEP_BYTES)
        handle.seek(size - TRUNCATE_KEEP_BYTES)
        tail = handle.read(TRUNCATE_KEEP_BYTES)
    atomic_write_bytes(destination, head + TRUNCATION_MARKER.encode() + tail)
    return digest


def accuracy_txt_with_hash(source: Path, digest: str) -> str:
    """The harness's accuracy.txt with its ``hash=`` line (re)written for the log ``digest``."""
    lines = [line for line in source.read_text(encoding="utf-8").splitlines() if not line.startswith("hash=")]
    if checker.read_map(source) is None:
        raise SubmissionError(f"{source}: no 'mAP: <value>' line; compute it with `abtf-ssd accuracy`")
    return "\n".join(lines) + f"\nhash={digest}\n"


# --------------------------------------------------------------------------------------------
# TEST01


def verify_test01_performance(
    reference_detail: Path, test_detail: Path, allow_test_mode: bool
) -> Test01Verdict:
    """Early-stopping estimates of the compliance run and the submission run within tolerance.

    Test mode: runs too short for an early-stopping estimate compare their mean latency.
    """
    reference, _ = read_detail(reference_detail)
    test, _ = read_detail(test_detail)
    lines = [
        "Verifying performance.",
        f"reference run: {reference_detail}",
        f"TEST01 run: {test_detail}",
    ]

    def verdict(passed: bool, last: str) -> Test01Verdict:
        return Test01Verdict(passed, "\n".join([*lines, last]) + "\n")

    for name, values in (("Reference", reference), ("Test", test)):
        if values.get("result_validity") != "VALID":
            if not allow_test_mode:
                return verdict(False, f"TEST FAIL: {name} results are invalid")
            lines.append(f"test mode: {name.lower()} result is {values.get('result_validity')} (allowed)")
    if reference.get("effective_scenario") != test.get("effective_scenario"):
        return verdict(False, "TEST FAIL: Test and reference scenarios do not match")
    metric = "early-stopping 99.9th percentile estimate (ns)"
    ref_score, test_score = reference.get(RESULT_KEY), test.get(RESULT_KEY)
    if not ref_score or not test_score:
        if not allow_test_mode:
            return verdict(False, "TEST FAIL: no early-stopping estimate (too few queries)")
        metric = "mean latency (ns); test mode: the runs are too short for an early-stopping estimate"
        ref_score, test_score = reference.get("result_mean_latency_ns"), test.get("result_mean_latency_ns")
        if not ref_score or not test_score:
            return verdict(False, "TEST FAIL: no latency in the logs")
    tolerance = TEST01_SHORT_LATENCY_TOLERANCE if ref_score <= TEST01_SHORT_LATENCY_NS else TEST01_TOLERANCE
    lines += [
        f"metric: {metric}",
        f"reference score = {ref_score}",
        f"test score = {test_score}",
        f"tolerance = {tolerance:.0%}",
    ]
    if ref_score * (1 - tolerance) < test_score < ref_score * (1 + tolerance):
        return verdict(True, "TEST PASS")
    if allow_test_mode:
        lines.append(
            "test mode: two short runs on one machine differ by noise; this comparison is not judged "
            "(a valid run is)"
        )
    return verdict(False, "TEST FAIL: Test score invalid")


def verify_test01_accuracy(accuracy_log: Path, test_log: Path) -> tuple[Test01Verdict, list[int]]:
    """Each response of the compliance log must equal the accuracy run's for the same qsl_idx.

    Returns the verdict and the qsl_idx values of the compliance log (distinct, in order).
    """
    reference: dict[int, str] = {}
    for entry in read_accuracy_entries(accuracy_log):
        reference.setdefault(entry["qsl_idx"], str(entry["data"]).upper())
    entries = read_accuracy_entries(test_log)
    indices = list(dict.fromkeys(entry["qsl_idx"] for entry in entries))
    absent = sorted({e["qsl_idx"] for e in entries if e["qsl_idx"] not in reference})
    differing = sorted(
        {
            e["qsl_idx"]
            for e in entries
            if e["qsl_idx"] in reference and str(e["data"]).upper() != reference[e["qsl_idx"]]
        }
    )
    lines = [
        "Verifying accuracy: TEST01 responses against the accuracy run.",
        f"accuracy run log: {accuracy_log}",
        f"TEST01 log: {test_log}",
        f"entries checked: {len(entries)} ({len(indices)} distinct samples)",
        f"differing responses: {len(differing)}" + (f" (qsl_idx {differing[:20]})" if differing else ""),
        f"samples absent from the accuracy run: {len(absent)}"
        + (f" (qsl_idx {absent[:20]})" if absent else ""),
    ]
    if not entries:
        lines.append("TEST FAIL: the TEST01 accuracy log is empty (was the audit.config applied?)")
        passed = False
    elif differing or absent:
        lines.append("TEST FAIL: responses differ from the accuracy run")
        passed = False
    else:
        lines.append("TEST PASS")
        passed = True
    return Test01Verdict(passed, "\n".join(lines) + "\n"), indices


def _dataset_dir(dataset_dir: str | Path | None, runs: ScenarioRuns) -> Path | None:
    """The preprocessed dataset of the runs: given, or the one their results.json names."""
    if dataset_dir is not None:
        return Path(dataset_dir)
    found = _run_info(runs).get("dataset_dir")
    return Path(found) if found else None


def _subset_map(log: Path, indices: list[int] | None, dataset: Path) -> float:
    """mAP of the responses in ``log`` (only ``indices`` when given), as accuracy.txt reports it."""
    from abtf_ssd.data.metric import compute_map, count_samples
    from abtf_ssd.loadgen.accuracy import read_accuracy_log

    detections = read_accuracy_log(log, sample_count=count_samples(dataset))
    if indices is not None:
        detections = {i: detections[i] for i in indices if i in detections}
    return compute_map(detections, dataset).map


def write_test01(
    runs: ScenarioRuns,
    destination: Path,
    allow_test_mode: bool,
    dataset_dir: Path | None,
    official_tools: Path | None = None,
) -> tuple[bool, bool]:
    """TEST01/ of one scenario; returns (performance passed, accuracy responses identical).

    ``official_tools``: verify with the round's compliance scripts
    (:func:`abtf_ssd.submission.official.verify_test01`)
    instead of this module's verification.
    """
    assert runs.test01 is not None
    test_log = runs.test01 / ACCURACY_LOG
    if not test_log.is_file():
        raise SubmissionError(f"{runs.test01}: the TEST01 run has no {ACCURACY_LOG}")
    run_dir = destination / "performance" / "run_1"
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in (SUMMARY_LOG, DETAIL_LOG):
        _copy_atomic(runs.test01 / name, run_dir / name)
    accuracy, indices = verify_test01_accuracy(runs.accuracy / ACCURACY_LOG, test_log)
    if official_tools is not None:
        from abtf_ssd.submission.official import verify_test01

        performance_passed, accuracy_passed = verify_test01(
            official_tools, runs.performance, runs.accuracy / ACCURACY_LOG, runs.test01, destination
        )
        accuracy = Test01Verdict(accuracy_passed, accuracy.text)
    else:
        performance = verify_test01_performance(
            runs.performance / DETAIL_LOG, runs.test01 / DETAIL_LOG, allow_test_mode
        )
        performance_passed = performance.passed
        atomic_write_text(destination / "verify_performance.txt", performance.text)
        atomic_write_text(destination / "verify_accuracy.txt", accuracy.text)
    acc_dir = destination / "accuracy"
    acc_dir.mkdir(parents=True, exist_ok=True)
    _copy_atomic(test_log, acc_dir / ACCURACY_LOG)
    summary = accuracy.text
    if dataset_dir is not None:
        compliance_map = _subset_map(test_log, None, dataset_dir)
        summary = f"mAP: {compliance_map:.7f}\n(mAP of the TEST01 responses)\n\n" + summary
        if not accuracy.passed:
            baseline_map = _subset_map(runs.accuracy / ACCURACY_LOG, indices, dataset_dir)
            atomic_write_text(
                acc_dir / "baseline_accuracy.txt",
                f"mAP: {baseline_map:.7f}\n(accuracy run, the {len(indices)} samples of the TEST01 log)\n",
            )
            atomic_write_text(
                acc_dir / "compliance_accuracy.txt", f"mAP: {compliance_map:.7f}\n(TEST01 log)\n"
            )
    elif not accuracy.passed:
        raise SubmissionError(
            f"{test_log}: TEST01 responses differ from the accuracy run; comparing their mAP needs the "
            "dataset (pass dataset_dir / --dataset_dir)"
        )
    atomic_write_text(acc_dir / ACCURACY_TXT, summary)
    return performance_passed, accuracy.passed


# --------------------------------------------------------------------------------------------
# Files


def _copy_atomic(source: Path, destination: Path) -> None:
    if not source.is_file():
        raise SubmissionError(f"{source}: missing")
    destination.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(destination) as temp:
        shutil.copyfile(source, temp)


MODEL_FILE_SUFFIXES = (".pth", ".pt", ".onnx")
"""Weights are no code: measurements JSON names them (``starting_weights_filename``)."""


def _code_file_wanted(path: Path) -> bool:
    name = path.name
    return not (
        name.startswith(".")
        or name == "__pycache__"
        or name.endswith((".pyc", ".pyo", *MODEL_FILE_SUFFIXES))
        or " " in name
        or path.is_symlink()
    )


def copy_code(code_dir: Path, destination: Path) -> int:
    """Copy the sources under ``code_dir`` into ``destination``; returns the number of files.

    Leaves out what the checker forbids (dot-files, __pycache__, spaces, links), compiled files and
    model weights (:data:`MODEL_FILE_SUFFIXES`).
    """
    if not code_dir.is_dir():
        raise SubmissionError(f"code folder {code_dir} does not exist")
    count = 0
    for folder, dirnames, filenames in os.walk(code_dir):
        here = Path(folder)
        dirnames[:] = sorted(d for d in dirnames if _code_file_wanted(here / d))
        for name in sorted(filenames):
            source = here / name
            if not _code_file_wanted(source):
                continue
            if source.stat().st_size > checker.MAX_FILE_BYTES:
                raise SubmissionError(f"{source}: over 50 MB; keep data files out of the code folder")
            target = destination / source.relative_to(code_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            count += 1
    if count == 0:
        raise SubmissionError(f"code folder {code_dir} has no files to submit")
    return count


def _replace_path(new: Path, target: Path, trash: Path) -> None:
    """Put ``new`` at ``target``; a previous ``target`` is moved to ``trash`` first."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_dir() and not target.is_symlink():
        os.replace(target, trash / f"old-{len(list(trash.iterdir()))}")
    os.replace(new, target)


def tarball_path(submission_dir: str | Path) -> Path:
    """Where ``tar=True`` writes the archive: ``<submission_dir>.tar.gz`` beside the tree."""
    submission_dir = Path(submission_dir).resolve()
    return submission_dir.with_name(submission_dir.name + ".tar.gz")


def make_tarball(submission_dir: Path) -> Path:
    target = tarball_path(submission_dir)
    with atomic_output(target) as temp, tarfile.open(temp, "w:gz") as archive:
        archive.add(submission_dir, arcname=submission_dir.name)
    return target


# --------------------------------------------------------------------------------------------
# The generator


def default_system_name(results_dir: str | Path) -> str:
    """The only system folder of a results folder (the harness writes one per system)."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise SubmissionError(f"results folder {results_dir} does not exist")
    systems = sorted(p.name for p in results_dir.iterdir() if (p / MODEL_NAME).is_dir())
    if len(systems) != 1:
        found = ", ".join(systems) if systems else "none"
        raise SubmissionError(f"{results_dir}: name the system to submit (system folders with ssd/: {found})")
    return systems[0]


def _check_name(value: str, what: str) -> str:
    if not value or value.startswith(".") or " " in value or "/" in value or os.sep in value:
        raise SubmissionError(
            f"{what} {value!r} must be a non-empty name without spaces, slashes or a leading dot"
        )
    return value


def _loadgen_notes(runs: ScenarioRuns, division: str) -> list[str]:
    """Refuse inference-LoadGen logs for the closed division; a README note for the open one."""
    folders = [runs.performance, runs.accuracy] + ([runs.test01] if runs.test01 else [])
    inference = []
    description = ""
    for folder in folders:
        values, _ = read_detail(folder / DETAIL_LOG)
        if not is_automotive_loadgen(values):
            inference.append(folder / DETAIL_LOG)
            description = loadgen_description(values)
    if not inference:
        return []
    if division == "closed":
        raise SubmissionError(
            f"{inference[0]}: written by the {description}; a closed-division submission needs the "
            f"automotive LoadGen because {INFERENCE_LOADGEN_WHY}. To fix it, {AUTOMOTIVE_LOADGEN_HINT}, "
            "then rerun the benchmark (or submit to the open division)."
        )
    return [
        f"These results were measured with the {description}, not the automotive LoadGen "
        f"({INFERENCE_LOADGEN_WHY}); they are submitted to the open division for that reason."
    ]


@dataclass(frozen=True)
class _Target:
    """Where one system's result goes in the staged submitter folder, by the round's layout."""

    submitter_dir: Path
    tree: TreeLayout
    system_name: str
    implementation: str

    def results(self, scenario: str) -> Path:
        return self.submitter_dir / "results" / self.system_name / MODEL_NAME / scenario

    def measurements(self, scenario: str) -> Path:
        return self.tree.measurements_dir(self.submitter_dir, self.system_name, scenario)

    def compliance(self, scenario: str) -> Path:
        return self.tree.compliance_dir(self.submitter_dir, self.system_name, scenario)


def _write_scenario(
    runs: ScenarioRuns,
    notes: list[str],
    target: _Target,
    division: str,
    allow_test_mode: bool,
    measurement_overrides: dict[str, str] | None,
    dataset_dir: str | Path | None,
    official_tools: Path | None,
) -> None:
    notes = list(notes)
    run_info = _run_info(runs)
    perf, _ = read_detail(runs.performance / DETAIL_LOG)
    results = target.results(runs.name)
    measured = target.measurements(runs.name)

    user_conf = next(
        (
            p
            for p in (runs.performance / USER_CONF, runs.performance.parent.parent / USER_CONF)
            if p.is_file()
        ),
        None,
    )
    if user_conf is None:
        raise SubmissionError(
            f"{runs.performance}: no {USER_CONF} (the harness writes the run's settings there)"
        )
    _copy_atomic(user_conf, measured / USER_CONF)
    atomic_write_json(
        measured / target.tree.measurements_file(target.system_name, runs.name, target.implementation),
        measurements(run_info, measurement_overrides),
    )

    run_dir = results / "performance" / "run_1"
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in (SUMMARY_LOG, DETAIL_LOG):
        _copy_atomic(runs.performance / name, run_dir / name)
    perf_acc_log = runs.performance / ACCURACY_LOG
    # Performance runs log responses only when asked to (accuracy_log_probability); keep them then.
    if perf_acc_log.is_file() and perf_acc_log.stat().st_size > 0 and read_accuracy_entries(perf_acc_log):
        truncate_accuracy_log(perf_acc_log, run_dir / ACCURACY_LOG)

    acc_dir = results / "accuracy"
    acc_dir.mkdir(parents=True, exist_ok=True)
    for name in (SUMMARY_LOG, DETAIL_LOG):
        _copy_atomic(runs.accuracy / name, acc_dir / name)
    if not (runs.accuracy / ACCURACY_TXT).is_file():
        raise SubmissionError(f"{runs.accuracy}: no {ACCURACY_TXT}; compute it with `abtf-ssd accuracy`")
    digest = truncate_accuracy_log(runs.accuracy / ACCURACY_LOG, acc_dir / ACCURACY_LOG)
    atomic_write_text(acc_dir / ACCURACY_TXT, accuracy_txt_with_hash(runs.accuracy / ACCURACY_TXT, digest))
    map_value = read_map(runs.accuracy / ACCURACY_TXT)
    if map_value is not None and map_value < MAP_TARGET:
        notes.append(
            f"mAP {map_value:.7f} is under the target {MAP_TARGET:.7f}: "
            + ("not a valid closed result." if division == "closed" else "accepted for the open division.")
        )

    if division == "closed":
        dataset = _dataset_dir(dataset_dir, runs)
        perf_ok, acc_ok = write_test01(
            runs, target.compliance(runs.name) / COMPLIANCE_TEST, allow_test_mode, dataset, official_tools
        )
        verifier = "the round's official compliance scripts" if official_tools else "abtf_ssd.submission.tree"
        notes.append(
            f"TEST01 (verified by {verifier}): performance {'passed' if perf_ok else 'FAILED'}; responses "
            f"{'identical to' if acc_ok else 'differ from'} the accuracy run."
        )
    if allow_test_mode:
        notes.append(
            "Generated in test mode: these rules were relaxed: "
            + "; ".join(checker.TEST_MODE_RELAXED_RULES.values())
            + ". Not a valid result."
        )
    command_file = next(
        (p / COMMAND_TXT for p in (runs.performance, runs.accuracy) if (p / COMMAND_TXT).is_file()), None
    )
    command = command_file.read_text(encoding="utf-8") if command_file else None
    atomic_write_text(
        measured / "README.md",
        scenario_readme(
            target.system_name, runs.name, perf, map_value, run_info, command, notes, target.tree.round
        ),
    )


def generate_submission(
    results_dir: str | Path,
    submission_dir: str | Path,
    submitter: str,
    division: str,
    system_name: str,
    status: str = DEFAULT_STATUS,
    sut_info: dict | str | Path | None = None,
    code_dir: str | Path = Path(abtf_ssd.__file__).parent,
    tar: bool = False,
    allow_test_mode: bool = False,
    version: str = "v0.5",
    measurement_overrides: dict[str, str] | None = None,
    dataset_dir: str | Path | None = None,
    implementation: str = DEFAULT_IMPLEMENTATION,
    official_tools: str | Path | None = None,
) -> Path:
    """Build ``<submission_dir>/<division>/<submitter>/`` for ``system_name`` and check it.

    Args:
        results_dir: the harness's results folder (``<system>/ssd/<scenario>/...``).
        submission_dir: root of the tree; other systems already in it are kept, this
            system's results, measurements, compliance, systems JSON and code are replaced.
        submitter, division ("closed" | "open"), system_name: folder names.
        status: one of hardened, development, engineering_samples, presilicon.
        sut_info: the system description (dict or JSON path); default mlc-sut-info.json of the results.
        code_dir: the code that produced the results, copied into the round's code folder.
        tar: also write ``<submission_dir>.tar.gz`` (:func:`tarball_path`).
        allow_test_mode: check with the test-mode relaxations
            (:data:`abtf_ssd.submission.checker.TEST_MODE_RELAXED_RULES`).
        version: the round; it decides the layout (:data:`abtf_ssd.submission.checker.LAYOUTS`) and the rules.
        measurement_overrides: values for the measurements JSON (e.g. ``weight_data_types``).
        dataset_dir: preprocessed dataset, only needed when TEST01 responses differ from the
            accuracy run (default: the ``dataset_dir`` in the runs' results.json).
        implementation: the implementation name of the v0.5 layout (``code/ssd/<implementation>``).
        official_tools: an unpacked mlperf_automotive checkout of the round: TEST01 is verified by
            its compliance scripts.

    Returns:
        ``submission_dir``.

    Raises:
        SubmissionError: bad input, missing runs, a run whose results.json status is not ``ok``,
            inference LoadGen for closed, no TEST01 for closed.
        SubmissionCheckError: the finished tree fails the checker (it is left in place to inspect).
    """
    results_dir, submission_dir, code_dir = Path(results_dir), Path(submission_dir), Path(code_dir)
    if division not in DIVISIONS:
        raise SubmissionError(f"division {division!r} is not one of {', '.join(DIVISIONS)}")
    if status not in STATUSES:
        raise SubmissionError(f"status {status!r} is not one of {', '.join(STATUSES)}")
    _check_name(submitter, "submitter")
    _check_name(system_name, "system name")
    _check_name(implementation, "implementation")
    tree = checker.layout(version)
    tools = None
    if official_tools is not None:
        from abtf_ssd.submission.official import check_tools

        tools = check_tools(official_tools)
    if not results_dir.is_dir():
        raise SubmissionError(f"results folder {results_dir} does not exist")
    scenarios = find_scenarios(results_dir, system_name)
    for runs in scenarios:
        check_run_status(runs)
    system, defaulted = system_description(
        load_sut_info(results_dir, system_name, sut_info),
        submitter,
        division,
        system_name,
        status,
        _run_info(scenarios[0]),
    )
    if defaulted:
        logger.warning(
            "systems/%s.json: the system description has no value for %s; set to %r (edit before submitting)",
            system_name,
            ", ".join(defaulted),
            NOT_APPLICABLE,
        )

    loadgen_notes = {runs.name: _loadgen_notes(runs, division) for runs in scenarios}
    if division == "closed":
        for runs in scenarios:
            if runs.test01 is None:
                raise SubmissionError(
                    f"{runs.performance.parent.parent / COMPLIANCE_TEST}: the closed division needs the "
                    "TEST01 compliance run (performance mode with the TEST01 audit.config); run it or submit "
                    "to the open division"
                )

    submission_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{submission_dir.name}-staging-", dir=submission_dir.parent))
    try:
        staged = staging / "tree"
        target = _Target(staged, tree, system_name, implementation)
        atomic_write_json(_mkparent(staged / "systems" / f"{system_name}.json"), system)
        code_target = tree.code_dir(staged, implementation)
        copy_code(code_dir, code_target / code_dir.name)
        atomic_write_text(
            code_target / "README.md",
            f"# Code for {MODEL_NAME}\n\n`{code_dir.name}/`: the sources that produced these results "
            f"(abtf_ssd {abtf_ssd.__version__}).\n",
        )
        for runs in scenarios:
            _write_scenario(
                runs,
                loadgen_notes[runs.name],
                target,
                division,
                allow_test_mode,
                measurement_overrides,
                dataset_dir,
                tools,
            )
        trash = staging / "trash"
        trash.mkdir()
        final = submission_dir / division / submitter
        moved = [Path("systems") / f"{system_name}.json", code_target.relative_to(staged)]
        moved += [Path(top) / system_name for top in ("measurements", "results", "compliance")]
        for relative in moved:
            if (staged / relative).exists():
                _replace_path(staged / relative, final / relative, trash)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    report = checker.run_checks(submission_dir, version, allow_test_mode)
    for warning in report.warnings:
        logger.warning("%s", warning)
    if report.errors:
        raise SubmissionCheckError(report.errors)
    if tar:
        make_tarball(submission_dir)
    return submission_dir


def _mkparent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="abtf-ssd-generate-submission", description="Build an MLPerf Automotive submission tree (ssd)."
    )
    parser.add_argument("--results_dir", type=Path, required=True)
    parser.add_argument("--submission_dir", type=Path, required=True)
    parser.add_argument("--submitter", required=True)
    parser.add_argument("--division", choices=DIVISIONS, default="open")
    parser.add_argument("--system_name", "--hw_name", dest="system_name", required=True)
    parser.add_argument("--status", choices=STATUSES, default=DEFAULT_STATUS)
    parser.add_argument("--sut_info", type=Path, help="system description JSON (default: mlc-sut-info.json)")
    parser.add_argument(
        "--dataset_dir", type=Path, help="preprocessed dataset, for a non-deterministic TEST01"
    )
    parser.add_argument("--version", default="v0.5", help="round: its layout and rules (default v0.5)")
    parser.add_argument(
        "--implementation", default=DEFAULT_IMPLEMENTATION, help="v0.5 layout: code/ssd/<implementation>"
    )
    parser.add_argument(
        "--official_tools",
        type=Path,
        help="unpacked mlperf_automotive checkout: verify TEST01 with its scripts",
    )
    parser.add_argument("--tar", action="store_true", help="also write <submission_dir>.tar.gz")
    parser.add_argument(
        "--allow_test_mode", action="store_true", help="accept test-mode runs (not valid results)"
    )
    args = parser.parse_args(argv)
    try:
        root = generate_submission(
            args.results_dir,
            args.submission_dir,
            args.submitter,
            args.division,
            args.system_name,
            status=args.status,
            sut_info=args.sut_info,
            tar=args.tar,
            allow_test_mode=args.allow_test_mode,
            version=args.version,
            dataset_dir=args.dataset_dir,
            implementation=args.implementation,
            official_tools=args.official_tools,
        )
    except (SubmissionError, LogFormatError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"submission tree: {root / args.division / args.submitter}")
    if args.tar:
        print(f"tarball: {tarball_path(root)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
