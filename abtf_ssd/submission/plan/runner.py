"""The plan runner: the checks before anything runs, every step not finished yet with a progress
line, then the submission tree, the checkers and the tarball."""

from __future__ import annotations

import dataclasses
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from abtf_ssd.fileio import atomic_write_json, exclusive_lock
from abtf_ssd.loadgen import rules
from abtf_ssd.loadgen.harness import COMPLIANCE_TEST
from abtf_ssd.submission.plan.estimate import (
    StepEstimate,
    estimate,
    format_duration,
    run_latency,
    step_queries,
    total_hours,
)
from abtf_ssd.submission.plan.format import SUBMISSION_DIR_NAME, Plan, PlanError, plan_steps
from abtf_ssd.submission.plan.identity import (
    MARKER_NAME,
    Resolved,
    _step_done_on_disk,
    finished,
    identity_changes,
    read_marker,
    resolve_source,
    run_options,
    step_folder,
    step_identity,
)
from abtf_ssd.submission.plan.summary import PlanOutcome, _write_summary, format_summary, summary_rows

LOCK_NAME = ".plan.lock"
PROGRESS_INTERVAL_S = 60.0
"""One progress line a minute when stdout is not a terminal (a log file, CI)."""
TTY_PROGRESS_INTERVAL_S = 2.0


# ---------------------------------------------------------------------------------------------
# Progress


