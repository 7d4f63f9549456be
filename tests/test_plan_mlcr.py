"""``mlcr run,abtf,submission-plan`` through the real mlcr in an MLC home of its own: the demo plan
end to end as README types it (from the repository, plan path relative), its status, the estimate
of a template, and a malformed plan refused in one line naming the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_mlc_scripts import REPO, mlcr, registered_mlc_home

from abtf_ssd.submission import checker
from abtf_ssd.submission.plan.summary import SUMMARY_NAME


@pytest.fixture(scope="module")
def plan_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], Path]:
    return registered_mlc_home(tmp_path_factory, "plan_mlc_home")


def test_demo_plan_through_mlcr_then_status(plan_home: tuple[dict[str, str], Path]) -> None:
    env, home = plan_home
    output = home / "demo-out"
    stdout = mlcr(
        env, REPO, "run,abtf,submission-plan", "--plan=automation/plans/demo.yaml", f"--output={output}"
    )
    summary = json.loads((output / SUMMARY_NAME).read_text())
    assert summary["tarball"] == str(output / "submission.tar.gz")
    assert f"tarball: {summary['tarball']} sha256 {summary['tarball_sha256']}" in stdout
    assert checker.check_submission(output / "submission", "v0.5", allow_test_mode=True) == []
    status = mlcr(
        env,
        REPO,
        "run,abtf,submission-plan,_status",
        "--plan=automation/plans/demo.yaml",
        f"--output={output}",
    )
    assert "runs done 4/4; left 0" in status and summary["tarball_sha256"] in status


def test_estimate_of_a_template_through_mlcr(plan_home: tuple[dict[str, str], Path]) -> None:
    env, home = plan_home
    stdout = mlcr(
        env,
        home,
        "run,abtf,submission-plan,_estimate",
        f"--plan={REPO}/automation/plans/cpu-v0.5.yaml",
        "--latency_ms=20000",
    )
    total = next(line for line in stdout.splitlines() if line.startswith("total "))
    assert total.split()[-2:] == ["107:07:20", "107.12"]


def test_a_malformed_plan_is_refused_by_mlcr_naming_the_key(plan_home: tuple[dict[str, str], Path]) -> None:
    env, home = plan_home
    bad = home / "bad.yaml"
    bad.write_text("round: v0.5\ndivision: open\nsubmitter: org\nsystems:\n  - name: x\n    runs: 3\n")
    output = mlcr(env, home, "run,abtf,submission-plan", f"--plan={bad}", ok=False)
    assert f"run-abtf-submission-plan: plan {bad}: systems[0].runs: expected a non-empty list" in output
    assert "Traceback" not in output
    assert not (home / "bad-submission").exists()
