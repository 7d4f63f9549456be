"""Default boxes and the decoder: the fast ``decode_batch`` against the plain reference loop.

``decode_reference_loop`` (in ``abtf_ssd.model.boxes``, shared with the benchmark) transcribes the
reference decoder: full softmax, every box decoded, a per-class Python NMS loop. The fast
decoder must give the same rows in the same order on every kind of head output.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from abtf_ssd.config import BENCHMARK_CONFIG, CONFIGS, DEMO_CONFIG, SSDConfig, get_config
from abtf_ssd.model import boxes

DEMO = get_config(DEMO_CONFIG)

MEDIUM = dataclasses.replace(
    get_config(BENCHMARK_CONFIG),
    name="test_720p",
    image_size=(720, 1280),
    og_image_size=(1080, 1920),
    feat_size=((90, 160), (45, 80), (23, 40), (12, 20), (6, 10), (3, 5), (2, 3)),
    steps=(8, 16, 32, 64, 128, 256, 384),
    scales=(10, 22, 49, 76, 103, 130, 157, 253),
    head_kernel=3,
)
"""About 87 000 anchors: large enough that the decoder samples blocks of anchors for its thresholds."""


def _random_outputs(config: SSDConfig, batch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    loc = rng.standard_normal((batch, 4, config.num_anchors), dtype=np.float32)
    conf = rng.standard_normal((batch, config.num_classes, config.num_anchors), dtype=np.float32)
    return loc, conf


def _encode(target_ltrb: np.ndarray, anchors_xywh: np.ndarray) -> np.ndarray:
    """Box regressions (4, n) that decode the anchors (n, 4) onto one target box (4,) [0, 1]."""
    centre = (target_ltrb[:2] + target_ltrb[2:]) / 2
    size = target_ltrb[2:] - target_ltrb[:2]
    d_xy = (centre - anchors_xywh[:, :2]) / (boxes.SCALE_XY * anchors_xywh[:, 2:])
    d_wh = np.log(size / anchors_xywh[:, 2:]) / boxes.SCALE_WH
    return np.concatenate([d_xy, d_wh], axis=1).T.astype(np.float32)


def _trained_like_outputs(config: SSDConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One frame of a confident detector: background nearly everywhere, a few objects each claimed by a
    cluster of overlapping anchors (so NMS has real work), regressions pointing at the object."""
    rng = np.random.default_rng(seed)
    anchors = boxes.default_boxes(config)
    loc = rng.normal(0.0, 0.5, (1, 4, config.num_anchors)).astype(np.float32)
    conf = rng.normal(-2.0, 1.0, (1, config.num_classes, config.num_anchors)).astype(np.float32)
    conf[0, 0] += 8.0
    for _ in range(12):
        label = int(rng.integers(1, config.num_classes))
        size = rng.uniform(0.03, 0.3, 2)
        corner = rng.uniform(0.0, 1.0 - size)
        target = np.concatenate([corner, corner + size])
        inside = (
            (anchors[:, 0] > target[0])
            & (anchors[:, 0] < target[2])
            & (anchors[:, 1] > target[1])
            & (anchors[:, 1] < target[3])
            & (np.abs(np.log(anchors[:, 2] / size[0])) < 1.0)
            & (np.abs(np.log(anchors[:, 3] / size[1])) < 1.0)
        )
        cluster = np.flatnonzero(inside)
        conf[0, label, cluster] = rng.normal(9.0, 2.0, len(cluster))
        loc[0, :, cluster] = (_encode(target, anchors[cluster]) + rng.normal(0, 0.3, (4, len(cluster)))).T
    return loc, conf