class Progress:
    """Runs done/remaining, the current run's queries and an ETA: on a terminal a line redrawn every
    :data:`TTY_PROGRESS_INTERVAL_S`, else one line every :data:`PROGRESS_INTERVAL_S`."""

    def __init__(
        self, total: int, done: int, stream: TextIO | None = None, interval_s: float | None = None
    ) -> None:
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.interval_s = interval_s or (TTY_PROGRESS_INTERVAL_S if self.tty else PROGRESS_INTERVAL_S)
        self.total, self.done = total, done
        self.current: str | None = None
        self.expected_queries = 0
        self.answered = -1  # the harness's warm-up inference is the first call
        self.step_started = time.monotonic()
        self.later_seconds = 0.0
        self.later_unknown_queries = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.tty:
            self.stream.write("\n")

    def start(self, label: str, queries: int, later: list[StepEstimate]) -> None:
        """A run starts; ``later``: the estimates of the runs after it (those without a latency are
        counted at the current run's pace)."""
        self.current, self.expected_queries, self.answered = label, queries, -1
        self.later_seconds = sum(e.seconds for e in later if e.seconds is not None)
        self.later_unknown_queries = sum(e.queries for e in later if e.seconds is None)
        self.step_started = time.monotonic()
        self.say(f"[plan] run {self.done + 1}/{self.total}: {label} ({queries} queries)")

    def answered_samples(self, count: int) -> None:
        self.answered += count if self.answered >= 0 else 1

    def finish(self) -> None:
        self.done += 1
        self.current = None

    def line(self) -> str:
        text = f"[plan] runs done {self.done}/{self.total}, {self.total - self.done} left"
        if self.current is None:
            return text
        answered = max(0, self.answered)
        text += f" | {self.current}: {answered}/{self.expected_queries} queries"
        elapsed = time.monotonic() - self.step_started
        if answered:
            pace = elapsed / answered
            queries_left = max(0, self.expected_queries - answered) + self.later_unknown_queries
            text += f" | ETA {format_duration(queries_left * pace + self.later_seconds)}"
        return text

    def say(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
        self.stream.write(text + "\n")
        self.stream.flush()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            if self.tty:
                self.stream.write("\r\033[K" + self.line())
            else:
                self.stream.write(self.line() + "\n")
            self.stream.flush()


class _CountingBackend:
    """A backend that tells :class:`Progress` how many samples it answered."""

    def __init__(self, inner: Any, on_samples: Callable[[int], None]) -> None:
        self._inner = inner
        self._on_samples = on_samples

    def predict(self, batch: Any) -> Any:
        result = self._inner.predict(batch)
        self._on_samples(len(batch))
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


# ---------------------------------------------------------------------------------------------
# Running a plan


def preflight(plan: Plan, max_hours: float | None = None, latency_ms: float | None = None) -> str:
    """Refuse, before anything is written, a plan that cannot run here or would take too long.

    Returns the LoadGen kind installed (``automotive`` | ``inference``).
    """
    from abtf_ssd.loadgen.build import installed_loadgen_kind
    from abtf_ssd.submission.sysinfo import run_problem

    if max_hours is not None:
        left = [s for s in plan_steps(plan) if not _step_done_on_disk(plan, s)]
        hours = total_hours(estimate(plan, latency_ms, left))
        if hours is None:
            raise PlanError(
                f"plan {plan.path}: --max-hours needs a latency for every run left: give --latency-ms "
                "or latency_ms in the plan (abtf-ssd plan estimate shows which are unknown)"
            )
        if hours > max_hours:
            raise PlanError(
                f"plan {plan.path}: estimated {hours:.1f} h for the runs left, over --max-hours "
                f"{max_hours:g}; see abtf-ssd plan estimate"
            )
    kind = installed_loadgen_kind()
    if plan.division == "closed" and kind != "automotive":
        raise PlanError(
            f"plan {plan.path}: division: closed needs the automotive LoadGen, this environment has the "
            f"inference one: {rules.AUTOMOTIVE_LOADGEN_HINT}; or plan the open division"
        )
    for run in plan.runs:
        problem = run_problem(run.framework, run.device)
        if problem:
            raise PlanError(f"plan {plan.path}: {run.key}: {run.framework} on {run.device}: {problem}")
        try:
            rules.loadgen_scenario(run.scenario)
            if run.user_conf is not None:
                rules.check_user_conf(run.user_conf)
        except rules.RulesError as e:
            raise PlanError(f"plan {plan.path}: {run.key}: {e}") from None
        if run.source.kind == "local":
            model = (
                run.source.model[run.framework] if isinstance(run.source.model, dict) else run.source.model
            )
            for what, path in (("model", model), ("dataset", run.source.dataset)):
                if path is None or not path.exists():
                    raise PlanError(f"plan {plan.path}: {run.key}.source.{what}: {path} does not exist")
            problem = run_problem(run.framework, run.device, str(model))
            if problem:
                raise PlanError(f"plan {plan.path}: {run.key}.source.model: {problem}")
    return kind


def run_plan(
    plan: Plan,
    max_hours: float | None = None,
    latency_ms: float | None = None,
    official_tools: str | Path | None = None,
    stream: TextIO | None = None,
    progress_interval_s: float | None = None,
) -> PlanOutcome:
    """Run every step not finished yet, then build, check and pack the submission.

    Raises:
        PlanError: the plan cannot run here, or is estimated over ``max_hours`` (nothing written).
        abtf_ssd.loadgen.harness.RunInterrupted: CTRL-C (exit status 130); finished steps are kept.
    """
    stream = stream or sys.stdout
    loadgen_kind = preflight(plan, max_hours, latency_ms)
    if official_tools is not None:
        from abtf_ssd.submission.official import check_tools

        official_tools = check_tools(official_tools)  # refused before anything runs
    plan.output.mkdir(parents=True, exist_ok=True)

    def busy() -> Exception:
        return PlanError(f"{plan.output}: another plan runner is using this folder")

    with exclusive_lock(plan.output / LOCK_NAME, busy):
        from abtf_ssd.submission.tree import tarball_path

        # The tarball of an earlier run stands for earlier results: made again only once all passes.
        tarball_path(plan.submission_dir).unlink(missing_ok=True)
        outcome = PlanOutcome()
        try:
            _run_steps(plan, loadgen_kind, latency_ms, outcome, stream, progress_interval_s)
            if not outcome.failed:
                _finish(plan, outcome, official_tools, stream)
        except (KeyboardInterrupt, SystemExit) as stop:
            print(
                f"[plan] interrupted: finished runs are kept; rerun to resume: {_rerun_hint(plan)}",
                file=sys.stderr,
            )
            if isinstance(stop, SystemExit):
                raise
            from abtf_ssd.loadgen.sut import EXIT_INTERRUPTED

            raise SystemExit(EXIT_INTERRUPTED) from None
        if outcome.failed:
            for label, error in outcome.failed.items():
                print(f"[plan] FAILED {label}: {error}", file=stream)
            print(
                "[plan] no submission built: fix the failed runs and rerun (finished runs are kept)",
                file=stream,
            )
    return outcome


def _rerun_hint(plan: Plan) -> str:
    return f"abtf-ssd plan run {plan.path} --output {plan.output}"


def _run_steps(
    plan: Plan,
    loadgen_kind: str,
    latency_ms: float | None,
    outcome: PlanOutcome,
    stream: TextIO,
    progress_interval_s: float | None,
) -> None:
    from abtf_ssd.loadgen.harness import RunFailedError, run_benchmark
    from abtf_ssd.model.backends import create_backend
    from abtf_ssd.submission.sysinfo import SUT_INFO_NAME, write_sut_info

    steps = plan_steps(plan)
    with Progress(len(steps), 0, stream, progress_interval_s) as progress:
        backends: dict[tuple[Any, ...], Any] = {}
        sources: dict[tuple[str, str], Resolved | None] = {}
        for index, step in enumerate(steps):
            run = step.run
            if run.label in outcome.failed:
                progress.finish()
                continue
            try:
                if (run.key, run.framework) not in sources:
                    sources[(run.key, run.framework)] = resolve_source(plan, run, build=True)
                resolved = sources[(run.key, run.framework)]
                assert resolved is not None
                identity = step_identity(plan, step, resolved, loadgen_kind)
                folder = step_folder(plan, step)
                marker = read_marker(folder)
                if finished(marker, identity):
                    outcome.skipped.append(step.label)
                    progress.say(f"[plan] run {index + 1}/{len(steps)}: {step.label}: finished before, kept")
                    progress.finish()
                    continue
                changes = identity_changes(marker, identity)
                if changes:
                    progress.say(f"[plan] {step.label}: runs again ({', '.join(changes)} changed)")
                sut_info = plan.results_dir / run.system / SUT_INFO_NAME
                if not sut_info.is_file():
                    sut_info.parent.mkdir(parents=True, exist_ok=True)
                    write_sut_info(sut_info, run.framework, run.device)
                later = estimate(plan, latency_ms, steps[index + 1 :])
                latency = run_latency(plan, run, latency_ms).ms
                progress.start(step.label, step_queries(plan, step, latency), later)
                # Removed first: a step killed from here on has no marker and runs again.
                (folder / MARKER_NAME).unlink(missing_ok=True)
                options = run_options(plan, step, resolved)
                backend_key = (
                    run.framework,
                    str(resolved.model),
                    run.device,
                    run.threads,
                    resolved.config_name,
                )
                if backend_key not in backends:
                    backends.clear()
                    backends[backend_key] = create_backend(*backend_key)
                backend = _CountingBackend(backends[backend_key], progress.answered_samples)
                with tempfile.TemporaryDirectory(prefix="abtf-plan-audit-") as audit_dir:
                    if step.kind == COMPLIANCE_TEST:
                        audit = Path(audit_dir) / "audit.config"
                        audit.write_text(
                            rules.audit_config_text(plan.round, COMPLIANCE_TEST), encoding="utf-8"
                        )
                        options = dataclasses.replace(options, audit_config=audit)
                    options = dataclasses.replace(options, command=f"{_rerun_hint(plan)}  # {step.label}")
                    result = run_benchmark(options, backend)
                if not result.ok:
                    raise RunFailedError(result.failure_message(), result)
                atomic_write_json(
                    folder / MARKER_NAME,
                    {
                        "identity": identity,
                        "result": result.summary.result,
                        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    },
                )
                outcome.ran.append(step.label)
                progress.finish()
                verdict = f" ({result.summary.result})" if result.summary.result else ""
                progress.say(f"[plan] {step.label}: done{verdict}")
            except (ValueError, OSError, RuntimeError) as error:
                # This run's later steps are skipped; the other runs go on.
                outcome.failed[run.label] = f"{step.kind}: {error}"
                progress.finish()
                progress.say(f"[plan] {step.label}: FAILED: {error}")


def _finish(plan: Plan, outcome: PlanOutcome, official_tools: str | Path | None, stream: TextIO) -> None:
    """The submission tree for every system, our checker, the official one if given, the tarball."""
    from abtf_ssd.submission.runs import SubmissionError
    from abtf_ssd.submission.tree import (
        SubmissionCheckError,
        checker,
        generate_submission,
        make_tarball,
    )

    staging = plan.output / ".submission-new"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    tree = staging / SUBMISSION_DIR_NAME
    tree.mkdir()
    for system, sut_info in plan.systems.items():
        try:
            generate_submission(
                plan.results_dir,
                tree,
                plan.submitter,
                plan.division,
                system,
                status=plan.status,
                sut_info=sut_info,
                allow_test_mode=plan.test_mode,
                version=plan.round,
                official_tools=official_tools,
            )
        except SubmissionCheckError:
            pass  # the tree is kept; the checker below names every error
        except SubmissionError as e:
            outcome.checker_errors.append(f"{system}: {e}")
    if plan.submission_dir.exists():
        shutil.rmtree(plan.submission_dir)
    tree.rename(plan.submission_dir)
    shutil.rmtree(staging, ignore_errors=True)
    report = checker.run_checks(plan.submission_dir, plan.round, plan.test_mode)
    outcome.checker_errors += [str(e) for e in report.errors]
    outcome.warnings = [str(w) for w in getattr(report, "warnings", [])]
    official_ok = True
    if official_tools is not None:
        official_ok, outcome.official = _official_check(plan, Path(official_tools))
    outcome.rows = summary_rows(plan, [str(e) for e in report.errors])
    # A test-mode tree never passes the official checker (its runs are short): reported, not a gate.
    if not outcome.checker_errors and (official_ok or plan.test_mode):
        outcome.tarball = make_tarball(plan.submission_dir)
        outcome.tarball_sha256 = checker.sha256_file(outcome.tarball)
    _write_summary(plan, outcome)
    print(format_summary(plan, outcome), file=stream)


def _official_check(plan: Plan, tools: Path) -> tuple[bool, str]:
    """The round's official submission checker on the tree: (passed, what it said in a line)."""
    from abtf_ssd.submission.official import run_submission_checker

    verdict = run_submission_checker(tools, plan.submission_dir, plan.round)
    if verdict.passed:
        return True, "passes"
    first = f": {verdict.errors[0]}" if verdict.errors else ""
    return False, f"FAILS (exit status {verdict.returncode}, {len(verdict.errors)} error(s){first})"
