"""The submission generator, fed by real LoadGen test-mode runs of a tiny SUT, for each round.

The results folder is built the way the harness lays it out: a performance run, an accuracy
run (with its accuracy.txt computed by abtf_ssd.loadgen.accuracy on a small preprocessed dataset) and
a TEST01 run under the real TEST01 audit.config, all by the installed LoadGen with the round's
settings, and each run's user.conf written from what its detail log records as effective. The
SUT answers every sample with the same detections after a fixed sleep, so runs are deterministic
in their responses and stable in their mean latency.

The installed LoadGen is the PyPI inference wheel. For the closed division, whose results need
the automotive LoadGen, :func:`mark_automotive_loadgen` adds to the detail logs the two settings
the automotive LoadGen logs and the inference one does not.

Each round's tree has the layout of that round's official checker; :class:`TreePaths` writes
both layouts out independently of :mod:`abtf_ssd.submission.checker`, so a tree in the wrong place fails here.
"""

from __future__ import annotations

import array
import hashlib
import json
import re
import shutil
import tarfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import mlperf_loadgen as lg
import numpy as np
import pytest

from abtf_ssd.data.preprocess import sample_name, write_sample
from abtf_ssd.loadgen import report, rules
from abtf_ssd.loadgen.accuracy import accuracy_main
from abtf_ssd.submission import checker, layout, sysinfo
from abtf_ssd.submission import tree as submission
from abtf_ssd.submission.describe import NOT_APPLICABLE, scenario_readme, system_description
from abtf_ssd.submission.logs import AUTOMOTIVE_LOADGEN_KEYS, read_map
from abtf_ssd.submission.runs import SubmissionError, find_scenarios
from abtf_ssd.submission.test01 import verify_test01_accuracy, verify_test01_performance

SYSTEM = "tiny-cpu"
SUBMITTER = "ABTF_Demo"
SCENARIO = "SingleStream"
ROUNDS = ("v0.5", "v1.0")
SAMPLES = 16
QUERIES = 32
LATENCY_S = 0.02
"""Long enough that OS noise stays far below TEST01's 10 % tolerance on the mean latency."""
GROUND_TRUTH = np.array([[10, 20, 90, 120, 4, 0, 0]], dtype=np.float32)
"""Every sample's one object: a car (label 4)."""


def _detections() -> np.ndarray:
    """(20, 6) rows ``[x1, y1, x2, y2, label, score]``: the object first, then 19 weaker misses.

    480 bytes a response, so 16 accuracy responses make a log over 10 KiB (truncated).
    """
    rows = [[10, 20, 90, 120, 4, 0.9]]
    rows += [[200 + 5 * k, 100, 240 + 5 * k, 150, 4, 0.5 - 0.02 * k] for k in range(19)]
    return np.array(rows, dtype=np.float32)


DETECTIONS = _detections()


@dataclass(frozen=True)
class HarnessResults:
    results_dir: Path
    dataset_dir: Path
    version: str = "v0.5"

    @property
    def scenario_dir(self) -> Path:
        return self.results_dir / SYSTEM / rules.MODEL_NAME / SCENARIO


@dataclass(frozen=True)
class TreePaths:
    """Where the official checker of ``version`` looks in a submitter folder (one system, SingleStream).

    v0.5: ``measurements/<sys>/ssd/<scenario>/{user.conf, README.md, <sys>_<impl>_<scenario>.json}``,
    ``code/ssd/<impl>``, TEST01 under ``compliance/``; v1.0: all in ``results/``, code in ``src/ssd``.
    """

    root: Path
    version: str = "v0.5"
    division: str = "closed"
    system: str = SYSTEM
    implementation: str = "reference"

    @property
    def separate(self) -> bool:
        return self.version == "v0.5"

    @property
    def submitter(self) -> Path:
        return self.root / self.division / SUBMITTER

    @property
    def system_json(self) -> Path:
        return self.submitter / "systems" / f"{self.system}.json"

    @property
    def results(self) -> Path:
        return self.submitter / "results" / self.system / "ssd" / SCENARIO

    @property
    def measurements(self) -> Path:
        return (
            self.submitter / "measurements" / self.system / "ssd" / SCENARIO
            if self.separate
            else self.results
        )

    @property
    def measurements_json(self) -> Path:
        name = (
            f"{self.system}_{self.implementation}_{SCENARIO}.json" if self.separate else "measurements.json"
        )
        return self.measurements / name

    @property
    def test01(self) -> Path:
        top = (
            self.submitter / "compliance" / self.system / "ssd" / SCENARIO if self.separate else self.results
        )
        return top / "TEST01"

    @property
    def code(self) -> Path:
        if self.separate:
            return self.submitter / "code" / "ssd" / self.implementation
        return self.submitter / "src" / "ssd"


