"""ONNX Runtime I/O binding in :class:`OnnxRuntimeBackend`, and the CUDA input path of both backends.

On the CPU provider the binding path is forced on (``io_binding=True``) and must give exactly what
``session.run`` gives, return arrays that later calls leave alone, and refuse bad batches with the
same errors. The CUDA tests run only where the framework can use a GPU (``check_device``).
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from abtf_ssd.config import DEMO_CONFIG, get_config
from abtf_ssd.model.backends import BackendError, check_device, create_backend
from abtf_ssd.model.backends.onnxruntime_backend import OnnxRuntimeBackend

torch.set_num_threads(2)
DEMO = get_config(DEMO_CONFIG)
ORT_CUDA = check_device("onnxruntime", "cuda")
TORCH_CUDA = check_device("pytorch", "cuda")


@pytest.fixture(scope="module")
def bound(demo_onnx_model: Path) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(demo_onnx_model, threads=2, io_binding=True)


@pytest.fixture(scope="module")
def plain(demo_onnx_model: Path) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(demo_onnx_model, threads=2, io_binding=False)


def _images(batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, *DEMO.image_size), dtype=np.float32)


def _refuse(*_args: object, **_kwargs: object) -> None:
    raise AssertionError("this path must not be taken")


def test_io_binding_is_off_by_default_on_the_cpu(demo_onnx_model: Path) -> None:
    assert create_backend("onnxruntime", demo_onnx_model, threads=1).io_binding is False
    assert OnnxRuntimeBackend(demo_onnx_model, threads=1).io_binding is False
    assert OnnxRuntimeBackend(demo_onnx_model, threads=1, io_binding=True).io_binding is True


@pytest.mark.parametrize("batch_size", [1, 2])
def test_bound_outputs_equal_session_run(
    bound: OnnxRuntimeBackend, plain: OnnxRuntimeBackend, batch_size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = _images(batch_size, seed=batch_size)
    monkeypatch.setattr(bound.session, "run", _refuse)
    monkeypatch.setattr(plain.session, "run_with_iobinding", _refuse)
    loc, conf = bound.predict(images)
    plain_loc, plain_conf = plain.predict(images)
    assert loc.shape == (batch_size, 4, DEMO.num_anchors)
    assert conf.shape == (batch_size, DEMO.num_classes, DEMO.num_anchors)
    assert loc.dtype == conf.dtype == np.float32
    assert np.array_equal(loc, plain_loc) and np.array_equal(conf, plain_conf)
    assert np.abs(conf).max() > 0, "outputs were written"


def test_returned_arrays_are_not_overwritten_by_later_calls(
    bound: OnnxRuntimeBackend, plain: OnnxRuntimeBackend
) -> None:
    first = bound.predict(_images(1, seed=10))
    kept = [array.copy() for array in first]
    second = bound.predict(_images(1, seed=11))  # same batch size: the same device input
    bound.predict(_images(2, seed=12))
    for array, copy, later in zip(first, kept, second, strict=True):
        assert np.array_equal(array, copy)
        assert not np.shares_memory(array, later)
        assert not np.array_equal(array, later), "different inputs must give different outputs"
    # The device input is refilled each call, not left holding the first frame.
    for ours, expected in zip(second, plain.predict(_images(1, seed=11)), strict=True):
        assert np.array_equal(ours, expected)


def test_switching_batch_sizes_and_modes(bound: OnnxRuntimeBackend, plain: OnnxRuntimeBackend) -> None:
    for batch_size, seed in [(2, 20), (1, 21), (2, 22), (3, 23)]:
        images = _images(batch_size, seed)
        for ours, expected in zip(bound.predict(images), plain.predict(images), strict=True):
            assert np.array_equal(ours, expected)
    bound.io_binding = False
    try:
        images = _images(1, seed=24)
        for ours, expected in zip(bound.predict(images), plain.predict(images), strict=True):
            assert np.array_equal(ours, expected)
    finally:
        bound.io_binding = True


def test_calls_from_several_threads(bound: OnnxRuntimeBackend, plain: OnnxRuntimeBackend) -> None:
    """One IOBinding serves every call: without the backend's lock, threads switching every
    microsecond rebind it under each other (wrong outputs, or onnxruntime errors)."""
    inputs = {seed: _images(1, seed) for seed in range(30, 36)}
    expected = {seed: plain.predict(images) for seed, images in inputs.items()}
    results: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    errors: list[BaseException] = []

    def work(seeds: list[int]) -> None:
        try:
            for seed in seeds:
                results[seed] = bound.predict(inputs[seed])
        except BaseException as error:  # a thread's exception would not fail the test
            errors.append(error)

    threads = [threading.Thread(target=work, args=([s for s in inputs if s % 2 == odd],)) for odd in (0, 1)]
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(switch_interval)
    assert not errors, errors
    assert sorted(results) == sorted(inputs)
    for seed, (loc, conf) in results.items():
        assert np.array_equal(loc, expected[seed][0]) and np.array_equal(conf, expected[seed][1])


def test_bad_batches_give_the_same_errors_with_binding(
    bound: OnnxRuntimeBackend, plain: OnnxRuntimeBackend
) -> None:
    wrong_size = np.zeros((1, 3, 288, 512), dtype=np.float32)
    no_batch_axis = np.zeros((3, *DEMO.image_size), dtype=np.float32)
    for batch in (wrong_size, no_batch_axis):
        messages = []
        for backend in (bound, plain):
            with pytest.raises(
                ValueError, match=r"input batch has shape .*, the model takes \(B, 3, 144, 256\)"
            ) as info:
                backend.predict(batch)
            messages.append(str(info.value))
        assert messages[0] == messages[1]


def test_fixed_batch_model_refuses_other_batch_sizes(demo_onnx_model: Path, tmp_path: Path) -> None:
    model = onnx.load(demo_onnx_model)
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    batch_dim.ClearField("dim_param")
    batch_dim.dim_value = 2
    fixed = tmp_path / "fixed_batch.onnx"
    onnx.save(model, fixed)
    bound = OnnxRuntimeBackend(fixed, threads=1, io_binding=True)
    plain = OnnxRuntimeBackend(fixed, threads=1, io_binding=False)
    for backend in (bound, plain):
        with pytest.raises(ValueError, match=r"fixed_batch\.onnx: the model takes batches of 2, got 1"):
            backend.predict(_images(1, seed=40))
    images = _images(2, seed=41)
    for ours, expected in zip(bound.predict(images), plain.predict(images), strict=True):
        assert np.array_equal(ours, expected)


def _width_anchor_model(path: Path) -> Path:
    """A model whose outputs have as many anchors as the image has columns, with symbolic input and
    output sizes: it passes the checks at load and, for the demo config, gives 256 anchors, not 3500."""
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])
    outputs = [
        helper.make_tensor_value_info("bboxes", TensorProto.FLOAT, ["N", 4, "A"]),
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", DEMO.num_classes, "A"]),
    ]
    constants = [
        helper.make_tensor("flat", TensorProto.INT64, [3], [-1, 1, 1]),
        helper.make_tensor("loc_head", TensorProto.INT64, [2], [1, 4]),
        helper.make_tensor("conf_head", TensorProto.INT64, [2], [1, DEMO.num_classes]),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["mean"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["mean", "flat"], ["mean3"]),
        helper.make_node("Shape", ["image"], ["width"], start=3),
        helper.make_node("Concat", ["loc_head", "width"], ["loc_shape"], axis=0),
        helper.make_node("Concat", ["conf_head", "width"], ["conf_shape"], axis=0),
        helper.make_node("Expand", ["mean3", "loc_shape"], ["bboxes"]),
        helper.make_node("Expand", ["mean3", "conf_shape"], ["scores"]),
    ]
    graph = helper.make_graph(nodes, "width_anchors", [image], outputs, initializer=constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def test_outputs_of_other_shapes_are_a_backend_error(tmp_path: Path) -> None:
    model = _width_anchor_model(tmp_path / "short_head.onnx")
    images = _images(1, seed=50)
    plain = OnnxRuntimeBackend(model, threads=1, config_name=DEMO_CONFIG, io_binding=False)
    with pytest.raises(BackendError, match=r"short_head\.onnx: outputs have shapes \(1, 4, 256\)"):
        plain.predict(images)
    bound = OnnxRuntimeBackend(model, threads=1, config_name=DEMO_CONFIG, io_binding=True)
    with pytest.raises(
        BackendError,
        match=r"short_head\.onnx: onnxruntime could not run the model into outputs of shapes "
        r"\(1, 4, 3500\) and \(1, 15, 3500\) \(config 'demo'\)",
    ):
        bound.predict(images)


# ---------------------------------------------------------------------------------------------
# On a GPU (skipped where the framework cannot use one)


def _close(ours: tuple[np.ndarray, np.ndarray], reference: tuple[np.ndarray, np.ndarray]) -> None:
    """Within 1% of each output's scale: CUDA convolutions may use TF32."""
    for a, b in zip(ours, reference, strict=True):
        assert a.shape == b.shape and a.dtype == np.float32
        assert np.max(np.abs(a - b)) <= 1e-2 * np.max(np.abs(b))


