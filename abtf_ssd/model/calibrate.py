"""Streaming INT8 calibration: activation ranges whose memory does not grow with frames or image size.

ONNX Runtime's own calibrators run one augmented model that returns every calibrated tensor of a
frame at once and keep them (all frames' tensors when the frames come in one call): at 8 MP that
is more than 21 GB for one frame. :func:`calibrate` computes the same ranges with the memory of a
slice of the network:

- the tensors calibrated are exactly those ONNX Runtime selects
  (``CalibraterBase.select_tensors_to_calibrate`` over the op types ``quantize_static`` quantizes);
- the graph runs in **segments**: consecutive sub-models cut from the topologically sorted graph,
  each sized so that the calibrated tensors it returns stay under ``budget_bytes``; a segment
  takes the tensors live at its cut and returns its calibrated tensors and those later segments
  read. Per frame the segments run in order; each tensor updates its statistics and is dropped;
- **statistics per tensor, frame by frame**: ``minmax`` keeps the running min and max (one
  pass); ``entropy`` and ``percentile`` take the global range in a first pass, then sum
  histograms with the edges fixed by that range in a second (``np.histogram`` with the same edges
  is exact and order-independent), and hand them to ONNX Runtime's ``HistogramCollector`` for the
  entropy / percentile thresholds.

The result equals ONNX Runtime's calibration of the same frames given in one call (ranges,
histograms and thresholds bit for bit: ``tests/test_quantize.py``), whatever the order of the
frames, and it does not depend on how the graph is cut. (ONNX Runtime's frame-by-frame mode,
``CalibStridedMinMax``, which ``quantize_int8`` used before, re-bins its histograms as the range
grows, so its entropy and percentile ranges depend on the frames' order.) Sessions run with ONNX
Runtime's graph optimizations off and no memory arena, as its calibrators do, so the tensors are
the ones its calibration sees; at the same thread count (``threads=0``: ONNX Runtime's default)
they are bit for bit equal, with another one a convolution may differ in its last bit. Peak
memory: the weights, the tensors live at a cut, one segment's outputs (``budget_bytes``) and the
work space of its largest node: 2.93 GB for the 8 MP model (bench/README.md), the same for any
number of frames.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

DEFAULT_BUDGET_BYTES = 1 << 30
"""Calibrated-tensor bytes one segment may return (per frame); the 8 MP model's largest single
activation is 0.53 GB."""
CHUNK = 1 << 22
"""Elements histogrammed at a time (16 MB of float32): bounds the temporaries of ``np.histogram``."""
HISTOGRAM_DEFAULTS = {
    "entropy": {"num_bins": 128, "num_quantized_bins": 128, "symmetric": False, "percentile": 99.999},
    "percentile": {"num_bins": 2048, "num_quantized_bins": 128, "symmetric": True, "percentile": 99.999},
}
"""ONNX Runtime's defaults (``create_calibrator``) for the histogram methods."""
METHODS = ("minmax", "entropy", "percentile")


@dataclass
class Segment:
    """Nodes ``[start, end)`` of the sorted graph as a sub-model."""

    start: int
    end: int
    inputs: list[str]
    outputs: list[str]
    session: object = None


@dataclass
class _Stats:
    """What is known of one tensor so far."""

    low: np.ndarray | None = None
    high: np.ndarray | None = None
    abs_low: np.ndarray | None = None
    hist: np.ndarray | None = None
    edges: np.ndarray | None = None
    extra: dict = field(default_factory=dict)


def tensors_to_calibrate(model: onnx.ModelProto, op_types: Sequence[str] | None = None) -> list[str]:
    """The tensors ONNX Runtime's calibration would collect for ``quantize_static`` of ``model``
    (a model after ``load_model_with_shape_infer``), in graph order."""
    from onnxruntime.quantization.calibrate import CalibraterBase
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    if not op_types:
        op_types = list(set(QLinearOpsRegistry) | set(QDQRegistry))
    selector = CalibraterBase.__new__(CalibraterBase)  # select_tensors_to_calibrate reads only this
    selector.op_types_to_calibrate = op_types
    selected, _ = selector.select_tensors_to_calibrate(model)
    order = [i.name for i in model.graph.input]
    for node in model.graph.node:
        order.extend(node.input)
        order.extend(node.output)
    return [name for name in dict.fromkeys(order) if name in selected]


