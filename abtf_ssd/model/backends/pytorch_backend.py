"""PyTorch backend: :class:`abtf_ssd.model.ssd.SSDResNet50` with a checkpoint, in eval mode.

The config is ``config_name`` or, when that is None, the one in :data:`abtf_ssd.config.CONFIGS`
whose parameter names and shapes equal the checkpoint's (compared on the meta device, so no
model is built twice). Inference runs under ``torch.inference_mode``; ``threads`` sets
``torch.set_num_threads`` (default: every core). Asking for CUDA from a torch build or machine
without it is a :class:`BackendError`.

On CUDA, each batch is copied into a page-locked host buffer (one per batch shape, reused) and
from there to the device without blocking; the outputs come back with ``.cpu()``, which waits
for the stream, so ``predict`` returns finished arrays of the caller's own. cuDNN autotuning
(``torch.backends.cudnn.benchmark``, process-wide) is switched on: the input size never changes,
and ONNX Runtime's CUDA provider searches convolution algorithms the same way by default.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch

from abtf_ssd.config import CONFIGS, SSDConfig, get_config
from abtf_ssd.model.backends.base import BackendError, ModelBackend, check_batch, parse_device
from abtf_ssd.model.ssd import (
    SSDResNet50,
    build_ssd,
    fit_problem,
    load_checkpoint,
    read_state_dict,
    shapes_of,
)

DEVICE_KINDS = ("cpu", "cuda")


def device_problem(device: str) -> str | None:
    """Why this torch cannot run on ``device`` (no CUDA, too few GPUs), or None.

    Use :func:`abtf_ssd.model.backends.check_device`. Raises ValueError for a malformed device.
    """
    kind, index = parse_device(device, DEVICE_KINDS)
    if kind == "cpu":
        return None
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
        return (
            f"device {device!r} asked for, but torch {torch.__version__} ({build}) sees no CUDA device; "
            "install a CUDA build of torch (https://pytorch.org/get-started/locally/) on a machine with an "
            "NVIDIA GPU and driver"
        )
    if index >= torch.cuda.device_count():
        return f"device {device!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist"
    return None


def _checkpoint_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of a checkpoint, read with torch's weights-only unpickler (mapped).

    Raises:
        ValueError: as :func:`abtf_ssd.model.ssd.read_state_dict` (no checkpoint, refused, no state dict).
    """
    return shapes_of(read_state_dict(path, mmap=True))


def _recorded_config(path: Path) -> str | None:
    """The config name a checkpoint of :func:`abtf_ssd.model.train.save_checkpoint` records, if any."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    name = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    return name if isinstance(name, str) else None


def infer_config(path: Path) -> SSDConfig:
    """The config whose model has exactly the checkpoint's parameter names and shapes.

    Raises:
        BackendError: no config fits: what differs from the closest config.
    """
    shapes = _checkpoint_shapes(path)
    model_shapes = {}
    for config in CONFIGS.values():
        with torch.device("meta"):
            model_shapes[config.name] = shapes_of(SSDResNet50(config).state_dict())
    matches = [name for name, own in model_shapes.items() if own == shapes]
    if len(matches) > 1:
        # Configs that differ only in input size share weights (demo, small): the one the checkpoint
        # records, else the first registered (the network's own: demo before its smaller-input variant).
        recorded = _recorded_config(path)
        matches = [recorded if recorded in matches else matches[0]]
    if matches:
        return get_config(matches[0])
    closest = max(model_shapes, key=lambda name: len(model_shapes[name].items() & shapes.items()))
    differences = fit_problem(model_shapes[closest], shapes, closest)
    raise BackendError(f"{path}: the checkpoint fits no known config; it {differences}")


AUTOCAST_TYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
"""``PyTorchBackend.autocast`` values: the type ``torch.autocast`` runs convolutions in."""


class PyTorchBackend(ModelBackend):
    """``predict`` through the PyTorch model; see the module docstring.

    ``autocast``: None (float32, the default) or a key of :data:`AUTOCAST_TYPES`: ``predict`` then runs
    under ``torch.autocast`` on the model's device (fp16 for CUDA, bf16 for a CPU with AVX512-BF16);
    outputs stay float32. Set it on the backend between calls.
    """

    framework = "pytorch"
    device_kinds = DEVICE_KINDS
    autocast: str | None = None

    def _open(self, device: str, threads: int, config_name: str | None) -> SSDConfig:
        kind, index = parse_device(device, DEVICE_KINDS)
        self.device = torch.device("cpu") if kind == "cpu" else torch.device("cuda", index)
        torch.set_num_threads(threads)
        config = get_config(config_name) if config_name is not None else infer_config(self.model_path)
        model = load_checkpoint(build_ssd(config.name), self.model_path)
        self.model = model.to(self.device).eval()
        self.name = f"pytorch {torch.__version__} ({self.device})"
        self._pinned: dict[tuple[int, ...], torch.Tensor] = {}
        if kind == "cuda":
            torch.backends.cudnn.benchmark = True
        return config

    def predict(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """batch (B, 3, H, W) float32 -> (loc (B, 4, A), conf (B, C, A)) float32."""
        batch = check_batch(batch, self.input_shape)
        with torch.inference_mode(), self._autocast():
            loc, conf = self.model(self._to_device(batch))
            return loc.float().cpu().numpy(), conf.float().cpu().numpy()

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast is None:
            return contextlib.nullcontext()
        if self.autocast not in AUTOCAST_TYPES:
            raise ValueError(f"autocast {self.autocast!r}: use one of {', '.join(AUTOCAST_TYPES)} or None")
        return torch.autocast(self.device.type, dtype=AUTOCAST_TYPES[self.autocast])

    def _to_device(self, batch: np.ndarray) -> torch.Tensor:
        """The batch on the model's device; on CUDA through a reused page-locked host buffer."""
        images = torch.from_numpy(batch)
        if self.device.type == "cpu":
            return images
        pinned = self._pinned.get(batch.shape)
        if pinned is None:
            pinned = torch.empty(batch.shape, dtype=torch.float32, pin_memory=True)
            self._pinned[batch.shape] = pinned
        else:
            # A call that failed after its copy was queued may not have waited for it.
            torch.cuda.current_stream(self.device).synchronize()
        pinned.copy_(images)
        return pinned.to(self.device, non_blocking=True)
