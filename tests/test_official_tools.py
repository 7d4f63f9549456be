"""Each round end to end with its own official tools: automotive LoadGen, submission checker, TEST01.

For v0.5 and v1.0, the pinned checkout of ``../shared/upstream`` is unpacked and its automotive
LoadGen built into an environment of its own (``tests/upstream_tools.py``; once per machine, cached
by the tarball's hash). Through the real ``mlcr`` of that environment:

- a closed SingleStream ``_short,_submission`` (TEST01 included, verified by the round's compliance
  scripts); the open tree of the same runs; an ``_all-scenarios,_short,_submission`` (SingleStream,
  then ConstantStream at a given rate) into one open tree;
- the round's official ``submission_checker.py`` (a subprocess) on each tree: a short run cannot meet
  the run-length rules (600 s, 6636 / 100000 queries, early stopping, 128 samples), so those, and
  for closed the demo model's mAP, must be the only rules it reports; and our checker must report
  the same rules (``abtf_ssd.submission.official.disagreement`` is empty);
- mutated trees (a wrong seed, a LoadGen error in a log, a missing TEST01, accuracy under target in
  open and in closed): our checker and the official one agree on each.

Skipped with the reason where ../shared/upstream is absent (a user's clone).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_mlc_scripts import mlc_env
from upstream_tools import ROUNDS, OfficialTools, official_tools

from abtf_ssd.loadgen.report import detail_values, read_detail_log
from abtf_ssd.submission.checker import run_checks
from abtf_ssd.submission.official import disagreement, run_submission_checker

REPO = Path(__file__).resolve().parents[1]
FRAMES = 8
RUN_LENGTH_RULES = {"min-duration", "min-query-count", "perf-sample-count"}
"""What a short run cannot meet; with 8 frames the performance sample count is 8, not 128."""
SYSTEM = "default"
SUBMITTER = "MLCommons"
CONSTANT_STREAM_QPS = 4.0


class RoundSetup:
    """One round's tools, a registered MLC home on that round's environment, and its runs."""

    def __init__(self, tools: OfficialTools, home: Path) -> None:
        self.tools = tools
        self.home = home
        self.env = tools.env(mlc_env(home))
        self._run([str(tools.bin / "mlc"), "add", "repo", str(REPO)])

    def _run(self, argv: list[str], ok: bool | None = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(argv, env=self.env, cwd=self.home, capture_output=True, text=True, timeout=1200)
        if ok is not None:
            output = (proc.stdout + proc.stderr)[-6000:]
            assert (proc.returncode == 0) == ok, f"{' '.join(argv)}: rc {proc.returncode}\n{output}"
        return proc

    def mlcr(self, tags: str, *args: str, ok: bool | None = True) -> subprocess.CompletedProcess:
        return self._run([str(self.tools.bin / "mlcr"), tags, *args, "--quiet"], ok)

    def mlcr_all_scenarios(self) -> tuple[Path, Path, subprocess.CompletedProcess]:
        return self.benchmark(
            "_short,_all-scenarios,_submission",
            None,
            "all-scenarios",
            "--division=open",
            f"--constantstream_target_qps={CONSTANT_STREAM_QPS}",
        )

    def benchmark(self, variations: str, scenario: str | None, name: str, *args: str, ok: bool | None = True):
        results, tree = self.home / name / "results", self.home / name / "submission"
        proc = self.mlcr(
            f"run-abtf-inference,reference,_{self.tools.round},_synthetic,{variations}",
            "--model=ssd",
            "--device=cpu",
            "--framework=onnxruntime",
            *([f"--scenario={scenario}"] if scenario else []),
            f"--frames={FRAMES}",
            "--calibration_frames=1",
            f"--results_dir={results}",
            f"--submission_dir={tree}",
            *args,
            ok=ok,
        )
        return results, tree, proc


@pytest.fixture(scope="module", params=ROUNDS)
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> RoundSetup:
    tools = official_tools(request.param)
    return RoundSetup(tools, tmp_path_factory.mktemp(f"official-{request.param}"))


@pytest.fixture(scope="module")
def closed_run(setup: RoundSetup) -> tuple[Path, Path, str]:
    """A closed SingleStream test-mode submission with TEST01, verified by the round's scripts."""
    results, tree, proc = setup.benchmark(
        "_short,_submission",
        "SingleStream",
        "closed",
        "--division=closed",
        f"--official_tools={setup.tools.checkout}",
        ok=False,  # the demo model is under the closed mAP target: our checker refuses the tree
    )
    return results, tree, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def open_tree(setup: RoundSetup, closed_run: tuple[Path, Path, str]) -> Path:
    results, _, _ = closed_run
    tree = setup.home / "open" / "submission"
    setup.mlcr(
        "generate,mlperf,submission,automotive",
        f"--results_dir={results}",
        f"--submission_dir={tree}",
        "--division=open",
        f"--submitter={SUBMITTER}",
        f"--version={setup.tools.round}",
        "--test_mode",
    )
    return tree