def write_dataset(folder: Path, count: int = SAMPLES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        image = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
        write_sample(folder / sample_name("val", index), image, GROUND_TRUTH.copy())
    return folder


def run_loadgen(
    out_dir: Path,
    mode: str,
    audit_config: Path | None = None,
    detections=DETECTIONS,
    version: str = "v0.5",
) -> Path:
    """One LoadGen test-mode run (``version``'s settings from abtf_ssd.loadgen.rules) of the sleeping SUT."""
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = rules.make_test_settings(
        version,
        SCENARIO,
        mode,
        execution_mode="test",
        test_query_count=QUERIES,
        expected_latency_ns=int(LATENCY_S * 1e9),
        performance_sample_count=SAMPLES,
    )
    response = array.array("B", detections.tobytes())

    def issue(samples):
        time.sleep(LATENCY_S)
        address, length = response.buffer_info()
        lg.QuerySamplesComplete([lg.QuerySampleResponse(s.id, address, length) for s in samples])

    sut = lg.ConstructSUT(issue, lambda: None)
    qsl = lg.ConstructQSL(SAMPLES, SAMPLES, lambda indices: None, lambda indices: None)
    output = lg.LogOutputSettings()
    output.outdir = str(out_dir)
    output.copy_summary_to_stdout = False
    log_settings = lg.LogSettings()
    log_settings.log_output = output
    log_settings.enable_trace = False
    # A missing file keeps any audit.config of the working directory out of ordinary runs.
    audit = audit_config if audit_config is not None else out_dir / "no-audit.config"
    try:
        lg.StartTestWithLogSettings(sut, qsl, settings, log_settings, str(audit))
    finally:
        lg.DestroyQSL(qsl)
        lg.DestroySUT(sut)
    values = report.detail_values(report.read_detail_log(out_dir / layout.DETAIL_LOG))
    (out_dir / submission.USER_CONF).write_text(rules.effective_user_conf_text(values, SCENARIO, version))
    return out_dir


def build_results(root: Path, version: str = "v0.5") -> HarnessResults:
    """A harness-style results folder for SYSTEM/ssd/SingleStream from real LoadGen runs of ``version``."""
    dataset = write_dataset(root / "dataset")
    results = root / "results"
    scenario_dir = results / SYSTEM / rules.MODEL_NAME / SCENARIO
    run_info = {  # the harness's results.json layout
        "status": "ok",
        "dataset_dir": str(dataset),
        "options": {
            "framework": "onnxruntime",
            "device": "cpu",
            "model_path": "/models/ssd_resnet50.onnx",
            "config_name": "demo",
        },
    }
    perf = run_loadgen(scenario_dir / "performance" / "run_1", "performance", version=version)
    acc = run_loadgen(scenario_dir / "accuracy", "accuracy", version=version)
    audit = root / "audit.config"
    audit.write_text(rules.audit_config_text(version, "TEST01"))
    run_loadgen(
        scenario_dir / "TEST01" / "performance" / "run_1", "performance", audit_config=audit, version=version
    )
    for folder in (perf, acc):
        (folder / "results.json").write_text(json.dumps(run_info))
        (folder / submission.COMMAND_TXT).write_text("abtf-ssd run --scenario SingleStream --test\n")
    accuracy_main(result_dir=acc, dataset_path=dataset)
    sysinfo.write_sut_info(results / SYSTEM / sysinfo.SUT_INFO_NAME, framework="onnxruntime")
    return HarnessResults(results, dataset, version)


def mark_automotive_loadgen(results_dir: Path) -> None:
    """Add the settings only the automotive LoadGen logs to every detail log under ``results_dir``."""
    for detail in results_dir.rglob(layout.DETAIL_LOG):
        lines = detail.read_text().splitlines()
        anchor = next(
            i for i, line in enumerate(lines) if '"effective_sample_concatenate_permutation"' in line
        )
        record = json.loads(lines[anchor][len(":::MLLOG ") :])
        added = []
        for key in AUTOMOTIVE_LOADGEN_KEYS:
            added.append(":::MLLOG " + json.dumps({**record, "key": key, "value": False}))
        detail.write_text("\n".join(lines[: anchor + 1] + added + lines[anchor + 1 :]) + "\n")


def set_detail_value(detail: Path, key: str, value) -> None:
    """Replace the value of ``key`` in a detail log (it must be there)."""
    lines = detail.read_text().splitlines()
    for index, line in enumerate(lines):
        if line.startswith(":::MLLOG ") and f'"key": "{key}"' in line:
            record = json.loads(line[len(":::MLLOG ") :])
            record["value"] = value
            lines[index] = ":::MLLOG " + json.dumps(record)
            detail.write_text("\n".join(lines) + "\n")
            return
    raise AssertionError(f"{key} not in {detail}")


def set_map(accuracy_txt: Path, value: float) -> None:
    """Rewrite the ``mAP:`` line of an accuracy.txt (the rest, hash included, stays)."""
    lines = accuracy_txt.read_text().splitlines()
    accuracy_txt.write_text("\n".join([f"mAP: {value}", *lines[1:]]) + "\n")


_SESSION: dict[object, object] = {}
"""Built once per session, for these tests and test_checker.py's alike."""


def session_pristine_results(factory: pytest.TempPathFactory, version: str = "v0.5") -> HarnessResults:
    """Results of round ``version`` exactly as the PyPI (inference) LoadGen wrote them."""
    key = ("pristine", version)
    if key not in _SESSION:
        _SESSION[key] = build_results(factory.mktemp(f"harness-{version}"), version)
    return _SESSION[key]


def session_automotive_results(factory: pytest.TempPathFactory, version: str = "v0.5") -> HarnessResults:
    """The same results with the detail logs the automotive LoadGen would have written."""
    key = ("automotive", version)
    if key not in _SESSION:
        pristine = session_pristine_results(factory, version)
        root = factory.mktemp(f"automotive-{version}")
        shutil.copytree(pristine.results_dir, root / "results")
        mark_automotive_loadgen(root / "results")
        _SESSION[key] = replace(pristine, results_dir=root / "results")
    return _SESSION[key]


def session_tree(
    factory: pytest.TempPathFactory, version: str = "v0.5", division: str = "closed"
) -> TreePaths:
    """A tree of round ``version`` generated in test mode (shared: tests copy it before mutating).

    Closed from the automotive-marked results, open from the PyPI LoadGen's own."""
    key = ("tree", version, division)
    if key not in _SESSION:
        results = (session_automotive_results if division == "closed" else session_pristine_results)(
            factory, version
        )
        root = submission.generate_submission(
            results.results_dir,
            factory.mktemp(f"{division}-{version}") / "submission",
            SUBMITTER,
            division,
            SYSTEM,
            allow_test_mode=True,
            version=version,
        )
        _SESSION[key] = TreePaths(root, version, division)
    return _SESSION[key]


def copy_tree(tree: TreePaths, tmp_path: Path) -> TreePaths:
    """A private copy of a session tree, free to change."""
    return replace(tree, root=Path(shutil.copytree(tree.root, tmp_path / "submission")))


@pytest.fixture(scope="session", params=ROUNDS)
def round_name(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def v05_results(tmp_path_factory) -> HarnessResults:
    """Round v0.5's results, for the tests whose subject does not depend on the round."""
    return session_pristine_results(tmp_path_factory, "v0.5")


@pytest.fixture(scope="session")
def pristine_results(tmp_path_factory, round_name) -> HarnessResults:
    return session_pristine_results(tmp_path_factory, round_name)


@pytest.fixture(scope="session")
def automotive_results(tmp_path_factory, round_name) -> HarnessResults:
    return session_automotive_results(tmp_path_factory, round_name)


@pytest.fixture(scope="session")
def closed_tree(tmp_path_factory, round_name) -> TreePaths:
    return session_tree(tmp_path_factory, round_name, "closed")


@pytest.fixture(scope="session")
def open_tree(tmp_path_factory, round_name) -> TreePaths:
    return session_tree(tmp_path_factory, round_name, "open")


def copy_results(results: HarnessResults, tmp_path: Path) -> HarnessResults:
    shutil.copytree(results.results_dir, tmp_path / "results")
    return replace(results, results_dir=tmp_path / "results")


# --------------------------------------------------------------------------------------------


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_closed_tree_layout_and_contents(closed_tree, automotive_results):
    paths = closed_tree
    if paths.version == "v0.5":
        assert _names(paths.submitter) == ["code", "compliance", "measurements", "results", "systems"]
        assert _names(paths.results) == ["accuracy", "performance"]
        assert _names(paths.measurements) == ["README.md", f"{SYSTEM}_reference_{SCENARIO}.json", "user.conf"]
        assert _names(paths.test01.parent) == ["TEST01"]
        assert _names(paths.code.parent) == ["reference"]
    else:
        assert _names(paths.submitter) == ["results", "src", "systems"]
        assert _names(paths.results) == [
            "README.md",
            "TEST01",
            "accuracy",
            "measurements.json",
            "performance",
            "user.conf",
        ]
    assert _names(paths.results / "performance" / "run_1") == [layout.DETAIL_LOG, layout.SUMMARY_LOG]
    assert _names(paths.results / "accuracy") == sorted(layout.ACCURACY_FILES)
    assert _names(paths.test01) == [
        "accuracy",
        "performance",
        "verify_accuracy.txt",
        "verify_performance.txt",
    ]
    assert "TEST PASS" in (paths.test01 / "verify_performance.txt").read_text()
    assert "TEST PASS" in (paths.test01 / "verify_accuracy.txt").read_text()
    assert (paths.test01 / "accuracy" / layout.ACCURACY_TXT).read_text().startswith("mAP: 1.0")

    system = json.loads(paths.system_json.read_text())
    assert list(system) == list(layout.SYSTEM_FIELDS)
    assert system["system_type"] == "adas" and system["status"] == "development"
    assert system["division"] == "closed" and system["submitter"] == SUBMITTER
    assert system["accelerators_per_node"] == "0"  # a string: the checker rejects a bare 0
    assert system["framework"].startswith("onnxruntime")
    assert all(isinstance(v, str) and v for v in system.values())

    measurements = json.loads(paths.measurements_json.read_text())
    assert measurements["starting_weights_filename"] == "ssd_resnet50.onnx"
    assert all(measurements[k] for k in layout.MEASUREMENT_FIELDS)

    readme = (paths.measurements / "README.md").read_text()
    assert "| mAP | 1.00000 |" in readme and "relaxed" in readme and "abtf-ssd run" in readme
    assert (
        f"Early-stopping 99.9th percentile latency (ms), the metric round {paths.version} reports" in readme
    )
    user_conf = automotive_results.scenario_dir / "performance" / "run_1" / "user.conf"
    assert (paths.measurements / "user.conf").read_text() == user_conf.read_text()

    code = paths.code / "abtf_ssd"
    assert (code / "submission" / "checker.py").is_file() and (code / "submission" / "tree.py").is_file()
    assert not list(code.rglob("__pycache__")) and not list(code.rglob("*.pyc"))


@pytest.mark.parametrize(
    ("scenario", "version", "row"),
    [
        (
            "ConstantStream",
            "v0.5",
            "| Completed samples per second, the metric round v0.5 reports | 14.823 |",
        ),
        (
            "ConstantStream",
            "v1.0",
            "| 99.9th percentile latency (ms), the metric round v1.0 reports | 61.235 |",
        ),
        (
            "SingleStream",
            "v1.0",
            "| Early-stopping 99.9th percentile latency (ms), the metric round v1.0 reports | 70.500 |",
        ),
    ],
)
def test_scenario_readme_shows_the_metric_the_round_reports(scenario, version, row):
    perf = {  # a ConstantStream detail log's values (the automotive LoadGen logs all three)
        "result_completed_samples_per_sec": 14.8226,
        "result_99.90_percentile_latency_ns": 61_234_567,
        "early_stopping_latency_ss": 70_500_000,
        "result_validity": "INVALID",
    }
    readme = scenario_readme(SYSTEM, scenario, perf, 0.5, {}, None, [], version)
    assert row in readme, readme


@pytest.mark.parametrize(("version", "flagged"), [("v0.5", False), ("v1.0", True)])
def test_scenario_readme_names_the_constant_stream_rate(version: str, flagged: bool) -> None:
    perf = {"result_99.90_percentile_latency_ns": 61_234_567, "effective_target_qps": 7.5}
    readme = scenario_readme(SYSTEM, "ConstantStream", perf, 0.5, {}, None, [], version)
    assert "| Target QPS | 7.5 |" in readme
    assert ("- ConstantStream at 7.5 QPS, not the round's 15 QPS" in readme) == flagged
    at_round = scenario_readme(
        SYSTEM, "ConstantStream", {**perf, "effective_target_qps": 15.0}, 0.5, {}, None, [], version
    )
    assert "not the round's" not in at_round


def test_accuracy_log_is_truncated_with_the_original_hash(closed_tree, automotive_results):
    original = (automotive_results.scenario_dir / "accuracy" / layout.ACCURACY_LOG).read_bytes()
    assert len(original) > layout.MAX_ACCURACY_LOG_BYTES  # the fixture must exercise truncation
    acc_dir = closed_tree.results / "accuracy"
    truncated = (acc_dir / layout.ACCURACY_LOG).read_bytes()
    keep = submission.TRUNCATE_KEEP_BYTES
    assert truncated == original[:keep] + layout.TRUNCATION_MARKER.encode() + original[-keep:]
    assert len(truncated) <= layout.MAX_ACCURACY_LOG_BYTES
    lines = (acc_dir / layout.ACCURACY_TXT).read_text().splitlines()
    assert lines[0].startswith("mAP: ")
    assert lines[-1] == f"hash={hashlib.sha256(original).hexdigest()}"


def test_small_accuracy_log_is_kept_whole(tmp_path):
    source = tmp_path / "in.json"
    source.write_text('[\n{ "seq_id" : 0, "qsl_idx" : 3, "data" : "00" }\n]\n')
    digest = submission.truncate_accuracy_log(source, tmp_path / "out.json")
    assert (tmp_path / "out.json").read_bytes() == source.read_bytes()
    assert digest == hashlib.sha256(source.read_bytes()).hexdigest()


def test_closed_division_refuses_the_pypi_loadgen(pristine_results, tmp_path):
    target = tmp_path / "submission"
    with pytest.raises(SubmissionError) as error:
        submission.generate_submission(
            pristine_results.results_dir,
            target,
            SUBMITTER,
            "closed",
            SYSTEM,
            allow_test_mode=True,
            version=pristine_results.version,
        )
    message = str(error.value)
    assert "mlcr get,mlperf,automotive,loadgen,_v0.5" in message
    assert "inference LoadGen 6." in message and "samples 0..127" in message
    assert layout.DETAIL_LOG in message
    assert not target.exists()


def test_open_division_accepts_the_pypi_loadgen_with_a_note(open_tree):
    assert not open_tree.test01.exists()
    assert not (open_tree.submitter / "compliance").exists()
    readme = (open_tree.measurements / "README.md").read_text()
    assert "inference LoadGen" in readme and "open division" in readme
    assert checker.check_submission(open_tree.root, open_tree.version, allow_test_mode=True) == []


@pytest.mark.parametrize("division", ["open", "closed"])
def test_map_under_target_is_accepted_for_open_and_refused_for_closed(automotive_results, tmp_path, division):
    results = copy_results(automotive_results, tmp_path)
    set_map(results.scenario_dir / "accuracy" / layout.ACCURACY_TXT, 0.5)
    target = tmp_path / "sub"
    paths = TreePaths(target, results.version, division)
    arguments = (results.results_dir, target, SUBMITTER, division, SYSTEM)
    if division == "open":
        submission.generate_submission(*arguments, allow_test_mode=True, version=results.version)
        readme = (paths.measurements / "README.md").read_text()
        assert "mAP 0.5000000 is under the target 0.7171821: accepted for the open division." in readme
        found = checker.run_checks(target, results.version, allow_test_mode=True)
        assert found.errors == []
        assert [(w.rule, w.path) for w in found.warnings] == [
            ("map-target-open", paths.results / "accuracy" / layout.ACCURACY_TXT)
        ]
    else:
        # Test mode relaxes the run-length rules only: the mAP target holds for closed in every mode.
        with pytest.raises(submission.SubmissionCheckError) as error:
            submission.generate_submission(*arguments, allow_test_mode=True, version=results.version)
        assert [(e.rule, e.path) for e in error.value.errors] == [
            ("map-target", paths.results / "accuracy" / layout.ACCURACY_TXT)
        ]


@pytest.mark.parametrize(("run", "status"), [("performance/run_1", "failed"), ("accuracy", "interrupted")])
def test_a_run_that_did_not_complete_is_refused_naming_its_results_json(
    pristine_results, tmp_path, run, status
):
    results = copy_results(pristine_results, tmp_path)
    record = results.scenario_dir / run / "results.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "status": status}))
    target = tmp_path / "submission"
    with pytest.raises(SubmissionError, match=f"{re.escape(str(record))}: .*{status}"):
        submission.generate_submission(
            results.results_dir, target, SUBMITTER, "open", SYSTEM, allow_test_mode=True
        )
    assert not target.exists()


def test_closed_division_needs_test01(automotive_results, tmp_path):
    # Every round's tree holds TEST01 for closed, also v0.5's, whose checker does not look at it.
    results = copy_results(automotive_results, tmp_path)
    shutil.rmtree(results.scenario_dir / "TEST01")
    with pytest.raises(SubmissionError, match="TEST01"):
        submission.generate_submission(
            results.results_dir,
            tmp_path / "sub",
            SUBMITTER,
            "closed",
            SYSTEM,
            allow_test_mode=True,
            version=results.version,
        )
    assert not (tmp_path / "sub").exists()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("status", "available"),
        ("division", "edge"),
        ("submitter", "my org"),
        ("system_name", ".hidden"),
        ("implementation", "my impl"),
        ("version", "v2.0"),
    ],
)
def test_bad_inputs_are_refused(v05_results, tmp_path, field, value):
    arguments = {"submitter": SUBMITTER, "division": "open", "system_name": SYSTEM, "status": "development"}
    arguments[field] = value
    with pytest.raises((SubmissionError, rules.RulesError), match=repr(value).strip("'")):
        submission.generate_submission(v05_results.results_dir, tmp_path / "sub", **arguments)
    assert not (tmp_path / "sub").exists()


