"""SSD-ResNet50 of the MLPerf Automotive 2D detection benchmark, in plain PyTorch (no torchvision).

Layout (state-dict names match the reference checkpoint, see ``assets/ssd_state_dict_shapes.json``):

- ``feature_extractor.feature_extractor``: ResNet50 stem and layer1..layer3 as one
  ``nn.Sequential`` (children 0..6); layer3 keeps stride 1, so the trunk output has stride 8.
- ``additional_blocks[k]``: conv 1x1 -> BN -> ReLU -> conv 3x3 stride 2 pad 1 -> BN -> ReLU,
  turning feature map k into map k + 1.
- ``loc[k]`` / ``conf[k]``: ``head_kernel`` x ``head_kernel`` convolutions giving
  ``num_defaults[k] * 4`` box regressions and ``num_defaults[k] * num_classes`` logits per cell.

``forward`` returns ``(loc (N, 4, A), conf (N, num_classes, A))``: each map's head output
``(N, nd * 4, fh, fw)`` is reshaped to ``(N, 4, nd * fh * fw)`` exactly as the reference does,
so anchor ``a`` of map k is default box ``a // (fh * fw)`` at row ``(a // fw) % fh``, column
``a % fw`` - the order of :func:`abtf_ssd.model.boxes.default_boxes`.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from abtf_ssd import ASSETS_DIR
from abtf_ssd.config import SSDConfig, get_config

DEMO_WEIGHTS = ASSETS_DIR / "demo_ssd.pth"
"""The committed demo-model checkpoint (trained on synthetic frames by :mod:`abtf_ssd.model.train`)."""


_RESNET_STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 1))
"""(bottleneck width, blocks, stride of the first block) of layer1..layer3; layer3 keeps stride 1."""
_EXPANSION = 4


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck: the stride sits on the 3x3 convolution."""

    def __init__(self, in_channels: int, width: int, stride: int) -> None:
        super().__init__()
        out_channels = width * _EXPANSION
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNetTrunk(nn.Module):
    """ResNet50 up to layer3 with stride 8 output (N, 1024, H/8, W/8)."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        ]
        in_channels = 64
        for width, blocks, stride in _RESNET_STAGES:
            stage = []
            for k in range(blocks):
                stage.append(Bottleneck(in_channels, width, stride if k == 0 else 1))
                in_channels = width * _EXPANSION
            layers.append(nn.Sequential(*stage))
        self.feature_extractor = nn.Sequential(*layers)
        self.out_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_extractor(x)


def _extra_block(in_channels: int, mid_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, mid_channels, 1, bias=False),
        nn.BatchNorm2d(mid_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(mid_channels, out_channels, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SSDResNet50(nn.Module):
    """SSD detector with a ResNet50 trunk; geometry from an :class:`SSDConfig`."""

    def __init__(self, config: SSDConfig) -> None:
        super().__init__()
        self.config = config
        self.feature_extractor = ResNetTrunk()
        channels = config.out_channels
        if channels[0] != self.feature_extractor.out_channels:
            raise ValueError(
                f"config {config.name!r}: out_channels[0] = {channels[0]}, "
                f"but the ResNet50 trunk gives {self.feature_extractor.out_channels}"
            )
        self.additional_blocks = nn.ModuleList(
            _extra_block(channels[k], config.mid_channels[k], channels[k + 1])
            for k in range(len(channels) - 1)
        )
        kernel = config.head_kernel
        self.loc = nn.ModuleList(
            nn.Conv2d(c, nd * 4, kernel, padding=kernel // 2)
            for c, nd in zip(channels, config.num_defaults, strict=True)
        )
        self.conf = nn.ModuleList(
            nn.Conv2d(c, nd * config.num_classes, kernel, padding=kernel // 2)
            for c, nd in zip(channels, config.num_defaults, strict=True)
        )

    def feature_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The multi-scale features: trunk output then one map per extra block."""
        features = [self.feature_extractor(images)]
        for block in self.additional_blocks:
            features.append(block(features[-1]))
        return features

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (N, 3, H, W) float32 normalised -> (loc (N, 4, A), conf (N, num_classes, A))."""
        batch = images.shape[0]
        locs, confs = [], []
        for feature, loc_head, conf_head in zip(self.feature_maps(images), self.loc, self.conf, strict=True):
            # reshape, not view: identical order on contiguous tensors, and also valid for channels_last.
            locs.append(loc_head(feature).reshape(batch, 4, -1))
            confs.append(conf_head(feature).reshape(batch, self.config.num_classes, -1))
        return torch.cat(locs, dim=2).contiguous(), torch.cat(confs, dim=2).contiguous()


def init_weights(model: SSDResNet50, seed: int) -> SSDResNet50:
    """Seeded from-scratch initialisation (He for convolutions, Xavier for the heads)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.out_channels * module.kernel_size[0] * module.kernel_size[1]
                module.weight.normal_(0.0, (2.0 / fan_out) ** 0.5, generator=generator)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.fill_(1.0)
                module.bias.zero_()
                module.reset_running_stats()
        for head in (*model.loc, *model.conf):
            bound = (6.0 / (head.in_channels * head.kernel_size[0] ** 2 + head.out_channels)) ** 0.5
            head.weight.uniform_(-bound, bound, generator=generator)
        # Residual branches start as identity: trains faster from scratch (Goyal et al. 2017).
        for module in model.modules():
            if isinstance(module, Bottleneck):
                module.bn3.weight.zero_()
    return model


