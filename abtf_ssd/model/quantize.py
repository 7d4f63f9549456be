"""Reduced-precision SSD models: INT8 for the CPU (calibrated on the calibration split), FP16 for CUDA.

INT8 (:func:`quantize_int8`): ONNX Runtime's static quantization in the QDQ format (per-channel int8
weights, uint8 activations), calibrated on the benchmark's calibration split read through
:func:`abtf_ssd.data.store.open_dataset` (our own preprocessing: the same images the validation split
gets). Only the calibration split is accepted (``calib_<i>`` samples): calibrating on validation
frames is against the rules. The activation ranges come from our streaming calibrator
(:mod:`abtf_ssd.model.calibrate`): the same ranges ONNX Runtime's calibrators compute from all the
frames at once, but gathered frame by frame and a slice of the network at a time, so its memory
does not grow with the number of frames or the size of the activations (the 8 MP model calibrates
in 2.93 GB on 16 frames, where ONNX Runtime's own calibration session needed more than 21 GB for one frame).
It prints a progress line a frame (pass, frame, ETA) on stderr when ``progress`` is on.

FP16 (:func:`convert_fp16`): every float32 weight and activation as float16, the model's input and
outputs kept float32 (``keep_io_types``), so the harness feeds and reads it as it does the FP32
model. For ONNX Runtime's CUDA and TensorRT providers; the CPU provider runs it too, but no
faster than FP32 (demo model, measured here: 1.08x slower).

Nodes left in float32 (``keep_fp32``): a group name of :data:`KEEP_FP32_GROUPS` (found from the graph's
structure, so it works on any export of the SSD) or an ``fnmatch`` pattern matched against a node's
name and the names of its weights (``loc.*``, ``conf.0.weight``, ``feature_extractor.*``).

Each written model carries what was done to it in its ONNX ``metadata_props`` (:data:`METADATA_KEY`),
and :func:`model_data_types` reads the data types of any model (ours or another) from its graph:
what a submission's ``measurements.json`` reports as ``weight_data_types`` / ``input_data_types``.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import io
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from abtf_ssd.cognata import SPLIT_PREFIXES
from abtf_ssd.fileio import atomic_output

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
"""``--method``: how the activation ranges are taken from the calibration frames."""
KEEP_FP32_GROUPS = ("heads", "first-conv")
"""Named node groups for ``keep_fp32``: ``heads`` = the convolutions whose outputs are the model's
box regressions and class logits (through reshapes and concats only); ``first-conv`` = the
convolution that reads the image."""
PRECISIONS = ("int8", "fp16")
"""Reduced precisions this module writes; ``fp32`` is the model as exported or downloaded."""
DEFAULT_TEXT = "default"
"""An MLC input's value for "the recipe's own" (a value of its own keeps the cache tags exact)."""
NONE_TEXT = "none"
"""``--keep_fp32=none`` (MLC): leave no node in FP32."""
METADATA_KEY = "abtf_ssd.precision"
"""ONNX ``metadata_props`` key holding the JSON record of a reduced-precision model (recipe, source)."""
CALIBRATION_PREFIX = SPLIT_PREFIXES["calibration"]


@dataclass(frozen=True)
class Int8Recipe:
    """How a model is quantized; the defaults are the recipe measured best on the demo model
    (README: "Reduced precision")."""

    method: str = "entropy"
    frames: int = 16
    """Calibration frames: the first N of the split, or all of a smaller split (the demo's has 16)."""
    keep_fp32: tuple[str, ...] = ()
    per_channel: bool = True


DEFAULT_RECIPE = Int8Recipe()


class QuantizeError(ValueError):
    """A model or calibration folder that cannot be quantized as asked (one line, names the input)."""


# ---------------------------------------------------------------------------------------------
# Reading a model


