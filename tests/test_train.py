"""Training: target encoding, SSD loss, schedule, a short seeded run, checkpoint and evaluation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from abtf_ssd.config import DEMO_CONFIG, get_config
from abtf_ssd.data import synth
from abtf_ssd.data.preprocess import build_preprocessed, sample_name, write_sample
from abtf_ssd.model.boxes import SCALE_WH, SCALE_XY, default_boxes
from abtf_ssd.model.ssd import DEMO_WEIGHTS, build_ssd, load_checkpoint
from abtf_ssd.model.train import (
    MATCH_IOU,
    encode_targets,
    evaluate,
    learning_rate,
    load_training_set,
    ssd_loss,
    train,
)

torch.set_num_threads(2)
CONFIG = get_config(DEMO_CONFIG)


def _anchors() -> torch.Tensor:
    return torch.from_numpy(default_boxes(CONFIG).copy())


def test_encoded_targets_decode_back_to_the_ground_truth() -> None:
    anchors = _anchors()
    gt = torch.tensor(
        [[0.10, 0.20, 0.30, 0.60, 4.0], [0.50, 0.55, 0.58, 0.70, 9.0], [0.7, 0.1, 0.72, 0.13, 1.0]]
    )
    loc, labels = encode_targets(gt, anchors)
    assert loc.shape == (4, len(anchors)) and labels.shape == (len(anchors),)
    positive = labels > 0
    # Every object has an anchor, even the tiny third one below the IoU threshold.
    assert set(labels[positive].tolist()) == {4, 9, 1}
    centre = SCALE_XY * loc[:2, positive].T * anchors[positive, 2:] + anchors[positive, :2]
    size = torch.exp(SCALE_WH * loc[2:, positive].T) * anchors[positive, 2:]
    decoded = torch.cat([centre - size / 2, centre + size / 2], dim=1)
    matched = {4: gt[0, :4], 9: gt[1, :4], 1: gt[2, :4]}
    expected = torch.stack([matched[int(label)] for label in labels[positive]])
    torch.testing.assert_close(decoded, expected, atol=1e-5, rtol=0)


def test_matching_uses_the_iou_threshold() -> None:
    anchors = _anchors()
    gt = torch.tensor([[0.2, 0.2, 0.5, 0.7, 3.0]])
    _, labels = encode_targets(gt, anchors)
    x1y1 = anchors[:, :2] - anchors[:, 2:] / 2
    x2y2 = anchors[:, :2] + anchors[:, 2:] / 2
    inter = (torch.minimum(x2y2, gt[:, 2:4]) - torch.maximum(x1y1, gt[:, :2])).clamp(min=0).prod(dim=1)
    iou = inter / (anchors[:, 2:].prod(dim=1) + 0.15 - inter)
    expected = iou > MATCH_IOU
    expected[iou.argmax()] = True
    assert torch.equal(labels > 0, expected)
    assert int(expected.sum()) > 1
    _, empty = encode_targets(torch.zeros(0, 5), anchors)
    assert int(empty.sum()) == 0


def test_loss_counts_three_hard_negatives_per_positive() -> None:
    labels = torch.zeros(1, 10, dtype=torch.int64)
    labels[0, 2] = 5
    loc_targets = torch.randn(1, 4, 10)
    conf = torch.zeros(1, 15, 10)
    # With uniform logits every anchor costs log(15): 1 positive + 3 mined negatives.
    loss = ssd_loss(loc_targets.clone(), conf, loc_targets, labels)
    assert math.isclose(float(loss), 4 * math.log(15), rel_tol=1e-6)
    # The hardest negatives are the ones mined: make two negatives very wrong.
    conf[0, 7, 0] = conf[0, 7, 9] = 20.0
    harder = ssd_loss(loc_targets.clone(), conf, loc_targets, labels)
    assert float(harder) > float(loss) + 30
    # Regression counts on positives only.
    shifted = loc_targets.clone()
    shifted[0, :, 3] += 5.0
    assert math.isclose(float(ssd_loss(shifted, conf, loc_targets, labels)), float(harder), rel_tol=1e-6)
    shifted[0, 0, 2] += 3.0
    assert math.isclose(
        float(ssd_loss(shifted, conf, loc_targets, labels)), float(harder) + 2.5, rel_tol=1e-5
    )


def test_learning_rate_warms_up_then_decays_to_zero() -> None:
    assert learning_rate(2e-3, 0, 50, 0.0) == pytest.approx(2e-3 / 50)
    assert learning_rate(2e-3, 49, 50, 0.0) == pytest.approx(2e-3)
    assert learning_rate(2e-3, 500, 50, 0.5) == pytest.approx(1e-3)
    assert learning_rate(2e-3, 900, 50, 1.0) == pytest.approx(0.0, abs=1e-12)


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("train_pp")
    rng = np.random.default_rng(0)
    for i in range(4):
        img = rng.standard_normal((1, 3, *CONFIG.image_size), dtype=np.float32)
        gt = np.array([[40, 100, 160, 180, 4, 0, 0], [300, 120, 340, 220, 9, 0, 0]], np.float32)
        write_sample(folder / sample_name("train", i), img, gt[: 1 + i % 2])
    return folder


def test_training_set_boxes_are_relative_to_the_original_frame(tiny_set: Path) -> None:
    images, targets = load_training_set(tiny_set, "train", CONFIG)
    assert images.shape == (4, 3, 144, 256)
    og_h, og_w = CONFIG.og_image_size
    torch.testing.assert_close(
        targets[1][1], torch.tensor([300 / og_w, 120 / og_h, 340 / og_w, 220 / og_h, 9.0])
    )
    with pytest.raises(FileNotFoundError, match="calib_<i>.pkl"):
        load_training_set(tiny_set, "calib", CONFIG)


def test_short_run_is_seeded_and_writes_a_loadable_half_checkpoint(tiny_set: Path, tmp_path: Path) -> None:
    runs = []
    for name in ("a.pth", "b.pth"):
        result = train(tiny_set, tmp_path / name, minutes=0, max_iters=2, batch_size=2, seed=7)
        assert result.iterations == 2 and math.isfinite(result.final_loss)
        runs.append(torch.load(tmp_path / name, weights_only=True))
    first, second = runs
    assert first["config"] == DEMO_CONFIG and first["iterations"] == 2 and first["finished"]
    assert first["model_state_dict"]["conf.0.weight"].dtype == torch.float16
    assert first["model_state_dict"]["conf.0.bias"].dtype == torch.float16
    assert first["model_state_dict"]["additional_blocks.0.1.running_var"].dtype == torch.float32
    for key, tensor in first["model_state_dict"].items():
        assert torch.equal(tensor, second["model_state_dict"][key]), key
    model = load_checkpoint(build_ssd(DEMO_CONFIG), tmp_path / "a.pth")
    assert model.state_dict()["conf.0.weight"].dtype == torch.float32
    assert not list(tmp_path.glob("*.tmp"))


def test_evaluate_scores_a_checkpoint(tiny_set: Path, tmp_path: Path) -> None:
    train(tiny_set, tmp_path / "m.pth", minutes=0, max_iters=1, batch_size=2, seed=0)
    result = evaluate(tmp_path / "m.pth", tiny_set, prefix="train")
    assert 0.0 <= result.map <= 1.0 and result.frames_total == 4


def test_a_budget_is_required(tiny_set: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="budget"):
        train(tiny_set, tmp_path / "x.pth", minutes=0)


def test_committed_demo_weights_fit_the_demo_config_and_stay_small() -> None:
    assert DEMO_WEIGHTS.stat().st_size <= 30_000_000
    checkpoint = torch.load(DEMO_WEIGHTS, weights_only=True)
    assert checkpoint["config"] == DEMO_CONFIG and checkpoint["finished"]
    load_checkpoint(build_ssd(DEMO_CONFIG), DEMO_WEIGHTS)


def test_committed_demo_weights_detect_synthetic_objects(tmp_path: Path) -> None:
    raw = synth.generate(tmp_path / "raw", frames=16, calibration_frames=0, seed=0, workers=1)
    samples = build_preprocessed(
        raw, raw / "val_set.csv", tmp_path / "pp", "val", DEMO_CONFIG, workers=1, progress=False
    )
    result = evaluate(DEMO_WEIGHTS, samples)
    # The full 200-frame measurement is in abtf_ssd/assets/README.md; 16 frames are noisier.
    assert result.map > 0.4 and result.map_50 > 0.8