@pytest.mark.skipif(ORT_CUDA is not None, reason=f"no ONNX Runtime CUDA here: {ORT_CUDA}")
def test_onnxruntime_cuda_binds_by_default_and_matches_the_cpu(
    demo_onnx_model: Path, plain: OnnxRuntimeBackend
) -> None:
    cuda = OnnxRuntimeBackend(demo_onnx_model, "cuda", threads=2)
    assert cuda.io_binding is True and cuda.provider == "CUDAExecutionProvider"
    first = cuda.predict(_images(2, seed=60))
    kept = [array.copy() for array in first]
    second = cuda.predict(_images(2, seed=61))
    for array, copy in zip(first, kept, strict=True):
        assert np.array_equal(array, copy)
    _close(first, plain.predict(_images(2, seed=60)))
    _close(second, plain.predict(_images(2, seed=61)))
    cuda.io_binding = False
    _close(cuda.predict(_images(1, seed=62)), plain.predict(_images(1, seed=62)))


@pytest.mark.skipif(TORCH_CUDA is not None, reason=f"no PyTorch CUDA here: {TORCH_CUDA}")
def test_pytorch_cuda_matches_the_cpu(tmp_path: Path) -> None:
    from abtf_ssd.model.ssd import build_ssd, init_weights

    checkpoint = tmp_path / "demo.pth"
    torch.save(init_weights(build_ssd(DEMO_CONFIG), seed=0).state_dict(), checkpoint)
    cpu = create_backend("pytorch", checkpoint, threads=2)
    cuda = create_backend("pytorch", checkpoint, device="cuda", threads=2)
    first = cuda.predict(_images(2, seed=70))
    kept = [array.copy() for array in first]
    second = cuda.predict(_images(2, seed=71))  # reuses the page-locked input buffer
    for array, copy in zip(first, kept, strict=True):
        assert np.array_equal(array, copy)
    _close(first, cpu.predict(_images(2, seed=70)))
    _close(second, cpu.predict(_images(2, seed=71)))
    _close(cuda.predict(_images(1, seed=72)), cpu.predict(_images(1, seed=72)))
