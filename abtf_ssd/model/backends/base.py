"""What every backend shares: the device checks, the base class, the batch check, thread defaults."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Protocol

import numpy as np

from abtf_ssd.config import SSDConfig

FRAMEWORKS = ("onnxruntime", "pytorch")
FRAMEWORK_PACKAGES = {"onnxruntime": "onnxruntime", "pytorch": "torch"}
"""--framework value -> the distribution to install for it (whose version the system description records)."""
_BACKEND_MODULES = {
    "onnxruntime": "abtf_ssd.model.backends.onnxruntime_backend",
    "pytorch": "abtf_ssd.model.backends.pytorch_backend",
}


class BackendError(RuntimeError):
    """A backend cannot be created as asked (device, model file, model/config mismatch)."""


class Backend(Protocol):
    name: str
    """Framework, version and device, e.g. ``onnxruntime 1.20.1 (CPUExecutionProvider)``."""
    config_name: str
    input_shape: tuple[int, int, int]
    """(3, H, W) of one image."""

    def predict(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """batch (B, 3, H, W) float32 -> (loc (B, 4, A), conf (B, C, A)) float32."""
        ...


def default_threads() -> int:
    """CPU threads for inference when none are asked for: every core this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


DEVICE_ALIASES = {"gpu": "cuda"}
"""Other names of a device kind: mlperf-automations' ``--device=gpu`` is ``cuda``."""


def normalize_device(device: str) -> str:
    """``device`` as the backends name it: lower case, an alias (:data:`DEVICE_ALIASES`) replaced,
    ``"GPU:1"`` -> ``"cuda:1"``. The one place a device string is normalised."""
    kind, colon, index = device.strip().lower().partition(":")
    return DEVICE_ALIASES.get(kind, kind) + colon + index


def parse_device(device: str, allowed: tuple[str, ...]) -> tuple[str, int]:
    """``"cuda:1"`` (or ``"gpu:1"``) -> ``("cuda", 1)``; a kind outside ``allowed`` or a bad index is a
    ValueError."""
    kind, _, index = normalize_device(device).partition(":")
    if kind not in allowed or (index and (not index.isdigit() or kind == "cpu")):
        forms = ", ".join(f"{k!r}" if k == "cpu" else f"{k!r} or '{k}:N'" for k in allowed)
        raise ValueError(f"unsupported device {device!r}; use {forms}")
    return kind, int(index or 0)


def check_device(framework: str, device: str) -> str | None:
    """Why ``framework`` cannot run on ``device`` ("cpu", "cuda[:N]", "tensorrt[:N]") here, or None.

    Only the framework's own view counts: an ONNX Runtime without the CUDA execution provider
    cannot use a GPU even where ``nvidia-smi`` sees one. Checks nothing but the framework and the
    device (no model file), so it can run before anything is downloaded; the backends raise
    :class:`BackendError` with the same reason.
    """
    if framework not in FRAMEWORKS:
        return f"unknown framework {framework!r}; supported: {', '.join(FRAMEWORKS)}"
    try:
        backend_module = importlib.import_module(_BACKEND_MODULES[framework])
    except ImportError as error:
        return f"{framework} cannot be imported ({error}); pip install {FRAMEWORK_PACKAGES[framework]}"
    try:
        return backend_module.device_problem(device)
    except ValueError as error:
        return str(error)


class ModelBackend:
    """Base of the backends: one model file serving one config, on a device checked up front.

    Subclasses name their ``framework`` and ``device_kinds`` and implement :meth:`_open`, which
    loads the model and returns the config it serves (and sets ``name``).
    """

    framework: str
    device_kinds: tuple[str, ...]
    name: str

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        device: str = "cpu",
        threads: int | None = None,
        config_name: str | None = None,
    ) -> None:
        self.model_path = Path(model_path)
        parse_device(device, self.device_kinds)  # a malformed device is a ValueError
        problem = check_device(self.framework, device)
        if problem:
            raise BackendError(problem)
        self.config = self._open(device, threads or default_threads(), config_name)
        self.config_name = self.config.name
        self.input_shape = (3, *self.config.image_size)

    def _open(self, device: str, threads: int, config_name: str | None) -> SSDConfig:
        """Load the model on ``device`` with ``threads`` CPU threads; the config it serves."""
        raise NotImplementedError


def check_batch(batch: np.ndarray, input_shape: tuple[int, int, int]) -> np.ndarray:
    """``batch`` as C-contiguous float32 (B, 3, H, W); a wrong shape is a ValueError naming both."""
    batch = np.ascontiguousarray(batch, dtype=np.float32)
    if batch.ndim != 4 or batch.shape[1:] != tuple(input_shape):
        raise ValueError(
            f"input batch has shape {batch.shape}, the model takes (B, {', '.join(map(str, input_shape))})"
        )
    return batch
