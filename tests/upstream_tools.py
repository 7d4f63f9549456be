"""The pinned official MLPerf Automotive tools of ``../shared/upstream`` for the tests.

``../shared/upstream/mlperf_automotive-<round>.tar.gz`` holds a shallow checkout of
``mlcommons/mlperf_automotive`` at the round's ref. For each round this module gives, built once
and cached by the tarball's hash under ``<repo>/.cache/official/`` (ignored by git):

- the unpacked checkout (the official submission checker and compliance scripts live there);
- a virtual environment whose ``mlperf_loadgen`` is the automotive LoadGen of that round, built
  by the project's own path (``python -m abtf_ssd.loadgen.build --src``), while everything else
  (torch, ONNX Runtime, mlcflow, this package) comes from the project's ``.venv``: a ``.pth`` file
  adds ``.venv``'s site-packages *after* its own, so its own LoadGen wins. ``mlcr``, ``mlc`` and
  ``abtf-ssd`` in its ``bin`` run on that interpreter. The project's ``.venv`` keeps the PyPI wheel.

Where ``../shared/upstream`` is absent (a user's clone), :func:`official_tools` skips the test
with the reason.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
import sysconfig
import tarfile
import venv
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UPSTREAM = REPO.parent / "shared" / "upstream"
CACHE = REPO / ".cache" / "official"
ROUNDS = ("v0.5", "v1.0")
_CONSOLE_SCRIPTS = ("mlcr", "mlc", "abtf-ssd")


@dataclass(frozen=True)
class OfficialTools:
    """One round's unpacked official tree and the environment with its automotive LoadGen."""

    round: str
    checkout: Path
    """The unpacked ``mlperf_automotive`` checkout at the round's ref."""
    venv: Path

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    @property
    def checker(self) -> Path:
        return self.checkout / "tools" / "submission" / "submission_checker.py"

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: this process's environment) with this environment's ``bin`` first on PATH."""
        env = dict(os.environ if base is None else base)
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        env.pop("PYTHONPATH", None)
        return env


def tarball(round: str) -> Path:
    return UPSTREAM / f"mlperf_automotive-{round}.tar.gz"


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def official_tools(round: str) -> OfficialTools:
    """The round's tools, built on first use (about a minute on 2 cores); skips without ../shared."""
    archive = tarball(round)
    if not archive.is_file():
        pytest.skip(f"{archive} is absent (a user's clone has no ../shared/upstream): official tools needed")
    CACHE.mkdir(parents=True, exist_ok=True)
    root = CACHE / f"{round}-{_digest(archive)}"
    tools = OfficialTools(round, root / f"mlperf_automotive-{round}", root / "venv")
    with (CACHE / ".lock").open("a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # blocking: another test session may be building it
        if not (root / "ready").is_file():
            _build(archive, root, tools)
    return tools


def _build(archive: Path, root: Path, tools: OfficialTools) -> None:
    import shutil

    if root.exists():
        shutil.rmtree(root)  # a build that stopped half way
    root.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    # The LoadGen goes in while the environment is bare, so pip's uninstall of the PyPI wheel can
    # only ever look at this environment; the project's site-packages are added afterwards.
    venv.EnvBuilder(with_pip=True, clear=True).create(tools.venv)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "abtf_ssd.loadgen.build",
            "--round",
            tools.round,
            "--src",
            str(tools.checkout),
            "--python",
            str(tools.python),
            "--workdir",
            str(root / "work"),
        ],  # fmt: skip
        check=True,
        capture_output=True,
        text=True,
    )
    own_site = Path(
        subprocess.run(
            [str(tools.python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    parent_site = sysconfig.get_path("purelib")
    (own_site / "_abtf_project_env.pth").write_text(
        f"import site; site.addsitedir({parent_site!r})\n", encoding="utf-8"
    )
    here = Path(sys.executable).parent
    for name in _CONSOLE_SCRIPTS:
        source = (here / name).read_text(encoding="utf-8").splitlines(keepends=True)
        script = tools.bin / name
        script.write_text(f"#!{tools.python}\n" + "".join(source[1:]), encoding="utf-8")
        script.chmod(0o755)
    kind = subprocess.run(
        [str(tools.python), "-m", "abtf_ssd.loadgen.build", "--kind"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()[0]
    if kind != "automotive":
        raise RuntimeError(f"{tools.venv}: imports the {kind} LoadGen after the build")
    (root / "ready").write_text("ok\n", encoding="utf-8")
