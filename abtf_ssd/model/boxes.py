"""SSD default boxes and the reference decoder (box decoding, softmax, per-class NMS) in numpy.

This module is numpy only: the ONNX Runtime path imports it without torch.

Reference behaviour reproduced here (BENCHMARK.md section 4):

* default boxes per feature map, size by size, row by row, column by column, clamped to [0, 1];
* box centre ``SCALE_XY * d_xy * anchor_wh + anchor_xy``, size ``exp(SCALE_WH * d_wh) * anchor_wh``,
  then corners;
* class probabilities: softmax over the 15 logits;
* for each class 1..14: keep probabilities ``> SCORE_THRESHOLD``, sort them ascending (stable) and
  keep the last ``MAX_PER_CLASS``; greedy NMS: take the last (highest) remaining box, keep only the
  remaining boxes whose IoU with it is ``< NMS_IOU`` (the taken box has IoU 1 with itself and
  goes too; a NaN IoU also drops the box), repeat;
* pool the classes (class 1 first, each class in NMS order), sort ascending by score (stable)
  and keep the last ``MAX_OUTPUT`` rows: rows come out ascending by score.

Exact ties follow the stable ascending sort (torch's CPU sort is stable): among equal
probabilities the box with the higher anchor index ranks higher, and in the pooled output equal
scores keep pool order.

Precision: everything is float32, like the reference in torch float32. The softmax subtracts the
per-anchor maximum, exponentiates, sums the 15 terms in class order and multiplies by the
reciprocal of the sum (torch's CPU softmax kernel also multiplies by the reciprocal). numpy's and
torch's SIMD ``exp`` and summation order differ, so probabilities agree with torch to about one
float32 ulp, not bit for bit; the fast decoder and :func:`decode_reference_loop` share
:func:`class_probabilities`, so they agree bit for bit with each other.

Speed: :func:`decode_batch` gives exactly the result of :func:`decode_reference_loop` without a
softmax over all anchors. Three cheap upper bounds on a class probability need only the per-anchor
maximum ``m`` and mean ``mu`` of the logits and the background logit ``x_0``:
``p_c <= exp(x_c - m)``, ``p_c <= sigmoid(x_c - x_0)`` and, by the AM-GM inequality over the other
``C - 1`` logits, ``p_c <= 1 / (1 + (C - 1) exp((C / (C - 1)) (mu - x_c)))``. A
probability threshold ``tau`` per class, estimated from an exact softmax of evenly spaced blocks
of anchors, turns these into a per-anchor logit floor (with slack for float32 rounding); only
anchors above it get an exact softmax. A class is finished when at least ``MAX_PER_CLASS`` exact
probabilities reach its ``tau`` (then its top ``MAX_PER_CLASS`` are all among them) or when its
``tau`` is the score threshold itself; otherwise it is redone with a lower ``tau``. Frames whose
logits are not finite or beyond ``_BOUND_LOGIT_LIMIT`` take the full softmax. Boxes are decoded
only for the selected candidates, and NMS runs on a <= 200 x 200 IoU matrix. On the 8 MP head
(776 740 anchors) this takes about 30 ms of CPU a frame for random logits and about 45 ms for
dense clusters of confident anchors, against 1 s and 0.2-0.4 s for the reference loop
(``bench/bench_decode.py``, one core).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from abtf_ssd.config import SSDConfig, get_config

SCALE_XY = 0.1
SCALE_WH = 0.2
SCORE_THRESHOLD = 0.05
NMS_IOU = 0.5
MAX_PER_CLASS = 200
MAX_OUTPUT = 500

DETECTION_COLUMNS = ("x1", "y1", "x2", "y2", "label", "score")

# Logits above this limit, a logit sum below -C times it, or non-finite logits would make the
# bounds' rounding slack unsafe: such frames take the full softmax instead.
_BOUND_LOGIT_LIMIT = 1.0e3
# Log-domain slack covering float32 rounding of the mean, of the thresholds and of exp (< 3e-3
# for logits within _BOUND_LOGIT_LIMIT).
_BOUND_LOG_SLACK = 0.01
# Relative slack between a float32 probability and the exact one (< 3e-4 within the limit).
_BOUND_PROB_SLACK = 1.0e-3
# Blocks of _SAMPLE_BLOCK consecutive anchors, about _SAMPLE_SIZE anchors in all, spread over the
# frame, get an exact softmax to estimate the per-class thresholds (contiguous blocks keep the
# gather cheap). Level L's threshold is the sampled probability of the rank that predicts
# _EXPECTED_ABOVE[L] exact probabilities above it: far more than MAX_PER_CLASS, so the first level
# nearly always suffices; the level after the last is the score threshold itself.
_SAMPLE_BLOCK = 64
_SAMPLE_SIZE = 24576
_EXPECTED_ABOVE = (640, 2560, 10240)
# Classes whose thresholds are within this factor share one logit floor (one pass over the anchors).
_GROUP_TAU_RATIO = 1.5


def _as_config(config: SSDConfig | str) -> SSDConfig:
    return get_config(config) if isinstance(config, str) else config


@functools.cache
def _default_boxes_xywh(config: SSDConfig) -> np.ndarray:
    image_h, image_w = config.image_size
    blocks = []
    for k, ((rows, cols), step, ratios) in enumerate(
        zip(config.feat_size, config.steps, config.aspect_ratios, strict=True)
    ):
        sk1 = config.scales[k]
        sk3 = math.sqrt(sk1 * config.scales[k + 1])
        sizes = [(sk1 / image_w, sk1 / image_h), (sk3 / image_w, sk3 / image_h)]
        sizes += [(sk1 * math.sqrt(a) / image_w, sk1 / (math.sqrt(a) * image_h)) for a in ratios]
        centre_y = (np.arange(rows, dtype=np.float64) + 0.5) * step / image_h
        centre_x = (np.arange(cols, dtype=np.float64) + 0.5) * step / image_w
        grid_y, grid_x = np.meshgrid(centre_y, centre_x, indexing="ij")
        for width, height in sizes:
            block = np.empty((rows * cols, 4), dtype=np.float64)
            block[:, 0] = grid_x.ravel()
            block[:, 1] = grid_y.ravel()
            block[:, 2] = width
            block[:, 3] = height
            blocks.append(block)
    boxes = np.clip(np.concatenate(blocks), 0.0, 1.0).astype(np.float32)
    if len(boxes) != config.num_anchors:
        raise AssertionError(
            f"config {config.name!r}: {len(boxes)} default boxes, expected {config.num_anchors}"
        )
    boxes.setflags(write=False)
    return boxes


def default_boxes(config: SSDConfig | str) -> np.ndarray:
    """Default boxes of ``config`` as (A, 4) float32 ``[cx, cy, w, h]``, relative to the image.

    Cached per config; the returned array is read-only.
    """
    return _default_boxes_xywh(_as_config(config))


@functools.cache
def _default_boxes_ltrb(config: SSDConfig) -> np.ndarray:
    xywh = _default_boxes_xywh(config)
    half = np.float32(0.5) * xywh[:, 2:]
    boxes = np.concatenate([xywh[:, :2] - half, xywh[:, :2] + half], axis=1)
    boxes.setflags(write=False)
    return boxes


def default_boxes_ltrb(config: SSDConfig | str) -> np.ndarray:
    """Default boxes of ``config`` as (A, 4) float32 ``[x1, y1, x2, y2]`` (not clamped again)."""
    return _default_boxes_ltrb(_as_config(config))


def decode_locations(loc: np.ndarray, anchors_xywh: np.ndarray) -> np.ndarray:
    """Box regressions (B, 4, A) and default boxes (A, 4) xywh -> boxes (B, A, 4) ``[x1, y1, x2, y2]``.

    float32, in the reference's order of operations; works on any subset of anchors.
    """
    deltas = np.asarray(loc, dtype=np.float32)
    anchors = np.asarray(anchors_xywh, dtype=np.float32)
    anchor_x, anchor_y, anchor_w, anchor_h = anchors[:, 0], anchors[:, 1], anchors[:, 2], anchors[:, 3]
    centre_x = (SCALE_XY * deltas[:, 0]) * anchor_w + anchor_x
    centre_y = (SCALE_XY * deltas[:, 1]) * anchor_h + anchor_y
    # exp always sees a fresh contiguous array, so every subset gets the same bits as the whole.
    half_w = 0.5 * (np.exp(SCALE_WH * deltas[:, 2]) * anchor_w)
    half_h = 0.5 * (np.exp(SCALE_WH * deltas[:, 3]) * anchor_h)
    return np.stack([centre_x - half_w, centre_y - half_h, centre_x + half_w, centre_y + half_h], axis=-1)


def class_probabilities(logits: np.ndarray) -> np.ndarray:
    """Softmax over axis 0: logits (C, n) -> probabilities (C, n) float32 (see module docstring)."""
    logits = np.asarray(logits, dtype=np.float32)
    exps = np.exp(logits - logits.max(axis=0))
    total = exps[0].copy()
    for row in exps[1:]:
        total += row
    return exps * (np.float32(1.0) / total)


def iou_matrix(boxes: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes (n, 4) ``[x1, y1, x2, y2]`` -> (n, n), area ratio without a +1."""
    left, top, right, bottom = np.ascontiguousarray(boxes.T)
    overlap_w = np.minimum(right[:, None], right[None, :]) - np.maximum(left[:, None], left[None, :])
    overlap_h = np.minimum(bottom[:, None], bottom[None, :]) - np.maximum(top[:, None], top[None, :])
    # maximum keeps NaN, like the reference's masked assignment.
    np.maximum(overlap_w, 0, out=overlap_w)
    np.maximum(overlap_h, 0, out=overlap_h)
    intersection = overlap_w * overlap_h
    area = (right - left) * (bottom - top)
    return intersection / (area[:, None] + area[None, :] - intersection)


