"""Synthetic Cognata-like road scenes in the dataset's exact raw layout.

The real Cognata frames need an MLCommons membership; these stand in for them so the whole
pipeline (preprocess, run, accuracy, training the demo model) works offline. ``generate`` writes

    <out_root>/<recording>/<camera>_png/<frame:010d>.png
    <out_root>/<recording>/<camera>_ann/<frame:010d>.csv
    <out_root>/val_set.csv, calibration_set.csv [, train_set.csv]     (``img,ann``, relative paths)

Each frame shows a sky gradient, a grass verge and a grey road with lane marks, 2-8 labelled
objects from six classes (solid, class-typical shapes and colours, bigger and nearer toward the
bottom of the frame) and a few rows that the annotation filters must drop (ignored classes, boxes
that are too small, objects further than 300 m). Everything is laid out in units of a 288-pixel-high
frame and scaled, so any resolution (up to 3840x2160) shows the same scene for a seed.

Frame ``i`` draws from its own generator seeded with ``(seed, i)``: the output does not depend on
the number of worker processes, and a rerun skips the frames that are already complete.
"""

from __future__ import annotations

import csv
import io
import math
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from abtf_ssd.cognata import (
    BOX_COLUMN,
    CLASS_COLUMN,
    CLASS_NAME_COLUMN,
    CLASS_NAMES,
    DISTANCE_COLUMN,
    EXCLUDED_CLASSES,
    LABEL_MAP,
    MAX_DISTANCE,
    MIN_SIDE,
)
from abtf_ssd.fileio import atomic_write_bytes

RECORDINGS: tuple[str, ...] = (
    "10001_Urban_Clear_Noon",
    "10002_Urban_Clear_Morning",
    "10003_Highway_Clear_Evening",
    "10004_Urban_Rain_Noon",
    "10005_Highway_Cloudy_Afternoon",
    "10006_Urban_HeavyRain_Evening",
)
CAMERAS: tuple[str, ...] = ("Cognata_Camera_01_8M", "Cognata_Camera_02_8M", "Cognata_Camera_03_8M")

ANNOTATION_COLUMNS: tuple[str, ...] = (
    "object_id",
    CLASS_COLUMN,
    CLASS_NAME_COLUMN,
    "truncation",
    "occlusion",
    DISTANCE_COLUMN,
    BOX_COLUMN,
    "bounding_box_3D",
    "heading",
)
"""Header of the synthetic annotation CSVs: the four columns readers use, mixed with ones they ignore."""

SPLIT_FILES = {"validation": "val_set.csv", "calibration": "calibration_set.csv", "train": "train_set.csv"}

_UNIT_HEIGHT = 288
"""Scene layouts are drawn in pixels of a frame this high, then scaled to the requested size."""

_HORIZON = 0.42
"""Horizon height as a fraction of the frame height."""

_PNG_COMPRESS_LEVEL = 3
_MAX_PAIR_IOU = 0.35
_MIN_OBJECTS, _MAX_OBJECTS = 2, 8

Color = tuple[int, int, int]
Box = tuple[int, int, int, int]
Painter = Callable[[ImageDraw.ImageDraw, Box, np.random.Generator], None]


@dataclass(frozen=True)
class ObjectClass:
    """How one Cognata class is drawn: heights (unit pixels) from far to near, width/height ratio."""

    cognata_id: int
    name: str
    height_range: tuple[float, float]
    aspect_range: tuple[float, float]
    on_pole: bool
    paint: Painter


@dataclass(frozen=True)
class SceneObject:
    """One annotation row. ``box`` is ``(x1, y1, x2, y2)`` in frame pixels, x2/y2 exclusive."""

    cognata_id: int
    name: str
    box: Box
    distance: float
    depth: float
    """Position of the ground contact from the horizon (0) to the bottom of the frame (1)."""


def _shade(color: Color, factor: float) -> Color:
    return tuple(int(max(0, min(255, round(c * factor)))) for c in color)  # type: ignore[return-value]