def _assert_same_detections(actual: list[np.ndarray], expected: list[np.ndarray]) -> None:
    assert len(actual) == len(expected)
    for frame, (got, want) in enumerate(zip(actual, expected, strict=True)):
        assert got.dtype == np.float32 and got.ndim == 2 and got.shape[1] == 6, frame
        assert got.shape == want.shape, f"frame {frame}: {got.shape} rows vs {want.shape}"
        np.testing.assert_array_equal(got[:, 4], want[:, 4], err_msg=f"frame {frame}: labels")
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5, err_msg=f"frame {frame}")


# --- default boxes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_default_box_count_and_range(name: str) -> None:
    config = get_config(name)
    xywh = boxes.default_boxes(config)
    assert xywh.shape == (config.num_anchors, 4) and xywh.dtype == np.float32
    assert xywh.min() >= 0.0 and xywh.max() <= 1.0
    assert boxes.default_boxes(name) is xywh
    assert not xywh.flags.writeable


def test_default_box_order_hand_computed() -> None:
    xywh = boxes.default_boxes(DEMO)
    # demo: input 144 x 256, first map 18 x 32 with step 8, scales 14 and 30, ratios (2, 0.5).
    assert DEMO.scales[:2] == (14, 30) and DEMO.feat_size[0] == (18, 32)
    per_size = 18 * 32
    expected = {
        0: (4 / 256, 4 / 144, 14 / 256, 14 / 144),
        1: (12 / 256, 4 / 144, 14 / 256, 14 / 144),  # next column
        32: (4 / 256, 12 / 144, 14 / 256, 14 / 144),  # next row
        per_size - 1: (252 / 256, 140 / 144, 14 / 256, 14 / 144),
        per_size: (4 / 256, 4 / 144, math.sqrt(14 * 30) / 256, math.sqrt(14 * 30) / 144),  # second size
        2 * per_size: (4 / 256, 4 / 144, 14 * math.sqrt(2) / 256, 14 / (math.sqrt(2) * 144)),  # ratio 2
        3 * per_size + 33: (12 / 256, 12 / 144, 14 * math.sqrt(0.5) / 256, 14 / (math.sqrt(0.5) * 144)),
        4 * per_size: (8 / 256, 8 / 144, 30 / 256, 30 / 144),  # second map: 9 x 16, step 16, scale 30
    }
    for index, box in expected.items():
        np.testing.assert_allclose(xywh[index], np.float32(box), rtol=1e-6, err_msg=f"anchor {index}")
    # The last map is 1 x 1 (step 256): its tall ratio-0.5 box is clamped to the image height.
    last = xywh[-1]
    assert last[1] == np.float32(128 / 144) and last[3] == 1.0


def test_default_boxes_ltrb_matches_xywh() -> None:
    xywh = boxes.default_boxes(DEMO).astype(np.float64)
    ltrb = boxes.default_boxes_ltrb(DEMO)
    expected = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], axis=1)
    np.testing.assert_allclose(ltrb, expected, atol=1e-7)


# --- the arithmetic pieces ---------------------------------------------------------------------


def test_class_probabilities_match_torch_softmax() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, (15, 5000)).astype(np.float32)
    ours = boxes.class_probabilities(logits)
    torch_probs = torch.softmax(torch.from_numpy(logits).T.contiguous(), dim=-1).T.numpy()
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, torch_probs, rtol=2e-6, atol=1e-7)


def test_decode_locations_matches_float64_formula() -> None:
    rng = np.random.default_rng(1)
    anchors = boxes.default_boxes(DEMO)
    loc = rng.standard_normal((2, 4, DEMO.num_anchors), dtype=np.float32)
    ours = boxes.decode_locations(loc, anchors)
    a = anchors.astype(np.float64)
    d = loc.astype(np.float64)
    cx = 0.1 * d[:, 0] * a[:, 2] + a[:, 0]
    cy = 0.1 * d[:, 1] * a[:, 3] + a[:, 1]
    w = np.exp(0.2 * d[:, 2]) * a[:, 2]
    h = np.exp(0.2 * d[:, 3]) * a[:, 3]
    expected = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)
    assert ours.shape == (2, DEMO.num_anchors, 4) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-7)
    # A subset decodes to the very same bits as the whole.
    subset = np.array([5, 17, 3000])
    np.testing.assert_array_equal(boxes.decode_locations(loc[:, :, subset], anchors[subset]), ours[:, subset])


