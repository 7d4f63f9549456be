"""The submission checker on a tree generated from real LoadGen runs, and on mutations of it.

Each mutation breaks one rule of a correct closed-division tree; the checker must name the
rule and the file it concerns. The tree and the runs come from test_submission.py's fixtures.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from test_submission import (
    SCENARIO,
    SUBMITTER,
    SYSTEM,
    scenario_out,
    session_closed_tree,
    session_pristine_results,
    set_detail_value,
)

from abtf_ssd import checker


@pytest.fixture(scope="session")
def closed_tree(tmp_path_factory) -> Path:
    return session_closed_tree(tmp_path_factory)


@pytest.fixture(scope="session")
def pristine_results(tmp_path_factory):
    return session_pristine_results(tmp_path_factory)


@pytest.fixture
def tree(closed_tree, tmp_path) -> Path:
    """A private copy of the correct closed tree, free to break."""
    return Path(shutil.copytree(closed_tree, tmp_path / "submission"))


def _out(tree: Path) -> Path:
    return scenario_out(tree)


def _system_json(tree: Path) -> Path:
    return tree / "closed" / SUBMITTER / "systems" / f"{SYSTEM}.json"


def _edit_json(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _perf_detail(tree: Path) -> Path:
    return _out(tree) / "performance" / "run_1" / checker.DETAIL_LOG


def _wrong_seed(tree: Path) -> Path:
    set_detail_value(_perf_detail(tree), "effective_qsl_rng_seed", 1215947953)  # v1.0's seed
    return _perf_detail(tree)


def _wrong_percentile(tree: Path) -> Path:
    set_detail_value(_perf_detail(tree), "effective_target_latency_percentile", 0.99)
    return _perf_detail(tree)


def _measurement_key_missing(tree: Path) -> Path:
    path = _out(tree) / "measurements.json"
    _edit_json(path, lambda data: data.pop("weight_data_types"))
    return path


def _empty_folder(tree: Path) -> Path:
    path = tree / "closed" / SUBMITTER / "src" / "ssd" / "empty"
    path.mkdir()
    return path


def _dot_file(tree: Path) -> Path:
    path = _out(tree) / ".DS_Store"
    path.write_text("x")
    return path


def _accuracy_log_too_big(tree: Path) -> Path:
    path = _out(tree) / "accuracy" / checker.ACCURACY_LOG
    path.write_text(path.read_text() + " " * checker.MAX_ACCURACY_LOG_BYTES)
    return path


def _map_under_target(tree: Path) -> Path:
    path = _out(tree) / "accuracy" / checker.ACCURACY_TXT
    lines = path.read_text().splitlines()
    path.write_text("\n".join(["mAP: 0.7171", *lines[1:]]) + "\n")
    return path


def _test01_verify_failing(tree: Path) -> Path:
    path = _out(tree) / "TEST01" / "verify_performance.txt"
    path.write_text(path.read_text().replace("TEST PASS", "TEST FAIL: Test score invalid"))
    return path


def _system_type_not_adas(tree: Path) -> Path:
    _edit_json(_system_json(tree), lambda data: data.update(system_type="edge"))
    return _system_json(tree)


def _status_invalid(tree: Path) -> Path:
    _edit_json(_system_json(tree), lambda data: data.update(status="available"))
    return _system_json(tree)


def _file_with_space(tree: Path) -> Path:
    path = tree / "closed" / SUBMITTER / "src" / "ssd" / "my notes.md"
    path.write_text("x")
    return path


def _system_field_missing(tree: Path) -> Path:
    _edit_json(_system_json(tree), lambda data: data.pop("cooling"))
    return _system_json(tree)


def _pycache(tree: Path) -> Path:
    path = tree / "closed" / SUBMITTER / "src" / "ssd" / "__pycache__"
    path.mkdir()
    (path / "x.pyc").write_bytes(b"x")
    return path


def _broken_link(tree: Path) -> Path:
    path = tree / "closed" / SUBMITTER / "src" / "ssd" / "weights.onnx"
    os.symlink("/nonexistent/ssd_resnet50.onnx", path)
    return path


def _big_file(tree: Path) -> Path:
    path = tree / "closed" / SUBMITTER / "src" / "ssd" / "big.bin"
    with path.open("wb") as handle:  # sparse: no 51 MB written
        handle.truncate(51 * 2**20)
    return path


def _hash_missing(tree: Path) -> Path:
    path = _out(tree) / "accuracy" / checker.ACCURACY_TXT
    path.write_text(
        "".join(line for line in path.read_text().splitlines(True) if not line.startswith("hash="))
    )
    return path


def _accuracy_log_not_the_hashed_one(tree: Path) -> Path:
    # A log small enough to stay whole must hash to the recorded value.
    (_out(tree) / "accuracy" / checker.ACCURACY_LOG).write_text(
        '[\n{ "seq_id" : 0, "qsl_idx" : 0, "data" : "" }\n]\n'
    )
    return _out(tree) / "accuracy" / checker.ACCURACY_TXT


def _test01_missing(tree: Path) -> Path:
    shutil.rmtree(_out(tree) / "TEST01")
    return _out(tree) / "TEST01"


def _extra_file_in_run(tree: Path) -> Path:
    (_out(tree) / "performance" / "run_1" / "user.conf").write_text("x")
    return _out(tree) / "performance" / "run_1"


def _readme_empty(tree: Path) -> Path:
    path = _out(tree) / "README.md"
    path.write_text("")
    return path


def _loadgen_error(tree: Path) -> Path:
    detail = _out(tree) / "accuracy" / checker.DETAIL_LOG
    record = {
        "key": "error_runtime",
        "value": "Ending early",
        "metadata": {"is_error": True, "is_warning": False},
    }
    with detail.open("a") as handle:
        handle.write(":::MLLOG " + json.dumps(record) + "\n")
    return detail


def _root_file(tree: Path) -> Path:
    path = tree / "results.csv"
    path.write_text("x")
    return path


def _system_submitter_mismatch(tree: Path) -> Path:
    _edit_json(_system_json(tree), lambda data: data.update(submitter="SomeoneElse"))
    return _system_json(tree)


def _code_missing(tree: Path) -> Path:
    shutil.rmtree(tree / "closed" / SUBMITTER / "src")
    return tree / "closed" / SUBMITTER / "src" / "ssd"


def _inference_loadgen(tree: Path) -> Path:
    detail = _perf_detail(tree)
    lines = [line for line in detail.read_text().splitlines() if "effective_use_grouped_qsl" not in line]
    detail.write_text("\n".join(lines) + "\n")
    return detail


MUTATIONS = {
    "wrong seed": (_wrong_seed, "seed"),
    "percentile not 0.999": (_wrong_percentile, "percentile"),
    "measurements.json key missing": (_measurement_key_missing, "measurements-json"),
    "empty folder": (_empty_folder, "tree-empty-dir"),
    "dot-file": (_dot_file, "tree-dot-file"),
    "accuracy log over 10 KiB": (_accuracy_log_too_big, "acc-log-size"),
    "TEST01 verify failing": (_test01_verify_failing, "test01-perf"),
    "system_type not adas": (_system_type_not_adas, "system-type"),
    "status invalid": (_status_invalid, "status"),
    "file with a space": (_file_with_space, "tree-space"),
    "system field missing": (_system_field_missing, "system-field"),
    "__pycache__": (_pycache, "tree-pycache"),
    "broken link": (_broken_link, "tree-broken-link"),
    "file over 50 MB": (_big_file, "tree-file-size"),
    "hash line missing": (_hash_missing, "acc-hash"),
    "accuracy log is not the hashed one": (_accuracy_log_not_the_hashed_one, "acc-hash"),
    "TEST01 missing": (_test01_missing, "test01-missing"),
    "extra file in performance/run_1": (_extra_file_in_run, "perf-files"),
    "README.md empty": (_readme_empty, "measure-files"),
    "LoadGen error in a detail log": (_loadgen_error, "detail-error"),
    "file at the root": (_root_file, "root-files"),
    "systems submitter differs from the folder": (_system_submitter_mismatch, "system-submitter"),
    "src/ssd missing": (_code_missing, "code-dir"),
    "closed result from the inference LoadGen": (_inference_loadgen, "loadgen"),
}


def test_the_generated_tree_passes(closed_tree):
    assert checker.check_submission(closed_tree, allow_test_mode=True) == []


@pytest.mark.parametrize("mutation", MUTATIONS, ids=list(MUTATIONS))
def test_each_broken_rule_is_named_with_its_file(tree, mutation):
    mutate, rule = MUTATIONS[mutation]
    concerned = mutate(tree)
    errors = checker.check_submission(tree, allow_test_mode=True)
    assert errors, f"{mutation}: no error"
    assert {e.rule for e in errors} == {rule}, [str(e) for e in errors]
    assert concerned in {e.path for e in errors}, [str(e) for e in errors]
    assert all(str(e).startswith(str(e.path)) for e in errors)


def test_map_under_target_fails_outside_test_mode(tree):
    concerned = _map_under_target(tree)
    strict = checker.run_checks(tree)
    assert any(e.rule == "map-target" and e.path == concerned for e in strict.errors)
    relaxed = checker.run_checks(tree, allow_test_mode=True)
    assert relaxed.errors == []
    assert [e.path for e in relaxed.relaxed if e.rule == "map-target"] == [concerned]


def test_test_mode_relaxes_exactly_what_a_short_run_cannot_meet(closed_tree):
    strict = checker.run_checks(closed_tree)
    rules_hit = {e.rule for e in strict.errors}
    assert rules_hit == {"result-valid", "min-duration", "min-query-count", "perf-sample-count"}
    assert rules_hit <= set(checker.TEST_MODE_RELAXED_RULES)
    relaxed = checker.run_checks(closed_tree, allow_test_mode=True)
    assert relaxed.errors == [] and set(relaxed.relaxed) == set(strict.errors)
    # The TEST01 performance run is checked like the submission run.
    assert any("TEST01" in e.path.parts for e in relaxed.relaxed)


def test_read_detail_of_a_real_log(pristine_results):
    values, errors = checker.read_detail(
        pristine_results.scenario_dir / "performance" / "run_1" / checker.DETAIL_LOG
    )
    assert errors == []
    assert values["effective_scenario"] == SCENARIO
    assert values["effective_qsl_rng_seed"] == 1575625098
    assert values["effective_target_latency_percentile"] == 0.999
    assert not checker.is_automotive_loadgen(values)
    assert checker.loadgen_description(values).startswith("inference LoadGen 6.")


def test_unreadable_detail_log_is_reported(tree):
    detail = _perf_detail(tree)
    detail.write_text("not a LoadGen log\n")
    errors = checker.check_submission(tree, allow_test_mode=True)
    assert [(e.rule, e.path) for e in errors] == [("detail-log", detail)]


def test_missing_submission_folder(tmp_path):
    with pytest.raises(checker.CheckerInputError, match="does not exist"):
        checker.check_submission(tmp_path / "nowhere")


def test_main_prints_each_error_and_exits_non_zero(tree, capsys):
    assert checker.main([str(tree), "--allow-test-mode"]) == 0
    out = capsys.readouterr().out
    assert "relaxed rules" in out and "passes" in out
    concerned = _status_invalid(tree)
    assert checker.main([str(tree), "--allow-test-mode"]) == 1
    out = capsys.readouterr().out
    assert f"ERROR {concerned}: [status]" in out
    assert checker.main([str(tree)]) == 1
    assert "[result-valid]" in capsys.readouterr().out
