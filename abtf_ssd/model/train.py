"""Train SSD-ResNet50 from scratch on preprocessed samples (the demo model's recipe).

The recipe measured on these 2-core machines (see the demo model notes): the whole network,
AdamW (lr 2e-3, no weight decay), a 50-iteration linear warm-up then a cosine decay to zero over a
wall-clock budget, batch 8, BatchNorm in training mode, random horizontal flips, and bf16 autocast
with channels_last where the CPU has native bf16 (``avx512_bf16``), fp32 elsewhere.

Loss (SSD): every ground-truth box is matched to the anchors it overlaps with IoU > 0.5 and to its
best anchor; matched anchors regress the box encoded with the decoder's variances (smooth L1),
all anchors classify with cross-entropy where the negatives are the hardest ``3 x positives``.

Input: a folder of ``<prefix>_<i>.pkl`` samples from :func:`abtf_ssd.data.preprocess.build_preprocessed`
(images already resized and normalised; boxes in original pixels). Output: a checkpoint
``{"model_state_dict", "config", "iterations", "seed", ...}`` written atomically, parameters stored
as float16 when ``half=True`` (what :func:`abtf_ssd.model.ssd.load_checkpoint` reads back as float32).
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from abtf_ssd.cognata import SPLIT_PREFIXES
from abtf_ssd.config import SSDConfig, get_config
from abtf_ssd.data.metric import MapResult, compute_map
from abtf_ssd.data.preprocess import load_sample
from abtf_ssd.fileio import atomic_output
from abtf_ssd.model.boxes import SCALE_WH, SCALE_XY, decode_batch, default_boxes
from abtf_ssd.model.ssd import SSDResNet50, build_ssd, init_weights, load_checkpoint

log = logging.getLogger(__name__)

MATCH_IOU = 0.5
NEGATIVES_PER_POSITIVE = 3


@dataclass(frozen=True)
class TrainResult:
    """What a training run did."""

    out_path: Path
    iterations: int
    seconds: float
    final_loss: float


def cpu_has_native_bf16() -> bool:
    """True where the CPU advertises ``avx512_bf16`` (bf16 autocast is then about 2x faster)."""
    try:
        return "avx512_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


_SAMPLE_NAME = re.compile(r"^(?P<prefix>[A-Za-z0-9-]+)_(?P<index>\d+)\.pkl$")


def load_training_set(
    train_dir: str | os.PathLike[str], prefix: str, config: SSDConfig
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """All ``<prefix>_<i>.pkl`` samples of a folder, in index order.

    Returns:
        images (N, 3, H, W) float32 and, per image, boxes (G, 5) float32 ``[x1, y1, x2, y2, label]``
        scaled to [0, 1] of the original frame.
    """
    folder = Path(train_dir)
    found = []
    for path in folder.glob(f"{prefix}_*.pkl"):
        match = _SAMPLE_NAME.match(path.name)
        if match and match["prefix"] == prefix:
            found.append((int(match["index"]), path))
    if not found:
        raise FileNotFoundError(f"{folder}: no {prefix}_<i>.pkl training samples")
    found.sort()
    og_h, og_w = config.og_image_size
    scale = torch.tensor([og_w, og_h, og_w, og_h, 1.0])
    images = torch.empty(len(found), 3, *config.image_size)
    targets = []
    for n, (_, path) in enumerate(found):
        sample = load_sample(path, image_size=config.image_size)
        images[n] = torch.from_numpy(sample["img"][0])
        targets.append(torch.from_numpy(sample["gt_boxes"][:, :5].copy()) / scale)
    return images, targets


def _xywh_to_ltrb(boxes: torch.Tensor) -> torch.Tensor:
    return torch.cat([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], dim=1)


def _pairwise_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (P, 4), b (Q, 4) ltrb -> (P, Q)."""
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    area_a = (a[:, 2:] - a[:, :2]).prod(dim=1)
    area_b = (b[:, 2:] - b[:, :2]).prod(dim=1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def encode_targets(gt: torch.Tensor, anchors_xywh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Match one image's ground truth to the anchors.

    Args:
        gt: (G, 5) ``[x1, y1, x2, y2, label]`` in [0, 1].
        anchors_xywh: (A, 4).

    Returns:
        regression targets (4, A) (meaningful where the label is > 0) and labels (A,) int64,
        0 = background.
    """
    num_anchors = anchors_xywh.shape[0]
    labels = torch.zeros(num_anchors, dtype=torch.int64)
    if gt.shape[0] == 0:
        return torch.zeros(4, num_anchors), labels
    iou = _pairwise_iou(_xywh_to_ltrb(anchors_xywh), gt[:, :4])  # (A, G)
    best_iou, best_gt = iou.max(dim=1)
    # Every object keeps at least its best anchor, even below the IoU threshold.
    best_anchor = iou.argmax(dim=0)
    best_gt[best_anchor] = torch.arange(gt.shape[0])
    best_iou[best_anchor] = 2.0
    positive = best_iou > MATCH_IOU
    labels[positive] = gt[best_gt[positive], 4].long()
    matched = gt[best_gt, :4]
    centre = (matched[:, :2] + matched[:, 2:]) / 2
    size = (matched[:, 2:] - matched[:, :2]).clamp(min=1e-6)
    d_xy = (centre - anchors_xywh[:, :2]) / (SCALE_XY * anchors_xywh[:, 2:])
    d_wh = torch.log(size / anchors_xywh[:, 2:]) / SCALE_WH
    return torch.cat([d_xy, d_wh], dim=1).T.contiguous(), labels


def ssd_loss(
    loc: torch.Tensor, conf: torch.Tensor, loc_targets: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Smooth L1 on positives + cross-entropy with 3:1 hard negatives, per positive.

    Args:
        loc: (N, 4, A), conf: (N, C, A) network outputs; loc_targets (N, 4, A); labels (N, A).
    """
    positive = labels > 0
    num_positive = positive.sum(dim=1)
    box_loss = (F.smooth_l1_loss(loc, loc_targets, reduction="none").sum(dim=1) * positive).sum(dim=1)
    class_loss = F.cross_entropy(conf, labels, reduction="none")  # (N, A)
    negative_loss = class_loss.detach().clone()
    negative_loss[positive] = 0.0
    rank = negative_loss.argsort(dim=1, descending=True).argsort(dim=1)
    hard_negative = rank < (NEGATIVES_PER_POSITIVE * num_positive).clamp(max=labels.shape[1])[:, None]
    class_loss = (class_loss * (positive | hard_negative)).sum(dim=1)
    per_image = (box_loss + class_loss) / num_positive.clamp(min=1)
    return (per_image * (num_positive > 0)).mean()


def learning_rate(base_lr: float, iteration: int, warmup_iters: int, progress: float) -> float:
    """Linear warm-up over ``warmup_iters``, then cosine from ``base_lr`` to 0 as progress goes 0 -> 1."""
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    warmup = min(1.0, (iteration + 1) / warmup_iters) if warmup_iters > 0 else 1.0
    return base_lr * warmup * cosine


def save_checkpoint(
    model: SSDResNet50, out_path: str | os.PathLike[str], half: bool, **extra: object
) -> Path:
    """Write ``{"model_state_dict", "config", **extra}`` atomically; floating parameters as fp16 if ``half``.

    BatchNorm running statistics stay float32: their range can exceed float16.
    """
    out_path = Path(out_path)
    parameter_names = {name for name, _ in model.named_parameters()}
    state = {
        name: tensor.detach().to(torch.float16)
        if half and name in parameter_names
        else tensor.detach().clone()
        for name, tensor in model.state_dict().items()
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(out_path) as temp:
        torch.save({"model_state_dict": state, "config": model.config.name, **extra}, temp)
    return out_path


def train(
    train_dir: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    config_name: str = "demo",
    minutes: float = 35.0,
    seed: int = 0,
    batch_size: int = 8,
    lr: float = 2e-3,
    warmup_iters: int = 50,
    max_iters: int | None = None,
    threads: int = 2,
    prefix: str = "train",
    half: bool = True,
    checkpoint_every_s: float = 300.0,
    log_every: int = 10,
    bf16: bool | None = None,
) -> TrainResult:
    """Train a fresh model for ``minutes`` of wall-clock time (or ``max_iters``) and save it.

    The cosine schedule runs over the time budget; with ``max_iters`` it runs over the
    iterations instead (then the run is reproducible for a seed). A checkpoint is also written
    every ``checkpoint_every_s`` seconds so a killed run leaves usable weights.
    ``bf16=None`` turns bf16 autocast + channels_last on where the CPU supports bf16 natively.
    """
    if minutes <= 0 and max_iters is None:
        raise ValueError("give a positive time budget (minutes) or max_iters")
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    config = get_config(config_name)
    images, targets = load_training_set(train_dir, prefix, config)
    log.info("loaded %d samples from %s", len(images), train_dir)
    anchors = torch.from_numpy(default_boxes(config).copy())
    use_bf16 = cpu_has_native_bf16() if bf16 is None else bf16
    model = init_weights(build_ssd(config_name), seed).train()
    memory_format = torch.channels_last if use_bf16 else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    budget_s = minutes * 60.0
    start = last_save = time.monotonic()
    iteration, loss_value, smoothed = 0, float("nan"), None
    while True:
        elapsed = time.monotonic() - start
        progress = iteration / max_iters if max_iters is not None else elapsed / budget_s
        if progress >= 1.0:
            break
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(lr, iteration, warmup_iters, progress)
        picked = torch.randint(len(images), (batch_size,), generator=generator)
        flip = torch.rand(batch_size, generator=generator) < 0.5
        batch = images[picked]
        batch[flip] = batch[flip].flip(-1)
        loc_targets, labels = [], []
        for k, index in enumerate(picked.tolist()):
            gt = targets[index]
            if flip[k]:
                gt = torch.stack([1 - gt[:, 2], gt[:, 1], 1 - gt[:, 0], gt[:, 3], gt[:, 4]], dim=1)
            encoded, label = encode_targets(gt, anchors)
            loc_targets.append(encoded)
            labels.append(label)
        batch = batch.contiguous(memory_format=memory_format)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            loc, conf = model(batch)
        loss = ssd_loss(loc.float(), conf.float(), torch.stack(loc_targets), torch.stack(labels))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_value = float(loss.detach())
        smoothed = loss_value if smoothed is None else 0.95 * smoothed + 0.05 * loss_value
        iteration += 1
        if iteration % log_every == 0:
            log.info(
                "iter %d  loss %.4f (avg %.4f)  lr %.2e  %.0f s",
                iteration,
                loss_value,
                smoothed,
                optimizer.param_groups[0]["lr"],
                time.monotonic() - start,
            )
        if time.monotonic() - last_save > checkpoint_every_s:
            save_checkpoint(model, out_path, half, iterations=iteration, seed=seed, finished=False)
            last_save = time.monotonic()
    seconds = time.monotonic() - start
    model = model.to(memory_format=torch.contiguous_format)
    save_checkpoint(model, out_path, half, iterations=iteration, seed=seed, finished=True, minutes=minutes)
    log.info("done: %d iterations in %.0f s, last loss %.4f -> %s", iteration, seconds, loss_value, out_path)
    return TrainResult(Path(out_path), iteration, seconds, loss_value)


def evaluate(
    checkpoint: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    config_name: str = "demo",
    prefix: str = SPLIT_PREFIXES["validation"],
    count: int | None = None,
    batch_size: int = 8,
    threads: int = 2,
) -> MapResult:
    """COCO mAP of a checkpoint on preprocessed samples, with the benchmark's decoder and metric.

    Runs the PyTorch model on ``<prefix>_<i>.pkl`` (the first ``count``, default all), decodes with
    :func:`abtf_ssd.model.boxes.decode_batch` and scores with :func:`abtf_ssd.data.metric.compute_map`.
    """
    torch.set_num_threads(threads)
    config = get_config(config_name)
    model = load_checkpoint(build_ssd(config_name), checkpoint).eval()
    images, _ = load_training_set(data_dir, prefix, config)
    if count is not None:
        images = images[:count]
    detections: dict[int, np.ndarray] = {}
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            loc, conf = model(images[start : start + batch_size])
            for k, frame in enumerate(decode_batch(loc.numpy(), conf.numpy(), config)):
                detections[start + k] = frame
    return compute_map(detections, data_dir, prefix=prefix)