def test_missing_system_description_is_an_error(pristine_results, tmp_path):
    results = copy_results(pristine_results, tmp_path)
    (results.results_dir / SYSTEM / sysinfo.SUT_INFO_NAME).unlink()
    with pytest.raises(SubmissionError, match=sysinfo.SUT_INFO_NAME):
        submission.generate_submission(results.results_dir, tmp_path / "sub", SUBMITTER, "open", SYSTEM)


def test_a_failing_tree_raises_with_the_checker_errors(pristine_results, tmp_path):
    with pytest.raises(submission.SubmissionCheckError) as error:
        submission.generate_submission(
            pristine_results.results_dir,
            tmp_path / "sub",
            SUBMITTER,
            "open",
            SYSTEM,
            version=pristine_results.version,
        )
    rules_hit = {e.rule for e in error.value.errors}
    assert rules_hit <= set(layout.TEST_MODE_RELAXED_RULES) and "result-valid" in rules_hit


def _verify(tmp_path, reference_ns, test_ns, pristine_results, allow_test_mode=False):
    logs = []
    for name, value in (("ref", reference_ns), ("test", test_ns)):
        detail = tmp_path / name / layout.DETAIL_LOG
        detail.parent.mkdir()
        shutil.copyfile(pristine_results.scenario_dir / "performance" / "run_1" / layout.DETAIL_LOG, detail)
        set_detail_value(detail, "result_validity", "VALID")
        set_detail_value(detail, layout.RESULT_KEY, value)
        logs.append(detail)
    return verify_test01_performance(*logs, allow_test_mode=allow_test_mode)