def test_iou_matrix_plain_area_ratio() -> None:
    square = np.array([[0, 0, 2, 2], [1, 0, 3, 2], [2, 2, 3, 3], [0, 0, 2, 2]], dtype=np.float32)
    iou = boxes.iou_matrix(square)
    np.testing.assert_allclose(iou[0], [1.0, 2 / 6, 0.0, 1.0])
    np.testing.assert_allclose(iou, iou.T)


# --- decode_batch against the reference loop ------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "seed"), [(DEMO, 0), (DEMO, 1), (MEDIUM, 2)], ids=["demo-0", "demo-1", "720p"]
)
def test_random_logits_match_reference(config: SSDConfig, seed: int) -> None:
    loc, conf = _random_outputs(config, batch=2, seed=seed)
    fast = boxes.decode_batch(loc, conf, config)
    _assert_same_detections(fast, boxes.decode_reference_loop(loc, conf, config))
    assert all(len(frame) == boxes.MAX_OUTPUT for frame in fast)
    for frame in fast:
        assert np.all(np.diff(frame[:, 5]) >= 0), "rows ascending by score"
        assert set(np.unique(frame[:, 4])) <= set(range(1, 15))


def test_scaled_random_logits_match_reference() -> None:
    """Widely spread logits: confident classes, many probabilities far below the threshold."""
    loc, conf = _random_outputs(MEDIUM, batch=1, seed=3)
    conf *= 6.0
    _assert_same_detections(
        boxes.decode_batch(loc, conf, MEDIUM), boxes.decode_reference_loop(loc, conf, MEDIUM)
    )


@pytest.mark.parametrize(
    ("config", "seed"), [(DEMO, 4), (MEDIUM, 5), (MEDIUM, 6)], ids=["demo", "720p-a", "720p-b"]
)
def test_trained_like_logits_match_reference(config: SSDConfig, seed: int) -> None:
    loc, conf = _trained_like_outputs(config, seed)
    fast = boxes.decode_batch(loc, conf, config)
    _assert_same_detections(fast, boxes.decode_reference_loop(loc, conf, config))
    # NMS did suppress: far fewer rows than confident anchors.
    probs = boxes.class_probabilities(conf[0])
    assert 0 < len(fast[0]) < int((probs[1:] > boxes.SCORE_THRESHOLD).sum()) // 2


@pytest.mark.parametrize("near_threshold", [True, False], ids=["near-threshold", "spread"])
def test_logits_where_the_bounds_are_tight_match_reference(near_threshold: bool) -> None:
    """Logits for which the decoder's two probability bounds are (nearly) equalities: a bound that is
    too tight loses boxes just above the score threshold (classes with few candidates) or at the
    top-200 cut."""
    config = MEDIUM
    rng = np.random.default_rng(15)
    count = config.num_anchors
    if near_threshold:
        few = rng.random(count) < 0.02
        p = np.where(few, rng.uniform(0.045, 0.08, count), rng.uniform(0.001, 0.04, count))
    else:
        p = rng.uniform(0.02, 0.995, count)
    loc = rng.standard_normal((1, 4, count), dtype=np.float32)
    conf = np.zeros((1, config.num_classes, count), dtype=np.float32)
    labels = rng.integers(1, config.num_classes, count)
    half = count // 2
    # First half: the other 14 logits are equal, so the mean (AM-GM) bound is exact.
    conf[0, labels[:half], np.arange(half)] = np.log(14 * p[:half] / (1 - p[:half]))
    # Second half: the background dominates the rest, so p is close to exp(x_c - max).
    conf[0, :, half:] = -30.0
    conf[0, 0, half:] = 10.0
    conf[0, labels[half:], np.arange(half, count)] = 10.0 + np.log(p[half:] / (1 - p[half:]))
    _assert_same_detections(
        boxes.decode_batch(loc, conf, config), boxes.decode_reference_loop(loc, conf, config)
    )


