"""Check an MLPerf Automotive submission tree the way each round's official checker does.

Where each round looks and what it asks for (the tree layouts, names, fields, rule ids and the
official wording) is in :mod:`abtf_ssd.submission.layout`; how the logs are read, in
:mod:`abtf_ssd.submission.logs`. Here: the checks themselves, from the tree's root down to each
result's logs, and their command line (``python -m abtf_ssd.submission.checker``). Kept whole, a
little over 600 lines: the checks are one walk down the tree, each calling the next, and read best
in that order.

Every rule yields a :class:`CheckError` that names the file or folder it concerns, a short rule
id (``seed``, ``percentile``, ...) and, where the official checker has the same rule, its message
(:data:`~abtf_ssd.submission.layout.OFFICIAL_MESSAGES`). ``allow_test_mode`` relaxes exactly the
run-length rules in :data:`~abtf_ssd.submission.layout.TEST_MODE_RELAXED_RULES`, which a short
test-mode run cannot meet; the findings it relaxed are still reported (:attr:`CheckReport.relaxed`).
As in the official checker, an mAP under the target is an error in the closed division and a
warning in the open one (:attr:`CheckReport.warnings`).

One stricter rule than the upstream checker: a closed-division result must come from the
automotive LoadGen (its detail log has the ``effective_use_grouped_qsl`` and
``effective_server_constant_gen`` settings, which the PyPI inference LoadGen never logs).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from abtf_ssd.loadgen.report import LogFormatError
from abtf_ssd.loadgen.rules import AUTOMOTIVE_LOADGEN_HINT, MODEL_NAME, RoundRules, get_round
from abtf_ssd.submission.layout import (
    ACCURACY_FILES,
    ACCURACY_LOG,
    ACCURACY_TXT,
    DETAIL_LOG,
    DIVISIONS,
    IGNORED_EXTRA_FILES,
    IGNORED_ROOT_FOLDERS,
    MAP_TARGET,
    MAX_ACCURACY_LOG_BYTES,
    MAX_FILE_BYTES,
    MEASUREMENT_FIELDS,
    OFFICIAL_MESSAGES,
    OPTIONAL_SCENARIOS,
    PERFORMANCE_FILES,
    REQUIRED_SCENARIOS,
    STATUSES,
    SYSTEM_FIELDS,
    SYSTEM_MEANINGFUL_FIELDS,
    SYSTEM_TYPE,
    TEST01_ACCURACY_DELTA_PERCENT,
    TEST01_ACCURACY_FILES,
    TEST01_NONDETERMINISTIC_FILES,
    TEST_MODE_RELAXED_RULES,
    TRUNCATION_MARKER,
    WARNING_RULES,
    TreeLayout,
    layout,
)
from abtf_ssd.submission.logs import (
    is_automotive_loadgen,
    loadgen_description,
    read_detail,
    read_hash,
    read_map,
)

SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")


class CheckerInputError(ValueError):
    """The folder to check does not exist or is no folder."""


@dataclass(frozen=True)
class CheckError:
    """One broken rule: the file or folder it concerns, a short rule id, what is wrong."""

    path: Path
    rule: str
    message: str

    def __str__(self) -> str:
        official = OFFICIAL_MESSAGES.get(self.rule)
        return f"{self.path}: [{self.rule}] {self.message}" + (
            f' (official: "{official}")' if official else ""
        )


@dataclass
class CheckReport:
    """Errors, warnings, and in test mode the findings of relaxed rules (not errors)."""

    errors: list[CheckError] = field(default_factory=list)
    relaxed: list[CheckError] = field(default_factory=list)
    warnings: list[CheckError] = field(default_factory=list)
    allow_test_mode: bool = False

    def add(self, path: Path, rule: str, message: str) -> None:
        finding = CheckError(Path(path), rule, message)
        if rule in WARNING_RULES:
            self.warnings.append(finding)
        elif self.allow_test_mode and rule in TEST_MODE_RELAXED_RULES:
            self.relaxed.append(finding)
        else:
            self.errors.append(finding)

    @property
    def rules(self) -> set[str]:
        """The rule ids of the errors."""
        return {error.rule for error in self.errors}


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# The tree


def _dirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.is_symlink())


def _files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if not p.is_dir())


def _file_set_mismatch(folder: Path, required: Iterable[str], optional: Iterable[str] = ()) -> str | None:
    present = {p.name for p in _files(folder)}
    required = set(required)
    allowed = required | set(optional) | set(IGNORED_EXTRA_FILES)
    missing = sorted(required - present)
    extra = sorted(present - allowed)
    if not missing and not extra:
        return None
    parts = []
    if missing:
        parts.append(f"missing {', '.join(missing)}")
    if extra:
        parts.append(f"unexpected {', '.join(extra)}")
    return "; ".join(parts)


def check_tree_hygiene(root: Path, report: CheckReport) -> None:
    """Whole-tree rules: no empty folder, dot-file, space, __pycache__, file over 50 MB, broken link."""
    for folder, dirnames, filenames in os.walk(root):
        here = Path(folder)
        for name in dirnames + filenames:
            path = here / name
            if name.startswith("."):
                report.add(path, "tree-dot-file", "name starts with a dot (git-unfriendly)")
            if " " in name:
                report.add(path, "tree-space", "name contains a space")
            if name == "__pycache__":
                report.add(path, "tree-pycache", "__pycache__ folder")
            if path.is_symlink() and not path.exists():
                report.add(path, "tree-broken-link", f"broken symbolic link to {os.readlink(path)}")
        for name in filenames:
            path = here / name
            if path.exists() and path.stat().st_size > MAX_FILE_BYTES:
                size_mb = path.stat().st_size / 2**20
                report.add(path, "tree-file-size", f"{size_mb:.1f} MB is over the 50 MB limit")
        if not dirnames and not filenames:
            report.add(here, "tree-empty-dir", "empty folder")


def _read_json_object(path: Path, rule: str, report: CheckReport) -> dict[str, Any] | None:
    """The JSON object in ``path``; None (reported under ``rule``) when unreadable or not an object."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        report.add(path, rule, f"unreadable JSON: {exc}")
        return None
    if not isinstance(value, dict):
        report.add(path, rule, "must hold a JSON object")
        return None
    return value