def load_onnx(path: str | os.PathLike[str], flag: str = "--model") -> onnx.ModelProto:
    """The ONNX model at ``path``; a :class:`QuantizeError` naming ``flag`` and the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise QuantizeError(f"{flag} {path}: no such file")
    try:
        model = onnx.load(str(path))
    except Exception as error:  # onnx raises DecodeError or its own types on a file that is not ONNX
        raise QuantizeError(
            f"{flag} {path}: not an ONNX model ({type(error).__name__}); give the FP32 .onnx file "
            "(abtf-ssd export-onnx, or get,ml-model,ssd,resnet50,_onnx)"
        ) from None
    if not model.graph.node or len(model.graph.input) != 1:
        raise QuantizeError(f"{flag} {path}: not an SSD ONNX model (expected one image input and a graph)")
    return model


def _initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {tensor.name: tensor for tensor in model.graph.initializer}


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return consumers


_PASS_THROUGH = ("Reshape", "Concat", "Transpose", "Flatten", "Identity", "Cast")


def _head_convs(model: onnx.ModelProto) -> list[str]:
    """Names of the Conv nodes whose output reaches a graph output through reshapes/concats only."""
    outputs = {o.name for o in model.graph.output}
    consumers = _consumers(model)

    def reaches_output(tensor: str, depth: int = 0) -> bool:
        if tensor in outputs:
            return True
        following = consumers.get(tensor, [])
        return depth < 8 and any(
            n.op_type in _PASS_THROUGH and any(reaches_output(o, depth + 1) for o in n.output)
            for n in following
        )

    return [n.name for n in model.graph.node if n.op_type == "Conv" and reaches_output(n.output[0])]


def _first_convs(model: onnx.ModelProto) -> list[str]:
    image = model.graph.input[0].name
    return [n.name for n in model.graph.node if n.op_type == "Conv" and image in n.input]


def select_nodes(model: onnx.ModelProto, patterns: Iterable[str]) -> list[str]:
    """Names of the nodes ``patterns`` select (group names of :data:`KEEP_FP32_GROUPS` or fnmatch
    patterns over node and weight names), in graph order. A pattern that selects nothing is a
    :class:`QuantizeError`: a typo would otherwise quantize the layer silently."""
    initializers = _initializers(model)
    groups = {"heads": _head_convs, "first-conv": _first_convs}
    selected: set[str] = set()
    for pattern in patterns:
        if pattern in groups:
            found = set(groups[pattern](model))
        else:
            found = {
                node.name
                for node in model.graph.node
                if fnmatch.fnmatchcase(node.name, pattern)
                or any(name in initializers and fnmatch.fnmatchcase(name, pattern) for name in node.input)
            }
        if not found:
            examples = [n for n in model.graph.node if n.op_type == "Conv"][:2]
            names = ", ".join(f"{n.name} (weights {n.input[1]})" for n in examples)
            raise QuantizeError(
                f"--keep-fp32 {pattern!r} matches no node; give {' or '.join(KEEP_FP32_GROUPS)} or a pattern "
                f"over node or weight names, such as {names}"
            )
        selected |= found
    return [n.name for n in model.graph.node if n.name in selected]


# ---------------------------------------------------------------------------------------------
# INT8


class _CalibrationFrames:
    """The first ``count`` images of a dataset as a sequence, each read when it is asked for."""

    def __init__(self, dataset, count: int) -> None:
        self.dataset, self.count = dataset, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < self.count:
            raise IndexError(index)
        return np.ascontiguousarray(self.dataset.image(index), dtype=np.float32)


def _open_calibration(calibration_dir: str | os.PathLike[str], image_hw: tuple[int, int] | None):
    from abtf_ssd.data.store import StoreError, open_dataset

    folder = Path(calibration_dir)
    if not folder.is_dir():
        raise QuantizeError(
            f"--calibration {folder}: no such folder; give the preprocessed calibration split "
            "(get,preprocessed,dataset,cognata,_calibration or abtf-ssd preprocess --split calibration)"
        )
    try:
        dataset = open_dataset(folder, CALIBRATION_PREFIX, image_hw)
    except (StoreError, FileNotFoundError) as error:
        raise QuantizeError(
            f"--calibration {folder}: {error}; only the calibration split (calib_<i> samples) may calibrate"
        ) from None
    if len(dataset) == 0:
        raise QuantizeError(f"--calibration {folder}: holds no {CALIBRATION_PREFIX}_<i> samples")
    return dataset


def _input_hw(model: onnx.ModelProto) -> tuple[int, int] | None:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    values = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return (values[2], values[3]) if len(values) == 4 and None not in values[2:] else None


def quantize_int8(
    model_path: str | os.PathLike[str],
    calibration_dir: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    method: str = DEFAULT_RECIPE.method,
    frames: int | None = None,
    keep_fp32: Sequence[str] = DEFAULT_RECIPE.keep_fp32,
    per_channel: bool = DEFAULT_RECIPE.per_channel,
    threads: int = 0,
    progress: bool = True,
) -> Path:
    """Write the INT8 (QDQ) model of the FP32 ONNX ``model_path`` to ``out_path`` (atomically).

    Args:
        model_path: FP32 SSD ONNX model, input (N, 3, H, W) float32.
        calibration_dir: preprocessed calibration split (pickles or store), images (1, 3, H, W).
        method: one of :data:`CALIBRATION_METHODS`.
        frames: calibrate on the first N frames of the split; None: the recipe's count, or every
            frame of a smaller split.
        keep_fp32: nodes left in float32 (module docstring).
        per_channel: one scale per output channel of each weight (else one per weight tensor).
        threads: ONNX Runtime threads for the calibration (0: its default, every core).
        progress: a line a calibration frame on stderr (pass, frame, ETA).

    Raises:
        QuantizeError: a missing or non-ONNX model, a missing calibration folder or one that is not
            the calibration split, images of another size, a bad method, frame count or pattern.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from abtf_ssd.model.calibrate import calibrate

    if method not in CALIBRATION_METHODS:
        raise QuantizeError(f"--method {method!r}: use one of {', '.join(CALIBRATION_METHODS)}")
    if frames is not None and frames < 1:
        raise QuantizeError(f"--frames {frames}: give at least 1")
    model = load_onnx(model_path)
    excluded = select_nodes(model, keep_fp32)
    dataset = _open_calibration(calibration_dir, _input_hw(model))
    count = min(DEFAULT_RECIPE.frames, len(dataset)) if frames is None else frames
    if count > len(dataset):
        raise QuantizeError(
            f"--frames {frames}: the calibration split at {calibration_dir} has only {len(dataset)} frames"
        )
    recipe = Int8Recipe(method=method, frames=count, keep_fp32=tuple(keep_fp32), per_channel=per_channel)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    calibration = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=out_path.parent) as work:
        prepared = Path(work) / "prepared.onnx"
        quant_pre_process(str(model_path), str(prepared), skip_symbolic_shape=True)
        ranges = Path(work) / "ranges.json"
        with _calibration_chatter():
            tensors = calibrate(
                prepared, _CalibrationFrames(dataset, count), method, threads=threads, progress=progress
            )
        save_tensors_data(tensors, ranges)
        del tensors
        with atomic_output(out_path) as temp:
            with _calibration_chatter():
                quantize_static(
                    str(prepared),
                    str(temp),
                    None,
                    quant_format=QuantFormat.QDQ,
                    per_channel=per_channel,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=calibration,
                    nodes_to_exclude=excluded,
                    calibration_cache_path=str(ranges),
                )
            _record(temp, {"precision": "int8", **_source(model_path), "recipe": asdict(recipe)})
    return out_path