def test_threshold_levels_fall_back_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    """A class whose confident anchors all sit in sampled blocks defeats the first threshold estimate;
    the later levels must still give the exact top 200."""
    monkeypatch.setattr(boxes, "_SAMPLE_SIZE", 2048)
    loc, conf = _trained_like_outputs(MEDIUM, seed=7)
    sampled = boxes._sample_anchor_idx(MEDIUM.num_anchors, 2048)
    conf[0, 3, sampled[:300:2]] = 12.0
    conf[0, 5, sampled[:: len(sampled) // 150]] = 12.0
    levels = []
    original = boxes._sample_thresholds
    monkeypatch.setattr(boxes, "_sample_thresholds", lambda *args: levels.append(args[1]) or original(*args))
    fast = boxes.decode_batch(loc, conf, MEDIUM)
    assert len(levels) > 1, "the first level should not have sufficed"
    _assert_same_detections(fast, boxes.decode_reference_loop(loc, conf, MEDIUM))


def test_exact_ties_rank_higher_anchor_index_first() -> None:
    """300 anchors with identical probabilities and disjoint boxes: the reference's stable ascending sort
    keeps the 200 with the highest anchor indices."""
    config = DEMO
    anchors = boxes.default_boxes(config)
    loc = np.zeros((1, 4, config.num_anchors), dtype=np.float32)
    loc[0, 2:] = -10.0  # tiny boxes: no overlaps
    conf = np.zeros((1, config.num_classes, config.num_anchors), dtype=np.float32)
    conf[0, 0] = 20.0
    tied = np.arange(100, 400)
    conf[0, 0, tied] = 0.0
    conf[0, 7, tied] = 5.0
    fast = boxes.decode_batch(loc, conf, config)
    _assert_same_detections(fast, boxes.decode_reference_loop(loc, conf, config))
    rows = fast[0]
    assert len(rows) == boxes.MAX_PER_CLASS and np.all(rows[:, 4] == 7)
    assert len(np.unique(rows[:, 5])) == 1
    og_h, og_w = config.og_image_size
    scaled = boxes.decode_locations(loc, anchors)[0] * np.float32([og_w, og_h, og_w, og_h])
    anchor_of_box = {scaled[i].tobytes(): i for i in tied}
    assert len(anchor_of_box) == len(tied)
    assert {anchor_of_box[row[:4].tobytes()] for row in rows} == set(range(200, 400))


def test_exact_ties_in_nms_and_pool() -> None:
    """Four anchors regressed onto one box with equal scores, in three classes: NMS keeps the highest
    anchor index of each class, and the pool keeps equal scores in class order."""
    config = DEMO
    anchors = boxes.default_boxes(config)
    loc = np.zeros((1, 4, config.num_anchors), dtype=np.float32)
    conf = np.zeros((1, config.num_classes, config.num_anchors), dtype=np.float32)
    conf[0, 0] = 20.0
    cell_sizes = np.arange(4) * 18 * 32  # the four default boxes of cell (0, 0) of the first map
    loc[0][:, cell_sizes] = _encode(np.array([0.0, 0.0, 0.1, 0.1]), anchors[cell_sizes])
    conf[0, 0, cell_sizes] = 0.0
    for label in (9, 2, 4):
        conf[0, label, cell_sizes] = 6.0
    fast = boxes.decode_batch(loc, conf, config)
    _assert_same_detections(fast, boxes.decode_reference_loop(loc, conf, config))
    rows = fast[0]
    assert list(rows[:, 4]) == [2, 4, 9]
    og_h, og_w = config.og_image_size
    best = boxes.decode_locations(loc, anchors)[0, cell_sizes[-1]] * np.float32([og_w, og_h, og_w, og_h])
    for row in rows:
        np.testing.assert_array_equal(row[:4], best)


def test_empty_classes_and_background_frames() -> None:
    loc, conf = _random_outputs(DEMO, batch=3, seed=8)
    conf[:, 0] += 30.0  # frame 0: background everywhere
    conf[1, [2, 4], :50] += 40.0  # frame 1: only classes 2 and 4, on 50 anchors
    conf[2, 0] -= 30.0  # frame 2: background suppressed, but classes 3..14 empty
    conf[2, 3:] -= 40.0
    fast = boxes.decode_batch(loc, conf, DEMO)
    _assert_same_detections(fast, boxes.decode_reference_loop(loc, conf, DEMO))
    assert fast[0].shape == (0, 6) and fast[0].dtype == np.float32
    assert set(np.unique(fast[1][:, 4])) == {2, 4}
    assert set(np.unique(fast[2][:, 4])) == {1, 2}


def test_batch_equals_single_frames() -> None:
    loc, conf = _random_outputs(MEDIUM, batch=3, seed=9)
    batched = boxes.decode_batch(loc, conf, MEDIUM)
    singles = [boxes.decode_batch(loc[i : i + 1], conf[i : i + 1], MEDIUM)[0] for i in range(3)]
    for got, want in zip(batched, singles, strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("kind", ["huge", "nan", "inf"])
def test_unusual_logits_take_the_full_softmax_and_match(kind: str) -> None:
    loc, conf = _random_outputs(DEMO, batch=1, seed=10)
    if kind == "huge":
        conf[0, 5, ::7] = 5000.0
    elif kind == "nan":
        conf[0, 2, ::11] = np.nan
    else:
        conf[0, 0, ::13] = -np.inf
    _assert_same_detections(boxes.decode_batch(loc, conf, DEMO), boxes.decode_reference_loop(loc, conf, DEMO))


def test_boxes_scaled_to_original_pixels() -> None:
    """The demo network sees 144 x 256 but answers in the 288 x 512 original frame."""
    loc, conf = _random_outputs(DEMO, batch=1, seed=11)
    rows = boxes.decode_batch(loc, conf, DEMO)[0]
    og_h, og_w = DEMO.og_image_size
    assert (og_h, og_w) == (288, 512)
    decoded = boxes.decode_locations(loc, boxes.default_boxes(DEMO))[0]
    # Every row's box is some anchor's decoded box times (512, 288, 512, 288).
    scaled = decoded * np.float32([og_w, og_h, og_w, og_h])
    for row in rows[-20:]:
        assert np.any(np.all(scaled == row[:4], axis=1))
    assert rows[:, [0, 2]].max() > 256 and rows[:, [1, 3]].max() > 144


def test_wrong_shapes_are_refused() -> None:
    loc, conf = _random_outputs(DEMO, batch=1, seed=12)
    with pytest.raises(
        ValueError, match=r"expects head outputs .*got loc \(1, 4, 3500\) and conf \(1, 15, 3499\)"
    ):
        boxes.decode_batch(loc, conf[:, :, :-1], DEMO)
    with pytest.raises(ValueError, match="unknown model config"):
        boxes.decode_batch(loc, conf, "nope")


@pytest.mark.slow
def test_benchmark_head_output_matches_reference() -> None:
    config = get_config(BENCHMARK_CONFIG)
    loc, conf = _random_outputs(config, batch=1, seed=13)
    _assert_same_detections(
        boxes.decode_batch(loc, conf, config), boxes.decode_reference_loop(loc, conf, config)
    )
    loc, conf = _trained_like_outputs(config, seed=14)
    _assert_same_detections(
        boxes.decode_batch(loc, conf, config), boxes.decode_reference_loop(loc, conf, config)
    )
