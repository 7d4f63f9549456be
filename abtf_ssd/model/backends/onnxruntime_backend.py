"""ONNX Runtime backend: an ``InferenceSession`` on the execution provider the device names.

The model has one NCHW float32 input and two outputs, in this order: box regressions (N, 4, A)
and class logits (N, C, A), both before any post-processing (BENCHMARK.md section 4). Both are
checked against the config when the session is created, so a model of another config fails
then, naming the file and the shapes. The config is ``config_name`` or, when that is None, the
one in :data:`abtf_ssd.config.CONFIGS` whose anchor count and input size the model has.

The session runs with explicit threading (``intra_op_num_threads`` = ``threads`` or every core,
``inter_op_num_threads`` = 1, sequential execution), full graph optimisation and the CPU memory
arena on. Asking for CUDA or TensorRT when the installed onnxruntime package lacks the provider,
or when the session comes up without it, is a :class:`BackendError` - never a quiet CPU run.

I/O binding (``io_binding``; default on for CUDA and TensorRT, off for the CPU): ``predict`` then
runs through ``session.io_binding()`` and ``run_with_iobinding``, with one host -> device and one
device -> host copy a query and no allocation of the input on the device:

- the input goes into an ``OrtValue`` on the session's device, made once per batch size and
  refilled with ``update_inplace`` (the one host -> device copy), bound once;
- the outputs are bound, with ``buffer_ptr``, to host numpy arrays made for this call, so that
  ORT's device -> host copy writes straight into the arrays ``predict`` returns.

Returned arrays are new each call and belong to the caller (kept across calls, they do not
change): reusing one pair of host buffers would save a host allocation a query, but the next call
would overwrite arrays the caller may still hold. On the CPU the binding path works too (tests
force it on), but only adds a copy of the input: ``session.run`` reads the numpy array in place.
"""

from __future__ import annotations

import importlib.metadata
import os
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort

from abtf_ssd.config import CONFIGS, SSDConfig, get_config
from abtf_ssd.model.backends.base import BackendError, ModelBackend, check_batch, parse_device

DEVICE_KINDS = ("cpu", "cuda", "tensorrt")
_CPU = "CPUExecutionProvider"
_CUDA = "CUDAExecutionProvider"
_TENSORRT = "TensorrtExecutionProvider"


def _installed_package() -> str:
    """Name and version of the distribution that provides the ``onnxruntime`` module."""
    names = importlib.metadata.packages_distributions().get("onnxruntime", ["onnxruntime"])
    versions = []
    for name in names:
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(name)
    return ", ".join(versions) or f"onnxruntime {ort.__version__}"


def providers_for(device: str) -> list[tuple[str, dict[str, str]]]:
    """Execution providers, most preferred first, with their options, for a device string."""
    kind, index = parse_device(device, DEVICE_KINDS)
    if kind == "cpu":
        return [(_CPU, {})]
    cuda = (_CUDA, {"device_id": str(index)})
    if kind == "cuda":
        return [cuda, (_CPU, {})]
    return [(_TENSORRT, {"device_id": str(index)}), cuda, (_CPU, {})]


def device_problem(device: str) -> str | None:
    """The execution providers ``device`` needs that this onnxruntime lacks, as a reason; or None.

    Use :func:`abtf_ssd.model.backends.check_device`. Raises ValueError for a malformed device.
    """
    available = ort.get_available_providers()
    missing = [name for name, _ in providers_for(device) if name not in available]
    if not missing:
        return None
    return (
        f"device {device!r} needs {', '.join(missing)}, but the installed onnxruntime package "
        f"({_installed_package()}) provides only {', '.join(available)}. For NVIDIA GPUs replace it "
        "with onnxruntime-gpu (pip uninstall -y onnxruntime && pip install onnxruntime-gpu), "
        "which needs CUDA and cuDNN libraries matching its version (TensorRT too for 'tensorrt')."
    )