def _jitter(rng: np.random.Generator, color: Color, spread: int = 18) -> Color:
    return tuple(int(np.clip(c + rng.integers(-spread, spread + 1), 0, 255)) for c in color)  # type: ignore[return-value]


def _rect(draw: ImageDraw.ImageDraw, xy: tuple[float, float, float, float], **style: object) -> None:
    """A filled rectangle; nothing when the shape collapsed (tiny boxes)."""
    if xy[2] >= xy[0] and xy[3] >= xy[1]:
        draw.rectangle(xy, **style)


def _ellipse(draw: ImageDraw.ImageDraw, xy: tuple[float, float, float, float], **style: object) -> None:
    if xy[2] >= xy[0] and xy[3] >= xy[1]:
        draw.ellipse(xy, **style)


def _paint_car(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    body = _jitter(rng, (200, 30, 35))
    roof_in = round(w * 0.18)
    body_top = y1 + round(h * 0.42)
    _rect(draw, (x1 + roof_in, y1, x2 - 1 - roof_in, body_top), fill=_shade(body, 0.85))
    _rect(
        draw,
        (x1 + roof_in + max(1, w // 20), y1 + max(1, h // 10), x2 - 1 - roof_in - max(1, w // 20), body_top),
        fill=(40, 55, 75),
    )
    _rect(draw, (x1, body_top, x2 - 1, y2 - 1 - round(h * 0.12)), fill=body)
    wheel = round(h * 0.28)
    for cx in (x1 + round(w * 0.22), x2 - 1 - round(w * 0.22)):
        _ellipse(draw, (cx - wheel // 2, y2 - wheel, cx + wheel // 2, y2 - 1), fill=(20, 20, 20))


def _paint_truck(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    cargo = _jitter(rng, (245, 150, 20))
    cab_w = round(w * 0.3)
    _rect(draw, (x1, y1, x2 - 1 - cab_w, y2 - 1 - round(h * 0.12)), fill=cargo)
    cab_top = y1 + round(h * 0.3)
    _rect(draw, (x2 - cab_w, cab_top, x2 - 1, y2 - 1 - round(h * 0.12)), fill=_shade(cargo, 0.7))
    _rect(
        draw,
        (
            x2 - cab_w + max(1, w // 25),
            cab_top + max(1, h // 14),
            x2 - 1 - max(1, w // 25),
            cab_top + round(h * 0.25),
        ),
        fill=(40, 55, 75),
    )
    wheel = round(h * 0.2)
    for cx in (x1 + round(w * 0.15), x1 + round(w * 0.45), x2 - 1 - round(w * 0.15)):
        _ellipse(draw, (cx - wheel // 2, y2 - wheel, cx + wheel // 2, y2 - 1), fill=(20, 20, 20))


def _paint_pedestrian(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    head = max(2, round(h * 0.17))
    cx = (x1 + x2 - 1) / 2
    _ellipse(draw, (cx - head / 2, y1, cx + head / 2, y1 + head), fill=_jitter(rng, (230, 185, 150), 10))
    torso_bottom = y1 + round(h * 0.58)
    _rect(draw, (x1, y1 + head, x2 - 1, torso_bottom), fill=_jitter(rng, (210, 40, 210)))
    leg_w = max(1, round(w * 0.36))
    trousers = _jitter(rng, (30, 40, 130))
    _rect(draw, (x1 + round(w * 0.08), torso_bottom, x1 + round(w * 0.08) + leg_w, y2 - 1), fill=trousers)
    _rect(
        draw,
        (x2 - 1 - round(w * 0.08) - leg_w, torso_bottom, x2 - 1 - round(w * 0.08), y2 - 1),
        fill=trousers,
    )


def _paint_traffic_light(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    _rect(draw, (x1, y1, x2 - 1, y2 - 1), fill=(25, 25, 25))
    lit = int(rng.integers(3))
    lamp = min(w * 0.7, h * 0.26)
    for k, color in enumerate(((230, 30, 30), (240, 200, 20), (30, 220, 60))):
        cy = y1 + h * (k + 0.5) / 3
        fill = color if k == lit else _shade(color, 0.3)
        _ellipse(
            draw,
            ((x1 + x2 - 1) / 2 - lamp / 2, cy - lamp / 2, (x1 + x2 - 1) / 2 + lamp / 2, cy + lamp / 2),
            fill=fill,
        )


def _paint_sign(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    _rect(draw, (x1, y1, x2 - 1, y2 - 1), fill=(245, 245, 245))
    border = max(1, round(min(w, h) * 0.12))
    _rect(
        draw, (x1 + border, y1 + border, x2 - 1 - border, y2 - 1 - border), fill=_jitter(rng, (20, 70, 200))
    )
    arrow = max(1, round(h * 0.12))
    _rect(
        draw,
        (x1 + w // 2 - arrow // 2, y1 + h // 4, x1 + w // 2 + arrow // 2, y2 - 1 - h // 4),
        fill=(245, 245, 245),
    )


def _paint_bicycle(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    frame = _jitter(rng, (20, 200, 210))
    wheel = min(round(h * 0.6), w // 2)
    thick = max(1, round(h * 0.12))
    for wheel_box in ((x1, y2 - wheel, x1 + wheel - 1, y2 - 1), (x2 - wheel, y2 - wheel, x2 - 1, y2 - 1)):
        _ellipse(draw, wheel_box, fill=(60, 60, 60), outline=(10, 10, 10), width=thick)
    axle_y = y2 - wheel / 2
    rear, front = (x1 + wheel / 2, axle_y), (x2 - wheel / 2, axle_y)
    crank = (x1 + w * 0.5, axle_y)
    seat = (x1 + w * 0.36, y1 + thick)
    bar = (x2 - w * 0.3, y1 + thick)
    for a, b in ((rear, seat), (seat, crank), (crank, rear), (seat, bar), (crank, bar), (bar, front)):
        draw.line((a, b), fill=frame, width=thick + 1)
    # Saddle and handlebar make the top edge of the box.
    _rect(draw, (seat[0] - w * 0.1, y1, seat[0] + w * 0.1, y1 + thick), fill=frame)
    _rect(draw, (bar[0] - w * 0.08, y1, bar[0] + w * 0.08, y1 + thick), fill=frame)


def _name(cognata_id: int) -> str:
    return CLASS_NAMES[LABEL_MAP[cognata_id]]


OBJECT_CLASSES: tuple[ObjectClass, ...] = (
    ObjectClass(8, _name(8), (36, 96), (1.5, 1.8), False, _paint_car),
    ObjectClass(9, _name(9), (48, 130), (1.15, 1.45), False, _paint_truck),
    ObjectClass(14, _name(14), (40, 110), (0.42, 0.5), False, _paint_pedestrian),
    ObjectClass(28, _name(28), (32, 72), (0.4, 0.45), True, _paint_traffic_light),
    ObjectClass(33, _name(33), (30, 64), (0.95, 1.05), True, _paint_sign),
    ObjectClass(35, _name(35), (34, 88), (1.5, 1.7), False, _paint_bicycle),
)
"""The labelled classes (Cognata ids of the benchmark's label map) and how they are drawn."""

IGNORED_CLASSES: dict[int, str] = dict(
    zip(sorted(EXCLUDED_CLASSES), ("Building", "Vegetation", "Pole"), strict=True)
)
"""Cognata ids the annotation filter drops; drawn as scenery. The names are this generator's own."""


@dataclass(frozen=True)
class _Look:
    sky_top: Color
    sky_horizon: Color
    grass: Color
    road: Color
    brightness: float


def _look(recording: str) -> _Look:
    """Colours of a recording from its weather and time of day (``NNNNN_<Scene>_<Weather>_<Time>``)."""
    _, _, weather, time_of_day = recording.split("_")
    sky_top, sky_horizon = (70, 130, 210), (175, 210, 240)
    if weather in ("Rain", "HeavyRain", "Cloudy"):
        sky_top, sky_horizon = (105, 115, 130), (170, 175, 185)
    if time_of_day in ("Morning", "Evening"):
        sky_horizon = _shade((240, 170, 110), 1.0 if time_of_day == "Morning" else 0.85)
    brightness = {"Noon": 1.0, "Afternoon": 0.95, "Morning": 0.9, "Evening": 0.8}[time_of_day]
    if weather == "HeavyRain":
        brightness *= 0.9
    return _Look(sky_top, sky_horizon, (70, 140, 60), (110, 110, 115), brightness)


def frame_location(seed: int, index: int) -> tuple[str, str, int]:
    """(recording, camera, frame number) of sample ``index``: distinct for every index of a seed."""
    recording = RECORDINGS[index % len(RECORDINGS)]
    camera = CAMERAS[(index // len(RECORDINGS)) % len(CAMERAS)]
    return recording, camera, 100 + 33 * index + (seed % 33)


def _background(width: int, height: int, look: _Look) -> Image.Image:
    """Sky gradient, grass below the horizon, a road narrowing to the vanishing point with lane marks."""
    horizon = round(height * _HORIZON)
    rows = np.linspace(0.0, 1.0, horizon, dtype=np.float32)[:, None]
    sky = np.asarray(look.sky_top, np.float32) * (1 - rows) + np.asarray(look.sky_horizon, np.float32) * rows
    pixels = np.empty((height, width, 3), np.uint8)
    pixels[:horizon] = np.round(sky)[:, None, :].astype(np.uint8)
    pixels[horizon:] = look.grass
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    vanish_x = width / 2
    draw.polygon(
        [
            (vanish_x - width * 0.02, horizon),
            (vanish_x + width * 0.02, horizon),
            (width * 1.15, height),
            (-width * 0.15, height),
        ],
        fill=look.road,
    )
    for edge in (-1.0, -0.4, 0.4, 1.0):
        start, end = vanish_x + edge * width * 0.02, vanish_x + edge * width * 0.65
        dashed = abs(edge) < 1
        steps = 14
        for k in range(steps):
            if dashed and k % 2:
                continue
            t0, t1 = (k / steps) ** 2, ((k + 1) / steps) ** 2
            y0, y1 = horizon + t0 * (height - horizon), horizon + t1 * (height - horizon)
            x0, x1 = start + t0 * (end - start), start + t1 * (end - start)
            line_width = max(1, round(height / _UNIT_HEIGHT * (1 + 3 * t1)))
            draw.line((x0, y0, x1, y1), fill=(235, 235, 225), width=line_width)
    return image


def _iou(a: Box, b: Box) -> float:
    inter_w = min(a[2], b[2]) - max(a[0], b[0])
    inter_h = min(a[3], b[3]) - max(a[1], b[1])
    if inter_w <= 0 or inter_h <= 0:
        return 0.0
    inter = inter_w * inter_h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _distance(depth: float, rng: np.random.Generator) -> float:
    """Metres from the camera of a ground point ``depth`` of the way from the horizon to the bottom."""
    return float(6.0 / max(depth, 1e-3) * rng.uniform(0.95, 1.05))


def _place(
    cls: ObjectClass, width: int, height: int, rng: np.random.Generator, size_scale: float = 1.0
) -> tuple[Box, float] | None:
    """A box for ``cls`` standing on the ground (or on a pole) at a random depth; None if it does not fit."""
    unit = height / _UNIT_HEIGHT
    horizon = height * _HORIZON
    depth = float(rng.uniform(0.06, 1.0))
    low, high = cls.height_range
    box_h = (low + (high - low) * depth) * rng.uniform(0.9, 1.1) * unit * size_scale
    box_w = box_h * rng.uniform(*cls.aspect_range)
    ground_y = horizon + depth * (height - horizon)
    bottom = ground_y - (box_h * rng.uniform(0.8, 1.6) if cls.on_pole else 0.0)
    x1 = rng.uniform(0, width - box_w)
    box = (round(x1), round(bottom - box_h), round(x1 + box_w), round(bottom))
    if box[1] < 0 or box[2] > width or box[3] > height or box[2] - box[0] < 1 or box[3] - box[1] < 1:
        return None
    return box, depth


def _layout(width: int, height: int, rng: np.random.Generator) -> list[SceneObject]:
    """The labelled objects of a frame plus the ones the filters drop, far to near."""
    objects: list[SceneObject] = []
    wanted = int(rng.integers(_MIN_OBJECTS, _MAX_OBJECTS + 1))
    attempts = 0
    while sum(o.cognata_id not in IGNORED_CLASSES for o in objects) < wanted and attempts < 200:
        attempts += 1
        cls = OBJECT_CLASSES[int(rng.integers(len(OBJECT_CLASSES)))]
        placed = _place(cls, width, height, rng)
        if placed is None:
            continue
        box, depth = placed
        if any(_iou(box, o.box) > _MAX_PAIR_IOU for o in objects):
            continue
        objects.append(SceneObject(cls.cognata_id, cls.name, box, _distance(depth, rng), depth))
    objects.extend(_dropped_objects(width, height, rng, objects))
    return sorted(objects, key=lambda o: o.depth)


def _dropped_objects(
    width: int, height: int, rng: np.random.Generator, kept: Sequence[SceneObject]
) -> list[SceneObject]:
    """1-3 rows per frame that the annotation filter must remove: ignored class, too small, too far."""
    unit = height / _UNIT_HEIGHT
    horizon = height * _HORIZON
    dropped: list[SceneObject] = []
    for kind in rng.choice(["ignored", "small", "far"], size=int(rng.integers(1, 4)), replace=False):
        cls = OBJECT_CLASSES[int(rng.integers(len(OBJECT_CLASSES)))]
        if kind == "ignored":
            cognata_id = int(rng.choice(list(IGNORED_CLASSES)))
            box_w, box_h = rng.uniform(20, 70) * unit, rng.uniform(15, 45) * unit
            x1 = rng.uniform(0, width - box_w)
            box = (round(x1), round(horizon - box_h), round(x1 + box_w), round(horizon))
            obj = SceneObject(cognata_id, IGNORED_CLASSES[cognata_id], box, _distance(0.05, rng), 0.0)
        elif kind == "small":
            # Under MIN_SIDE pixels in at least one direction at any resolution.
            box_h = rng.uniform(3, MIN_SIDE - 1)
            box_w = min(MIN_SIDE - 1.0, box_h * rng.uniform(*cls.aspect_range))
            x1, y1 = rng.uniform(0, width - box_w), rng.uniform(horizon, height - box_h)
            box = (round(x1), round(y1), round(x1 + box_w), round(y1 + box_h))
            obj = SceneObject(cls.cognata_id, cls.name, box, _distance(0.3, rng), 0.01)
        else:
            box_h = rng.uniform(8, 12) * unit
            box_w = max(8 * unit, box_h * rng.uniform(*cls.aspect_range))
            x1 = rng.uniform(width * 0.3, width * 0.7 - box_w)
            y2 = horizon + rng.uniform(0, 4) * unit
            box = (round(x1), round(y2 - box_h), round(x1 + box_w), round(y2))
            obj = SceneObject(
                cls.cognata_id,
                cls.name,
                box,
                float(rng.uniform(MAX_DISTANCE * 1.05, MAX_DISTANCE * 3)),
                0.005,
            )
        if obj.box[2] - obj.box[0] < 1 or obj.box[3] - obj.box[1] < 1:
            continue
        if obj.cognata_id in IGNORED_CLASSES or not any(_iou(obj.box, o.box) > 0 for o in kept):
            dropped.append(obj)
    return dropped


_PAINTERS: dict[int, Painter] = {cls.cognata_id: cls.paint for cls in OBJECT_CLASSES}


def _paint_scenery(draw: ImageDraw.ImageDraw, obj: SceneObject) -> None:
    x1, y1, x2, y2 = obj.box
    if obj.cognata_id == 25:
        draw.rectangle(
            (x1 + (x2 - x1) * 0.45, y1 + (y2 - y1) * 0.6, x1 + (x2 - x1) * 0.55, y2 - 1), fill=(90, 60, 30)
        )
        draw.ellipse((x1, y1, x2 - 1, y1 + (y2 - y1) * 0.75), fill=(35, 95, 40))
    elif obj.cognata_id == 31:
        mid = (x1 + x2) / 2
        draw.rectangle(
            (mid - max(1, (x2 - x1) * 0.05), y1, mid + max(1, (x2 - x1) * 0.05), y2 - 1), fill=(120, 120, 120)
        )
    else:
        draw.rectangle((x1, y1, x2 - 1, y2 - 1), fill=(150, 135, 120))
        for k in range(1, 4):
            wy = y1 + (y2 - y1) * k / 4.5
            draw.line((x1 + 2, wy, x2 - 3, wy), fill=(90, 90, 100), width=max(1, (y2 - y1) // 12))


def _paint_pole(draw: ImageDraw.ImageDraw, obj: SceneObject, height: int) -> None:
    ground = height * _HORIZON + obj.depth * (height * (1 - _HORIZON))
    mid = (obj.box[0] + obj.box[2]) / 2
    half = max(1.0, (obj.box[2] - obj.box[0]) * 0.06)
    draw.rectangle((mid - half, obj.box[3], mid + half, ground), fill=(95, 95, 95))


def render_frame(seed: int, index: int, width: int, height: int) -> tuple[Image.Image, list[SceneObject]]:
    """The image and the annotation rows of sample ``index`` (same scene for every resolution)."""
    rng = np.random.default_rng([seed, index])
    recording, _, _ = frame_location(seed, index)
    look = _look(recording)
    image = _background(width, height, look)
    draw = ImageDraw.Draw(image)
    objects = _layout(width, height, rng)
    on_pole = {cls.cognata_id for cls in OBJECT_CLASSES if cls.on_pole}
    for obj in objects:
        if obj.cognata_id in IGNORED_CLASSES:
            _paint_scenery(draw, obj)
            continue
        if obj.cognata_id in on_pole and obj.depth > 0.01:
            _paint_pole(draw, obj, height)
        _PAINTERS[obj.cognata_id](draw, obj.box, rng)
    if look.brightness != 1.0:
        image = Image.fromarray(np.round(np.asarray(image, np.float32) * look.brightness).astype(np.uint8))
    return image, objects


def _occlusion(obj: SceneObject, nearer: Sequence[SceneObject]) -> float:
    """Fraction of the box covered by nearer boxes (upper bound: overlaps may double count)."""
    area = (obj.box[2] - obj.box[0]) * (obj.box[3] - obj.box[1])
    covered = 0
    for other in nearer:
        w = min(obj.box[2], other.box[2]) - max(obj.box[0], other.box[0])
        h = min(obj.box[3], other.box[3]) - max(obj.box[1], other.box[1])
        covered += max(0, w) * max(0, h)
    return min(1.0, covered / area)


def annotation_rows(objects: Sequence[SceneObject], rng_seed: Sequence[int]) -> list[dict[str, str]]:
    """CSV rows (column -> text) of a frame's objects in the Cognata annotation format."""
    rng = np.random.default_rng([*rng_seed, 1])
    rows = []
    for k, obj in enumerate(objects):
        x1, y1, x2, y2 = obj.box
        heading = float(rng.uniform(-math.pi, math.pi))
        corners = [[round(float(v), 2) for v in rng.normal(0, 2, 3)] for _ in range(8)]
        rows.append(
            {
                "object_id": str(1000 + k),
                CLASS_COLUMN: str(obj.cognata_id),
                CLASS_NAME_COLUMN: obj.name,
                "truncation": "0.0",
                "occlusion": f"{_occlusion(obj, objects[k + 1 :]):.3f}",
                DISTANCE_COLUMN: f"{obj.distance:.2f}",
                BOX_COLUMN: f"[{x1}, {y1}, {x2}, {y2}]",
                "bounding_box_3D": str(corners),
                "heading": f"{heading:.4f}",
            }
        )
    return rows


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, creating its folders first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)


def frame_paths(seed: int, index: int) -> tuple[str, str]:
    """(png, csv) paths of sample ``index`` relative to the output root, with forward slashes."""
    recording, camera, frame = frame_location(seed, index)
    return (
        f"{recording}/{camera}_png/{frame:010d}.png",
        f"{recording}/{camera}_ann/{frame:010d}.csv",
    )


def write_frame(out_root: str | os.PathLike[str], seed: int, index: int, width: int, height: int) -> bool:
    """Render and write one sample unless both its files exist; True if it wrote them."""
    root = Path(out_root)
    png_rel, ann_rel = frame_paths(seed, index)
    if (root / png_rel).is_file() and (root / ann_rel).is_file():
        return False
    image, objects = render_frame(seed, index, width, height)
    png = io.BytesIO()
    image.save(png, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=ANNOTATION_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(annotation_rows(objects, (seed, index)))
    # The annotation goes last: a frame counts as finished once its CSV exists.
    _write_atomic(root / png_rel, png.getvalue())
    _write_atomic(root / ann_rel, text.getvalue().encode())
    return True


def _write_split(path: Path, seed: int, indices: range) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["img", "ann"])
    writer.writerows(frame_paths(seed, i) for i in indices)
    _write_atomic(path, text.getvalue().encode())


def _write_frames(args: tuple[str, int, range, int, int]) -> int:
    out_root, seed, indices, width, height = args
    return sum(write_frame(out_root, seed, i, width, height) for i in indices)


def generate(
    out_root: str | os.PathLike[str],
    frames: int = 64,
    width: int = 512,
    height: int = 288,
    seed: int = 0,
    calibration_frames: int = 16,
    train_frames: int = 0,
    workers: int | None = None,
) -> Path:
    """Write a synthetic Cognata dataset and its split CSVs under ``out_root``; return ``out_root``.

    Samples ``0 .. frames-1`` form ``val_set.csv``, the next ``calibration_frames`` form
    ``calibration_set.csv`` and the next ``train_frames`` (if any) ``train_set.csv``: no frame is
    in two splits. ``workers`` processes render in parallel (default: one per CPU); the bytes
    written do not depend on it. Frames already complete are kept.
    """
    for name, value in (
        ("frames", frames),
        ("calibration_frames", calibration_frames),
        ("train_frames", train_frames),
    ):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if width < 64 or height < 64:
        raise ValueError(f"frame size {width}x{height} is too small (at least 64x64)")
    root = Path(out_root)
    root.mkdir(parents=True, exist_ok=True)
    total = frames + calibration_frames + train_frames
    workers = max(1, min(workers or os.cpu_count() or 1, total or 1))
    chunk = max(1, min(64, math.ceil(total / (workers * 4))))
    jobs = [(str(root), seed, range(s, min(s + chunk, total)), width, height) for s in range(0, total, chunk)]
    if workers == 1:
        for job in jobs:
            _write_frames(job)
    else:
        # spawn, not fork: callers may have started threads (torch, LoadGen) that fork would copy half-way.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(_write_frames, jobs))
    _write_split(root / SPLIT_FILES["validation"], seed, range(0, frames))
    _write_split(root / SPLIT_FILES["calibration"], seed, range(frames, frames + calibration_frames))
    if train_frames:
        _write_split(root / SPLIT_FILES["train"], seed, range(frames + calibration_frames, total))
    return root
