"""Model configurations: the benchmark's 8 MP SSD-ResNet50 and the small demo model, as data.

Every other module reads sizes, anchors and channel counts from an :class:`SSDConfig`; nothing
else in the code base restates them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

NUM_CLASSES = 15
"""14 Cognata object classes plus background (label 0)."""

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
"""Per-channel RGB normalisation applied after scaling pixels to [0, 1]."""

BENCHMARK_CONFIG = "baseline_8MP_ss_scales_fm1_5x5_all"
DEMO_CONFIG = "demo"
SMALL_CONFIG = "small"


@dataclass(frozen=True)
class SSDConfig:
    """Geometry of one SSD-ResNet50 variant.

    Sizes are (height, width). ``scales`` has one entry more than there are feature maps.
    ``out_channels[k]`` is the channel count of feature map k (k = 0 is the ResNet trunk);
    ``mid_channels[k]`` is the bottleneck width of the extra block that makes map k + 1.
    """

    name: str
    image_size: tuple[int, int]
    og_image_size: tuple[int, int]
    feat_size: tuple[tuple[int, int], ...]
    steps: tuple[int, ...]
    scales: tuple[float, ...]
    aspect_ratios: tuple[tuple[float, ...], ...]
    out_channels: tuple[int, ...]
    mid_channels: tuple[int, ...]
    head_kernel: int
    num_classes: int = NUM_CLASSES

    def __post_init__(self) -> None:
        maps = len(self.feat_size)
        lengths = {
            "steps": len(self.steps),
            "aspect_ratios": len(self.aspect_ratios),
            "out_channels": len(self.out_channels),
            "scales - 1": len(self.scales) - 1,
            "mid_channels + 1": len(self.mid_channels) + 1,
        }
        wrong = {k: v for k, v in lengths.items() if v != maps}
        if wrong:
            raise ValueError(f"config {self.name!r}: {maps} feature maps but {wrong}")

    @property
    def num_defaults(self) -> tuple[int, ...]:
        """Default boxes per location of each feature map: two square sizes plus one per ratio."""
        return tuple(2 + len(ratios) for ratios in self.aspect_ratios)

    @property
    def num_anchors(self) -> int:
        """Total default boxes, i.e. the last axis of the head outputs."""
        return sum(h * w * n for (h, w), n in zip(self.feat_size, self.num_defaults, strict=True))

    @property
    def needs_resize(self) -> bool:
        return self.image_size != self.og_image_size


_BENCHMARK = SSDConfig(
    name=BENCHMARK_CONFIG,
    image_size=(2160, 3840),
    og_image_size=(2160, 3840),
    feat_size=((270, 480), (135, 240), (68, 120), (34, 60), (17, 30), (9, 15), (5, 8)),
    steps=(8, 16, 32, 64, 128, 256, 480),
    scales=(31, 67, 148, 229, 310, 392, 473, 760),
    aspect_ratios=(
        (2, 0.5),
        (2, 0.5, 3, 1 / 3),
        (2, 0.5, 3, 1 / 3),
        (2, 0.5, 3, 1 / 3),
        (2, 0.5),
        (2, 0.5),
        (2, 0.5),
    ),
    out_channels=(1024, 512, 512, 256, 256, 256, 256),
    # ssd_state_dict_shapes.json: each extra block's 1x1 conv keeps its input width.
    mid_channels=(1024, 512, 512, 256, 256, 256),
    head_kernel=5,
)


def _demo_scales() -> tuple[float, ...]:
    # The benchmark's scales rescaled to a 144-pixel-high input, then enlarged 1.5x: measured to
    # match half of the synthetic objects at IoU > 0.5 instead of a third (DEMO_MODEL_NOTES).
    return tuple(float(round(s * 144 / 480 * 1.5)) for s in _BENCHMARK.scales[:7])


CONFIGS: dict[str, SSDConfig] = {
    BENCHMARK_CONFIG: _BENCHMARK,
    # The benchmark's first six feature maps on a 144x256 input, with narrower extra blocks.
    DEMO_CONFIG: SSDConfig(
        name=DEMO_CONFIG,
        image_size=(144, 256),
        og_image_size=(288, 512),
        feat_size=((18, 32), (9, 16), (5, 8), (3, 4), (2, 2), (1, 1)),
        steps=(8, 16, 32, 64, 128, 256),
        scales=_demo_scales(),
        aspect_ratios=_BENCHMARK.aspect_ratios[:6],
        out_channels=_BENCHMARK.out_channels[:6],
        mid_channels=(256, 256, 128, 128, 128),
        head_kernel=3,
    ),
}
# The demo network on a quarter of the demo's input (72x128, the same synthetic 512x288 frames):
# every layer and weight shape of the demo model, so its checkpoint loads. The fastest model of the
# project, for the full valid ConstantStream proof on a 2-core CPU (bench/valid_constantstream.py).
CONFIGS[SMALL_CONFIG] = replace(
    CONFIGS[DEMO_CONFIG],
    name=SMALL_CONFIG,
    image_size=(72, 128),
    feat_size=((9, 16), (5, 8), (3, 4), (2, 2), (1, 1), (1, 1)),
    scales=tuple(s / 2 for s in _demo_scales()),
)


def get_config(name: str) -> SSDConfig:
    """The config called ``name``; a clear error lists the known ones."""
    try:
        return CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown model config {name!r}; known: {', '.join(sorted(CONFIGS))}") from None


def conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    """Output length of a convolution along one axis."""
    return math.floor((size + 2 * pad - kernel) / stride) + 1
