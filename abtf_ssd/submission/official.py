"""The official MLPerf Automotive tools of a round, run as they are: oracles beside our own checks.

``tools`` is an unpacked ``mlcommons/mlperf_automotive`` checkout at the round's ref (a user's clone,
or the pinned tarballs of ``../shared/upstream``). Nothing of it is imported or copied: its scripts
run in a subprocess of this interpreter, with argument lists (never a shell), and what they print
is read back:

- ``tools/submission/submission_checker.py --input <tree> --version <round>``:
  :func:`run_submission_checker` returns its verdict and its ERROR lines;
- ``compliance/TEST01/verify_accuracy.py`` and ``verify_performance.py`` (what the round's
  ``run_verification.py`` calls, without its shell pipelines): :func:`verify_test01` writes their
  output as ``verify_accuracy.txt`` / ``verify_performance.txt``.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from abtf_ssd.fileio import atomic_write_text

CHECKER = Path("tools") / "submission" / "submission_checker.py"
TEST01_DIR = Path("compliance") / "TEST01"
TEST01_ACCURACY_DTYPE = "float32"
"""An ssd response is float32 rows: compare them as float32, not byte by byte."""
CHECKER_TIMEOUT_S = 600

_ERROR_LINE = re.compile(r"^\[[^\]]* ERROR\] (.*)$")
_BROKEN_LOG_CALL = re.compile(r'^Message: "(.*)"$')
"""A log call of the checker whose arguments do not fit its format: Python prints the message so."""
_PASS_LINE = "TEST PASS"


OFFICIAL_RULES: tuple[tuple[str, str], ...] = (
    (r"performance_sample_count, found", "perf-sample-count"),
    (r"Early stopping condition was not met", "min-query-count"),
    (r"Required minimum Query Count not met", "min-query-count"),
    (r"Test duration less than", "min-duration"),
    (r"(qsl|sample_index|schedule)_rng_seed is wrong", "seed"),
    (r"constant_gen is set to false", "constant-gen"),
    (r"target_latency_percentile is required", "percentile"),
    (r"Latency constraint( with early stopping)? not met", "latency-constraint"),
    (r"contains errors:|^Loadgen |mlperf_log_detail\.txt contains errors", "detail-error"),
    (r"accuracy not valid but taken for open", "map-target-open"),
    (r"accuracy not valid", "map-target"),
    (r"has no accuracy\.txt", "acc-files"),
    (r"not hash value for mlperf_log_accuracy|is not truncated", "acc-hash"),
    (r"no measurement_dir for", "measurements-dir"),
    (r"is missing code_dir", "code-dir"),
    (
        r"is missing \S*\*\.json|, field \S+ is (missing|unknown)|requires a meaningful response",
        "measurements-json",
    ),
    (r"Missing TEST01|no compliance dir", "test01-missing"),
    (r"Compliance test performance check in .* failed", "test01-perf-score"),
    (r"verify_performance\.txt is missing|has no performance/run_1 directory", "test01-perf"),
    (r"verify_accuracy\.txt is missing|has no accuracy directory", "test01-acc"),
    (r"Compliance test accuracy check .* failed", "test01-acc"),
    (r"has invalid system type", "system-type"),
    (r"has invalid status", "status"),
    (r"has file list mismatch", "files"),
    (r"Root contains files outside division folder", "root-files"),
    (r"neither required nor optional", "scenario"),
    (r"does not have all required scenarios", "scenario"),
    (
        r"empty directories|git unfriendly name|spaces in their names|__pycache__"
        r"|size greater than 50 MB|broken symbolic",
        "tree",
    ),
)
"""The official checker's ERROR messages (regular expressions, first match wins) -> our rule ids."""

CONSEQUENCES = (
    r" has issues$",
    r"^NoResults ",
    r"is OK but accuracy has issues",
    r"^[^ ]+mlperf_log_detail\.txt$|^\S+$",
    r"caused exception in check_performance_dir",
)
"""Official ERROR lines that only repeat that an earlier finding failed a result (or print a log line)."""


