"""A model that does not fit the config (input size, class count, anchor count) must be refused
before LoadGen starts, with an error naming the model file, the config and both shapes; a refused
run must leave the results of earlier runs alone."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from abtf_ssd.config import DEMO_CONFIG, get_config
from abtf_ssd.loadgen import harness
from abtf_ssd.model.backends import BackendError, create_backend
from faults.support import run_python

DEMO = get_config(DEMO_CONFIG)
H, W = DEMO.image_size
A = DEMO.num_anchors
C = DEMO.num_classes
LOADGEN_LOGS = ("mlperf_log_summary.txt", "mlperf_log_detail.txt", "mlperf_log_accuracy.json")


def head_model(path: Path, input_shape: tuple, loc_shape: tuple, conf_shape: tuple) -> Path:
    """An ONNX model with the benchmark's interface (input ``image``, outputs ``bboxes``, ``scores``)
    whose outputs are zeros of ``loc_shape`` / ``conf_shape`` times the image mean."""
    from onnx import TensorProto, helper, numpy_helper

    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, list(input_shape))
    outs = [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))
        for name, shape in (("bboxes", loc_shape), ("scores", conf_shape))
    ]
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["mean"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["mean", "per_image_shape"], ["per_image"]),
    ]
    initializers = [numpy_helper.from_array(np.array([0, 1, 1], np.int64), "per_image_shape")]
    for name, shape in (("bboxes", loc_shape), ("scores", conf_shape)):
        initializers.append(numpy_helper.from_array(np.zeros((1, *shape[1:]), np.float32), f"{name}_zeros"))
        nodes.append(helper.make_node("Mul", ["per_image", f"{name}_zeros"], [name]))
    return _save(helper.make_graph(nodes, "head", [image], outs, initializers), path)


def hidden_mismatch_model(path: Path, classes: int) -> Path:
    """A model whose class count only a forward pass shows: an ``If`` picks between 15 and ``classes``
    classes at run time, so the declared output is ``(1, 'C', A)``."""
    from onnx import TensorProto, helper, numpy_helper

    def branch(name: str, branch_classes: int):
        nodes, outs = [], []
        for output, shape in (("bboxes", (1, 4, A)), ("scores", (1, branch_classes, A))):
            value = numpy_helper.from_array(np.zeros(shape, np.float32), f"{name}_{output}_value")
            nodes.append(helper.make_node("Constant", [], [f"{name}_{output}"], value=value))
            outs.append(helper.make_tensor_value_info(f"{name}_{output}", TensorProto.FLOAT, list(shape)))
        return helper.make_graph(nodes, name, [], outs)

    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, H, W])
    outs = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", "C", "A"]) for n in ("bboxes", "scores")
    ]
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["mean"], keepdims=0),
        helper.make_node("Greater", ["mean", "never"], ["taken"]),
        helper.make_node(
            "If",
            ["taken"],
            ["bboxes", "scores"],
            then_branch=branch("then", C),
            else_branch=branch("else", classes),
        ),
    ]
    initializers = [numpy_helper.from_array(np.array(1e9, np.float32), "never")]
    return _save(helper.make_graph(nodes, "hidden", [image], outs, initializers), path)


def _save(graph, path: Path) -> Path:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


WRONG_MODELS = {
    # name: (input shape, loc shape, conf shape, what the error must show)
    "input-size": (("N", 3, 2 * H, 2 * W), ("N", 4, A), ("N", C, A), f"('N', 3, {2 * H}, {2 * W})"),
    "classes": (("N", 3, H, W), ("N", 4, A), ("N", C - 1, A), f"('N', {C - 1}, {A})"),
    "anchors": (("N", 3, H, W), ("N", 4, A - 1), ("N", C, A - 1), f"('N', 4, {A - 1})"),
}


@pytest.fixture(params=sorted(WRONG_MODELS))
def wrong_model(request, tmp_path: Path) -> tuple[Path, str]:
    input_shape, loc, conf, shown = WRONG_MODELS[request.param]
    return head_model(tmp_path / f"wrong-{request.param}.onnx", input_shape, loc, conf), shown


def test_right_shapes_are_accepted(tmp_path):
    """The control: the same construction with the config's shapes is accepted and runs."""
    path = head_model(tmp_path / "right.onnx", ("N", 3, H, W), ("N", 4, A), ("N", C, A))
    backend = create_backend("onnxruntime", path, "cpu", 1, DEMO_CONFIG)
    loc, conf = backend.predict(np.zeros((1, 3, H, W), np.float32))
    assert loc.shape == (1, 4, A) and conf.shape == (1, C, A)