def check_system_json(path: Path, submitter: str, division: str, report: CheckReport) -> None:
    """``systems/<system>.json``: the 35 fields, meaningful values, adas, status, folder names."""
    system = _read_json_object(path, "systems-json", report)
    if system is None:
        return
    missing = [key for key in SYSTEM_FIELDS if key not in system]
    if missing:
        report.add(path, "system-field", f"missing field(s): {', '.join(missing)}")
    empty = [key for key in SYSTEM_MEANINGFUL_FIELDS if key in system and not system[key]]
    if empty:
        report.add(path, "system-field", f"field(s) need a meaningful (non-empty) value: {', '.join(empty)}")
    if system.get("system_type") != SYSTEM_TYPE:
        report.add(
            path, "system-type", f"system_type is {system.get('system_type')!r}, must be {SYSTEM_TYPE!r}"
        )
    status = str(system.get("status", "")).lower()
    if status not in STATUSES:
        report.add(
            path, "status", f"status is {system.get('status')!r}, must be one of {', '.join(STATUSES)}"
        )
    if str(system.get("submitter", "")).lower() != submitter.lower():
        report.add(
            path, "system-submitter", f"submitter is {system.get('submitter')!r}, folder is {submitter!r}"
        )
    if system.get("division") != division:
        report.add(path, "system-division", f"division is {system.get('division')!r}, folder is {division!r}")


def check_measurements(
    measurement_dir: Path, system: str, scenario: str, tree: TreeLayout, report: CheckReport
) -> str | None:
    """user.conf and README.md present and non-empty; the measurements JSON with the five fields.

    Returns the implementation name a v0.5 file name carries
    (``<system>_<implementation>_<scenario>.json``), else None.
    """
    if not measurement_dir.is_dir():
        report.add(measurement_dir, "measurements-dir", "missing measurements folder of this result")
        return None
    for name in ("user.conf", "README.md"):
        path = measurement_dir / name
        if not path.is_file():
            report.add(path, "measure-files", "missing")
        elif path.stat().st_size == 0:
            report.add(path, "measure-files", "empty")
    expected = tree.measurements_file(system, scenario)
    pattern = f"{system}_*.json" if tree.separate_measurements else "measurements*.json"
    candidates = sorted(measurement_dir.glob(pattern))
    if not candidates:
        report.add(measurement_dir / expected, "measurements-json", "missing")
        return None
    path = candidates[0]
    measurements = _read_json_object(path, "measurements-json", report)
    if measurements is not None:
        for key in MEASUREMENT_FIELDS:
            if key not in measurements:
                report.add(path, "measurements-json", f"field {key} is missing")
            elif not measurements[key]:
                report.add(path, "measurements-json", f"field {key} needs a meaningful (non-empty) value")
    if not tree.separate_measurements:
        return None
    suffix = f"_{scenario}.json" if path.name.endswith(f"_{scenario}.json") else ".json"
    return path.name[len(system) + 1 : -len(suffix)]