def _value_infos(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    infos = {vi.name: vi for vi in model.graph.value_info}
    infos.update({vi.name: vi for vi in model.graph.output})
    infos.update({vi.name: vi for vi in model.graph.input})
    return infos


def _bytes(info: onnx.ValueInfoProto | None) -> int:
    """Bytes of a tensor from its inferred shape (a symbolic axis counted as 1: batch 1)."""
    if info is None or not info.type.HasField("tensor_type"):
        return 0
    tensor = info.type.tensor_type
    size = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).itemsize if tensor.elem_type else 4
    for dim in tensor.shape.dim:
        size *= dim.dim_value if dim.HasField("dim_value") else 1
    return size


def plan_segments(
    model: onnx.ModelProto, calibrated: Sequence[str], budget_bytes: int = DEFAULT_BUDGET_BYTES
) -> list[Segment]:
    """Cut ``model``'s nodes into consecutive segments whose calibrated outputs stay under
    ``budget_bytes`` (a single node over it gets a segment of its own). A cut is made only where
    every tensor crossing it has a known type (so that it can be a sub-model's output)."""
    nodes = list(model.graph.node)
    infos = _value_infos(model)
    initializers = {init.name for init in model.graph.initializer}
    wanted = set(calibrated)
    last_use: dict[str, int] = {}
    for index, node in enumerate(nodes):
        for name in node.input:
            if name:
                last_use[name] = index
    produced_at = {name: index for index, node in enumerate(nodes) for name in node.output if name}

    def crossing(cut: int) -> list[str]:
        """Tensors made before ``cut`` (or graph inputs) and read at or after it."""
        return [
            name
            for name, last in last_use.items()
            if last >= cut and name not in initializers and produced_at.get(name, -1) < cut
        ]

    def can_cut(cut: int) -> bool:
        return all(name in infos and infos[name].type.tensor_type.elem_type for name in crossing(cut))

    cuts = [0]
    load = 0
    for index, node in enumerate(nodes):
        size = sum(_bytes(infos.get(name)) for name in node.output if name in wanted)
        if load and load + size > budget_bytes and can_cut(index):
            cuts.append(index)
            load = 0
        load += size
    cuts.append(len(nodes))
    segments = []
    for start, end in zip(cuts, cuts[1:], strict=False):
        inside = {name for node in nodes[start:end] for name in node.output if name}
        inputs = []
        for node in nodes[start:end]:
            inputs.extend(n for n in node.input if n and n not in inside and n not in initializers)
        outputs = [
            name
            for node in nodes[start:end]
            for name in node.output
            if name and (name in wanted or last_use.get(name, -1) >= end)
        ]
        segments.append(Segment(start, end, list(dict.fromkeys(inputs)), list(dict.fromkeys(outputs))))
    return segments


def _sub_model(model: onnx.ModelProto, segment: Segment) -> onnx.ModelProto:
    infos = _value_infos(model)
    nodes = list(model.graph.node)[segment.start : segment.end]
    used = {name for node in nodes for name in node.input}
    initializers = [init for init in model.graph.initializer if init.name in used]
    graph = onnx.helper.make_graph(
        nodes,
        f"segment_{segment.start}_{segment.end}",
        [infos[name] for name in segment.inputs],
        [infos[name] for name in segment.outputs],
        initializer=initializers,
    )
    sub = onnx.helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    return sub


