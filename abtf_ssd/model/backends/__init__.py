"""Inference backends: each turns a float32 NCHW batch into (box regressions, class logits).

:func:`create_backend` picks one by framework name; the ONNX Runtime backend never imports torch.
Every backend answers ``predict(batch (B, 3, H, W) float32) -> (loc (B, 4, A), conf (B, C, A))``
as float32 numpy arrays, with ``H, W`` the config's ``image_size`` and ``A`` its anchor count.

Which model config a backend serves: ``config_name`` when given, else inferred from the model
itself - for ONNX the anchor count of its outputs (and its input size), for PyTorch the
checkpoint's parameter shapes - matched against :data:`abtf_ssd.config.CONFIGS`.

Devices: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; ONNX Runtime also takes ``"tensorrt"`` /
``"tensorrt:N"`` (TensorRT first, CUDA for what TensorRT does not take). A device the installed
framework cannot use is an error, never a silent CPU run. ``"gpu[:N]"`` is ``"cuda[:N]"``
(:func:`normalize_device`).
"""

from __future__ import annotations

import os
from pathlib import Path

from abtf_ssd.model.backends.base import (
    DEVICE_ALIASES,
    FRAMEWORK_PACKAGES,
    FRAMEWORKS,
    Backend,
    BackendError,
    ModelBackend,
    check_batch,
    check_device,
    default_threads,
    normalize_device,
    parse_device,
)

__all__ = [
    "FRAMEWORKS",
    "FRAMEWORK_PACKAGES",
    "DEVICE_ALIASES",
    "Backend",
    "BackendError",
    "ModelBackend",
    "check_batch",
    "check_device",
    "default_threads",
    "normalize_device",
    "parse_device",
    "create_backend",
]


def create_backend(
    framework: str,
    model_path: str | os.PathLike[str],
    device: str = "cpu",
    threads: int | None = None,
    config_name: str | None = None,
) -> Backend:
    """A ready backend for ``framework`` ("onnxruntime" | "pytorch") running ``model_path`` on ``device``.

    ``threads``: CPU threads for operators (default: all cores). ``config_name``: the model config,
    inferred from the model when None (see the module docstring).

    Raises:
        ValueError: unknown framework or device.
        FileNotFoundError: no model file.
        BackendError: the device is unavailable, or the model does not fit the config.
    """
    path = Path(model_path)
    if framework not in FRAMEWORKS:
        raise ValueError(f"unknown framework {framework!r}; supported: {', '.join(FRAMEWORKS)}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model file not found")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if framework == "onnxruntime":
        from abtf_ssd.model.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(path, device, threads, config_name)
    from abtf_ssd.model.backends.pytorch_backend import PyTorchBackend

    return PyTorchBackend(path, device, threads, config_name)
