"""SSD-ResNet50: checkpoint compatibility, head output order, checkpoint loading, ONNX export."""

from __future__ import annotations

import dataclasses
import json
from importlib import resources
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from abtf_ssd import config as config_module
from abtf_ssd.config import BENCHMARK_CONFIG, DEMO_CONFIG, get_config
from abtf_ssd.model.export import ONNX_INPUT_NAME, ONNX_OUTPUT_NAMES, export_onnx
from abtf_ssd.model.ssd import SSDResNet50, build_ssd, init_weights, load_checkpoint

torch.set_num_threads(2)


def _reference_shapes() -> dict[str, list[int]]:
    text = resources.files("abtf_ssd").joinpath("assets/ssd_state_dict_shapes.json").read_text()
    return json.loads(text)[BENCHMARK_CONFIG]


def _zeros_state_dict(shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    return {
        name: torch.zeros((), dtype=torch.int64)
        if name.endswith("num_batches_tracked")
        else torch.zeros(shape)
        for name, shape in shapes.items()
    }


@pytest.fixture(scope="module")
def benchmark_model() -> SSDResNet50:
    return build_ssd(BENCHMARK_CONFIG)


@pytest.fixture(scope="module")
def demo_model() -> SSDResNet50:
    return init_weights(build_ssd(DEMO_CONFIG), seed=0).eval()


def test_benchmark_state_dict_has_the_reference_names_and_shapes(benchmark_model: SSDResNet50) -> None:
    reference = _reference_shapes()
    ours = {name: list(t.shape) for name, t in benchmark_model.state_dict().items()}
    assert ours == reference
    assert 27.0e6 < sum(p.numel() for p in benchmark_model.parameters()) < 27.8e6


@pytest.mark.parametrize("wrapped", [True, False])
def test_reference_layout_checkpoint_loads_strictly(
    benchmark_model: SSDResNet50, tmp_path: Path, wrapped: bool
) -> None:
    state = _zeros_state_dict(_reference_shapes())
    path = tmp_path / "ckpt.pth"
    torch.save({"model_state_dict": state, "epoch": 60} if wrapped else state, path)
    load_checkpoint(benchmark_model, path)
    assert all(float(t.abs().sum()) == 0 for t in benchmark_model.state_dict().values())


def test_half_precision_checkpoint_loads_as_float32(demo_model: SSDResNet50, tmp_path: Path) -> None:
    state = {k: v.half() if v.is_floating_point() else v for k, v in demo_model.state_dict().items()}
    path = tmp_path / "half.pth"
    torch.save({"model_state_dict": state, "config": DEMO_CONFIG}, path)
    fresh = load_checkpoint(SSDResNet50(get_config(DEMO_CONFIG)), path)
    weight = fresh.state_dict()["loc.0.weight"]
    assert weight.dtype == torch.float32
    torch.testing.assert_close(weight, state["loc.0.weight"].float())


def test_bad_checkpoints_are_refused_naming_the_file(demo_model: SSDResNet50, tmp_path: Path) -> None:
    wrong = _zeros_state_dict(_reference_shapes())
    path = tmp_path / "benchmark_weights.pth"
    torch.save({"model_state_dict": wrong}, path)
    with pytest.raises(ValueError, match="benchmark_weights.pth"):
        load_checkpoint(demo_model, path)
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="list.pth.*state dict"):
        load_checkpoint(demo_model, tmp_path / "list.pth")


def test_build_ssd_checks_feature_map_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    demo = get_config(DEMO_CONFIG)
    broken = dataclasses.replace(demo, name="broken", feat_size=((19, 32), *demo.feat_size[1:]))
    monkeypatch.setitem(config_module.CONFIGS, "broken", broken)
    with pytest.raises(ValueError, match=r"feat_size .*\(19, 32\).* feature maps .*\(18, 32\)"):
        build_ssd("broken")


def test_head_outputs_follow_default_box_order() -> None:
    """Anchor a of map k = default box a // (fh*fw) at cell a % (fh*fw): the reference's view order."""
    config = get_config(DEMO_CONFIG)
    model = SSDResNet50(config).eval()
    with torch.no_grad():
        for head in (*model.loc, *model.conf):
            head.weight.zero_()
            head.bias.copy_(torch.arange(head.out_channels, dtype=torch.float32))
        loc, conf = model(torch.zeros(1, 3, *config.image_size))
    assert loc.shape == (1, 4, config.num_anchors) and conf.shape == (1, 15, config.num_anchors)
    start = 0
    for (fh, fw), nd in zip(config.feat_size, config.num_defaults, strict=True):
        anchors = np.arange(nd * fh * fw)
        box = anchors // (fh * fw)
        for coord in range(4):
            np.testing.assert_array_equal(loc[0, coord, start + anchors].numpy(), coord * nd + box)
        for cls in range(15):
            np.testing.assert_array_equal(conf[0, cls, start + anchors].numpy(), cls * nd + box)
        start += nd * fh * fw


def test_onnx_export_matches_torch(demo_model: SSDResNet50, tmp_path: Path) -> None:
    path = export_onnx(demo_model, tmp_path / "demo.onnx")
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob("*.data"))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [ONNX_INPUT_NAME]
    assert tuple(o.name for o in session.get_outputs()) == ONNX_OUTPUT_NAMES
    images = torch.randn(2, 3, *demo_model.config.image_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = demo_model(images)
    got = session.run(None, {ONNX_INPUT_NAME: images.numpy()})
    for ours, theirs in zip(got, expected, strict=True):
        assert ours.dtype == np.float32 and ours.shape == tuple(theirs.shape)
        np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_benchmark_onnx_gives_the_reference_output_shapes(
    benchmark_model: SSDResNet50, tmp_path: Path
) -> None:
    path = export_onnx(init_weights(benchmark_model, seed=0), tmp_path / "ssd_resnet50.onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    image = np.random.default_rng(0).standard_normal((1, 3, 2160, 3840), dtype=np.float32)
    bboxes, scores = session.run(None, {ONNX_INPUT_NAME: image})
    assert bboxes.shape == (1, 4, 776740) and scores.shape == (1, 15, 776740)
    assert np.isfinite(bboxes).all() and np.isfinite(scores).all()