def _session(model: onnx.ModelProto, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.enable_cpu_mem_arena = False
    options.enable_mem_pattern = False
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


class _Progress:
    """One line a frame on stderr: pass, frames done, seconds a frame, ETA."""

    def __init__(self, total_frames: int, passes: int, enabled: bool) -> None:
        self.total = total_frames * passes
        self.passes = passes
        self.frames = total_frames
        self.done = 0
        self.enabled = enabled
        self.start = time.perf_counter()

    def step(self, pass_index: int, frame: int, what: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        eta = elapsed / self.done * (self.total - self.done)
        sys.stderr.write(
            f"calibration pass {pass_index + 1}/{self.passes} ({what}): frame {frame + 1}/{self.frames}, "
            f"{elapsed / self.done:.1f} s a frame, ETA {_duration(eta)}\n"
        )
        sys.stderr.flush()


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"


class StreamingCalibrator:
    """Runs a (pre-processed, float32) ONNX model in segments and gathers per-tensor statistics."""

    def __init__(
        self,
        model_path: str | Path,
        op_types: Sequence[str] | None = None,
        budget_bytes: int = DEFAULT_BUDGET_BYTES,
        threads: int = 1,
    ) -> None:
        from onnxruntime.quantization.quant_utils import load_model_with_shape_infer

        with tempfile.TemporaryDirectory(prefix=".calibrate-") as work:
            # load_model_with_shape_infer writes a "-inferred" file beside its input
            copy = Path(work) / Path(model_path).name
            copy.write_bytes(Path(model_path).read_bytes())
            self.model = load_model_with_shape_infer(copy)
        self.calibrated = tensors_to_calibrate(self.model, op_types)
        self.segments = plan_segments(self.model, self.calibrated, budget_bytes)
        self.input_name = self.model.graph.input[0].name
        last_use: dict[str, int] = {}
        for index, segment in enumerate(self.segments):
            for name in segment.inputs:
                last_use[name] = index
        self._last_use = last_use
        for segment in self.segments:
            segment.session = _session(_sub_model(self.model, segment), threads)
        self.model = None  # the sub-models hold what is needed

    def run(self, image: np.ndarray, visit: Callable[[str, np.ndarray], None]) -> None:
        """One forward pass of ``image``; ``visit(name, array)`` for every calibrated tensor, each
        array dropped once visited and no longer needed by a later segment."""
        wanted = set(self.calibrated)
        live = {self.input_name: image}
        if self.input_name in wanted:
            visit(self.input_name, image)
        for index, segment in enumerate(self.segments):
            feeds = {name: live[name] for name in segment.inputs}
            results = segment.session.run(segment.outputs, feeds)
            feeds = None
            for name, array in zip(segment.outputs, results, strict=True):
                if name in wanted:
                    visit(name, array)
                if self._last_use.get(name, -1) > index:
                    live[name] = array
            results = None
            for name in [n for n in live if self._last_use.get(n, -1) <= index]:
                del live[name]


def _chunks(array: np.ndarray):
    flat = array.reshape(-1)
    for start in range(0, flat.size, CHUNK):
        yield flat[start : start + CHUNK]


def _histogram(array: np.ndarray, bins: int, low, high, absolute: bool) -> np.ndarray:
    counts = np.zeros(bins, dtype=np.int64)
    for chunk in _chunks(array):
        if absolute:
            chunk = np.absolute(chunk)
        counts += np.histogram(chunk, bins, range=(low, high))[0]
    return counts


def calibrate(
    model_path: str | Path,
    frames: Sequence[np.ndarray],
    method: str = "entropy",
    op_types: Sequence[str] | None = None,
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
    threads: int = 1,
    progress: bool = False,
    options: dict | None = None,
):
    """ONNX Runtime ``TensorsData`` (activation ranges) of ``model_path`` over ``frames``.

    Args:
        model_path: the float32 model ``quantize_static`` will quantize (after ``quant_pre_process``).
        frames: a sequence of model inputs (1, 3, H, W) float32, read once per pass (two passes for
            ``entropy`` and ``percentile``), one at a time.
        method: ``minmax``, ``entropy`` or ``percentile``.
        op_types: op types to quantize (default: every type ONNX Runtime quantizes).
        budget_bytes: calibrated-tensor bytes per segment (module docstring).
        threads: ONNX Runtime intra-op threads.
        progress: a line per frame on stderr (pass, frame, ETA).
        options: ONNX Runtime's calibrator options for the method (``num_bins``,
            ``num_quantized_bins``, ``symmetric``, ``percentile``); defaults as ONNX Runtime's.
    """
    from onnxruntime.quantization.calibrate import CalibrationMethod, HistogramCollector, TensorsData

    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; use one of {', '.join(METHODS)}")
    count = len(frames)
    if count < 1:
        raise ValueError("calibration needs at least one frame")
    calibrator = StreamingCalibrator(model_path, op_types, budget_bytes, threads)
    settings = {**HISTOGRAM_DEFAULTS.get(method, {}), **(options or {})}
    absolute = method == "percentile" and settings["symmetric"]
    stats = {name: _Stats() for name in calibrator.calibrated}
    passes = 1 if method == "minmax" else 2
    meter = _Progress(count, passes, progress)

    def ranges(name: str, array: np.ndarray) -> None:
        entry = stats[name]
        low, high = np.nanmin(array), np.nanmax(array)
        entry.low = low if entry.low is None else min(entry.low, low)
        entry.high = high if entry.high is None else max(entry.high, high)
        if absolute:
            smallest = min(np.nanmin(np.absolute(chunk)) for chunk in _chunks(array))
            entry.abs_low = smallest if entry.abs_low is None else min(entry.abs_low, smallest)

    for index in range(count):
        calibrator.run(np.ascontiguousarray(frames[index], dtype=np.float32), ranges)
        meter.step(0, index, "ranges")

    if method == "minmax":
        data = {
            name: (np.array([s.low], dtype=np.float32), np.array([s.high], dtype=np.float32))
            for name, s in stats.items()
        }
        return TensorsData(CalibrationMethod.MinMax, data)

    bins = settings["num_bins"]
    for entry in stats.values():
        if absolute:
            # ONNX Runtime: np.histogram(|x|, bins) over [min |x|, max |x|]
            entry.extra["range"] = (
                entry.abs_low,
                np.maximum(np.absolute(entry.low), np.absolute(entry.high)),
            )
        else:
            # ONNX Runtime: a symmetric range [-t, t], t = max(|min|, |max|)
            threshold = np.array(max(abs(entry.low), abs(entry.high)), dtype=entry.low.dtype)
            entry.extra["threshold"] = threshold
            entry.extra["range"] = (-threshold, threshold)
        low, high = entry.extra["range"]
        entry.edges = np.histogram(np.empty(0, dtype=entry.low.dtype), bins, range=(low, high))[1]
        entry.hist = np.zeros(bins, dtype=np.int64)

    def histograms(name: str, array: np.ndarray) -> None:
        entry = stats[name]
        low, high = entry.extra["range"]
        entry.hist += _histogram(array, bins, low, high, absolute)

    for index in range(count):
        calibrator.run(np.ascontiguousarray(frames[index], dtype=np.float32), histograms)
        meter.step(1, index, "histograms")

    collector = HistogramCollector(
        method=method,
        symmetric=settings["symmetric"],
        num_bins=bins,
        num_quantized_bins=settings["num_quantized_bins"],
        percentile=settings["percentile"],
        scenario="same",
    )
    for name, entry in stats.items():
        if absolute:
            collector.histogram_dict[name] = (entry.hist, entry.edges, entry.low, entry.high)
        else:
            collector.histogram_dict[name] = (
                entry.hist,
                entry.edges,
                entry.low,
                entry.high,
                entry.extra["threshold"],
            )
    kind = CalibrationMethod.Entropy if method == "entropy" else CalibrationMethod.Percentile
    return TensorsData(kind, collector.compute_collection_result())


def segment_count(model_path: str | Path, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> int:
    """How many segments :func:`calibrate` cuts ``model_path`` into (for reports)."""
    from onnxruntime.quantization.quant_utils import load_model_with_shape_infer

    with tempfile.TemporaryDirectory(prefix=".calibrate-") as work:
        copy = Path(work) / Path(model_path).name
        copy.write_bytes(Path(model_path).read_bytes())
        model = load_model_with_shape_infer(copy)
    return len(plan_segments(model, tensors_to_calibrate(model), budget_bytes))
