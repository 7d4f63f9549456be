"""Submission plans: a YAML file that names every run of a submission, and the runner that makes it.

A plan (format in ``automation/README.md``) names the round, division, submitter and systems; each
system lists runs as framework x device x scenarios. Each planned run (a system's scenario) is a few
LoadGen runs, its *steps*; a finished step keeps a marker with its identity, so a rerun resumes.

Output folder::

    <output>/results/<system>/ssd/<scenario>/...   the harness's folders, each with plan-run.json
    <output>/sources/                               synthetic data and models, mlc downloads
    <output>/submission/ and submission.tar.gz       the checked tree and its tarball
    <output>/summary.json                            the last run's summary (tarball sha256, verdicts)

The parts, each importing only those above it:

- ``format``: the plan format, its dataclasses and validation (:func:`load_plan`), its steps;
- ``identity``: a run's sources, a step's folder and identity, the markers a rerun compares;
- ``estimate``: queries and hours of each step without a run (``abtf-ssd plan estimate``);
- ``summary``: a plan run's outcome, its summary table and ``summary.json``;
- ``status``: what the disk says of each step (``abtf-ssd plan status``), runs nothing;
- ``runner``: the checks before a run, the steps with their progress line, the submission;
- ``cli``: :func:`main_action`, the entry of ``abtf-ssd plan`` and of the MLC script.

This package re-exports the entry and the calls most callers use.

May import: the package root, ``data``, ``model``, ``loadgen`` and the rest of ``submission``.
"""

from __future__ import annotations

from abtf_ssd.submission.plan.cli import ACTIONS, main_action
from abtf_ssd.submission.plan.format import PlanError, load_plan, plan_steps
from abtf_ssd.submission.plan.runner import run_plan
from abtf_ssd.submission.plan.status import plan_status

__all__ = ["ACTIONS", "PlanError", "load_plan", "main_action", "plan_status", "plan_steps", "run_plan"]
