"""Inference backends: ONNX Runtime and PyTorch on the same weights, device errors, config checks.

The demo SSD gets seeded random weights (class-head weights scaled up so that the logits spread
and the decoded detections are not a sea of near-ties), is saved as a checkpoint and exported to
ONNX; both backends then run the same batch.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from abtf_ssd.config import BENCHMARK_CONFIG, DEMO_CONFIG, get_config
from abtf_ssd.model.backends import BackendError, check_device, create_backend
from abtf_ssd.model.boxes import decode_batch
from abtf_ssd.model.export import export_onnx
from abtf_ssd.model.ssd import build_ssd, init_weights

torch.set_num_threads(2)
DEMO = get_config(DEMO_CONFIG)


@pytest.fixture(scope="module")
def demo_weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(checkpoint .pth, ONNX export) of one seeded demo model."""
    folder = tmp_path_factory.mktemp("backends")
    model = init_weights(build_ssd(DEMO_CONFIG), seed=3).eval()
    with torch.no_grad():
        for head in model.conf:
            head.weight.mul_(8.0)
    checkpoint = folder / "demo.pth"
    torch.save({"model_state_dict": model.state_dict(), "epoch": 0}, checkpoint)
    return checkpoint, export_onnx(model, folder / "demo.onnx")


def _images(batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, *DEMO.image_size), dtype=np.float32)