@pytest.mark.parametrize(
    ("reference_ns", "test_ns", "passed"),
    [
        (1_000_000, 1_050_000, True),
        (1_000_000, 905_000, True),
        (1_000_000, 1_150_000, False),
        (1_000_000, 850_000, False),
        (150_000, 175_000, True),  # 20 % allowed at or under 200 us
        (150_000, 185_000, False),
    ],
)
def test_test01_performance_tolerance(tmp_path, v05_results, reference_ns, test_ns, passed):
    verdict = _verify(tmp_path, reference_ns, test_ns, v05_results)
    assert verdict.passed is passed
    assert verdict.text.rstrip().splitlines()[-1] == (
        "TEST PASS" if passed else "TEST FAIL: Test score invalid"
    )
    assert f"reference score = {reference_ns}" in verdict.text
    assert "not judged" not in verdict.text


def test_test01_performance_of_test_mode_runs(pristine_results):
    reference = pristine_results.scenario_dir / "performance" / "run_1" / layout.DETAIL_LOG
    test = pristine_results.scenario_dir / "TEST01" / "performance" / "run_1" / layout.DETAIL_LOG
    strict = verify_test01_performance(reference, test, allow_test_mode=False)
    assert not strict.passed and "Reference results are invalid" in strict.text
    relaxed = verify_test01_performance(reference, test, allow_test_mode=True)
    assert relaxed.passed, relaxed.text
    assert "mean latency" in relaxed.text