SILENT_RULES = {
    "result-valid": "an INVALID run is only reported as '<run> has issues'",
}
"""Rules the official checker enforces without a message of its own."""
STRICTER_RULES = {
    "loadgen": "a closed result must come from the automotive LoadGen",
    "result-metric": "the round's metric must be in the detail log",
}
"""Rules of ours that the official checker does not have (it would fail differently or not at all)."""


IMPLIED_RULES = {"test01-missing": {"test01-acc", "test01-perf"}}
"""An official finding that brings others about (no TEST01 folder: no verify files either)."""


def disagreement(ours: set[str], official: set[str]) -> tuple[set[str], set[str]]:
    """(rules only we found, rules only the official checker found), the silent and stricter rules aside.

    Our file-list rules (``perf-files``, ``acc-files``) are the official ``files``.
    """
    mapped = {"files" if rule in ("perf-files", "acc-files") else rule for rule in ours}
    mapped -= set(SILENT_RULES) | set(STRICTER_RULES)
    official = set(official)
    for rule, implied in IMPLIED_RULES.items():
        if rule in official:
            official -= implied
    return mapped - official, official - mapped


def classify(message: str) -> str | None:
    """Our rule id for an official checker ERROR message; None for a line that only repeats an earlier
    finding (:data:`CONSEQUENCES`); ``"unknown"`` for one this table does not know."""
    for pattern, rule in OFFICIAL_RULES:
        if re.search(pattern, message):
            return rule
    if any(re.search(pattern, message) for pattern in CONSEQUENCES):
        return None
    return "unknown"


class OfficialToolsError(ValueError):
    """The folder is not an unpacked mlperf_automotive checkout, or a tool could not run."""


@dataclass
class CheckerVerdict:
    """What the official submission checker said of a tree."""

    returncode: int
    errors: list[str] = field(default_factory=list)
    """Its ERROR lines (message only), in order; the final 'SUMMARY: submission has errors' excluded."""
    log: str = ""

    @property
    def passed(self) -> bool:
        return self.returncode == 0 and not self.errors

    @property
    def rules(self) -> set[str]:
        """Our rule ids for its ERROR lines (:func:`classify`), consequences left out. The lines after
        ``<detail log> contains errors:`` are the LoadGen errors it quotes, one a line."""
        found: set[str] = set()
        quoting = False
        for message in self.errors:
            rule = classify(message)
            if quoting and rule == "unknown":
                continue
            quoting = message.endswith("contains errors:")
            if rule is not None:
                found.add(rule)
        return found


def check_tools(tools: str | Path) -> Path:
    """``tools`` as an absolute path, if it holds the submission checker and the TEST01 scripts."""
    root = Path(tools).expanduser().resolve()
    for needed in (CHECKER, TEST01_DIR / "verify_accuracy.py", TEST01_DIR / "verify_performance.py"):
        if not (root / needed).is_file():
            raise OfficialToolsError(
                f"{root}: no {needed}; give the folder of an unpacked mlcommons/mlperf_automotive checkout "
                "at the round's ref (for example ../shared/upstream/mlperf_automotive-v0.5.tar.gz unpacked)"
            )
    return root