def check_performance_run(
    run_dir: Path, scenario: str, division: str, rules: RoundRules, report: CheckReport
) -> dict[str, Any] | None:
    """Rules of a performance run's ``mlperf_log_detail.txt``; returns its values when readable."""
    detail = run_dir / DETAIL_LOG
    try:
        values, errors = read_detail(detail)
    except LogFormatError as exc:
        report.add(detail, "detail-log", str(exc))
        return None
    for message in errors:
        report.add(detail, "detail-error", f"LoadGen logged an error: {message}")
    if values.get("effective_test_mode") != "PerformanceOnly":
        report.add(
            detail, "perf-mode", f"test mode is {values.get('effective_test_mode')!r}, not PerformanceOnly"
        )
    if values.get("result_validity") != "VALID":
        report.add(detail, "result-valid", f"result is {values.get('result_validity')!r}, not VALID")
    for name in ("qsl_rng_seed", "sample_index_rng_seed", "schedule_rng_seed"):
        found, expected = values.get(f"effective_{name}"), getattr(rules, name)
        if found != expected:
            report.add(detail, "seed", f"{name} is {found}, round {rules.name} requires {expected}")
    sample_count = values.get("effective_performance_sample_count")
    if not isinstance(sample_count, int) or sample_count < rules.performance_sample_count:
        report.add(
            detail,
            "perf-sample-count",
            f"performance_sample_count is {sample_count}, needs >= {rules.performance_sample_count}",
        )
    latency = rules.constant_stream if scenario == "ConstantStream" else rules.single_stream
    percentile = values.get("effective_target_latency_percentile")
    if (
        scenario in REQUIRED_SCENARIOS + OPTIONAL_SCENARIOS
        and percentile != latency.target_latency_percentile
    ):
        report.add(
            detail,
            "percentile",
            f"target_latency_percentile is {percentile}, must be {latency.target_latency_percentile}",
        )
    min_duration = values.get("effective_min_duration_ms")
    if not isinstance(min_duration, int) or min_duration < latency.min_duration_ms:
        report.add(
            detail, "min-duration", f"min_duration is {min_duration} ms, needs >= {latency.min_duration_ms}"
        )
    query_count = values.get("result_query_count")
    if not isinstance(query_count, int) or query_count < latency.min_query_count:
        report.add(
            detail, "min-query-count", f"{query_count} queries were run, needs >= {latency.min_query_count}"
        )
    if not values.get("early_stopping_met"):
        report.add(
            detail,
            "min-query-count",
            f"early stopping not met: {values.get('early_stopping_result', '')}".strip(),
        )
    metric = rules.metric(scenario)
    if not isinstance(values.get(metric), (int, float)):
        report.add(detail, "result-metric", f"no numeric {metric} (the metric round {rules.name} reports)")
    if scenario == "ConstantStream" and values.get("effective_server_constant_gen") is not True:
        report.add(detail, "constant-gen", "ConstantStream needs server_constant_gen = true")
    qps = values.get("effective_target_qps")
    if scenario == "ConstantStream" and isinstance(qps, (int, float)):
        warning = rules.constant_stream.rate_warning(float(qps))
        if warning:
            report.add(detail, "constant-stream-rate", warning)
    if division == "closed" and not is_automotive_loadgen(values):
        report.add(
            detail,
            "loadgen",
            f"written by the {loadgen_description(values)}; a closed result needs the automotive "
            f"LoadGen: {AUTOMOTIVE_LOADGEN_HINT}",
        )
    return values


