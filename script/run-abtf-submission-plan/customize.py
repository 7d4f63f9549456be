"""MLC glue for run-abtf-submission-plan: env -> abtf_ssd.submission.plan.main_action (run|status|estimate)"""

import os


def preprocess(i):
    from abtf_ssd.mlc.scripts import mlc_step

    return mlc_step("run-abtf-submission-plan", _plan, i["env"])


def _plan(env):
    from abtf_ssd.submission.plan.cli import main_action

    plan_file = env.get("MLC_ABTF_PLAN_FILE", "")
    if not plan_file:
        raise ValueError("give the plan: --plan=<file>, for example --plan=automation/plans/demo.yaml")
    main_action(
        env["MLC_ABTF_PLAN_ACTION"],
        os.path.abspath(plan_file),
        output=env.get("MLC_ABTF_PLAN_OUTPUT") or None,
        max_hours=_number(env, "MLC_ABTF_PLAN_MAX_HOURS", "--max_hours"),
        latency_ms=_number(env, "MLC_ABTF_PLAN_LATENCY_MS", "--latency_ms"),
        official_tools=env.get("MLC_ABTF_PLAN_OFFICIAL_TOOLS") or None,
    )


def _number(env, key, flag):
    value = str(env.get(key, "")).strip()
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{flag}={value!r} is not a number") from None