def test_test01_performance_out_of_tolerance_in_test_mode_says_it_is_not_judged(tmp_path, v05_results):
    verdict = _verify(tmp_path, 1_000_000, 1_500_000, v05_results, allow_test_mode=True)
    assert not verdict.passed
    assert "not judged" in verdict.text and verdict.text.rstrip().endswith("TEST FAIL: Test score invalid")


def test_a_noisy_test01_fails_no_test_mode_tree_but_is_reported(automotive_results, tmp_path):
    """Two short runs on a busy machine: TEST01 slower by half. Test mode: the tree is written and
    passes, the comparison listed as relaxed where the round checks TEST01; the README says FAILED."""
    results = copy_results(automotive_results, tmp_path)
    test01_detail = results.scenario_dir / "TEST01" / "performance" / "run_1" / layout.DETAIL_LOG
    values = report.detail_values(report.read_detail_log(test01_detail))
    set_detail_value(test01_detail, "result_mean_latency_ns", int(values["result_mean_latency_ns"] * 1.5))
    tree = submission.generate_submission(
        results.results_dir,
        tmp_path / "sub",
        SUBMITTER,
        "closed",
        SYSTEM,
        allow_test_mode=True,
        version=results.version,
    )
    paths = TreePaths(tree, results.version)
    verify = (paths.test01 / "verify_performance.txt").read_text()
    assert "TEST FAIL" in verify and "not judged" in verify
    assert (
        "TEST01 (verified by abtf_ssd.submission.tree): performance FAILED"
        in (paths.measurements / "README.md").read_text()
    )
    found = checker.run_checks(tree, results.version, allow_test_mode=True)
    assert found.errors == []
    relaxed = [(e.rule, e.path) for e in found.relaxed if e.rule.startswith("test01")]
    checked = rules.ROUNDS[results.version].checks_test01
    assert relaxed == ([("test01-perf-score", paths.test01 / "verify_performance.txt")] if checked else [])