@pytest.mark.parametrize("config_name", [DEMO_CONFIG, None])
def test_wrong_model_is_refused_by_the_backend(wrong_model, config_name):
    path, shown = wrong_model
    with pytest.raises(BackendError) as info:
        create_backend("onnxruntime", path, "cpu", 1, config_name)
    message = str(info.value)
    assert str(path) in message
    if config_name is not None:
        assert shown in message and repr(DEMO_CONFIG) in message


def _run_options(model_path, tiny_dataset, tmp_path, **changes) -> harness.RunOptions:
    """A short demo-config test run of ``model_path`` on the tiny set, results under tmp_path."""
    return harness.RunOptions(
        dataset_dir=tiny_dataset.preprocessed,
        model_path=model_path,
        config_name=DEMO_CONFIG,
        test_query_count=3,
        threads=1,
        results_dir=tmp_path / "results",
        command="pytest",
        **changes,
    )


def test_wrong_model_is_refused_before_loadgen_and_old_results_survive(wrong_model, tiny_dataset, tmp_path):
    path, shown = wrong_model
    options = _run_options(path, tiny_dataset, tmp_path)
    out = harness.output_dir(options)
    out.mkdir(parents=True)
    earlier = {name: f"an earlier run's {name}" for name in LOADGEN_LOGS}
    for name, text in earlier.items():
        (out / name).write_text(text)

    with pytest.raises(BackendError, match=str(path)):
        harness.run(options)
    assert {name: (out / name).read_text() for name in LOADGEN_LOGS} == earlier


def test_wrong_model_through_the_cli_is_one_clear_line(tiny_dataset, tmp_path):
    input_shape, loc, conf, shown = WRONG_MODELS["classes"]
    path = head_model(tmp_path / "wrong classes.onnx", input_shape, loc, conf)
    results = tmp_path / "results"
    proc = run_python(
        [
            "-m",
            "abtf_ssd.cli",
            "run",
            "--dataset-dir",
            str(tiny_dataset.preprocessed),
            "--model-path",
            str(path),
        ]
        + ["--config-name", DEMO_CONFIG, "--results-dir", str(results), "--threads", "1"],
        tmp_path,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert str(path) in line and shown in line and repr(DEMO_CONFIG) in line
    assert not list(results.rglob("mlperf_log_*"))


@pytest.fixture
def symbolic_wrong_model(tmp_path: Path) -> Path:
    """Declares a symbolic class count but returns 14 classes: only a forward pass shows the mismatch."""
    return hidden_mismatch_model(tmp_path / "symbolic.onnx", classes=C - 1)


@pytest.mark.parametrize("mode", ["performance", "accuracy"])
def test_symbolic_shapes_are_caught_before_loadgen(symbolic_wrong_model, tiny_dataset, tmp_path, mode):
    options = _run_options(symbolic_wrong_model, tiny_dataset, tmp_path, mode=mode)
    with pytest.raises(BackendError, match=r"symbolic\.onnx: outputs have shapes"):
        harness.run(options)
    assert not list((tmp_path / "results").rglob("mlperf_log_*"))


def test_a_run_refused_at_warm_up_keeps_the_earlier_results(symbolic_wrong_model, tiny_dataset, tmp_path):
    options = _run_options(symbolic_wrong_model, tiny_dataset, tmp_path)
    out = harness.output_dir(options)
    out.mkdir(parents=True)
    (out / "mlperf_log_summary.txt").write_text("an earlier run's summary")
    with pytest.raises(BackendError):
        harness.run(options)
    assert (out / "mlperf_log_summary.txt").read_text() == "an earlier run's summary"


def test_pytorch_checkpoint_of_another_geometry_is_refused(tmp_path):
    import torch

    from abtf_ssd.model.ssd import SSDResNet50

    other = dataclasses.replace(DEMO, num_classes=C + 1)
    with torch.device("meta"):
        shapes = SSDResNet50(other).state_dict()
    # Only the shapes matter to the refusal: small real tensors where the geometry differs is
    # enough, but the whole state dict keeps the test honest about strict loading.
    state = {k: torch.zeros(v.shape, dtype=torch.float16) for k, v in shapes.items()}
    path = tmp_path / "sixteen-classes.pth"
    torch.save({"model_state_dict": state}, path)

    with pytest.raises(ValueError) as info:
        create_backend("pytorch", path, "cpu", 1, DEMO_CONFIG)
    message = str(info.value)
    assert str(path) in message and "conf.0.weight" in message
    assert f"conf.0.weight ({4 * (C + 1)}, " in message and f" vs ({4 * C}, " in message
    assert len(message) < 1000 and "\n" not in message, "a few names and the counts, on one line"
    with pytest.raises(BackendError, match=r"fits no known config; it does not fit the 'demo' model") as info:
        create_backend("pytorch", path, "cpu", 1, None)
    assert "conf.0.weight" in str(info.value) and len(str(info.value)) < 1000
