"""Fixtures of the fault-injection suite (``tiny_dataset`` and ``demo_onnx_model``, session-wide, come
from ``tests/conftest.py``)."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import pytest

from faults.support import BIN, REPO, FakeRemote, child_env


@pytest.fixture
def fake_remote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeRemote:
    """The stand-in ``mlc-cognata`` remote, active in this process's environment (and so in children)."""
    remote = FakeRemote(tmp_path / "fake_remote")
    for key, value in remote.env().items():
        monkeypatch.setenv(key, value)
    for key in ("FAULT_RCLONE_DIE_AFTER", "FAULT_RCLONE_CHATTER"):
        monkeypatch.delenv(key, raising=False)
    return remote


@pytest.fixture(scope="session")
def long_split(tiny_dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A split CSV listing the tiny raw frames three times over (36 rows): long enough to be killed."""
    rows = list(csv.reader((tiny_dataset.raw_root / "val_set.csv").open(newline="")))
    path = tmp_path_factory.mktemp("long_split") / "long_val_set.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(rows[0])
        for _ in range(3):
            writer.writerows(rows[1:])
    return path


@pytest.fixture(scope="session")
def long_reference(tiny_dataset, long_split: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``long_split`` preprocessed in one uninterrupted run: what every interrupted run must end as."""
    from abtf_ssd.config import DEMO_CONFIG
    from abtf_ssd.data.preprocess import build_preprocessed

    out = tmp_path_factory.mktemp("long_reference") / "val"
    return build_preprocessed(
        tiny_dataset.raw_root, long_split, out, "val", DEMO_CONFIG, workers=1, progress=False
    )


@pytest.fixture(scope="module")
def mlc_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], Path]:
    """An MLC repos folder of its own with this repository registered; HOME points there too, so no
    rclone login or ~/MLC of the user is ever read."""
    home = tmp_path_factory.mktemp("mlc_home")
    env = child_env(HOME=str(home), MLC_REPOS=str(home / "repos"))
    add = subprocess.run(
        [str(BIN / "mlc"), "add", "repo", str(REPO)], env=env, cwd=home, capture_output=True, text=True
    )
    assert add.returncode == 0, add.stdout + add.stderr
    return env, home
