"""Draw one frame of an accuracy run: ground truth and predicted boxes with class names, as a PNG.

The picture is the sample's network input, denormalised (``pixel = (x * STD + MEAN) * 255``)
and scaled to the original frame size the boxes are in, or the raw frame itself when its PNG is
given. Ground truth is green; predictions are orange with their score.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from abtf_ssd.cognata import CLASS_NAMES, SPLIT_PREFIXES
from abtf_ssd.config import CONFIGS, MEAN, STD, SSDConfig, get_config
from abtf_ssd.data.preprocess import load_sample, sample_name
from abtf_ssd.fileio import atomic_output
from abtf_ssd.loadgen.accuracy import find_accuracy_log, read_accuracy_log

GROUND_TRUTH_COLOR = (40, 220, 60)
PREDICTION_COLOR = (255, 140, 0)
DEFAULT_SCORE_THRESHOLD = 0.3
DEFAULT_MAX_PREDICTIONS = 50


def denormalize(img: np.ndarray) -> np.ndarray:
    """Network input (1, 3, H, W) float32 -> (H, W, 3) uint8 RGB."""
    if img.ndim != 4 or img.shape[:2] != (1, 3):
        raise ValueError(f"expected an image (1, 3, H, W), got {img.shape}")
    mean = np.asarray(MEAN, dtype=np.float32)[:, None, None]
    std = np.asarray(STD, dtype=np.float32)[:, None, None]
    pixels = (img[0] * std + mean) * 255.0
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8).transpose(1, 2, 0)


def config_for_image(image_size: tuple[int, int], config_name: str | None = None) -> SSDConfig:
    """The named config, else the only config whose network input is ``image_size`` (H, W)."""
    if config_name is not None:
        return get_config(config_name)
    matches = [c for c in CONFIGS.values() if c.image_size == tuple(image_size)]
    if len(matches) != 1:
        raise ValueError(f"cannot tell the model config of a {image_size} image; pass config_name")
    return matches[0]


def _label_text(label: int, score: float | None = None) -> str:
    name = CLASS_NAMES.get(label, f"label {label}")
    return name if score is None else f"{name} {score:.2f}"


def _draw_boxes(
    draw: ImageDraw.ImageDraw, rows: np.ndarray, color: tuple[int, int, int], with_score: bool, below: bool
) -> None:
    font = ImageFont.load_default()
    for row in rows:
        x1, y1, x2, y2 = (float(v) for v in row[:4])
        draw.rectangle([x1, y1, x2, y2], outline=color, width=2)
        text = _label_text(int(row[4]), float(row[5]) if with_score else None)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        y = y2 + 1 if below else y1 - (bottom - top) - 3
        draw.rectangle([x1, y, x1 + right - left + 4, y + bottom - top + 2], fill=color)
        draw.text((x1 + 2, y - top + 1), text, fill="black", font=font)


def render(
    source: str | Path,
    dataset_dir: str | Path,
    sample_index: int,
    out_png: str | Path,
    raw_frame: str | Path | None = None,
    config_name: str | None = None,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    max_predictions: int = DEFAULT_MAX_PREDICTIONS,
    prefix: str = SPLIT_PREFIXES["validation"],
) -> Path:
    """Write a PNG of sample ``sample_index`` with its ground truth and the run's predictions.

    Args:
        source: a results folder (its ``mlperf_log_accuracy.json`` or ``accuracy/`` one) or the log.
        dataset_dir: the preprocessed folder of the run (``val_<i>.pkl``).
        raw_frame: the original PNG to draw on instead of the denormalised network input.
        config_name: the model config; by default the one whose input size the image has.
        score_threshold, max_predictions: which predictions to draw (the highest scores first).
    """
    source = Path(source)
    log = find_accuracy_log(source) if source.is_dir() else source
    detections = read_accuracy_log(log)
    if sample_index not in detections:
        raise KeyError(f"{log}: no response for sample {sample_index} (it has {len(detections)} samples)")
    sample = load_sample(Path(dataset_dir) / sample_name(prefix, sample_index))
    config = config_for_image(sample["img"].shape[2:], config_name)
    og_height, og_width = config.og_image_size
    if raw_frame is not None:
        with Image.open(raw_frame) as frame:
            picture = frame.convert("RGB")
        if picture.size != (og_width, og_height):
            raise ValueError(
                f"{raw_frame} is {picture.size}, the boxes are for {og_width}x{og_height} frames"
            )
    else:
        picture = Image.fromarray(denormalize(sample["img"]))
        if picture.size != (og_width, og_height):
            picture = picture.resize((og_width, og_height), Image.Resampling.BILINEAR)

    predictions = detections[sample_index]
    predictions = predictions[predictions[:, 5] >= score_threshold]
    predictions = predictions[np.argsort(-predictions[:, 5], kind="stable")[:max_predictions]]
    draw = ImageDraw.Draw(picture)
    _draw_boxes(draw, sample["gt_boxes"], GROUND_TRUTH_COLOR, with_score=False, below=True)
    _draw_boxes(draw, predictions, PREDICTION_COLOR, with_score=True, below=False)
    legend = (
        f"sample {sample_index}: ground truth ({len(sample['gt_boxes'])}) green, predictions "
        f"({len(predictions)} with score >= {score_threshold}) orange"
    )
    draw.rectangle([0, 0, draw.textlength(legend) + 8, 14], fill="black")
    draw.text((4, 1), legend, fill="white")

    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(out_png) as temp:
        picture.save(temp, format="PNG")
    return out_png
