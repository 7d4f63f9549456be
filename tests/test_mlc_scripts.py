"""The MLC scripts through the real ``mlcr`` / ``mlc``, in an MLC repos folder of their own.

Every documented command runs in its offline form (``_synthetic`` or ``_dry-run``); caching is
checked through ``mlc search cache``; each script's ``tests:`` section runs with ``mlc test script``.
HOME points at the temporary folder too, so no rclone login or ~/MLC of the user is ever read.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import finished_cache_entries

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SCRIPTS = sorted(p.parent.name for p in (REPO / "script").glob("*/meta.yaml"))
TINY_RAW = ("--frames=3", "--calibration_frames=2", "--width=128", "--height=72", "--workers=1")


def mlc_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HOME=str(home), MLC_REPOS=str(home / "repos"), PYTHONUNBUFFERED="1")
    return env


def register(env: dict[str, str], cwd: Path) -> None:
    run_checked([str(BIN / "mlc"), "add", "repo", str(REPO)], env, cwd)


def run_checked(cmd: list[str], env: dict[str, str], cwd: Path) -> str:
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=900)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{output[-6000:]}"
    return output


def mlcr(env: dict[str, str], cwd: Path, *args: str, ok: bool = True) -> str:
    cmd = [str(BIN / "mlcr"), *args, "--quiet"]
    if ok:
        return run_checked(cmd, env, cwd)
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert proc.returncode != 0, f"{' '.join(cmd)} should have failed:\n{proc.stdout + proc.stderr}"
    return proc.stdout + proc.stderr


def exported(output: str, label: str) -> str:
    """The value mlcr printed as ``* <label>: <value>`` (print_env_at_the_end)."""
    found = re.findall(rf"\* {re.escape(label)}: (\S+)", output)
    assert found, f"no '* {label}:' in the output:\n{output[-3000:]}"
    return found[-1]


def registered_mlc_home(tmp_path_factory: pytest.TempPathFactory, name: str) -> tuple[dict[str, str], Path]:
    """A fresh MLC home (its own repos folder and HOME) with this repository registered: (env, home)."""
    home = tmp_path_factory.mktemp(name)
    env = mlc_env(home)
    register(env, home)
    return env, home


@pytest.fixture(scope="module")
def mlc_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], Path]:
    return registered_mlc_home(tmp_path_factory, "mlc_home")


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_has_meta_customize_readme_and_tests(name: str) -> None:
    import yaml

    folder = REPO / "script" / name
    meta = yaml.safe_load((folder / "meta.yaml").read_text())
    assert meta["alias"] == name
    assert re.fullmatch(r"[0-9a-f]{16}", meta["uid"]), name
    assert meta["automation_alias"] == "script" and meta["automation_uid"] == "5b4e0237da074764"
    assert isinstance(meta["tags"], list) and name in meta["tags"], name
    assert meta.get("tests", {}).get("run_inputs"), f"{name}: no tests: section"
    assert (folder / "customize.py").is_file() and (folder / "README.md").is_file(), name


@pytest.mark.parametrize("name", SCRIPTS)
def test_customize_imports_only_the_standard_library_at_module_level(name: str) -> None:
    """mlcflow pip-installs every top-level import of a customize.py that it cannot import."""
    import ast

    tree = ast.parse((REPO / "script" / name / "customize.py").read_text())
    modules = {a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
    assert {m.split(".")[0] for m in modules} <= set(sys.stdlib_module_names), modules


def test_mlc_step_turns_library_errors_into_one_line() -> None:
    from abtf_ssd.mlc.scripts import env_flag, env_int, mlc_step

    def fail(error: Exception) -> None:
        raise error

    assert mlc_step("s", lambda: None) == {"return": 0}
    assert mlc_step("s", lambda env: env.update(done="yes"), env := {}) == {"return": 0} and env["done"]
    assert mlc_step("s", fail, ValueError("give --x")) == {"return": 1, "error": "s: give --x"}
    assert mlc_step("s", fail, OSError("disk full"))["error"] == "s: disk full"
    missing = mlc_step("s", fail, ModuleNotFoundError("No module named 'torch'"))["error"]
    assert missing == "s: No module named 'torch'; install the package: pip install -e ."
    with pytest.raises(KeyError):  # a bug, not bad input: the traceback stays
        mlc_step("s", fail, KeyError("MLC_X"))
    assert all(env_flag(v) for v in ("yes", " True", "1", "on", True))
    assert not any(env_flag(v) for v in ("no", "", "0", "off", False))
    assert env_int({"K": " 7 "}, "K", "--k") == 7 and env_int({"K": ""}, "K", "--k") is None
    assert env_int({}, "K", "--k") is None
    with pytest.raises(ValueError, match="--frames must be an integer, got 'x'"):
        env_int({"K": "x"}, "K", "--frames")


def test_script_uids_are_unique() -> None:
    import yaml

    uids = [yaml.safe_load((REPO / "script" / n / "meta.yaml").read_text())["uid"] for n in SCRIPTS]
    assert len(SCRIPTS) >= 7 and len(set(uids)) == len(uids)


def test_cached_scripts_put_every_variation_in_a_group() -> None:
    """A cache lookup matches any entry whose tags include the requested ones: an ungrouped
    variation (other than the cache-free _dry-run) could pick up an entry made without it."""
    import yaml

    for name in SCRIPTS:
        meta = yaml.safe_load((REPO / "script" / name / "meta.yaml").read_text())
        if not meta.get("cache"):
            continue
        for variation, body in meta.get("variations", {}).items():
            assert body.get("group") or body.get("cache") is False, f"{name}: _{variation} has no group"


def test_registering_twice_through_make_is_harmless(tmp_path: Path) -> None:
    env = mlc_env(tmp_path)
    # -o: treat the install stamp as up to date; this test is about registration only.
    make = ["make", "-s", "-C", str(REPO), "-o", str(REPO / ".venv" / ".abtf-installed"), "register"]
    for _ in range(2):
        run_checked(make, env, tmp_path)
    repos = json.loads((tmp_path / "repos" / "repos.json").read_text())
    assert [os.path.realpath(p) for p in repos].count(os.path.realpath(REPO)) == 1


def test_synthetic_raw_dataset_is_cached_per_input(mlc_home: tuple[dict[str, str], Path]) -> None:
    env, home = mlc_home
    first = exported(mlcr(env, home, "get,raw,dataset,cognata,_synthetic", *TINY_RAW), "Raw Cognata dataset")
    assert (Path(first) / "val_set.csv").read_text().count("\n") == 4  # header + 3 frames
    assert len(list(Path(first).glob("*/*_png/*.png"))) == 5  # 3 validation + 2 calibration

    other_args = [a if not a.startswith("--frames") else "--frames=2" for a in TINY_RAW]
    second = exported(
        mlcr(env, home, "get,raw,dataset,cognata,_synthetic", *other_args), "Raw Cognata dataset"
    )
    assert second != first
    entries = finished_cache_entries(env, home, "get,raw,dataset,cognata,_synthetic")
    assert {Path(first), Path(second)} <= set(entries)

    again = mlcr(env, home, "get,raw,dataset,cognata,_synthetic", *TINY_RAW)
    assert exported(again, "Raw Cognata dataset") == first
    assert "mlc-cached-state.json" in again  # loaded, not made
    assert finished_cache_entries(env, home, "get,raw,dataset,cognata,_synthetic") == entries


def test_preprocessed_synthetic_to_outdirname(mlc_home: tuple[dict[str, str], Path]) -> None:
    env, home = mlc_home
    for split, prefix, count in (("validation", "val", 3), ("calibration", "calib", 2)):
        out = home / f"pre_{split}"
        output = mlcr(
            env,
            home,
            f"get,preprocessed,dataset,cognata,_synthetic,_2d_obj_det,_{split}",
            f"--outdirname={out}",
            *TINY_RAW[:2],
        )
        assert exported(output, "Preprocessed Cognata dataset") == str(out)
        assert sorted(p.name for p in out.glob("*.pkl")) == [f"{prefix}_{i}.pkl" for i in range(count)]
        assert json.loads((out / "dataset.json").read_text())["config"] == "demo"
    entries = finished_cache_entries(env, home, "get,preprocessed,dataset,cognata")
    assert len(entries) == 2


def test_synthetic_models_onnx_and_pytorch(mlc_home: tuple[dict[str, str], Path]) -> None:
    import onnx

    env, home = mlc_home
    onnx_path = Path(
        exported(mlcr(env, home, "get,ml-model,ssd,resnet50,_synthetic,_onnx"), "SSD-ResNet50 model")
    )
    model = onnx.load(str(onnx_path), load_external_data=False)
    assert [o.name for o in model.graph.output] == ["bboxes", "scores"]

    out = home / "model_pt"
    output = mlcr(env, home, "get,ml-model,ssd,resnet50,_synthetic,_pytorch", f"--outdirname={out}")
    assert Path(exported(output, "SSD-ResNet50 model")).parent == out
    assert list(out.glob("*.pth"))
    assert len(finished_cache_entries(env, home, "get,ml-model,ssd,resnet50,_synthetic")) == 2


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ("get,ml-model,ssd,resnet50,_mlc,_rclone,_onnx,_dry-run", "ssd_resnet50.onnx"),
        (
            "get,ml-model,ssd,resnet50,_mlc,_rclone,_pytorch,_dry-run",
            "baseline_8MP_ss_scales_fm1_5x5_all_ep60.pth",
        ),
        ("get,ml-model,ssd,resnet50,_mlc,_r2-downloader,_onnx,_dry-run", "ssd_checkpoint_onnx.uri"),
        ("get,preprocessed,dataset,cognata,_mlc,_2d_obj_det,_validation,_dry-run", "val_2d.tar.gz"),
        ("get,preprocessed,dataset,cognata,_mlc,_2d_obj_det,_calibration,_dry-run", "calib_2d.tar.gz"),
        ("get,raw,dataset,cognata,_mlc,_rclone,_dry-run", "mlc_cognata_dataset/unprocessed"),
    ],
)
def test_real_downloads_dry_run(mlc_home: tuple[dict[str, str], Path], tags: str, expected: str) -> None:
    env, home = mlc_home
    out = home / "dry" / tags.split(",")[1]
    output = mlcr(env, home, tags, f"--outdirname={out}")
    assert expected in output
    assert not [*out.rglob("*")], "a dry run wrote files (mlcflow's tmp-state.json included)"
    assert not finished_cache_entries(env, home, tags.split(",_")[0] + ",_mlc")


def with_installed_rclone(env: dict[str, str], home: Path) -> dict[str, str]:
    """``env`` with an ``rclone`` on PATH (one that only fails: no login is ever reached)."""
    folder = home / "rclone-bin"
    folder.mkdir(exist_ok=True)
    rclone = folder / "rclone"
    rclone.write_text("#!/bin/sh\nexit 1\n")
    rclone.chmod(0o755)
    return {**env, "PATH": f"{folder}{os.pathsep}{env['PATH']}"}


def test_real_download_without_login_is_a_clear_error(mlc_home: tuple[dict[str, str], Path]) -> None:
    env, home = mlc_home
    output = mlcr(
        with_installed_rclone(env, home),
        home,
        "get,ml-model,ssd,resnet50,_mlc,_rclone,_onnx",
        f"--outdirname={home / 'real'}",
        ok=False,
    )
    assert "no login token" in output and "rclone" in output


def test_full_run_on_real_data_without_login_is_a_clear_error(mlc_home: tuple[dict[str, str], Path]) -> None:
    env, home = mlc_home
    output = mlcr(
        with_installed_rclone(env, home),
        home,
        "run-abtf-inference,reference,_v0.5,_full",
        "--model=ssd",
        "--device=cpu",
        "--framework=onnxruntime",
        "--scenario=SingleStream",
        ok=False,
    )
    assert "get-ml-model-ssd-resnet50: rclone remote 'mlc-cognata'" in output and "no login token" in output
    assert not (home / "results" / "default" / "ssd").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--model=resnet50",), "supported models: ssd"),
        (("--framework=pytorch", "--model_path=/nonexistent/ssd.onnx"), "loads .pth or .pt models"),
        (("--implementation=nvidia",), "only reference"),
        (("--scenario=Sometimes",), "unknown scenario"),
        (("--division=closedish",), "use closed or open"),
    ],
)
def test_impossible_requests_fail_before_any_download(
    mlc_home: tuple[dict[str, str], Path], args: tuple[str, ...], message: str
) -> None:
    env, home = mlc_home
    before = finished_cache_entries(env, home, "get")
    output = mlcr(env, home, "run-abtf-inference,reference,_v0.5,_full", "--device=cpu", *args, ok=False)
    assert message in output
    assert finished_cache_entries(env, home, "get") == before


def test_cuda_without_gpu_fails_before_any_download(mlc_home: tuple[dict[str, str], Path]) -> None:
    from abtf_ssd.model.backends import check_device

    if check_device("onnxruntime", "cuda") is None:
        pytest.skip("this machine can run onnxruntime on CUDA")
    env, home = mlc_home
    output = mlcr(env, home, "run-abtf-inference,reference,_v0.5,_synthetic", "--device=cuda", ok=False)
    assert "CUDAExecutionProvider" in output
    assert not (home / "results" / "default" / "ssd").exists()


def test_docker_dry_run_fetches_only_what_the_host_should(mlc_home: tuple[dict[str, str], Path]) -> None:
    env, home = mlc_home
    results = home / "docker_results"
    output = mlcr(
        env,
        home,
        "run-abtf-inference,reference,_v0.5,_synthetic",
        "--device=cpu",
        f"--results_dir={results}",
        "--docker",
        "--docker_dryrun",
        "--env.MLC_USE_MODEL_FROM_HOST=yes",
    )
    run = next(line for line in output.splitlines() if line.startswith("docker run "))
    assert "--model_path=/mnt/abtf-ssd/model/ssd_resnet50_synthetic.onnx" in run
    assert "--dataset_path" not in run  # the dataset is made inside the container
    assert "get,preprocessed,dataset" not in output and "app,abtf-inference" not in output
    assert not (results / "default" / "ssd").exists()


def test_accuracy_script_on_a_harness_run(
    mlc_home: tuple[dict[str, str], Path], tiny_dataset, demo_onnx_model: Path
) -> None:
    env, home = mlc_home
    results = home / "acc_results"
    run_checked(
        [
            sys.executable, "-m", "abtf_ssd.cli", "run", "--dataset-dir", str(tiny_dataset.preprocessed),
            "--model-path", str(demo_onnx_model), "--config-name", "demo", "--mode", "accuracy",
            "--test-query-count", "3", "--results-dir", str(results),
        ],
        env,
        home,
    )  # fmt: skip
    run_dir = results / "default" / "ssd" / "SingleStream" / "accuracy"
    (run_dir / "accuracy.txt").unlink()
    output = mlcr(env, home, "process,mlperf,accuracy,_cognata_ssd", f"--result_dir={run_dir}")
    first_line = (run_dir / "accuracy.txt").read_text().splitlines()[0]
    assert re.fullmatch(r"mAP: [0-9.]+", first_line)
    assert exported(output, "mAP") == first_line.split()[1]


@pytest.mark.parametrize("script", SCRIPTS)
def test_mlc_test_script(mlc_home: tuple[dict[str, str], Path], script: str) -> None:
    env, home = mlc_home
    run_checked([str(BIN / "mlc"), "test", "script", script, "--quiet"], env, home)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("_find-performance", ["expected_latency_ns.txt", "find-performance/mlperf_log_detail.txt"]),
        ("_performance-only", ["performance/run_1/mlperf_log_summary.txt"]),
        ("_accuracy-only", ["accuracy/accuracy.txt", "accuracy/mlperf_log_accuracy.json"]),
        ("_submission", ["performance/run_1/mlperf_log_detail.txt", "accuracy/accuracy.txt"]),
    ],
)
def test_run_kinds_on_synthetic_data(
    mlc_home: tuple[dict[str, str], Path], kind: str, expected: list[str]
) -> None:
    env, home = mlc_home
    results, submission = home / f"results{kind}", home / f"submission{kind}"
    output = mlcr(
        env,
        home,
        f"run-abtf-inference,reference,_v0.5,_synthetic,{kind}",
        "--model=ssd",
        "--device=cpu",
        "--framework=onnxruntime",
        "--scenario=SingleStream",
        "--execution_mode=test",
        "--frames=3",
        "--test_query_count=2",
        f"--results_dir={results}",
        f"--submission_dir={submission}",
        "--hw_name=synthetic-sut",
    )
    scenario = results / "synthetic-sut" / "ssd" / "SingleStream"
    assert f"Results folder: {scenario}" in output
    for name in expected:
        assert (scenario / name).is_file(), name
    assert (results / "synthetic-sut" / "mlc-sut-info.json").is_file()
    if kind == "_submission":
        tree = submission / "open" / "MLCommons"
        assert (tree / "systems" / "synthetic-sut.json").is_file()
        assert (
            tree / "results" / "synthetic-sut" / "ssd" / "SingleStream" / "accuracy" / "accuracy.txt"
        ).is_file()
        # _v0.5: the v0.5 checker's layout (measurements/ and code/ssd/<implementation>)
        measured = tree / "measurements" / "synthetic-sut" / "ssd" / "SingleStream"
        assert (measured / "synthetic-sut_reference_SingleStream.json").is_file()
        assert (measured / "user.conf").is_file() and (measured / "README.md").is_file()
        assert (tree / "code" / "ssd" / "reference").is_dir() and not (tree / "src").exists()
    else:
        assert not submission.exists()


def test_check_script_follows_the_round(mlc_home: tuple[dict[str, str], Path]) -> None:
    """The committed v0.5 tree (open, demo model under the mAP target): passes in test mode with the
    mAP as a warning, fails outside test mode, and fails as a v1.0 tree (code not in src/ssd)."""
    env, home = mlc_home
    tree = REPO / "script" / "check-mlperf-submission-automotive" / "tests" / "submission"
    tags = "check,mlperf,submission,automotive"
    output = mlcr(env, home, tags, f"--submission_dir={tree}", "--test_mode")
    assert "WARNING " in output and "[map-target-open]" in output
    assert exported(output, "Checker errors") == "0"
    assert "[result-valid]" in mlcr(env, home, tags, f"--submission_dir={tree}", ok=False)
    output = mlcr(env, home, tags, f"--submission_dir={tree}", "--test_mode", "--version=v1.0", ok=False)
    assert "[code-dir]" in output and str(tree / "open" / "MLCommons" / "src" / "ssd") in output
