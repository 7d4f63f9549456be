"""``abtf-ssd plan run|status|estimate <plan>``: the entry of the command line and of the MLC script
``run-abtf-submission-plan``."""

from __future__ import annotations

import sys
from typing import TextIO

from abtf_ssd.submission.plan.estimate import estimate, format_estimate, total_hours
from abtf_ssd.submission.plan.format import PlanError, load_plan
from abtf_ssd.submission.plan.runner import run_plan
from abtf_ssd.submission.plan.status import format_status, plan_status

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
