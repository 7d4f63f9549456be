"""The automotive LoadGen build: exact steps, refusals of a wrong checkout, and a real build.

The real build runs every step (git checks, pip wheel, pip uninstall, pip install, the import
check) on a stand-in ``loadgen/`` package in a temporary git repository, installed into a
throwaway venv: the stand-in is pure Python with an in-tree PEP 517 backend, so pip needs no
network and no compiler. The project's own ``.venv`` is never a target here.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from abtf_ssd.loadgen import build as loadgen_build
from abtf_ssd.loadgen.build import LoadgenBuildError, build, build_steps, installed_loadgen_kind

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
NO_PYTHON = "/nonexistent/bin/python"
"""Target of every test that must fail before pip: even a wrong step could not touch an environment."""

_BACKEND = """
\"\"\"In-tree PEP 517 backend of the stand-in LoadGen: one module, mlperf_loadgen.py, in a wheel.\"\"\"
import base64, hashlib, os, zipfile

NAME, VERSION, TAG = "__NAME__", "0.5.0", "py3-none-any"


def _record_line(path, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    dist_info = f"{NAME}-{VERSION}.dist-info"
    with open(os.path.join(os.path.dirname(__file__), "mlperf_loadgen.py"), "rb") as f:
        files = {"mlperf_loadgen.py": f.read()}
    files[f"{dist_info}/METADATA"] = f"Metadata-Version: 2.1\\nName: {NAME}\\nVersion: {VERSION}\\n".encode()
    wheel_meta = f"Wheel-Version: 1.0\\nGenerator: stand-in\\nRoot-Is-Purelib: true\\nTag: {TAG}\\n"
    files[f"{dist_info}/WHEEL"] = wheel_meta.encode()
    record = [_record_line(path, data) for path, data in files.items()] + [f"{dist_info}/RECORD,,"]
    files[f"{dist_info}/RECORD"] = ("\\n".join(record) + "\\n").encode()
    wheel_name = f"{NAME}-{VERSION}-{TAG}.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, wheel_name), "w") as wheel:
        for path, data in files.items():
            wheel.writestr(path, data)
    return wheel_name
"""
_PYPROJECT = """
[build-system]
requires = []
build-backend = "standin_backend"
backend-path = ["."]
"""


def _module_source(automotive: bool) -> str:
    """The stand-in ``mlperf_loadgen``: only what ``rules.has_constant_stream`` looks at."""
    scenarios = ["SingleStream", "MultiStream", "Offline", "ConstantStream" if automotive else "Server"]
    body = "\n".join(f"    {name} = {i}" for i, name in enumerate(scenarios))
    return f"class TestScenario:\n{body}\n"


def git(cwd: Path, *args: str) -> str:
    identity = ["-c", "user.name=test", "-c", "user.email=test@example.invalid", "-c", "commit.gpgsign=false"]
    command = ["git", *identity, *args]
    return subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def make_checkout(
    root: Path, automotive: bool = True, tag: str = "v0.5", distribution: str = "mlcommons_loadgen"
) -> Path:
    """A git repository like mlperf_automotive: ``loadgen/`` holding the stand-in, committed and tagged."""
    loadgen = root / "loadgen"
    loadgen.mkdir(parents=True)
    (loadgen / "pyproject.toml").write_text(_PYPROJECT)
    (loadgen / "standin_backend.py").write_text(_BACKEND.replace("__NAME__", distribution))
    (loadgen / "mlperf_loadgen.py").write_text(_module_source(automotive))
    (root / "README.md").write_text("stand-in for mlperf_automotive\n")
    git(root, "init", "-q", "-b", "master")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "stand-in loadgen")
    git(root, "tag", tag)
    return root


def expected_tail(checkout: Path, wheel_dir: Path, python: str, ref: str) -> list[list[str]]:
    pip = [python, "-m", "pip"]
    return [
        ["git", "-C", str(checkout), "status", "--porcelain", "--untracked-files=no", "--", "loadgen"],
        ["git", "-C", str(checkout), "rev-parse", f"{ref}^{{commit}}", "HEAD"],
        [*pip, "wheel", "--no-deps", "--wheel-dir", str(wheel_dir), str(checkout / "loadgen")],
        [*pip, "uninstall", "-y", "mlcommons-loadgen"],
        [*pip, "install", "--no-deps", "--no-index", "--find-links", str(wheel_dir), "mlcommons-loadgen"],
        [python, "-c", loadgen_build._KIND_PROBE],
    ]


def test_every_round_has_a_tag() -> None:
    from abtf_ssd.loadgen.rules import ROUNDS

    assert set(loadgen_build.ROUND_TAGS) == set(ROUNDS)


def test_online_steps_clone_the_round_tag(tmp_path: Path) -> None:
    checkout = tmp_path / "mlperf_automotive"
    steps = build_steps("v0.5", workdir=tmp_path, python="/env/bin/python")
    assert steps[0] == [
        "git", "clone", "--depth", "1", "--branch", "v0.5",
        "https://github.com/mlcommons/mlperf_automotive", str(checkout),
    ]  # fmt: skip
    assert steps[1:] == expected_tail(checkout, tmp_path / "loadgen-wheel", "/env/bin/python", "v0.5")
    assert build_steps("v1.0", workdir=tmp_path)[0][5] == "v1.0"
    assert build_steps("v0.5", workdir=tmp_path, ref="v0.5abtf")[0][5] == "v0.5abtf"


def test_offline_steps_use_the_checkout(tmp_path: Path) -> None:
    src = make_checkout(tmp_path / "src")
    steps = build_steps("v0.5", src=src, workdir=tmp_path / "work", python="/env/bin/python")
    assert steps == expected_tail(src, tmp_path / "work" / "loadgen-wheel", "/env/bin/python", "v0.5")


def test_dry_run_prints_the_steps_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "work"
    result = build("v0.5", dry_run=True, python=NO_PYTHON, workdir=work)
    printed = capsys.readouterr().out.splitlines()
    assert (
        [shlex.split(line) for line in printed]
        == result["steps"]
        == build_steps("v0.5", workdir=work, python=NO_PYTHON)
    )
    assert result["kind"] is None and result["revision"] is None and not work.exists()
    src = make_checkout(tmp_path / "src")
    (src / "loadgen" / "mlperf_loadgen.py").write_text("# edited\n")  # a dry run checks nothing in git
    assert build("v0.5", src=src, dry_run=True, python=NO_PYTHON)["checkout"] == str(src)


@pytest.mark.parametrize(
    ("request_kwargs", "message"),
    [
        ({"round": "v0.7"}, "unknown round 'v0.7'; known: v0.5, v1.0"),
        ({"src": "/nonexistent/mlperf_automotive"}, "--src /nonexistent/mlperf_automotive: no such folder"),
    ],
)
def test_bad_requests_are_clear_errors(request_kwargs: dict[str, str], message: str) -> None:
    kwargs = {"round": "v0.5", **request_kwargs}
    with pytest.raises(LoadgenBuildError, match=message):
        build(kwargs.pop("round"), dry_run=True, python=NO_PYTHON, **kwargs)


def test_src_without_loadgen_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "automotive").mkdir()
    with pytest.raises(LoadgenBuildError, match=r"no loadgen/ folder; give the root of a mlperf_automotive"):
        build("v0.5", src=tmp_path, python=NO_PYTHON)
    (tmp_path / "loadgen").mkdir()
    with pytest.raises(LoadgenBuildError, match="neither setup.py nor pyproject.toml"):
        build_steps("v0.5", src=tmp_path)


def test_modified_checkout_is_refused(tmp_path: Path) -> None:
    src = make_checkout(tmp_path / "src")
    (src / "loadgen" / "build").mkdir()  # untracked leftovers of a build: LoadGen ignores them too
    (src / "loadgen" / "build" / "x.o").write_bytes(b"")
    (src / "loadgen" / "mlperf_loadgen.py").write_text("# local change\n")
    with pytest.raises(LoadgenBuildError) as error:
        build("v0.5", src=src, python=NO_PYTHON, workdir=tmp_path / "work")
    assert "modified files in loadgen/ (loadgen/mlperf_loadgen.py)" in str(error.value)
    assert "logs an error in every run" in str(error.value)
    assert not (tmp_path / "work").exists()


def test_checkout_away_from_the_tag_is_refused(tmp_path: Path) -> None:
    src = make_checkout(tmp_path / "src")
    (src / "README.md").write_text("moved on\n")
    git(src, "commit", "-q", "-am", "after the tag")
    with pytest.raises(LoadgenBuildError, match=r"HEAD is [0-9a-f]{12}, not v0.5 \([0-9a-f]{12}\)"):
        build("v0.5", src=src, python=NO_PYTHON, workdir=tmp_path / "work")
    with pytest.raises(LoadgenBuildError, match="no ref 'v1.0'.*fetch the tags or name the ref with --ref"):
        build("v1.0", src=src, python=NO_PYTHON, workdir=tmp_path / "work")


def test_folder_outside_git_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "loadgen").mkdir()
    (tmp_path / "loadgen" / "setup.py").write_text("")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # no repository above it either
    with pytest.raises(LoadgenBuildError, match=r"git status \(--src must be a git checkout\) failed"):
        build("v0.5", src=tmp_path, python=NO_PYTHON, workdir=tmp_path / "work")


def test_kind_in_this_process_is_what_rules_sees() -> None:
    from abtf_ssd.loadgen.rules import has_constant_stream

    expected = "automotive" if has_constant_stream() else "inference"
    assert installed_loadgen_kind() == expected
    assert installed_loadgen_kind(sys.executable) == expected


@pytest.fixture(scope="module")
def throwaway_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fresh venv with pip and no LoadGen: the build's target instead of the project's .venv."""
    root = tmp_path_factory.mktemp("throwaway_venv")
    venv.EnvBuilder(with_pip=True).create(root)
    return str(root / "bin" / "python")


def test_build_installs_the_automotive_loadgen(tmp_path: Path, throwaway_python: str) -> None:
    with pytest.raises(LoadgenBuildError, match="import mlperf_loadgen"):
        installed_loadgen_kind(throwaway_python)
    src = make_checkout(tmp_path / "src")
    result = build("v0.5", src=src, python=throwaway_python, workdir=tmp_path / "work")
    assert result["kind"] == "automotive" == installed_loadgen_kind(throwaway_python)
    assert result["revision"] == git(src, "rev-parse", "HEAD")
    assert result["wheel"] == "mlcommons_loadgen-0.5.0-py3-none-any.whl"
    assert Path(result["module"]).is_relative_to(Path(throwaway_python).parents[1])
    assert (tmp_path / "work" / "loadgen-wheel" / result["wheel"]).is_file()


def test_build_that_yields_the_inference_loadgen_fails(tmp_path: Path, throwaway_python: str) -> None:
    src = make_checkout(tmp_path / "src", automotive=False)
    with pytest.raises(LoadgenBuildError, match="imports the inference LoadGen from .*mlperf_loadgen.py"):
        build("v0.5", src=src, python=throwaway_python, workdir=tmp_path / "work")


def test_wheel_of_another_distribution_replaces_nothing(tmp_path: Path, throwaway_python: str) -> None:
    src = make_checkout(tmp_path / "src", distribution="other_loadgen")
    before = installed_loadgen_kind(throwaway_python)
    with pytest.raises(
        LoadgenBuildError, match="built distribution 'other-loadgen', not 'mlcommons-loadgen'"
    ):
        build("v0.5", src=src, python=throwaway_python, workdir=tmp_path / "work")
    assert installed_loadgen_kind(throwaway_python) == before


def test_mlc_script_dry_runs(tmp_path: Path) -> None:
    env = dict(os.environ, HOME=str(tmp_path), MLC_REPOS=str(tmp_path / "repos"), PYTHONUNBUFFERED="1")

    def run(*command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)

    assert run(str(BIN / "mlc"), "add", "repo", str(REPO)).returncode == 0
    tested = run(str(BIN / "mlc"), "test", "script", "get-mlperf-automotive-loadgen", "--quiet")
    output = tested.stdout + tested.stderr
    assert tested.returncode == 0, output[-4000:]
    for tag in ("v0.5", "v1.0"):
        assert f"git clone --depth 1 --branch {tag} https://github.com/mlcommons/mlperf_automotive" in output

    src = make_checkout(tmp_path / "src")
    offline = run(
        str(BIN / "mlcr"), "get,mlperf,automotive,loadgen,_v0.5,_dry-run", f"--src={src}", "--quiet"
    )
    output = offline.stdout + offline.stderr
    assert offline.returncode == 0, output[-4000:]
    assert f"git -C {src} status --porcelain" in output and "git clone" not in output
    assert re.search(r"Installed LoadGen: (inference|automotive) \(unchanged: dry run\)", output), output

    missing = run(str(BIN / "mlcr"), "get,mlperf,automotive,loadgen,_dry-run", f"--src={tmp_path}", "--quiet")
    assert missing.returncode != 0
    assert "get-mlperf-automotive-loadgen: --src" in missing.stdout + missing.stderr
    assert "no loadgen/ folder" in missing.stdout + missing.stderr