def _check_performance_folder(
    run_dir: Path,
    rule: str,
    label: str,
    scenario: str,
    division: str,
    rules: RoundRules,
    report: CheckReport,
) -> None:
    """A ``performance/run_1`` (``label`` "TEST01 " for the compliance run's): its files, its log."""
    if not run_dir.is_dir():
        report.add(run_dir, rule, f"missing {label}performance/run_1 folder")
        return
    mismatch = _file_set_mismatch(run_dir, PERFORMANCE_FILES, (ACCURACY_LOG,))
    if mismatch:
        report.add(run_dir, rule, mismatch)
    if (run_dir / DETAIL_LOG).is_file():
        check_performance_run(run_dir, scenario, division, rules, report)


def check_accuracy_dir(
    acc_dir: Path, division: str, report: CheckReport, weight_data_types: str = "fp32"
) -> None:
    """accuracy/: the four files, mAP line and target (an error for closed, a warning for open),
    hash line, log size, no LoadGen errors."""
    if not acc_dir.is_dir():
        report.add(acc_dir, "acc-files", "missing accuracy folder")
        return
    mismatch = _file_set_mismatch(acc_dir, ACCURACY_FILES)
    if mismatch:
        report.add(acc_dir, "acc-files", mismatch)
    acc_txt = acc_dir / ACCURACY_TXT
    acc_log = acc_dir / ACCURACY_LOG
    if acc_txt.is_file():
        value = read_map(acc_txt)
        if value is None:
            report.add(acc_txt, "map", "no 'mAP: <value>' line")
        elif value < MAP_TARGET:
            rule = "map-target" if division == "closed" else "map-target-open"
            reduced = (
                ""
                if weight_data_types in ("", "fp32")
                else (
                    f"; the model is reduced precision ({weight_data_types} weights): a closed result must "
                    "still reach 99.9 % of the FP32 reference, else submit it to the open division"
                )
            )
            report.add(acc_txt, rule, f"mAP {value} is under the target {MAP_TARGET:.7f}{reduced}")
        hash_value = read_hash(acc_txt)
        if hash_value is None:
            report.add(acc_txt, "acc-hash", "no 'hash=<sha256 of mlperf_log_accuracy.json>' line")
        elif not SHA256_PATTERN.match(hash_value):
            report.add(acc_txt, "acc-hash", f"hash {hash_value!r} is not a sha256 hex digest")
        elif acc_log.is_file():
            # A log that was small enough to stay whole must hash to the recorded value.
            if TRUNCATION_MARKER not in acc_log.read_text(encoding="utf-8", errors="replace"):
                if sha256_file(acc_log) != hash_value:
                    report.add(acc_txt, "acc-hash", f"hash does not match the sha256 of {acc_log.name}")
    if acc_log.is_file() and acc_log.stat().st_size > MAX_ACCURACY_LOG_BYTES:
        report.add(
            acc_log,
            "acc-log-size",
            f"{acc_log.stat().st_size} bytes: over {MAX_ACCURACY_LOG_BYTES} bytes, not truncated",
        )
    detail = acc_dir / DETAIL_LOG
    if detail.is_file():
        try:
            values, errors = read_detail(detail)
        except LogFormatError as exc:
            report.add(detail, "detail-log", str(exc))
        else:
            for message in errors:
                report.add(detail, "detail-error", f"LoadGen logged an error: {message}")
            if values.get("effective_test_mode") != "AccuracyOnly":
                report.add(
                    detail,
                    "acc-mode",
                    f"test mode is {values.get('effective_test_mode')!r}, not AccuracyOnly",
                )


