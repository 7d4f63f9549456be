"""TEST01, the compliance test of a closed-division result: verified and written into the tree.

The performance check (:func:`verify_test01_performance`): the compliance run's early-stopping
estimate within 10 % of the submission run's (20 % at or under 200 us). The accuracy check
(:func:`verify_test01_accuracy`): each compliance-log response equals the accuracy run's for that
``qsl_idx``. :func:`write_test01` writes ``TEST01/`` of one scenario, with these checks or, given an
mlperf_automotive checkout, the round's own scripts (:func:`abtf_ssd.submission.official.verify_test01`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from abtf_ssd.fileio import atomic_write_text
from abtf_ssd.submission.layout import ACCURACY_LOG, ACCURACY_TXT, DETAIL_LOG, RESULT_KEY, SUMMARY_LOG
from abtf_ssd.submission.logs import read_accuracy_entries, read_detail
from abtf_ssd.submission.runs import ScenarioRuns, SubmissionError, copy_atomic

TEST01_TOLERANCE = 0.10
TEST01_SHORT_LATENCY_TOLERANCE = 0.20
TEST01_SHORT_LATENCY_NS = 200_000
"""At or under 200 us the TEST01 performance check allows 20 % (run-to-run OS noise)."""


@dataclass(frozen=True)
class Test01Verdict:
    passed: bool
    text: str


def verify_test01_performance(
    reference_detail: Path, test_detail: Path, allow_test_mode: bool
) -> Test01Verdict:
    """Early-stopping estimates of the compliance run and the submission run within tolerance.

    Test mode: runs too short for an early-stopping estimate compare their mean latency.
    """
    reference, _ = read_detail(reference_detail)
    test, _ = read_detail(test_detail)
    lines = [
        "Verifying performance.",
        f"reference run: {reference_detail}",
        f"TEST01 run: {test_detail}",
    ]

    def verdict(passed: bool, last: str) -> Test01Verdict:
        return Test01Verdict(passed, "\n".join([*lines, last]) + "\n")

    for name, values in (("Reference", reference), ("Test", test)):
        if values.get("result_validity") != "VALID":
            if not allow_test_mode:
                return verdict(False, f"TEST FAIL: {name} results are invalid")
            lines.append(f"test mode: {name.lower()} result is {values.get('result_validity')} (allowed)")
    if reference.get("effective_scenario") != test.get("effective_scenario"):
        return verdict(False, "TEST FAIL: Test and reference scenarios do not match")
    metric = "early-stopping 99.9th percentile estimate (ns)"
    ref_score, test_score = reference.get(RESULT_KEY), test.get(RESULT_KEY)
    if not ref_score or not test_score:
        if not allow_test_mode:
            return verdict(False, "TEST FAIL: no early-stopping estimate (too few queries)")
        metric = "mean latency (ns); test mode: the runs are too short for an early-stopping estimate"
        ref_score, test_score = reference.get("result_mean_latency_ns"), test.get("result_mean_latency_ns")
        if not ref_score or not test_score:
            return verdict(False, "TEST FAIL: no latency in the logs")
    tolerance = TEST01_SHORT_LATENCY_TOLERANCE if ref_score <= TEST01_SHORT_LATENCY_NS else TEST01_TOLERANCE
    lines += [
        f"metric: {metric}",
        f"reference score = {ref_score}",
        f"test score = {test_score}",
        f"tolerance = {tolerance:.0%}",
    ]
    if ref_score * (1 - tolerance) < test_score < ref_score * (1 + tolerance):
        return verdict(True, "TEST PASS")
    if allow_test_mode:
        lines.append(
            "test mode: two short runs on one machine differ by noise; this comparison is not judged "
            "(a valid run is)"
        )
    return verdict(False, "TEST FAIL: Test score invalid")


def verify_test01_accuracy(accuracy_log: Path, test_log: Path) -> tuple[Test01Verdict, list[int]]:
    """Each response of the compliance log must equal the accuracy run's for the same qsl_idx.

    Returns the verdict and the qsl_idx values of the compliance log (distinct, in order).
    """
    reference: dict[int, str] = {}
    for entry in read_accuracy_entries(accuracy_log):
        reference.setdefault(entry["qsl_idx"], str(entry["data"]).upper())
    entries = read_accuracy_entries(test_log)
    indices = list(dict.fromkeys(entry["qsl_idx"] for entry in entries))
    absent = sorted({e["qsl_idx"] for e in entries if e["qsl_idx"] not in reference})
    differing = sorted(
        {
            e["qsl_idx"]
            for e in entries
            if e["qsl_idx"] in reference and str(e["data"]).upper() != reference[e["qsl_idx"]]
        }
    )
    lines = [
        "Verifying accuracy: TEST01 responses against the accuracy run.",
        f"accuracy run log: {accuracy_log}",
        f"TEST01 log: {test_log}",
        f"entries checked: {len(entries)} ({len(indices)} distinct samples)",
        f"differing responses: {len(differing)}" + (f" (qsl_idx {differing[:20]})" if differing else ""),
        f"samples absent from the accuracy run: {len(absent)}"
        + (f" (qsl_idx {absent[:20]})" if absent else ""),
    ]
    if not entries:
        lines.append("TEST FAIL: the TEST01 accuracy log is empty (was the audit.config applied?)")
        passed = False
    elif differing or absent:
        lines.append("TEST FAIL: responses differ from the accuracy run")
        passed = False
    else:
        lines.append("TEST PASS")
        passed = True
    return Test01Verdict(passed, "\n".join(lines) + "\n"), indices


def _subset_map(log: Path, indices: list[int] | None, dataset: Path) -> float:
    """mAP of the responses in ``log`` (only ``indices`` when given), as accuracy.txt reports it."""
    from abtf_ssd.data.metric import compute_map, count_samples
    from abtf_ssd.loadgen.accuracy import read_accuracy_log

    detections = read_accuracy_log(log, sample_count=count_samples(dataset))
    if indices is not None:
        detections = {i: detections[i] for i in indices if i in detections}
    return compute_map(detections, dataset).map


def write_test01(
    runs: ScenarioRuns,
    destination: Path,
    allow_test_mode: bool,
    dataset_dir: Path | None,
    official_tools: Path | None = None,
) -> tuple[bool, bool]:
    """TEST01/ of one scenario; returns (performance passed, accuracy responses identical).

    ``official_tools``: verify with the round's compliance scripts
    (:func:`abtf_ssd.submission.official.verify_test01`)
    instead of this module's verification.
    """
    assert runs.test01 is not None
    test_log = runs.test01 / ACCURACY_LOG
    if not test_log.is_file():
        raise SubmissionError(f"{runs.test01}: the TEST01 run has no {ACCURACY_LOG}")
    run_dir = destination / "performance" / "run_1"
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in (SUMMARY_LOG, DETAIL_LOG):
        copy_atomic(runs.test01 / name, run_dir / name)
    accuracy, indices = verify_test01_accuracy(runs.accuracy / ACCURACY_LOG, test_log)
    if official_tools is not None:
        from abtf_ssd.submission.official import verify_test01

        performance_passed, accuracy_passed = verify_test01(
            official_tools, runs.performance, runs.accuracy / ACCURACY_LOG, runs.test01, destination
        )
        accuracy = Test01Verdict(accuracy_passed, accuracy.text)
    else:
        performance = verify_test01_performance(
            runs.performance / DETAIL_LOG, runs.test01 / DETAIL_LOG, allow_test_mode
        )
        performance_passed = performance.passed
        atomic_write_text(destination / "verify_performance.txt", performance.text)
        atomic_write_text(destination / "verify_accuracy.txt", accuracy.text)
    acc_dir = destination / "accuracy"
    acc_dir.mkdir(parents=True, exist_ok=True)
    copy_atomic(test_log, acc_dir / ACCURACY_LOG)
    summary = accuracy.text
    if dataset_dir is not None:
        compliance_map = _subset_map(test_log, None, dataset_dir)
        summary = f"mAP: {compliance_map:.7f}\n(mAP of the TEST01 responses)\n\n" + summary
        if not accuracy.passed:
            baseline_map = _subset_map(runs.accuracy / ACCURACY_LOG, indices, dataset_dir)
            atomic_write_text(
                acc_dir / "baseline_accuracy.txt",
                f"mAP: {baseline_map:.7f}\n(accuracy run, the {len(indices)} samples of the TEST01 log)\n",
            )
            atomic_write_text(
                acc_dir / "compliance_accuracy.txt", f"mAP: {compliance_map:.7f}\n(TEST01 log)\n"
            )
    elif not accuracy.passed:
        raise SubmissionError(
            f"{test_log}: TEST01 responses differ from the accuracy run; comparing their mAP needs the "
            "dataset (pass dataset_dir / --dataset_dir)"
        )
    atomic_write_text(acc_dir / ACCURACY_TXT, summary)
    return performance_passed, accuracy.passed
