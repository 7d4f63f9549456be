"""``abtf-ssd plan status``: what the disk says of each step of a plan; reads files only, runs nothing."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from abtf_ssd.submission.layout import DETAIL_LOG
from abtf_ssd.submission.plan.estimate import estimate, total_hours
from abtf_ssd.submission.plan.format import Plan, Step, plan_steps
from abtf_ssd.submission.plan.identity import (
    _step_done_on_disk,
    finished,
    identity_changes,
    read_marker,
    resolve_source,
    step_folder,
    step_identity,
)
from abtf_ssd.submission.plan.summary import SUMMARY_NAME, _results_json


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