@contextlib.contextmanager
def _calibration_chatter():
    """Hold back what ONNX Runtime's calibrators print (histogram bin counts) unless INFO logging is
    on; it is written to stderr if quantization fails."""
    if logging.getLogger().isEnabledFor(logging.INFO):
        yield
        return
    held = io.StringIO()
    try:
        with contextlib.redirect_stdout(held):
            yield
    except BaseException:
        sys.stderr.write(held.getvalue())
        raise


def _source(model_path: str | os.PathLike[str]) -> dict[str, str]:
    """The FP32 model a reduced one was made from: file name and SHA-256 (starting_weights_filename)."""
    digest = hashlib.sha256()
    with open(model_path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"source": Path(model_path).name, "source_sha256": digest.hexdigest()}


# ---------------------------------------------------------------------------------------------
# FP16


def convert_fp16(
    model_path: str | os.PathLike[str], out_path: str | os.PathLike[str], keep_fp32: Sequence[str] = ()
) -> Path:
    """Write ``model_path`` with float16 weights and activations, input and outputs float32.

    Raises:
        QuantizeError: a missing or non-ONNX model, a pattern that selects nothing.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = load_onnx(model_path)
    excluded = select_nodes(model, keep_fp32)
    half = convert_float_to_float16(model, keep_io_types=True, node_block_list=excluded or None)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    record = {"precision": "fp16", **_source(model_path), "recipe": {"keep_fp32": list(keep_fp32)}}
    _set_record(half, record)
    with atomic_output(out_path) as temp:
        onnx.save(half, str(temp))
    return out_path


# ---------------------------------------------------------------------------------------------
# The MLC script's request


def check_precision(precision: str, model_format: str) -> None:
    """Refuse a precision the model format cannot have, before anything is downloaded."""
    if precision not in ("fp32", *PRECISIONS):
        raise ValueError(f"unknown precision {precision!r}; use fp32, {', '.join(PRECISIONS)}")
    if precision != "fp32" and model_format != "onnx":
        raise ValueError(
            f"_{precision} converts ONNX models; use _onnx (a {model_format} model runs in FP32)"
        )


def reduce_precision(
    model_path: str | os.PathLike[str],
    precision: str,
    out_dir: str | os.PathLike[str],
    calibration_dir: str | os.PathLike[str] | None = None,
    method: str = DEFAULT_TEXT,
    frames: str = DEFAULT_TEXT,
    keep_fp32: str = DEFAULT_TEXT,
) -> Path:
    """``out_dir/<model>_<precision>.onnx`` made from ``model_path``, options given as MLC inputs' text.

    ``precision`` ``fp32`` returns ``model_path`` as it is. ``"default"`` (:data:`DEFAULT_TEXT`) leaves
    a recipe option at :data:`DEFAULT_RECIPE`'s; ``keep_fp32`` joins patterns with ``+``
    (``heads+first-conv``) and ``"none"`` keeps no node.
    """
    model_path = Path(model_path)
    if precision == "fp32":
        return model_path
    out = Path(out_dir) / f"{model_path.stem}_{precision}.onnx"
    patterns: dict[str, tuple[str, ...]] = {}
    if keep_fp32 != DEFAULT_TEXT:
        patterns["keep_fp32"] = () if keep_fp32 == NONE_TEXT else tuple(p for p in keep_fp32.split("+") if p)
    if precision == "fp16":
        return convert_fp16(model_path, out, **patterns)
    if precision != "int8":
        raise ValueError(f"unknown precision {precision!r}; use {', '.join(PRECISIONS)}")
    if not calibration_dir:
        raise QuantizeError("_int8 needs the calibration split: --calibration_path=<preprocessed folder>")
    options: dict = dict(patterns)
    if method != DEFAULT_TEXT:
        options["method"] = method
    if frames != DEFAULT_TEXT:
        try:
            options["frames"] = int(frames)
        except ValueError:
            raise QuantizeError(f"--quantize_frames must be an integer, got {frames!r}") from None
    return quantize_int8(model_path, calibration_dir, out, **options)


# ---------------------------------------------------------------------------------------------
# What a model is


def _set_record(model: onnx.ModelProto, record: dict) -> None:
    kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=METADATA_KEY, value=json.dumps(record, sort_keys=True))


def _record(path: Path, record: dict) -> None:
    model = onnx.load(str(path))
    _set_record(model, record)
    onnx.save(model, str(path))


def precision_record(path: str | os.PathLike[str]) -> dict | None:
    """The record :func:`quantize_int8` / :func:`convert_fp16` left in a model, or None (FP32 export)."""
    model = onnx.load(str(path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            return json.loads(prop.value)
    return None


_TYPE_NAMES = {
    onnx.TensorProto.FLOAT: "fp32",
    onnx.TensorProto.FLOAT16: "fp16",
    onnx.TensorProto.BFLOAT16: "bf16",
    onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.DOUBLE: "fp64",
}


def _type_name(elem_type: int) -> str:
    return _TYPE_NAMES.get(elem_type, onnx.TensorProto.DataType.Name(elem_type).lower())


@dataclass(frozen=True)
class ModelDataTypes:
    """Data types of a model, as a submission reports them (each a comma-joined list, most used first)."""

    weights: str
    """Of the convolution weights: ``fp32``; ``int8``; ``int8,fp32`` (some layers left in FP32)."""
    activations: str
    """Of the tensors between layers: ``fp32``, ``uint8,fp32``, ``fp16``."""
    inputs: str
    """Of the model's input: ``fp32`` (every model of this project takes the preprocessed float32 image)."""