def check_test01(
    compliance_dir: Path, scenario: str, division: str, rules: RoundRules, report: CheckReport
) -> None:
    """TEST01 (closed division): verify files, the compliance performance run, its accuracy files."""
    test_dir = compliance_dir / "TEST01"
    if not test_dir.is_dir():
        report.add(test_dir, "test01-missing", "closed division needs the TEST01 compliance results")
        return
    verify_perf = test_dir / "verify_performance.txt"
    if not verify_perf.is_file():
        report.add(verify_perf, "test01-perf", "missing")
    elif "TEST PASS" not in verify_perf.read_text(encoding="utf-8"):
        report.add(verify_perf, "test01-perf-score", "performance verification did not pass (no 'TEST PASS')")
    _check_performance_folder(
        test_dir / "performance" / "run_1", "test01-perf", "TEST01 ", scenario, division, rules, report
    )

    verify_acc = test_dir / "verify_accuracy.txt"
    acc_dir = test_dir / "accuracy"
    if not verify_acc.is_file():
        report.add(verify_acc, "test01-acc", "missing")
        return
    if not acc_dir.is_dir():
        report.add(acc_dir, "test01-acc", "missing TEST01 accuracy folder")
        return
    deterministic = "TEST PASS" in verify_acc.read_text(encoding="utf-8")
    required = TEST01_ACCURACY_FILES + (() if deterministic else TEST01_NONDETERMINISTIC_FILES)
    mismatch = _file_set_mismatch(acc_dir, required)
    if mismatch:
        report.add(acc_dir, "test01-acc", mismatch)
        return
    if not deterministic:
        baseline = read_map(acc_dir / "baseline_accuracy.txt")
        compliance = read_map(acc_dir / "compliance_accuracy.txt")
        if not baseline or not compliance:
            report.add(acc_dir, "test01-acc", "baseline/compliance accuracy.txt lack an mAP value")
        else:
            delta = abs(1 - baseline / compliance) * 100
            if delta > TEST01_ACCURACY_DELTA_PERCENT:
                report.add(
                    acc_dir,
                    "test01-acc",
                    f"results differ from the accuracy run and the mAP delta {delta:.3f} % is over "
                    f"{TEST01_ACCURACY_DELTA_PERCENT} %",
                )


def _weight_data_types(measurement_dir: Path, tree: TreeLayout) -> str:
    """The measurements JSON's ``weight_data_types`` ("fp32" when unreadable: reported elsewhere)."""
    pattern = "*.json" if tree.separate_measurements else "measurements*.json"
    for path in sorted(measurement_dir.glob(pattern)) if measurement_dir.is_dir() else []:
        try:
            return str(json.loads(path.read_text(encoding="utf-8")).get("weight_data_types") or "fp32")
        except (OSError, ValueError, AttributeError):
            break
    return "fp32"


def check_scenario(
    submitter_dir: Path, system: str, scenario: str, division: str, rules: RoundRules, report: CheckReport
) -> None:
    """One result: its measurements, performance run, accuracy run, and TEST01 where the round checks it."""
    tree = layout(rules.name)
    scenario_dir = submitter_dir / "results" / system / MODEL_NAME / scenario
    measurement_dir = tree.measurements_dir(submitter_dir, system, scenario)
    implementation = check_measurements(measurement_dir, system, scenario, tree, report)
    if tree.separate_measurements and implementation is not None:
        code_dir = tree.code_dir(submitter_dir, implementation)
        if not code_dir.is_dir() and not code_dir.parent.is_dir():
            report.add(code_dir, "code-dir", "the code that produced the results must be here (missing)")
    _check_performance_folder(
        scenario_dir / "performance" / "run_1", "perf-files", "", scenario, division, rules, report
    )
    check_accuracy_dir(scenario_dir / "accuracy", division, report, _weight_data_types(measurement_dir, tree))
    if division == "closed" and rules.checks_test01:
        check_test01(tree.compliance_dir(submitter_dir, system, scenario), scenario, division, rules, report)