def _greedy_nms(boxes: np.ndarray) -> np.ndarray:
    """Indices (k,) kept by greedy NMS over boxes (n, 4) already ranked best first."""
    suppresses = np.triu(~(iou_matrix(boxes) < NMS_IOU), 1)
    # Only rows that suppress a later box can change the outcome; walk those in rank order with a
    # Python int as the bit set of removed boxes.
    active = np.flatnonzero(suppresses.any(axis=1))
    if len(active) == 0:
        return np.arange(len(boxes))
    packed = np.packbits(suppresses[active], axis=1, bitorder="little")
    removed = 0
    for i, row in zip(active.tolist(), packed, strict=True):
        if not (removed >> i) & 1:
            removed |= int.from_bytes(row.tobytes(), "little")
    removed_bits = np.unpackbits(
        np.frombuffer(removed.to_bytes(packed.shape[1], "little"), dtype=np.uint8),
        count=len(boxes),
        bitorder="little",
    )
    return np.flatnonzero(removed_bits == 0)


def _rank_top(anchor_idx: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top ``MAX_PER_CLASS`` of candidates (anchor_idx ascending), best first, reference tie order."""
    order = np.argsort(scores, kind="stable")[-MAX_PER_CLASS:][::-1]
    return anchor_idx[order], scores[order]


def _frame_bound_inputs(conf: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Per-anchor (max over foreground classes, max over all, mean) of logits (C, A); None if unsafe.

    With every logit <= m <= L and the sum >= -C * L, the absolute logits sum to at most
    2 C L - sum <= 3 C L, which bounds the float32 rounding of the mean well inside the slack.
    """
    foreground_max = conf[1:].max(axis=0)
    overall_max = np.maximum(foreground_max, conf[0])
    total = conf[0].copy()
    for row in conf[1:]:
        total += row
    # NaN fails both comparisons; infinities fail one.
    num_classes = conf.shape[0]
    if not (overall_max.max() <= _BOUND_LOGIT_LIMIT and total.min() >= -num_classes * _BOUND_LOGIT_LIMIT):
        return None
    return foreground_max, overall_max, total / np.float32(num_classes)


def _logit_offsets(tau: float, num_classes: int) -> tuple[float, float, float]:
    """Offsets from the (max, mean, background logit) that a foreground logit must exceed for its
    probability to reach ``tau``."""
    tau = min(max(tau, SCORE_THRESHOLD), 0.999) * (1.0 - _BOUND_PROB_SLACK)
    others = num_classes - 1
    from_max = math.log(tau) - _BOUND_LOG_SLACK
    from_mean = (others / num_classes) * math.log(others * tau / (1.0 - tau)) - _BOUND_LOG_SLACK
    from_background = math.log(tau / (1.0 - tau)) - _BOUND_LOG_SLACK
    return from_max, from_mean, from_background


def _logit_floor(
    tau: float, overall_max: np.ndarray, mean: np.ndarray, background: np.ndarray, num_classes: int
) -> np.ndarray:
    """Per anchor (A,), a value every foreground logit with probability >= ``tau`` exceeds."""
    from_max, from_mean, from_background = _logit_offsets(tau, num_classes)
    floor = np.maximum(overall_max + np.float32(from_max), mean + np.float32(from_mean))
    return np.maximum(floor, background + np.float32(from_background), out=floor)


@functools.cache
def _sample_anchor_idx(num_anchors: int, sample_size: int) -> np.ndarray:
    """Anchor indices (n,) of the threshold sample: all anchors of a small frame, else spaced blocks."""
    block_stride = num_anchors // sample_size
    if block_stride <= 1:
        return np.arange(num_anchors)
    starts = np.arange(0, num_anchors // _SAMPLE_BLOCK, block_stride) * _SAMPLE_BLOCK
    return (starts[:, None] + np.arange(_SAMPLE_BLOCK)).ravel()


def _sample_thresholds(sample_probs: np.ndarray, expected_above: int, num_anchors: int) -> np.ndarray:
    """Per foreground class, from sampled probabilities (C - 1, n), the one whose rank predicts
    ``expected_above`` exact probabilities above it; 0 when that is not above the score threshold
    (then the class needs every probability above the threshold)."""
    count = sample_probs.shape[1]
    rank = math.ceil(expected_above * count / num_anchors)
    if count < rank:
        return np.zeros(len(sample_probs), dtype=np.float32)
    kth = np.partition(sample_probs, count - rank, axis=1)[:, count - rank]
    return np.where(kth > np.float32(SCORE_THRESHOLD), kth, np.float32(0.0))


def _threshold_groups(classes: list[int], taus: np.ndarray) -> list[list[int]]:
    """Classes grouped so that one logit floor (from the group's lowest threshold) serves a group
    without letting in many more anchors than the classes' own floors: the classes that need every
    probability above the score threshold (tau 0) together, the others in runs of thresholds within
    a factor ``_GROUP_TAU_RATIO``."""
    complete = [c for c in classes if taus[c - 1] == 0]
    groups = [complete] if complete else []
    for c in sorted((c for c in classes if taus[c - 1] > 0), key=lambda c: taus[c - 1]):
        if len(groups) > len(complete[:1]) and taus[c - 1] <= _GROUP_TAU_RATIO * taus[groups[-1][0] - 1]:
            groups[-1].append(c)
        else:
            groups.append([c])
    return groups


def _top_candidates_bounded(conf: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """Per foreground class, (anchor_idx, scores) of its top ``MAX_PER_CLASS`` above the score threshold,
    best first, from logits (C, A) without a full softmax; None when the logits are unsafe for it."""
    bound_inputs = _frame_bound_inputs(conf)
    if bound_inputs is None:
        return None
    foreground_max, overall_max, mean = bound_inputs
    num_classes = conf.shape[0]
    threshold = np.float32(SCORE_THRESHOLD)
    results: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    pending = list(range(1, num_classes))
    sample_probs = class_probabilities(conf[:, _sample_anchor_idx(conf.shape[1], _SAMPLE_SIZE)])[1:]
    for expected_above in (*_EXPECTED_ABOVE, None):
        if expected_above is None:
            taus = np.zeros(num_classes - 1, dtype=np.float32)
        else:
            taus = _sample_thresholds(sample_probs, expected_above, conf.shape[1])
        needed = np.zeros(conf.shape[1], dtype=bool)
        for group in _threshold_groups(pending, taus):
            tau = float(taus[group[0] - 1])
            logit_floor = _logit_floor(tau, overall_max, mean, conf[0], num_classes)
            if len(group) == num_classes - 1:
                best_in_group = foreground_max
            elif len(group) == 1:
                best_in_group = conf[group[0]]
            else:
                best_in_group = conf[group].max(axis=0)
            needed |= best_in_group > logit_floor
        anchor_idx = np.flatnonzero(needed)
        probs = class_probabilities(conf[:, anchor_idx])
        still_pending = []
        for c in pending:
            tau = taus[c - 1]
            selected = np.flatnonzero((probs[c] > threshold) & (probs[c] >= tau))
            if tau > 0 and len(selected) < MAX_PER_CLASS:
                still_pending.append(c)
                continue
            results[c] = _rank_top(anchor_idx[selected], probs[c, selected])
        pending = still_pending
        if not pending:
            break
    return [results[c] for c in range(1, num_classes)]


def _top_candidates_full(conf: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    probs = class_probabilities(conf)
    threshold = np.float32(SCORE_THRESHOLD)
    results = []
    for c in range(1, conf.shape[0]):
        anchor_idx = np.flatnonzero(probs[c] > threshold)
        results.append(_rank_top(anchor_idx, probs[c, anchor_idx]))
    return results


def _empty_detections() -> np.ndarray:
    return np.zeros((0, len(DETECTION_COLUMNS)), dtype=np.float32)


def _pool(per_class: list[tuple[np.ndarray, np.ndarray]], og_size: tuple[int, int]) -> np.ndarray:
    """Pool per-class (boxes (k, 4), scores (k,)) for labels 1.. into rows (K, 6), keeping the reference's
    last ``MAX_OUTPUT`` of a stable ascending score sort; boxes scaled to original pixels."""
    labels = [np.full(len(scores), label, dtype=np.float32) for label, (_, scores) in enumerate(per_class, 1)]
    scores = np.concatenate([scores for _, scores in per_class])
    if len(scores) == 0:
        return _empty_detections()
    boxes = np.concatenate([boxes for boxes, _ in per_class])
    order = np.argsort(scores, kind="stable")[-MAX_OUTPUT:]
    og_h, og_w = og_size
    scale = np.array([og_w, og_h, og_w, og_h], dtype=np.float32)
    rows = np.empty((len(order), len(DETECTION_COLUMNS)), dtype=np.float32)
    rows[:, :4] = boxes[order] * scale
    rows[:, 4] = np.concatenate(labels)[order]
    rows[:, 5] = scores[order]
    return rows


def _decode_frame(
    loc: np.ndarray, conf: np.ndarray, anchors: np.ndarray, og_size: tuple[int, int]
) -> np.ndarray:
    """One frame's loc (4, A) and conf (C, A) -> detections (K, 6)."""
    candidates = _top_candidates_bounded(conf)
    if candidates is None:
        candidates = _top_candidates_full(conf)
    anchor_idx = np.concatenate([idx for idx, _ in candidates])
    decoded = decode_locations(loc[None, :, anchor_idx], anchors[anchor_idx])[0]
    per_class = []
    start = 0
    for idx, scores in candidates:
        boxes = decoded[start : start + len(idx)]
        start += len(idx)
        kept = _greedy_nms(boxes)
        per_class.append((boxes[kept], scores[kept]))
    return _pool(per_class, og_size)


def _check_head_outputs(
    loc: np.ndarray, conf: np.ndarray, config: SSDConfig
) -> tuple[np.ndarray, np.ndarray]:
    loc = np.asarray(loc, dtype=np.float32)
    conf = np.asarray(conf, dtype=np.float32)
    anchors = config.num_anchors
    expected_loc = ("B", 4, anchors)
    expected_conf = ("B", config.num_classes, anchors)
    if (
        loc.ndim != 3
        or conf.ndim != 3
        or loc.shape[1:] != expected_loc[1:]
        or conf.shape[1:] != expected_conf[1:]
        or loc.shape[0] != conf.shape[0]
    ):
        raise ValueError(
            f"config {config.name!r} expects head outputs loc {expected_loc} and conf {expected_conf}, "
            f"got loc {loc.shape} and conf {conf.shape}"
        )
    return loc, conf


def decode_batch(loc: np.ndarray, conf: np.ndarray, config: SSDConfig | str) -> list[np.ndarray]:
    """Head outputs -> one (K, 6) float32 array a frame, rows ``[x1, y1, x2, y2, label, score]``.

    ``loc`` (B, 4, A) box regressions, ``conf`` (B, C, A) class logits before softmax. Boxes are in
    original-image pixels (x times og width, y times og height), rows ascending by score, K <= 500;
    exactly :func:`decode_reference_loop`'s result, fast.
    """
    config = _as_config(config)
    loc, conf = _check_head_outputs(loc, conf, config)
    anchors = default_boxes(config)
    return [
        _decode_frame(loc[b], np.ascontiguousarray(conf[b]), anchors, config.og_image_size)
        for b in range(loc.shape[0])
    ]


def decode_reference_loop(loc: np.ndarray, conf: np.ndarray, config: SSDConfig | str) -> list[np.ndarray]:
    """The slow, plainly correct decoder that tests and benchmarks measure :func:`decode_batch` against.

    Same inputs and output as :func:`decode_batch`. A transcription of the reference algorithm: full
    softmax, all boxes decoded, per-class Python NMS loop on sorted index lists.
    """
    config = _as_config(config)
    loc, conf = _check_head_outputs(loc, conf, config)
    all_boxes = decode_locations(loc, default_boxes(config))
    threshold = np.float32(SCORE_THRESHOLD)
    frames = []
    for boxes, logits in zip(all_boxes, conf, strict=True):
        probs = class_probabilities(logits)
        pooled_boxes, pooled_scores, pooled_labels = [], [], []
        for label in range(1, len(probs)):
            mask = probs[label] > threshold
            class_boxes, class_scores = boxes[mask], probs[label][mask]
            remaining = np.argsort(class_scores, kind="stable")[-MAX_PER_CLASS:]
            kept = []
            while len(remaining) > 0:
                best = remaining[-1]
                others = class_boxes[remaining]
                left = np.maximum(others[:, 0], class_boxes[best, 0])
                top = np.maximum(others[:, 1], class_boxes[best, 1])
                right = np.minimum(others[:, 2], class_boxes[best, 2])
                bottom = np.minimum(others[:, 3], class_boxes[best, 3])
                width = right - left
                height = bottom - top
                width[width < 0] = 0
                height[height < 0] = 0
                intersection = width * height
                area_others = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
                area_best = (class_boxes[best, 2] - class_boxes[best, 0]) * (
                    class_boxes[best, 3] - class_boxes[best, 1]
                )
                iou = intersection / (area_others + area_best - intersection)
                remaining = remaining[iou < NMS_IOU]
                kept.append(best)
            pooled_boxes.append(class_boxes[kept].reshape(-1, 4))
            pooled_scores.append(class_scores[kept])
            pooled_labels += [label] * len(kept)
        scores = np.concatenate(pooled_scores)
        best_last = np.argsort(scores, kind="stable")[-MAX_OUTPUT:]
        og_h, og_w = config.og_image_size
        frame = np.zeros((len(best_last), 6), dtype=np.float32)
        frame[:, :4] = np.concatenate(pooled_boxes)[best_last] * np.array(
            [og_w, og_h, og_w, og_h], np.float32
        )
        frame[:, 4] = np.array(pooled_labels, dtype=np.float32)[best_last]
        frame[:, 5] = scores[best_last]
        frames.append(frame)
    return frames