@pytest.fixture(scope="module")
def constant_stream_run(setup: RoundSetup) -> tuple[Path, Path]:
    """``_all-scenarios``: a SingleStream and a ConstantStream run (at a given rate), one open tree."""
    results, tree, _ = setup.mlcr_all_scenarios()
    return results, tree


def _official(setup: RoundSetup, tree: Path) -> set[str]:
    verdict = run_submission_checker(setup.tools.checkout, tree, setup.tools.round)
    assert "unknown" not in verdict.rules, "an official message this project does not know:\n" + "\n".join(
        verdict.errors
    )
    return verdict.rules


def _agree(setup: RoundSetup, tree: Path) -> set[str]:
    """Both checkers' rules on ``tree`` (no test-mode relaxation): equal; returns them."""
    official = _official(setup, tree)
    ours = run_checks(tree, setup.tools.round).rules
    assert disagreement(ours, official) == (set(), set()), f"ours {sorted(ours)}, official {sorted(official)}"
    return official


def _detail(tree: Path, division: str, scenario: str, *parts: str) -> Path:
    return (
        tree
        / division
        / SUBMITTER
        / "results"
        / SYSTEM
        / "ssd"
        / scenario
        / Path(*parts)
        / "mlperf_log_detail.txt"
    )


def test_closed_tree_fails_only_run_length_and_the_demo_accuracy(
    setup: RoundSetup, closed_run: tuple[Path, Path, str]
) -> None:
    _, tree, output = closed_run
    assert "[map-target]" in output, output[-3000:]
    official = _agree(setup, tree)
    expected = RUN_LENGTH_RULES | {"map-target"}
    if setup.tools.round == "v1.0":
        # v1.0 checks TEST01 for closed ssd; its verify_performance.py refuses INVALID (short) runs.
        expected.add("test01-perf-score")
    assert official == expected


def test_tree_is_in_the_rounds_layout(setup: RoundSetup, closed_run: tuple[Path, Path, str]) -> None:
    _, tree, _ = closed_run
    submitter = tree / "closed" / SUBMITTER
    scenario = Path(SYSTEM) / "ssd" / "SingleStream"
    if setup.tools.round == "v0.5":
        measured = submitter / "measurements" / scenario
        assert (measured / f"{SYSTEM}_reference_SingleStream.json").is_file()
        assert (submitter / "code" / "ssd" / "reference").is_dir()
        test01 = submitter / "compliance" / scenario / "TEST01"
    else:
        measured = submitter / "results" / scenario
        assert (measured / "measurements.json").is_file()
        assert (submitter / "src" / "ssd").is_dir()
        test01 = submitter / "results" / scenario / "TEST01"
    assert (measured / "user.conf").is_file() and (measured / "README.md").is_file()
    # Verified by the round's own compliance scripts: their output, not ours.
    assert "TEST PASS" in (test01 / "verify_accuracy.txt").read_text()
    assert "Verifying performance." in (test01 / "verify_performance.txt").read_text()


def test_open_tree_accepts_the_demo_accuracy(setup: RoundSetup, open_tree: Path) -> None:
    official = _agree(setup, open_tree)
    assert official == RUN_LENGTH_RULES
    report = run_checks(open_tree, setup.tools.round, allow_test_mode=True)
    assert not report.errors and [w.rule for w in report.warnings] == ["map-target-open"]


def test_constant_stream_runs_at_the_given_rate_without_a_loadgen_error(
    setup: RoundSetup, constant_stream_run: tuple[Path, Path]
) -> None:
    results, tree = constant_stream_run
    scenarios = tree / "open" / SUBMITTER / "results" / SYSTEM / "ssd"
    assert sorted(p.name for p in scenarios.iterdir()) == ["ConstantStream", "SingleStream"]
    official = _agree(setup, tree)
    assert official <= RUN_LENGTH_RULES | {"latency-constraint"}
    assert "detail-error" not in official
    scenario = results / SYSTEM / "ssd" / "ConstantStream"
    detail = scenario / "performance" / "run_1" / "mlperf_log_detail.txt"
    text = detail.read_text()
    values = detail_values(read_detail_log(detail))
    assert values["effective_target_qps"] == CONSTANT_STREAM_QPS
    assert values["effective_server_constant_gen"] is True
    assert '"is_error": true' not in text
    user_conf = (scenario / "performance" / "run_1" / "user.conf").read_text()
    assert f"ssd.ConstantStream.target_qps = {CONSTANT_STREAM_QPS!r}" in user_conf
    if setup.tools.round == "v1.0":
        # The v1.0 bound comes from the rate: target_latency 0 in its mlperf.conf.
        assert values["effective_target_latency_ns"] == round(1e9 / CONSTANT_STREAM_QPS)
    # v1.0 reports the latency at its own 15 QPS: a result at 4 QPS is flagged (a warning; the
    # official checker does not check the rate), in our checker and in the scenario's README.
    warnings = [w.rule for w in run_checks(tree, setup.tools.round, allow_test_mode=True).warnings]
    readme = (tree / "open" / SUBMITTER / ("measurements" if setup.tools.round == "v0.5" else "results")
              / SYSTEM / "ssd" / "ConstantStream" / "README.md").read_text()  # fmt: skip
    assert "| Target QPS | 4 |" in readme
    flagged = "ConstantStream at 4 QPS, not the round's 15 QPS" in readme
    assert flagged == ("constant-stream-rate" in warnings) == (setup.tools.round == "v1.0")


