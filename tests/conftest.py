"""Session-wide fixtures: a tiny synthetic preprocessed dataset and a random-weight demo ONNX model.

Both are built once per test session in a temporary folder, from the real pieces: synthetic
Cognata frames (``abtf_ssd.data.synth``), the official pickle format (``abtf_ssd.data.preprocess``) and
the demo SSD exported to ONNX (``abtf_ssd.model.ssd``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

DEMO_FRAMES = 12
"""Validation frames of the tiny dataset: more than a test run's 10 queries."""


@dataclass(frozen=True)
class TinyDataset:
    raw_root: Path
    """Synthetic raw Cognata layout with ``val_set.csv``."""
    preprocessed: Path
    """``val_<i>.pkl`` for the demo config, i = 0 .. frames - 1."""
    frames: int


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> TinyDataset:
    from abtf_ssd.config import DEMO_CONFIG
    from abtf_ssd.data.preprocess import build_preprocessed
    from abtf_ssd.data.synth import SPLIT_FILES, generate

    root = tmp_path_factory.mktemp("tiny_dataset")
    raw = generate(
        root / "raw", frames=DEMO_FRAMES, width=512, height=288, seed=7, calibration_frames=0, workers=1
    )
    preprocessed = build_preprocessed(
        raw, raw / SPLIT_FILES["validation"], root / "val", "val", DEMO_CONFIG, workers=1, progress=False
    )
    return TinyDataset(raw_root=raw, preprocessed=preprocessed, frames=DEMO_FRAMES)


@pytest.fixture(scope="session")
def demo_onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from abtf_ssd.config import DEMO_CONFIG
    from abtf_ssd.model.export import export_onnx
    from abtf_ssd.model.ssd import build_ssd, init_weights

    torch.set_num_threads(2)
    model = init_weights(build_ssd(DEMO_CONFIG), seed=0).eval()
    return export_onnx(model, tmp_path_factory.mktemp("demo_model") / "ssd_demo.onnx")