def test_test01_accuracy_detects_a_changed_response(tmp_path, v05_results):
    pristine_results = v05_results
    accuracy_log = pristine_results.scenario_dir / "accuracy" / layout.ACCURACY_LOG
    test_log = pristine_results.scenario_dir / "TEST01" / "performance" / "run_1" / layout.ACCURACY_LOG
    verdict, indices = verify_test01_accuracy(accuracy_log, test_log)
    entries = json.loads(test_log.read_text())
    assert len(entries) == QUERIES  # the audit.config logged every response of the short run
    assert verdict.passed and indices == list(dict.fromkeys(e["qsl_idx"] for e in entries))

    changed = entries[0]["qsl_idx"]
    entries[0]["data"] = "FF" + entries[0]["data"][2:]
    altered = tmp_path / layout.ACCURACY_LOG
    altered.write_text(json.dumps(entries))
    verdict, _ = verify_test01_accuracy(accuracy_log, altered)
    assert not verdict.passed
    assert f"qsl_idx [{changed}]" in verdict.text and "TEST FAIL" in verdict.text


def test_non_deterministic_test01_writes_baseline_and_compliance_accuracy(automotive_results, tmp_path):
    results = copy_results(automotive_results, tmp_path)
    test_log = results.scenario_dir / "TEST01" / "performance" / "run_1" / layout.ACCURACY_LOG
    entries = json.loads(test_log.read_text())
    # A slightly different score of the top box: not bit-identical, same mAP.
    rows = np.frombuffer(bytes.fromhex(entries[0]["data"]), dtype=np.float32).reshape(-1, 6).copy()
    rows[0, 5] = 0.89
    entries[0]["data"] = rows.tobytes().hex().upper()
    test_log.write_text(json.dumps(entries))

    tree = submission.generate_submission(
        results.results_dir,
        tmp_path / "sub",
        SUBMITTER,
        "closed",
        SYSTEM,
        allow_test_mode=True,
        version=results.version,
    )
    acc_dir = TreePaths(tree, results.version).test01 / "accuracy"
    assert sorted(p.name for p in acc_dir.iterdir()) == sorted(
        layout.TEST01_ACCURACY_FILES + layout.TEST01_NONDETERMINISTIC_FILES
    )
    assert read_map(acc_dir / "baseline_accuracy.txt") == read_map(acc_dir / "compliance_accuracy.txt")
    assert "TEST FAIL" in (acc_dir.parent / "verify_accuracy.txt").read_text()