def check_submitter(submitter_dir: Path, division: str, rules: RoundRules, report: CheckReport) -> None:
    submitter = submitter_dir.name
    results = submitter_dir / "results"
    systems = submitter_dir / "systems"
    tree = layout(rules.name)
    if not results.is_dir():
        report.add(results, "submitter-layout", "missing results folder")
        return
    if not tree.separate_measurements:
        code_dir = tree.code_dir(submitter_dir)
        if not code_dir.is_dir() or not any(p.is_file() for p in code_dir.rglob("*")):
            report.add(
                code_dir, "code-dir", "the code that produced the results must be here (missing or empty)"
            )
    system_dirs = _dirs(results)
    if not system_dirs:
        report.add(results, "submitter-layout", "no system folder")
    for system_dir in system_dirs:
        system_json = systems / f"{system_dir.name}.json"
        if not system_json.is_file():
            report.add(system_json, "systems-json", f"missing; results/{system_dir.name} needs it")
        else:
            check_system_json(system_json, submitter, division, report)
        model_dirs = _dirs(system_dir)
        if not model_dirs:
            report.add(system_dir, "model", f"no {MODEL_NAME} folder")
        for model_dir in model_dirs:
            if model_dir.name != MODEL_NAME:
                report.add(
                    model_dir, "model", f"unknown model {model_dir.name!r}; this checker knows {MODEL_NAME}"
                )
                continue
            scenarios = {p.name: p for p in _dirs(model_dir)}
            for scenario, scenario_dir in sorted(scenarios.items()):
                if division == "closed" and scenario not in REQUIRED_SCENARIOS + OPTIONAL_SCENARIOS:
                    report.add(
                        scenario_dir, "scenario", f"{scenario} is neither required nor optional for ssd"
                    )
                    continue
                check_scenario(submitter_dir, system_dir.name, scenario, division, rules, report)
            if division == "closed":
                for scenario in REQUIRED_SCENARIOS:
                    if scenario not in scenarios:
                        report.add(
                            model_dir / scenario, "scenario", f"required scenario {scenario} is missing"
                        )


def run_checks(
    submission_dir: str | Path, version: str = "v0.5", allow_test_mode: bool = False
) -> CheckReport:
    """Every rule on the tree at ``submission_dir``; see :func:`check_submission`."""
    root = Path(submission_dir)
    if not root.is_dir():
        raise CheckerInputError(f"submission folder {root} does not exist or is not a folder")
    rules = get_round(version)
    report = CheckReport(allow_test_mode=allow_test_mode)
    for path in _files(root):
        if path.suffix not in (".md", ".pdf"):
            report.add(path, "root-files", "only .md and .pdf files may lie at the root")
    divisions = []
    for path in _dirs(root):
        if path.name in DIVISIONS:
            divisions.append(path)
        elif path.name not in IGNORED_ROOT_FOLDERS:
            report.add(path, "division", f"{path.name!r} is no division ({' | '.join(DIVISIONS)})")
    if not divisions:
        report.add(root, "division", "no closed or open division folder")
    for division_dir in divisions:
        check_tree_hygiene(division_dir, report)
        for path in _files(division_dir):
            report.add(path, "submitter-layout", "files are not allowed beside the submitter folders")
        for submitter_dir in _dirs(division_dir):
            check_submitter(submitter_dir, division_dir.name, rules, report)
    return report


def check_submission(
    submission_dir: str | Path, version: str = "v0.5", allow_test_mode: bool = False
) -> list[CheckError]:
    """All errors of the submission tree at ``submission_dir`` (empty when it passes).

    ``allow_test_mode`` relaxes the rules of :data:`TEST_MODE_RELAXED_RULES`; use
    :func:`run_checks` to also get what was relaxed.
    """
    return run_checks(submission_dir, version, allow_test_mode).errors


def format_report(report: CheckReport, submission_dir: str | Path, version: str) -> str:
    """What the checker tells a person: relaxed rules and findings (test mode), then each error."""
    lines = []
    if report.allow_test_mode:
        lines.append("test mode: relaxed rules: " + "; ".join(TEST_MODE_RELAXED_RULES.values()))
        lines += [f"relaxed: {finding}" for finding in report.relaxed]
    lines += [f"WARNING {warning}" for warning in report.warnings]
    lines += [f"ERROR {error}" for error in report.errors]
    if report.errors:
        lines.append(f"{len(report.errors)} error(s): the submission does not pass")
    else:
        lines.append(f"{submission_dir}: submission passes the {version} checks")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="abtf-ssd-check-submission", description="Check an MLPerf Automotive submission tree (ssd)."
    )
    parser.add_argument(
        "submission_dir", type=Path, help="root of the submission tree (holds closed/ or open/)"
    )
    parser.add_argument("--version", default="v0.5", help="round (default v0.5)")
    parser.add_argument(
        "--allow-test-mode",
        action="store_true",
        help=f"relax the rules a test-mode run cannot meet: {', '.join(TEST_MODE_RELAXED_RULES)}",
    )
    args = parser.parse_args(argv)
    try:
        report = run_checks(args.submission_dir, args.version, args.allow_test_mode)
    except (CheckerInputError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_report(report, args.submission_dir, args.version), end="")
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