FP32_TYPES = ModelDataTypes(weights="fp32", activations="fp32", inputs="fp32")


def model_data_types(path: str | os.PathLike[str]) -> ModelDataTypes:
    """The weight, activation and input data types of the model at ``path``: an ONNX model's read from
    its graph; a PyTorch checkpoint runs in FP32 whatever it stores (the backend loads it into a
    float32 model)."""
    if Path(path).suffix != ".onnx":
        return FP32_TYPES
    model = onnx.load(str(path), load_external_data=False)
    initializers = _initializers(model)
    producers = {out: node for node in model.graph.node for out in node.output}

    def stored_type(tensor: str) -> int | None:
        """Element type a weight is stored in, through DequantizeLinear / Cast."""
        while tensor not in initializers and tensor in producers:
            node = producers[tensor]
            if node.op_type not in ("DequantizeLinear", "Cast", "Identity"):
                return None
            tensor = node.input[0]
        return initializers[tensor].data_type if tensor in initializers else None

    weights: dict[str, int] = {}
    activations: dict[str, int] = {}
    value_types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    for node in model.graph.node:
        if node.op_type == "Conv":
            found = stored_type(node.input[1])
            if found is not None:
                weights[_type_name(found)] = weights.get(_type_name(found), 0) + 1
            quantized_input = producers.get(node.input[0])
            if quantized_input is not None and quantized_input.op_type == "DequantizeLinear":
                kind = _type_name(stored_zero_point_type(quantized_input, initializers))
            else:
                kind = _type_name(value_types.get(node.input[0], _half_or_float(model)))
            activations[kind] = activations.get(kind, 0) + 1
    inputs = [_type_name(i.type.tensor_type.elem_type) for i in model.graph.input]
    return ModelDataTypes(
        weights=_joined(weights), activations=_joined(activations), inputs=",".join(dict.fromkeys(inputs))
    )


def stored_zero_point_type(dequantize: onnx.NodeProto, initializers: dict[str, onnx.TensorProto]) -> int:
    """Element type of a DequantizeLinear's quantized input (its zero point's type)."""
    if len(dequantize.input) > 2 and dequantize.input[2] in initializers:
        return initializers[dequantize.input[2]].data_type
    return onnx.TensorProto.UINT8


def _half_or_float(model: onnx.ModelProto) -> int:
    """Activation type where shape inference left none: fp16 in a converted model, else fp32."""
    record = next((p.value for p in model.metadata_props if p.key == METADATA_KEY), None)
    if record is not None and json.loads(record).get("precision") == "fp16":
        return onnx.TensorProto.FLOAT16
    return onnx.TensorProto.FLOAT


def _joined(counts: dict[str, int]) -> str:
    return ",".join(sorted(counts, key=lambda k: -counts[k])) or "fp32"