def test_second_system_joins_the_tree_and_tarball(automotive_results, closed_tree, tmp_path):
    tree = copy_tree(closed_tree, tmp_path)
    results = copy_results(automotive_results, tmp_path)
    (results.results_dir / SYSTEM).rename(results.results_dir / "other-cpu")
    submission.generate_submission(
        results.results_dir,
        tree.root,
        SUBMITTER,
        "closed",
        "other-cpu",
        allow_test_mode=True,
        tar=True,
        version=tree.version,
    )
    assert _names(tree.submitter / "systems") == ["other-cpu.json", f"{SYSTEM}.json"]
    other = replace(tree, system="other-cpu")
    for paths in (tree, other):
        assert paths.measurements_json.is_file() and (paths.test01 / "verify_performance.txt").is_file()
    assert checker.check_submission(tree.root, tree.version, allow_test_mode=True) == []
    tarball = submission.tarball_path(tree.root)
    assert tarball == tmp_path / "submission.tar.gz"
    with tarfile.open(tarball) as archive:
        names = archive.getnames()
    assert f"submission/closed/{SUBMITTER}/systems/other-cpu.json" in names
    assert str(other.measurements_json.relative_to(tmp_path)) in names
    assert not [p for p in tmp_path.iterdir() if "staging" in p.name]


def test_regenerating_replaces_the_system(automotive_results, closed_tree, tmp_path):
    tree = copy_tree(closed_tree, tmp_path)
    stale = [folder / "stale.txt" for folder in (tree.results, tree.measurements, tree.test01, tree.code)]
    for path in stale:
        path.write_text("from an earlier run")
    submission.generate_submission(
        automotive_results.results_dir,
        tree.root,
        SUBMITTER,
        "closed",
        SYSTEM,
        status="hardened",
        allow_test_mode=True,
        version=tree.version,
    )
    assert [path for path in stale if path.exists()] == []
    system = json.loads(tree.system_json.read_text())
    assert system["status"] == "hardened"


