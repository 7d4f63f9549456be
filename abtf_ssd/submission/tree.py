"""Turn harness results into an MLPerf Automotive submission tree that the checker accepts.

Input, as written by :mod:`abtf_ssd.loadgen.harness` (one folder per scenario)::

    <results_dir>/<system>/ssd/<scenario>/
      performance/run_1/   mlperf_log_summary.txt mlperf_log_detail.txt user.conf [results.json ...]
      accuracy/            the same logs, mlperf_log_accuracy.json, accuracy.txt ("mAP: <value>")
      TEST01/performance/run_1/ (closed)  the compliance run (audit.config), its accuracy log
    <results_dir>/<system>/mlc-sut-info.json (or <results_dir>/mlc-sut-info.json): the system

Output: ``<submission_dir>/<division>/<submitter>/`` in the layout of the round's official
checker (:data:`abtf_ssd.submission.layout.LAYOUTS`: v1.0 ``{systems, src/ssd, results}``, v0.5 ``{systems,
code/ssd/<implementation>, measurements, results, compliance}``). The accuracy log is truncated
the way the upstream truncation tool does it (first and last 4096 bytes around
``"\\n\\n...\\n\\n"``) when it is over 10 KiB, and ``hash=<sha256 of the original log>`` is appended
to accuracy.txt. For the closed division, TEST01 is verified (:mod:`abtf_ssd.submission.test01`):
performance (early-stopping estimates within 10 %, 20 % at or under 200 us) and accuracy (each
compliance-log response equals the accuracy run's response for that ``qsl_idx``); with
``official_tools`` (an unpacked mlperf_automotive checkout) the round's own TEST01 scripts verify it
instead (:func:`abtf_ssd.submission.official.verify_test01`). A closed-division result needs the
automotive LoadGen; logs of the PyPI inference LoadGen are refused for it
(:func:`abtf_ssd.submission.logs.is_automotive_loadgen`) and accepted, with a note, for the open division.
The finished tree is checked with :func:`abtf_ssd.submission.checker.run_checks`.

Here: the generator itself (:func:`generate_submission` and its command line), the accuracy-log
truncation and the code folder and tarball. The runs it reads are in :mod:`abtf_ssd.submission.runs`,
the system JSON, measurements and README.md it writes in :mod:`abtf_ssd.submission.describe`.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import abtf_ssd
from abtf_ssd.fileio import atomic_output, atomic_write_bytes, atomic_write_json, atomic_write_text
from abtf_ssd.loadgen.harness import COMMAND_TXT, COMPLIANCE_TEST, USER_CONF
from abtf_ssd.loadgen.report import LogFormatError
from abtf_ssd.loadgen.rules import AUTOMOTIVE_LOADGEN_HINT, MODEL_NAME
from abtf_ssd.submission import checker
from abtf_ssd.submission.checker import CheckError, sha256_file
from abtf_ssd.submission.describe import NOT_APPLICABLE, measurements, scenario_readme, system_description
from abtf_ssd.submission.layout import (
    ACCURACY_LOG,
    ACCURACY_TXT,
    DEFAULT_IMPLEMENTATION,
    DETAIL_LOG,
    DIVISIONS,
    MAP_TARGET,
    MAX_ACCURACY_LOG_BYTES,
    MAX_FILE_BYTES,
    STATUSES,
    SUMMARY_LOG,
    TEST_MODE_RELAXED_RULES,
    TRUNCATION_MARKER,
    TreeLayout,
    layout,
)
from abtf_ssd.submission.logs import (
    is_automotive_loadgen,
    loadgen_description,
    read_accuracy_entries,
    read_detail,
    read_map,
)
from abtf_ssd.submission.runs import (
    ScenarioRuns,
    SubmissionError,
    check_run_status,
    copy_atomic,
    find_dataset_dir,
    find_scenarios,
    load_sut_info,
    read_run_info,
)
from abtf_ssd.submission.test01 import write_test01

logger = logging.getLogger(__name__)

DEFAULT_STATUS = "development"
TRUNCATE_KEEP_BYTES = 4096
"""Bytes of the accuracy log kept at its head and at its tail when it is truncated."""

INFERENCE_LOADGEN_WHY = (
    "the PyPI mlcommons-loadgen wheel is the inference LoadGen: it has no ConstantStream and no "
    "ssd in its built-in config, and in performance mode it loads samples 0..127 instead of a "
    "seeded random 128, so its logs are not valid closed-division automotive results"
)


class SubmissionCheckError(SubmissionError):
    """The generated tree does not pass the checker; :attr:`errors` lists why."""

    def __init__(self, errors: list[CheckError]):
        self.errors = errors
        lines = "\n".join(f"  {e}" for e in errors)
        super().__init__(f"the generated submission fails {len(errors)} check(s):\n{lines}")


# --------------------------------------------------------------------------------------------
# Accuracy log truncation


def truncate_accuracy_log(source: Path, destination: Path) -> str:
    """Copy ``source`` to ``destination``, truncated if over 10 KiB; return the original's sha256.

    As the upstream truncation tool: the first and the last 4096 bytes with
    ``"\\n\\n...\\n\\n"`` between them. A log that fits is copied whole, so its hash can be checked.
    """
    digest = sha256_file(source)
    size = source.stat().st_size
    if size <= MAX_ACCURACY_LOG_BYTES:
        copy_atomic(source, destination)
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
    if read_map(source) is None:
        raise SubmissionError(f"{source}: no 'mAP: <value>' line; compute it with `abtf-ssd accuracy`")
    return "\n".join(lines) + f"\nhash={digest}\n"


# --------------------------------------------------------------------------------------------
# Files


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
            if source.stat().st_size > MAX_FILE_BYTES:
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
    run_info = read_run_info(runs)
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
    copy_atomic(user_conf, measured / USER_CONF)
    atomic_write_json(
        measured / target.tree.measurements_file(target.system_name, runs.name, target.implementation),
        measurements(run_info, measurement_overrides),
    )

    run_dir = results / "performance" / "run_1"
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in (SUMMARY_LOG, DETAIL_LOG):
        copy_atomic(runs.performance / name, run_dir / name)
    perf_acc_log = runs.performance / ACCURACY_LOG
    # Performance runs log responses only when asked to (accuracy_log_probability); keep them then.
    if perf_acc_log.is_file() and perf_acc_log.stat().st_size > 0 and read_accuracy_entries(perf_acc_log):
        truncate_accuracy_log(perf_acc_log, run_dir / ACCURACY_LOG)

    acc_dir = results / "accuracy"
    acc_dir.mkdir(parents=True, exist_ok=True)
    for name in (SUMMARY_LOG, DETAIL_LOG):
        copy_atomic(runs.accuracy / name, acc_dir / name)
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
        dataset = find_dataset_dir(dataset_dir, runs)
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
            + "; ".join(TEST_MODE_RELAXED_RULES.values())
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
            (:data:`abtf_ssd.submission.layout.TEST_MODE_RELAXED_RULES`).
        version: the round; it decides the layout (:data:`abtf_ssd.submission.layout.LAYOUTS`) and the rules.
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
    tree = layout(version)
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
        read_run_info(scenarios[0]),
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
