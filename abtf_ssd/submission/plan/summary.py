"""The outcome of a plan run and its summary: a row per system and scenario, printed and written
to :data:`SUMMARY_NAME` (tarball sha256, verdicts)."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from abtf_ssd.fileio import atomic_write_json
from abtf_ssd.loadgen import rules
from abtf_ssd.loadgen.harness import RESULTS_JSON
from abtf_ssd.submission.layout import DETAIL_LOG
from abtf_ssd.submission.plan.format import ACCURACY, PERFORMANCE, Plan, PlannedRun, Step
from abtf_ssd.submission.plan.identity import step_folder

SUMMARY_NAME = "summary.json"


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
    from abtf_ssd.submission.logs import read_detail

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