def _fake_onnx(path: Path, image_hw: tuple[int, int], anchors: int, classes: int = 15) -> Path:
    """A small real ONNX model: input (N, 3, H, W) -> (N, 4, anchors), (N, classes, anchors), each
    filled with the image mean."""
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, *image_hw])
    loc = helper.make_tensor_value_info("bboxes", TensorProto.FLOAT, ["N", 4, anchors])
    conf = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", classes, anchors])
    constants = [
        helper.make_tensor("flat", TensorProto.INT64, [3], [-1, 1, 1]),
        helper.make_tensor("loc_shape", TensorProto.INT64, [3], [1, 4, anchors]),
        helper.make_tensor("conf_shape", TensorProto.INT64, [3], [1, classes, anchors]),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["mean"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["mean", "flat"], ["mean3"]),
        helper.make_node("Expand", ["mean3", "loc_shape"], ["bboxes"]),
        helper.make_node("Expand", ["mean3", "conf_shape"], ["scores"]),
    ]
    graph = helper.make_graph(nodes, "fake_ssd", [image], [loc, conf], initializer=constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _matched_fraction(a: np.ndarray, b: np.ndarray) -> float:
    """Share of rows of ``a`` with a row of ``b`` of the same label, box within 0.01 px, score within 1e-4."""
    if len(a) == 0:
        return 1.0 if len(b) == 0 else 0.0
    close = (
        (a[:, None, 4] == b[None, :, 4])
        & np.all(np.abs(a[:, None, :4] - b[None, :, :4]) < 1e-2, axis=2)
        & (np.abs(a[:, None, 5] - b[None, :, 5]) < 1e-4)
    )
    return float(close.any(axis=1).mean())


def test_both_backends_give_the_same_outputs_and_detections(demo_weights: tuple[Path, Path]) -> None:
    checkpoint, onnx_path = demo_weights
    onnx_backend = create_backend("onnxruntime", onnx_path, threads=2)
    torch_backend = create_backend("pytorch", checkpoint, threads=2)
    for backend in (onnx_backend, torch_backend):
        assert backend.config_name == DEMO_CONFIG  # inferred from the model
        assert backend.input_shape == (3, 144, 256)
    assert onnx_backend.name.startswith("onnxruntime ") and "CPUExecutionProvider" in onnx_backend.name
    assert torch_backend.name.startswith("pytorch ")

    images = _images(2, seed=0)
    onnx_loc, onnx_conf = onnx_backend.predict(images)
    torch_loc, torch_conf = torch_backend.predict(images)
    assert onnx_loc.shape == torch_loc.shape == (2, 4, DEMO.num_anchors)
    assert onnx_conf.shape == torch_conf.shape == (2, 15, DEMO.num_anchors)
    assert onnx_loc.dtype == onnx_conf.dtype == torch_loc.dtype == torch_conf.dtype == np.float32
    assert torch_conf.std() > 1.0, "logits should be spread"
    np.testing.assert_allclose(onnx_loc, torch_loc, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(onnx_conf, torch_conf, rtol=1e-4, atol=1e-4)

    # Outputs differ by float rounding only, so detections agree except where a score or an IoU
    # sits within that rounding of a decision boundary.
    onnx_detections = decode_batch(onnx_loc, onnx_conf, DEMO_CONFIG)
    torch_detections = decode_batch(torch_loc, torch_conf, DEMO_CONFIG)
    for ours, theirs in zip(onnx_detections, torch_detections, strict=True):
        assert len(ours) > 50
        assert abs(len(ours) - len(theirs)) <= 2
        assert _matched_fraction(ours, theirs) >= 0.98
        assert _matched_fraction(theirs, ours) >= 0.98


def test_batch_gives_the_per_image_results(demo_weights: tuple[Path, Path]) -> None:
    _, onnx_path = demo_weights
    backend = create_backend("onnxruntime", onnx_path, threads=2)
    images = _images(3, seed=1)
    loc, conf = backend.predict(images)
    for i in range(3):
        single_loc, single_conf = backend.predict(images[i : i + 1])
        np.testing.assert_allclose(loc[i : i + 1], single_loc, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(conf[i : i + 1], single_conf, rtol=1e-5, atol=1e-5)


def test_onnxruntime_session_settings(demo_weights: tuple[Path, Path]) -> None:
    _, onnx_path = demo_weights
    backend = create_backend("onnxruntime", onnx_path, threads=2)
    options = backend.session.get_session_options()
    assert options.intra_op_num_threads == 2
    assert options.inter_op_num_threads == 1
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.enable_cpu_mem_arena
    assert backend.session.get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(
        ValueError, match=r"input batch has shape \(1, 3, 288, 512\), the model takes \(B, 3, 144, 256\)"
    ):
        backend.predict(np.zeros((1, 3, 288, 512), dtype=np.float32))


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "tensorrt"])
def test_onnxruntime_gpu_request_without_the_provider_is_an_error(tmp_path: Path, device: str) -> None:
    wanted = "TensorrtExecutionProvider" if device == "tensorrt" else "CUDAExecutionProvider"
    if wanted in ort.get_available_providers():
        pytest.skip(f"{wanted} is installed here")
    model = _fake_onnx(tmp_path / "fake.onnx", DEMO.image_size, DEMO.num_anchors)
    with pytest.raises(
        BackendError, match=rf"device '{device}' needs .*{wanted}.*onnxruntime .*onnxruntime-gpu"
    ) as info:
        create_backend("onnxruntime", model, device=device)
    assert str(info.value) == check_device("onnxruntime", device)  # the check before any download


def test_pytorch_cuda_request_without_cuda_is_an_error(demo_weights: tuple[Path, Path]) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    checkpoint, _ = demo_weights
    with pytest.raises(
        BackendError, match=r"device 'cuda' asked for, but torch .* sees no CUDA device"
    ) as info:
        create_backend("pytorch", checkpoint, device="cuda")
    assert str(info.value) == check_device("pytorch", "cuda")


def test_model_outputs_not_matching_the_config_are_refused(tmp_path: Path) -> None:
    model = _fake_onnx(tmp_path / "small_head.onnx", DEMO.image_size, anchors=100)
    with pytest.raises(
        BackendError,
        match=r"small_head\.onnx: output 'bboxes' has shape \('N', 4, 100\), "
        r"but config 'demo' needs \('N', 4, 3500\)",
    ):
        create_backend("onnxruntime", model, config_name=DEMO_CONFIG)
    with pytest.raises(BackendError, match=r"small_head\.onnx: cannot tell the model config .*100 anchors"):
        create_backend("onnxruntime", model)


def test_model_input_not_matching_the_config_is_refused(demo_weights: tuple[Path, Path]) -> None:
    checkpoint, onnx_path = demo_weights
    with pytest.raises(
        BackendError,
        match=r"demo\.onnx: input 'image' has shape \(.*, 3, 144, 256\), "
        r"but config .* needs \('N', 3, 2160, 3840\)",
    ):
        create_backend("onnxruntime", onnx_path, config_name=BENCHMARK_CONFIG)
    with pytest.raises(
        ValueError, match=rf"demo\.pth: checkpoint does not fit the '{BENCHMARK_CONFIG}' model"
    ) as info:
        create_backend("pytorch", checkpoint, config_name=BENCHMARK_CONFIG)
    assert len(str(info.value)) < 1000, "the message names a few tensors, not every one"


def test_config_is_inferred_from_the_anchor_count(tmp_path: Path) -> None:
    model = _fake_onnx(tmp_path / "fake.onnx", DEMO.image_size, DEMO.num_anchors)
    backend = create_backend("onnxruntime", model, threads=1)
    assert backend.config_name == DEMO_CONFIG
    loc, conf = backend.predict(np.ones((2, 3, 144, 256), dtype=np.float32))
    assert loc.shape == (2, 4, 3500) and conf.shape == (2, 15, 3500)
    assert np.all(loc == 1.0)


def test_bad_requests() -> None:
    with pytest.raises(ValueError, match="unknown framework 'tensorflow'; supported: onnxruntime, pytorch"):
        create_backend("tensorflow", __file__)
    with pytest.raises(FileNotFoundError, match="missing.onnx: model file not found"):
        create_backend("onnxruntime", "missing.onnx")
    with pytest.raises(ValueError, match="unsupported device 'npu'"):
        create_backend("onnxruntime", __file__, device="npu")
    with pytest.raises(ValueError, match="unsupported device 'tensorrt'"):
        create_backend("pytorch", __file__, device="tensorrt")


def test_onnx_path_does_not_import_torch(tmp_path: Path) -> None:
    model = _fake_onnx(tmp_path / "fake.onnx", DEMO.image_size, DEMO.num_anchors)
    script = (
        "import sys, numpy as np\n"
        "from abtf_ssd.model.backends import create_backend\n"
        "from abtf_ssd.model.boxes import decode_batch\n"
        f"backend = create_backend('onnxruntime', {str(model)!r}, threads=1)\n"
        "loc, conf = backend.predict(np.zeros((1, 3, 144, 256), np.float32))\n"
        "decode_batch(loc, conf, backend.config_name)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=Path(__file__).parents[1])


def test_a_checkpoint_of_a_network_with_two_input_sizes_is_the_config_it_records(tmp_path: Path) -> None:
    """demo and small share every weight shape: the config a checkpoint records decides, else demo."""
    from abtf_ssd.config import SMALL_CONFIG
    from abtf_ssd.model.backends.pytorch_backend import infer_config

    state = init_weights(build_ssd(SMALL_CONFIG), seed=0).state_dict()
    for recorded, expected in ((SMALL_CONFIG, SMALL_CONFIG), (DEMO_CONFIG, DEMO_CONFIG), (None, DEMO_CONFIG)):
        path = tmp_path / f"{recorded}.pth"
        torch.save({"model_state_dict": state, **({"config": recorded} if recorded else {})}, path)
        assert infer_config(path).name == expected
