"""Files from a download that would run code when loaded: a sample pickle and a PyTorch checkpoint
whose pickles call ``exec`` / ``os.system``. Each must be refused with an error naming the file,
through the library and through the CLI, and the payload must never run."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from abtf_ssd.config import DEMO_CONFIG
from abtf_ssd.data.preprocess import PICKLE_PROTOCOL, UnsafePickleError, load_sample
from faults.support import run_python


class _RunsExec:
    """Unpickling this calls ``exec`` with a statement that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('payload ran')",))


class _RunsShell:
    """Unpickling this calls ``os.system('touch <marker>')``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


PAYLOADS = {"exec": _RunsExec, "os.system": _RunsShell}


@pytest.fixture(params=sorted(PAYLOADS))
def payload(request, tmp_path: Path):
    """Each payload in turn (the cheap library-level tests)."""
    marker = tmp_path / "PAYLOAD_RAN"
    return PAYLOADS[request.param](marker), marker


@pytest.fixture
def exec_payload(tmp_path: Path):
    """The ``exec`` payload alone (the tests that start processes or LoadGen)."""
    marker = tmp_path / "PAYLOAD_RAN"
    return _RunsExec(marker), marker


def _hostile_dataset(tiny_dataset, payload, folder: Path) -> tuple[Path, Path]:
    """A copy of the tiny preprocessed set whose ``val_3.pkl`` runs the payload when unpickled."""
    hostile, marker = payload
    dataset = shutil.copytree(tiny_dataset.preprocessed, folder)
    sample = {"img": hostile, "gt_boxes": np.zeros((0, 7), np.float32)}
    (dataset / "val_3.pkl").write_bytes(pickle.dumps(sample, protocol=PICKLE_PROTOCOL))
    return dataset, marker


@pytest.fixture
def hostile_dataset(tiny_dataset, payload, tmp_path: Path) -> tuple[Path, Path]:
    return _hostile_dataset(tiny_dataset, payload, tmp_path / "val")


@pytest.fixture
def exec_hostile_dataset(tiny_dataset, exec_payload, tmp_path: Path) -> tuple[Path, Path]:
    return _hostile_dataset(tiny_dataset, exec_payload, tmp_path / "val")


def accuracy_log(path: Path, samples: int) -> Path:
    row = np.array([[10, 10, 60, 60, 4, 0.9]], dtype=np.float32)
    path.write_text(
        json.dumps([{"qsl_idx": i, "seq_id": i, "data": row.tobytes().hex()} for i in range(samples)])
    )
    return path


def test_hostile_sample_is_refused_by_the_loader(hostile_dataset):
    dataset, marker = hostile_dataset
    with pytest.raises(UnsafePickleError, match=r"val_3\.pkl: refused global"):
        load_sample(dataset / "val_3.pkl")
    assert not marker.exists()


def test_hostile_sample_is_refused_by_an_accuracy_run(exec_hostile_dataset, demo_onnx_model, tmp_path):
    from abtf_ssd.loadgen import harness

    dataset, marker = exec_hostile_dataset
    options = harness.RunOptions(
        dataset_dir=dataset,
        model_path=demo_onnx_model,
        config_name=DEMO_CONFIG,
        mode="accuracy",
        test_query_count=5,
        threads=1,
        results_dir=tmp_path / "results",
        command="pytest",
    )
    with pytest.raises(harness.RunFailedError) as info:
        harness.run(options)
    assert "[3]" in str(info.value) and "val_3.pkl: refused global" in str(info.value)
    assert not (harness.output_dir(options) / "accuracy.txt").exists()
    assert not marker.exists()


def test_hostile_sample_is_refused_by_the_accuracy_cli(exec_hostile_dataset, tmp_path):
    dataset, marker = exec_hostile_dataset
    log = accuracy_log(tmp_path / "mlperf_log_accuracy.json", samples=12)
    proc = run_python(
        ["-m", "abtf_ssd.cli", "accuracy", "--log", str(log), "--dataset", str(dataset)], tmp_path
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "val_3.pkl: refused global" in line
    assert not (tmp_path / "accuracy.txt").exists() and not marker.exists()


# --------------------------------------------------------------------------------------------
# PyTorch checkpoints


def _hostile_checkpoint(payload, folder: Path) -> tuple[Path, Path]:
    """A .pth with a real state dict plus one entry whose pickle runs the payload."""
    import torch

    hostile, marker = payload
    path = folder / "baseline_8MP_ss_scales_fm1_5x5_all_ep60.pth"
    torch.save({"model_state_dict": {"conf.0.bias": torch.zeros(60)}, "epoch": hostile}, path)
    return path, marker


@pytest.fixture
def hostile_checkpoint(payload, tmp_path: Path) -> tuple[Path, Path]:
    return _hostile_checkpoint(payload, tmp_path)


@pytest.fixture
def exec_hostile_checkpoint(exec_payload, tmp_path: Path) -> tuple[Path, Path]:
    return _hostile_checkpoint(exec_payload, tmp_path)


def test_hostile_checkpoint_is_refused_and_nothing_runs(hostile_checkpoint):
    import torch

    from abtf_ssd.config import get_config
    from abtf_ssd.model.ssd import SSDResNet50, load_checkpoint

    path, marker = hostile_checkpoint
    with torch.device("meta"):
        model = SSDResNet50(get_config(DEMO_CONFIG))
    with pytest.raises((pickle.UnpicklingError, ValueError)):
        load_checkpoint(model, path)
    assert not marker.exists()


def test_hostile_checkpoint_is_refused_by_the_pytorch_backend(hostile_checkpoint):
    from abtf_ssd.model.backends import create_backend

    path, marker = hostile_checkpoint
    for config_name in (DEMO_CONFIG, None):
        with pytest.raises((pickle.UnpicklingError, ValueError, RuntimeError)):
            create_backend("pytorch", path, "cpu", 1, config_name)
    assert not marker.exists()


def test_hostile_checkpoint_error_names_the_file(hostile_checkpoint):
    import torch

    from abtf_ssd.config import get_config
    from abtf_ssd.model.ssd import SSDResNet50, load_checkpoint

    path, marker = hostile_checkpoint
    with torch.device("meta"):
        model = SSDResNet50(get_config(DEMO_CONFIG))
    with pytest.raises(ValueError, match=str(path)) as info:
        load_checkpoint(model, path)
    assert "weights_only=False" not in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("command", ["run", "export-onnx"])
def test_hostile_checkpoint_through_the_cli_is_one_clear_line(
    exec_hostile_checkpoint, tiny_dataset, tmp_path, command
):
    path, marker = exec_hostile_checkpoint
    if command == "run":
        args = ["--dataset-dir", str(tiny_dataset.preprocessed), "--model-path", str(path)]
        args += ["--framework", "pytorch", "--results-dir", str(tmp_path / "results"), "--threads", "1"]
    else:
        args = ["--config", DEMO_CONFIG, "--checkpoint", str(path), "--out", str(tmp_path / "m.onnx")]
    proc = run_python(["-m", "abtf_ssd.cli", command, *args], tmp_path)
    assert not marker.exists()
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert str(path) in line