def _mutate_detail(path: Path, key: str, value: object) -> None:
    text = path.read_text()
    new = re.sub(rf'("key": "{key}", "value": )[^,]+,', lambda m: f"{m.group(1)}{json.dumps(value)},", text)
    assert new != text
    path.write_text(new)


def _inject_error(path: Path) -> None:
    record = (
        ':::MLLOG {"key": "error_runtime", "value": "injected by the test", "time_ms": 1.0, '
        '"namespace": "mlperf::logging", "event_type": "POINT_IN_TIME", "metadata": {"is_error": true, '
        '"is_warning": false, "file": "test", "line_no": 1, "pid": 1, "tid": 1}}\n'
    )
    path.write_text(path.read_text() + record)


MUTATIONS = {
    "wrong-seed": (
        "seed",
        lambda tree, division: _mutate_detail(
            _detail(tree, division, "SingleStream", "performance", "run_1"), "effective_qsl_rng_seed", 1
        ),
    ),
    "loadgen-error": (
        "detail-error",
        lambda tree, division: _inject_error(_detail(tree, division, "SingleStream", "performance", "run_1")),
    ),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
@pytest.mark.parametrize("division", ["open", "closed"])
def test_checkers_agree_on_a_mutated_tree(
    setup: RoundSetup,
    closed_run: tuple[Path, Path, str],
    open_tree: Path,
    tmp_path: Path,
    mutation: str,
    division: str,
) -> None:
    source = open_tree if division == "open" else closed_run[1]
    tree = tmp_path / "tree"
    shutil.copytree(source, tree)
    rule, mutate = MUTATIONS[mutation]
    mutate(tree, division)
    assert rule in _agree(setup, tree)


def test_checkers_agree_on_a_missing_test01(
    setup: RoundSetup, closed_run: tuple[Path, Path, str], tmp_path: Path
) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(closed_run[1], tree)
    removed = [path for path in tree.rglob("TEST01") if path.is_dir()]
    assert removed
    for path in removed:
        shutil.rmtree(path)
    for empty in sorted((p for p in tree.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        if not any(empty.iterdir()):
            empty.rmdir()
    official = _agree(setup, tree)
    # The v0.5 checker never looks at TEST01; v1.0 requires it for closed ssd.
    assert ("test01-missing" in official) == (setup.tools.round == "v1.0")


SHORT_SEARCH = (
    "--constantstream_trial_seconds=2",
    "--constantstream_trial_queries=6",
    "--constantstream_resolution=0.5",
    "--constantstream_max_trials=4",
    "--constantstream_margin=0.5",  # wide: the short run after it is timed on a shared machine
)


def test_constant_stream_search_then_performance_only(setup: RoundSetup) -> None:
    """The documented flow through ``mlcr``: ``_find-performance`` searches the rate over ConstantStream
    trials; ``_performance-only`` then says the stored search stands (no second search) and runs at its
    rate (v1.0: at the round's 15 QPS unless that held, and says why)."""
    results, _, found = setup.benchmark("_short,_find-performance", "ConstantStream", "search", *SHORT_SEARCH)
    scenario = results / SYSTEM / "ssd" / "ConstantStream"
    search = json.loads((scenario / "rate_search.json").read_text())
    qps = float((scenario / "target_qps.txt").read_text())
    assert search["rate_qps"] == qps and "ConstantStream rate search (margin 50%" in found.stdout
    trials = sorted((scenario / "find-performance" / "rate-trials").iterdir())
    assert len(trials) == len(search["trials"])

    _, _, later = setup.benchmark("_short,_performance-only", "ConstantStream", "search")
    output = later.stdout + later.stderr
    assert "ConstantStream: the rate search of" in output and "stands" in output
    assert "rate search: trial" not in output  # no second search
    values = detail_values(read_detail_log(scenario / "performance" / "run_1" / "mlperf_log_detail.txt"))
    if setup.tools.round == "v1.0" and qps < 15:
        assert values["effective_target_qps"] == 15.0
        assert "the rate search found that 15 QPS does not hold" in output
    else:
        assert values["effective_target_qps"] == pytest.approx(qps)
        assert values["result_perf_constraints_met"] is True