def run_submission_checker(tools: str | Path, submission_dir: str | Path, version: str) -> CheckerVerdict:
    """Run the round's official ``submission_checker.py`` on ``submission_dir``.

    It runs in a temporary working folder, where it writes its summary CSV: in the tree, that file
    would itself be flagged as a file outside the division folders.
    """
    root = check_tools(tools)
    tree = Path(submission_dir).resolve()
    with tempfile.TemporaryDirectory(prefix="abtf-official-checker-") as work:
        argv = [
            sys.executable, str(root / CHECKER), "--input", str(tree), "--version", version,
            "--csv", str(Path(work) / "summary.csv"),
        ]  # fmt: skip
        try:
            proc = subprocess.run(
                argv, cwd=work, capture_output=True, text=True, timeout=CHECKER_TIMEOUT_S, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise OfficialToolsError(f"{root / CHECKER}: could not run ({error})") from None
    log = proc.stdout + proc.stderr
    errors = []
    for line in log.splitlines():
        match = _ERROR_LINE.match(line) or _BROKEN_LOG_CALL.match(line)
        message = match.group(1).strip() if match else None
        if message and not message.startswith("SUMMARY:"):
            errors.append(message)
    return CheckerVerdict(proc.returncode, errors, log)


def _run_script(script: Path, args: list[str]) -> str:
    try:
        proc = subprocess.run(
            [sys.executable, str(script), *args],
            capture_output=True,
            text=True,
            timeout=CHECKER_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise OfficialToolsError(f"{script}: could not run ({error})") from None
    # The scripts end a failed verification with sys.exit(<message>): the message is on stderr.
    return proc.stdout + proc.stderr


def verify_test01(
    tools: str | Path,
    reference_performance: Path,
    reference_accuracy_log: Path,
    test_run: Path,
    destination: Path,
) -> tuple[bool, bool]:
    """The official TEST01 verification of one result; returns (performance passed, accuracy passed).

    ``reference_performance``: the submission's performance run folder (its mlperf_log_summary.txt);
    ``reference_accuracy_log``: the accuracy run's mlperf_log_accuracy.json; ``test_run``: the TEST01
    run folder (its summary and accuracy log). Writes ``verify_accuracy.txt`` and
    ``verify_performance.txt`` into ``destination``, as ``run_verification.py`` does.
    """
    root = check_tools(tools)
    accuracy = _run_script(
        root / TEST01_DIR / "verify_accuracy.py",
        [
            "--dtype",
            TEST01_ACCURACY_DTYPE,
            "-r",
            str(reference_accuracy_log),
            "-t",
            str(test_run / "mlperf_log_accuracy.json"),
        ],
    )
    performance = _run_script(
        root / TEST01_DIR / "verify_performance.py",
        [
            "-r",
            str(reference_performance / "mlperf_log_summary.txt"),
            "-t",
            str(test_run / "mlperf_log_summary.txt"),
        ],
    )
    atomic_write_text(destination / "verify_accuracy.txt", accuracy)
    atomic_write_text(destination / "verify_performance.txt", performance)
    return _PASS_LINE in performance, _PASS_LINE in accuracy


def check_with_official(
    tools: str | Path, submission_dir: str | Path, version: str, allow_test_mode: bool
) -> tuple[bool, str]:
    """The official checker of ``version`` on the tree, side by side with ours: (passed, report text).

    Passed: the official checker found nothing our checker (without test-mode relaxations) did not,
    and, outside test mode, nothing at all. In test mode the run-length findings are expected.
    """
    from abtf_ssd.submission.checker import run_checks
    from abtf_ssd.submission.layout import TEST_MODE_RELAXED_RULES

    verdict = run_submission_checker(tools, submission_dir, version)
    ours = run_checks(submission_dir, version).rules
    only_ours, only_official = disagreement(ours, verdict.rules)
    lines = [
        f"official {version} checker: {len(verdict.errors)} ERROR line(s); rules {sorted(verdict.rules)}"
    ]
    lines += [f"  official ERROR {message}" for message in verdict.errors]
    if only_official:
        lines.append(f"found by the official checker only: {sorted(only_official)}")
    if only_ours:
        lines.append(f"found by our checker only: {sorted(only_ours)}")
    unexpected = verdict.rules - (set(TEST_MODE_RELAXED_RULES) if allow_test_mode else set())
    passed = not only_official and not unexpected
    lines.append("official checker: " + ("agrees, no finding beyond test mode's" if passed else "FAILED"))
    return passed, "\n".join(lines) + "\n"