def test_copy_code_leaves_out_what_the_checker_forbids(tmp_path):
    code = tmp_path / "code"
    (code / "pkg" / "__pycache__").mkdir(parents=True)
    (code / "pkg" / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"x")
    (code / "pkg" / "m.py").write_text("x = 1\n")
    (code / ".hidden").write_text("x")
    (code / "with space.py").write_text("x")
    assert submission.copy_code(code, tmp_path / "out") == 1
    assert [p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*")] == [
        "pkg",
        "pkg/m.py",
    ]


def test_system_description_fills_every_field():
    system, defaulted = system_description(
        {"host_processor_model_name": "CPU X", "accelerators_per_node": 0, "python": "3.11", "device": "cpu"},
        SUBMITTER,
        "open",
        SYSTEM,
        "engineering_samples",
        {"framework": "pytorch 2.13"},
    )
    assert len(system) == 35 and system["system_type"] == "adas"
    assert system["accelerators_per_node"] == "0" and system["framework"] == "pytorch 2.13"
    assert system["sw_notes"] == "python 3.11, device cpu"
    assert "cooling" in defaulted and system["cooling"] == NOT_APPLICABLE
    with pytest.raises(SubmissionError, match="available"):
        system_description({}, SUBMITTER, "open", SYSTEM, "available")


def test_cli(automotive_results, tmp_path, capsys):
    version = automotive_results.version
    code = submission.main(
        [
            "--results_dir",
            str(automotive_results.results_dir),
            "--submission_dir",
            str(tmp_path / "sub"),
            "--submitter",
            SUBMITTER,
            "--division",
            "closed",
            "--hw_name",
            SYSTEM,
            "--version",
            version,
            "--implementation",
            "mine",
            "--allow_test_mode",
            "--tar",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "tarball:" in out and (tmp_path / "sub.tar.gz").is_file()
    paths = TreePaths(tmp_path / "sub", version, implementation="mine")
    assert (
        paths.measurements_json.is_file()
        and (paths.code / "abtf_ssd" / "submission" / "checker.py").is_file()
    )
    assert checker.check_submission(paths.root, version, allow_test_mode=True) == []
    assert (
        submission.main(
            [
                "--results_dir",
                str(tmp_path / "nowhere"),
                "--submission_dir",
                str(tmp_path / "x"),
                "--submitter",
                SUBMITTER,
                "--system_name",
                SYSTEM,
            ]
        )
        == 1
    )
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("version", ROUNDS)
def test_a_harness_run_makes_an_open_submission(tiny_dataset, demo_onnx_model, tmp_path, version):
    """The real harness (demo ONNX model, tiny synthetic set) writes what the generator reads."""
    from abtf_ssd.config import DEMO_CONFIG
    from abtf_ssd.loadgen import harness

    results = tmp_path / "results"
    audit = tmp_path / "audit.config"
    audit.write_text(rules.audit_config_text(version, "TEST01"))
    for mode, audit_config in (("performance", None), ("accuracy", None), ("performance", audit)):
        harness.run_benchmark(
            harness.RunOptions(
                dataset_dir=tiny_dataset.preprocessed,
                model_path=demo_onnx_model,
                config_name=DEMO_CONFIG,
                mode=mode,
                round=version,
                test_query_count=4,
                threads=1,
                results_dir=results,
                system_name=SYSTEM,
                audit_config=audit_config,
                command="pytest",
            )
        )
    sysinfo.write_sut_info(results / SYSTEM / sysinfo.SUT_INFO_NAME, framework="onnxruntime")
    (runs,) = find_scenarios(results, SYSTEM)
    assert runs.test01 == results / SYSTEM / "ssd" / SCENARIO / "TEST01" / "performance" / "run_1"

    tree = submission.generate_submission(
        results, tmp_path / "sub", SUBMITTER, "open", SYSTEM, allow_test_mode=True, version=version
    )
    paths = TreePaths(tree, version, "open")
    measurements = json.loads(paths.measurements_json.read_text())
    assert measurements["starting_weights_filename"] == demo_onnx_model.name
    readme = (paths.measurements / "README.md").read_text()
    assert "| Model config | demo |" in readme and "| Framework | onnxruntime |" in readme
    # The random-weight demo model is far under the mAP target: accepted for open, with a warning.
    found = checker.run_checks(tree, version, allow_test_mode=True)
    assert found.errors == [] and {w.rule for w in found.warnings} == {"map-target-open"}
    user_conf = (paths.measurements / "user.conf").read_text()
    assert user_conf.startswith(f"# Effective LoadGen settings of this run (round {version})")
    assert f"# qsl_rng_seed = {rules.ROUNDS[version].qsl_rng_seed}\n" in user_conf