def _dims(shape: list) -> tuple:
    """An ONNX shape with symbolic or unknown dimensions shown as their names or '?'."""
    return tuple(d if isinstance(d, int) else (d or "?") for d in shape)


def _config_for(path: Path, image_hw: tuple, anchors: object, config_name: str | None) -> SSDConfig:
    if config_name is not None:
        return get_config(config_name)
    matches = [c for c in CONFIGS.values() if c.num_anchors == anchors and tuple(c.image_size) == image_hw]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(f"{c.name} ({c.num_anchors} anchors, input {c.image_size})" for c in CONFIGS.values())
    raise BackendError(
        f"{path}: cannot tell the model config from its outputs ({anchors} anchors, input {image_hw}); "
        f"pass config_name. Known configs: {known}"
    )


class OnnxRuntimeBackend(ModelBackend):
    """``predict`` through an ONNX Runtime session; see the module docstring.

    ``io_binding``: run through ONNX Runtime's I/O binding (True), ``session.run`` (False), or
    the device's default (None: on for CUDA and TensorRT, off for the CPU). The attribute of the
    same name holds the choice made and may be changed between calls.
    """

    framework = "onnxruntime"
    device_kinds = DEVICE_KINDS

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        device: str = "cpu",
        threads: int | None = None,
        config_name: str | None = None,
        *,
        io_binding: bool | None = None,
    ) -> None:
        self._io_binding_asked = io_binding
        super().__init__(model_path, device, threads, config_name)

    def _open(self, device: str, threads: int, config_name: str | None) -> SSDConfig:
        kind, index = parse_device(device, DEVICE_KINDS)
        providers = providers_for(device)
        provider_names = [name for name, _ in providers]
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.enable_cpu_mem_arena = True
        try:
            self.session = ort.InferenceSession(
                str(self.model_path),
                sess_options=options,
                providers=provider_names,
                provider_options=[opts for _, opts in providers],
            )
        except Exception as error:  # onnxruntime raises its own exception types for bad files
            raise BackendError(f"{self.model_path}: onnxruntime cannot load the model: {error}") from error
        active = self.session.get_providers()
        if provider_names[0] not in active:
            raise BackendError(
                f"{self.model_path}: asked for {provider_names[0]} (device {device!r}) but the session "
                f"runs on {', '.join(active)}; check the CUDA/cuDNN/TensorRT libraries onnxruntime-gpu needs "
                f"({_installed_package()} installed; onnxruntime.preload_dlls() or `import torch` first "
                "loads those of the nvidia-* pip packages)"
            )
        self.provider = provider_names[0]
        self.name = f"onnxruntime {ort.__version__} ({self.provider})"
        self.io_binding = kind != "cpu" if self._io_binding_asked is None else bool(self._io_binding_asked)
        # TensorRT's engines take CUDA memory too; OrtValues name the device "cuda" for both.
        self._ort_device = ("cpu", 0) if kind == "cpu" else ("cuda", index)
        self._device_inputs: dict[int, tuple[ort.IOBinding, ort.OrtValue]] = {}
        self._binding_lock = threading.Lock()  # an IOBinding is not for two threads at once
        return self._check_io(config_name)

    def _check_io(self, config_name: str | None) -> SSDConfig:
        """Check the model's input/outputs against the config (given or inferred) and return it."""
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 2:
            raise BackendError(
                f"{self.model_path}: expected 1 input and 2 outputs (box regressions, class logits), found "
                f"inputs {[i.name for i in inputs]} and outputs {[o.name for o in outputs]}"
            )
        image, (loc, conf) = inputs[0], outputs
        image_shape, loc_shape, conf_shape = _dims(image.shape), _dims(loc.shape), _dims(conf.shape)
        if image.type != "tensor(float)" or len(image_shape) != 4:
            raise BackendError(
                f"{self.model_path}: input {image.name!r} is {image.type} {image_shape}, "
                "expected float32 (N, 3, H, W)"
            )
        anchors = loc_shape[2] if len(loc_shape) == 3 else None
        config = _config_for(self.model_path, tuple(image_shape[2:]), anchors, config_name)
        expected = {
            f"input {image.name!r}": (image_shape, ("N", 3, *config.image_size)),
            f"output {loc.name!r}": (loc_shape, ("N", 4, config.num_anchors)),
            f"output {conf.name!r}": (conf_shape, ("N", config.num_classes, config.num_anchors)),
        }
        for what, (actual, wanted) in expected.items():
            # The batch axis may be anything; a symbolic dimension elsewhere is checked at predict.
            fits = len(actual) == len(wanted) and all(
                not isinstance(a, int) or a == w for a, w in zip(actual[1:], wanted[1:], strict=True)
            )
            if not fits:
                raise BackendError(
                    f"{self.model_path}: {what} has shape {actual}, but config {config.name!r} needs {wanted}"
                )
        self._batch_dim = image_shape[0] if isinstance(image_shape[0], int) else None
        self._input_name = image.name
        self._output_names = [loc.name, conf.name]
        return config

    def predict(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """batch (B, 3, H, W) float32 -> (loc (B, 4, A), conf (B, C, A)) float32."""
        batch = check_batch(batch, self.input_shape)
        if self._batch_dim is not None and batch.shape[0] != self._batch_dim:
            raise ValueError(
                f"{self.model_path}: the model takes batches of {self._batch_dim}, got {batch.shape[0]}"
            )
        wanted_loc = (batch.shape[0], 4, self.config.num_anchors)
        wanted_conf = (batch.shape[0], self.config.num_classes, self.config.num_anchors)
        if self.io_binding:
            return self._run_bound(batch, wanted_loc, wanted_conf)
        loc, conf = self.session.run(self._output_names, {self._input_name: batch})
        if loc.shape != wanted_loc or conf.shape != wanted_conf:
            raise BackendError(
                f"{self.model_path}: outputs have shapes {loc.shape} and {conf.shape}, "
                f"config {self.config_name!r} needs {wanted_loc} and {wanted_conf}"
            )
        return np.asarray(loc, dtype=np.float32), np.asarray(conf, dtype=np.float32)

    def _run_bound(
        self, batch: np.ndarray, wanted_loc: tuple[int, ...], wanted_conf: tuple[int, ...]
    ) -> tuple[np.ndarray, np.ndarray]:
        """``predict`` through I/O binding (module docstring); the outputs are new arrays of the
        config's shapes, which ONNX Runtime fills or refuses (a model producing other shapes)."""
        loc = np.empty(wanted_loc, dtype=np.float32)
        conf = np.empty(wanted_conf, dtype=np.float32)
        with self._binding_lock:
            binding, device_input = self._bound_input(batch.shape)
            device_input.update_inplace(batch)
            for name, array in zip(self._output_names, (loc, conf), strict=True):
                binding.bind_output(name, "cpu", 0, np.float32, array.shape, array.ctypes.data)
            try:
                self.session.run_with_iobinding(binding)
            except Exception as error:  # onnxruntime raises its own exception types
                raise BackendError(
                    f"{self.model_path}: onnxruntime could not run the model into outputs of shapes "
                    f"{wanted_loc} and {wanted_conf} (config {self.config_name!r}): {error}"
                ) from error
            finally:
                # The binding must not outlive the arrays it points into.
                binding.clear_binding_outputs()
        return loc, conf

    def _bound_input(self, shape: tuple[int, ...]) -> tuple[ort.IOBinding, ort.OrtValue]:
        """The IOBinding and device input (B, 3, H, W) for batches of ``shape``, made on first use."""
        batch_size = shape[0]
        if batch_size not in self._device_inputs:
            device_input = ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32, *self._ort_device)
            binding = self.session.io_binding()
            binding.bind_ortvalue_input(self._input_name, device_input)
            self._device_inputs[batch_size] = (binding, device_input)
        return self._device_inputs[batch_size]