def feature_map_sizes(config: SSDConfig) -> tuple[tuple[int, int], ...]:
    """(h, w) of every feature map for the config's input size, from a forward on the meta device."""
    with torch.device("meta"):
        model = SSDResNet50(config).eval()
        features = model.feature_maps(torch.empty(1, 3, *config.image_size))
    return tuple((int(f.shape[2]), int(f.shape[3])) for f in features)


def build_ssd(config_name: str) -> SSDResNet50:
    """A new model for a named config (PyTorch default initialisation), its geometry checked.

    Raises:
        ValueError: the config's ``feat_size`` differs from the feature maps the network makes.
    """
    config = get_config(config_name)
    actual = feature_map_sizes(config)
    if actual != tuple(tuple(s) for s in config.feat_size):
        raise ValueError(
            f"config {config.name!r}: feat_size {list(config.feat_size)} does not match the "
            f"network's feature maps {list(actual)} for input {config.image_size}"
        )
    return SSDResNet50(config)


# torch's message wraps the reason in advice to retry with weights_only=False: exactly what a
# file that tries to run code must not get, so only the reason is kept.
_UNPICKLING_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation")
_PICKLE_PROTOCOL_OPCODE = 0x80
"""First byte of a pickle of protocol 2 or later: how torch's legacy (non-zip) format starts."""
_TORCH_ZIP_RECORD = "data.pkl"
"""The pickle inside torch's zip format, in the archive's one top-level folder."""
_NAMES_SHOWN = 3
"""Parameter names quoted in a does-not-fit message; the counts say how many more there are."""


def _unpickling_reason(error: pickle.UnpicklingError) -> str:
    """The line of torch's weights-only error that says what the file asked for."""
    for line in str(error).splitlines():
        line = line.removeprefix("WeightsUnpickler error:").strip()
        if line and not line.startswith(_UNPICKLING_BOILERPLATE) and "weights_only" not in line:
            return f"it is not a plain tensor checkpoint ({line.rstrip('.')})"
    return "it is not a plain tensor checkpoint (it asks for objects the weights-only loader does not allow)"


def _format_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a file ``torch.save`` wrote (judged from its first bytes), or None."""
    with path.open("rb") as handle:
        head = handle.read(1)
    if not head:
        return "the file is empty"
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError) as error:
            return f"a damaged zip archive ({error})"
        if not any(name.count("/") == 1 and name.endswith("/" + _TORCH_ZIP_RECORD) for name in names):
            return f"a zip archive without torch's <name>/{_TORCH_ZIP_RECORD}"
        return None
    if head[0] != _PICKLE_PROTOCOL_OPCODE:
        return "neither torch's zip format nor its legacy pickle format"
    return None


def read_state_dict(path: str | os.PathLike[str], mmap: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint saved as ``{"model_state_dict": sd, ...}`` or as a bare state dict.

    Read with torch's weights-only loader (``mmap``: tensors mapped from the file, not read).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is no PyTorch checkpoint (one line naming it and why), is refused by
            the weights-only loader (it would build objects or run code), or holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    problem = _format_problem(path)
    if problem is not None:
        raise ValueError(f"{path}: not a PyTorch checkpoint: {problem}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        raise ValueError(f"{path}: refused: {_unpickling_reason(error)}") from None
    except Exception as error:  # torch's reader fails in many ways on a file it did not write
        reason = str(error).splitlines()[0] if str(error) else "the file ends early"
        raise ValueError(f"{path}: not a PyTorch checkpoint: {type(error).__name__}: {reason:.200}") from None
    state = checkpoint.get("model_state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a state dict nor a dict with 'model_state_dict'")
    return state


def _quoted(names: list[str]) -> str:
    shown = ", ".join(names[:_NAMES_SHOWN])
    return shown + (f", ... ({len(names) - _NAMES_SHOWN} more)" if len(names) > _NAMES_SHOWN else "")


def shapes_of(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a state dict."""
    return {k: tuple(v.shape) for k, v in state.items()}


def fit_problem(
    own: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], config_name: str
) -> str | None:
    """Why a checkpoint whose tensor shapes are ``found`` does not fit a model whose are ``own``, in
    one short line (counts of missing, unexpected and reshaped names and the first few), or None."""
    missing = [k for k in own if k not in found]
    unexpected = [k for k in found if k not in own]
    reshaped = [f"{k} {found[k]} vs {own[k]}" for k in own if k in found and found[k] != own[k]]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({_quoted(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({_quoted(unexpected)})")
    if reshaped:
        parts.append(f"{len(reshaped)} of another shape, checkpoint vs model ({_quoted(reshaped)})")
    if not parts:
        return None
    return f"does not fit the {config_name!r} model ({len(own)} tensors): " + "; ".join(parts)


def load_checkpoint(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load weights saved as ``{"model_state_dict": sd, ...}`` or as a bare state dict (strict).

    Half-precision tensors (the committed demo weights) are converted to the model's dtype.

    Raises:
        ValueError: as :func:`read_state_dict`, or the checkpoint's names / shapes do not fit the
            model (a short message: counts and the first few names).
    """
    path = Path(path)
    state = read_state_dict(path)
    own = model.state_dict()
    config_name = getattr(getattr(model, "config", None), "name", type(model).__name__)
    problem = fit_problem(shapes_of(own), shapes_of(state), config_name)
    if problem is not None:
        raise ValueError(f"{path}: checkpoint {problem}; is it a checkpoint of this model and config?")
    state = {k: v.to(own[k].dtype) if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    return model
