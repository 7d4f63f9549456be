"""Reduced precision (``abtf_ssd/model/quantize.py``): INT8 calibrated on the calibration split, FP16.

Real pieces throughout: synthetic calibration frames preprocessed into ``calib_<i>.pkl``, ONNX
Runtime's quantizer, the ``abtf-ssd`` console script, the LoadGen harness, and ``mlcr`` for the
model script's ``_int8`` / ``_fp16`` variations and their cache.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from helpers import BIN, finished_cache_entries
from test_mlc_scripts import exported, mlcr, registered_mlc_home

from abtf_ssd.loadgen.accuracy import ACCURACY_LOG, read_accuracy_log
from abtf_ssd.model import quantize


def torch_cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


CALIBRATION_FRAMES = 3
CUDA = torch_cuda_available()
MODEL_LABEL = "SSD-ResNet50 model"
MODEL_TAGS = "get,ml-model,ssd,resnet50,_synthetic,_onnx"
CALIBRATION_TAGS = "get,preprocessed,dataset,cognata,_calibration"
TINY_SYNTH = ("--env.MLC_ABTF_SYNTH_FRAMES=1", "--env.MLC_ABTF_SYNTH_CALIBRATION_FRAMES=2")


@pytest.fixture(scope="module")
def calibration_split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``calib_<i>.pkl`` for the demo config, from synthetic frames (the calibration split's rows)."""
    from abtf_ssd.config import DEMO_CONFIG
    from abtf_ssd.data.preprocess import build_preprocessed
    from abtf_ssd.data.synth import SPLIT_FILES, generate

    root = tmp_path_factory.mktemp("calibration")
    raw = generate(
        root / "raw",
        frames=1,
        width=512,
        height=288,
        seed=3,
        calibration_frames=CALIBRATION_FRAMES,
        workers=1,
    )
    return build_preprocessed(
        raw, raw / SPLIT_FILES["calibration"], root / "calib", "calib", DEMO_CONFIG, workers=1, progress=False
    )


def abtf_ssd(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The ``abtf-ssd`` console script, as a user types it."""
    return subprocess.run(
        [str(BIN / "abtf-ssd"), *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def one_line_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def outputs(model: Path, image: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: image})


def test_int8_model_runs_through_the_harness(
    demo_onnx_model: Path, calibration_split: Path, tiny_dataset, tmp_path: Path
) -> None:
    out = tmp_path / "ssd_int8.onnx"
    proc = abtf_ssd(
        "quantize",
        "--model",
        str(demo_onnx_model),
        "--calibration",
        str(calibration_split),
        "--out",
        str(out),
        "--frames",
        "2",
        "--method",
        "minmax",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out) and "histogram" not in proc.stdout
    assert not list(tmp_path.glob(".*")), "temporary files left behind"

    record = quantize.precision_record(out)
    assert record["precision"] == "int8" and record["recipe"]["frames"] == 2
    assert record["recipe"]["method"] == "minmax" and record["source"] == demo_onnx_model.name
    types = quantize.model_data_types(out)
    assert types.weights.split(",")[0] == "int8" and "uint8" in types.activations and types.inputs == "fp32"
    assert quantize.model_data_types(demo_onnx_model) == quantize.FP32_TYPES

    results = tmp_path / "results"
    run = abtf_ssd(
        "run",
        "--dataset-dir",
        str(tiny_dataset.preprocessed),
        "--model-path",
        str(out),
        "--mode",
        "accuracy",
        "--test-query-count",
        "4",
        "--threads",
        "1",
        "--results-dir",
        str(results),
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    detections = read_accuracy_log(next(results.rglob(ACCURACY_LOG)))
    assert len(detections) == 4
    assert all(np.isfinite(d).all() for d in detections.values())


def test_keep_fp32_groups_leave_those_convolutions_in_float(
    demo_onnx_model: Path, calibration_split: Path, tmp_path: Path
) -> None:
    import onnx

    model = onnx.load(str(demo_onnx_model))
    heads = quantize.select_nodes(model, ["heads"])
    assert len(heads) == 12  # a box and a class head on each of the demo's 6 feature maps
    assert quantize.select_nodes(model, ["first-conv"]) == quantize.select_nodes(
        model, ["feature_extractor.feature_extractor.0.weight"]
    )
    out = quantize.quantize_int8(
        demo_onnx_model, calibration_split, tmp_path / "q.onnx", frames=1, keep_fp32=["heads", "first-conv"]
    )
    quantized = onnx.load(str(out))
    initializers = {t.name: t for t in quantized.graph.initializer}
    kept = [n for n in quantized.graph.node if n.name in set(heads)]
    assert len(kept) == len(heads)
    # A convolution left in FP32 reads its float32 weight directly, not through DequantizeLinear.
    assert all(initializers[n.input[1]].data_type == onnx.TensorProto.FLOAT for n in kept)
    assert quantize.model_data_types(out).weights == "int8,fp32"


@pytest.fixture(scope="module")
def prepared_demo(demo_onnx_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model as quantize_int8 calibrates it (after ONNX Runtime's pre-processing)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = tmp_path_factory.mktemp("prepared") / "prepared.onnx"
    quant_pre_process(str(demo_onnx_model), str(out), skip_symbolic_shape=True)
    return out


def ort_one_shot(model: Path, frames: list[np.ndarray], method: str, work: Path):
    """ONNX Runtime's own calibration with every frame given in one call."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    kind = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
    calibrator = create_calibrator(
        model,
        list(set(QLinearOpsRegistry) | set(QDQRegistry)),
        augmented_model_path=str(work / "augmented.onnx"),
        calibrate_method=kind,
    )
    name = calibrator.infer_session.get_inputs()[0].name
    feeds = iter([{name: frame} for frame in frames])
    reader = type("Reader", (), {"get_next": lambda self: next(feeds, None)})()
    calibrator.collect_data(reader)
    return calibrator.compute_data()


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_streaming_calibration_equals_onnxruntime_one_shot(
    method: str, prepared_demo: Path, calibration_split: Path, tmp_path: Path, capsys
) -> None:
    """Frames one by one, the graph in segments (a small budget: many of them), in either order:
    the ranges ONNX Runtime computes from all the frames at once, bit for bit (at the same thread
    count: another one may change a convolution's last bit)."""
    from abtf_ssd.data.store import open_dataset
    from abtf_ssd.model.calibrate import calibrate, segment_count

    dataset = open_dataset(calibration_split, quantize.CALIBRATION_PREFIX)
    frames = [np.ascontiguousarray(dataset.image(i), dtype=np.float32) for i in range(len(dataset))]
    assert len(frames) == CALIBRATION_FRAMES
    expected = ort_one_shot(prepared_demo, frames, method, tmp_path)
    budget = 2 << 20
    assert segment_count(prepared_demo, budget) > 10
    streamed = calibrate(prepared_demo, frames, method, budget_bytes=budget, threads=0)
    reversed_whole = calibrate(prepared_demo, frames[::-1], method, budget_bytes=1 << 40, threads=0)
    capsys.readouterr()
    assert set(streamed.keys()) == set(expected.keys()) == set(reversed_whole.keys())
    assert len(expected.keys()) > 100
    for name in expected.keys():
        want = [np.asarray(v, dtype=np.float32) for v in expected[name].range_value]
        for got in (streamed[name], reversed_whole[name]):
            assert [np.asarray(v, dtype=np.float32).tolist() for v in got.range_value] == [
                w.tolist() for w in want
            ], name
        if method != "minmax":
            assert np.array_equal(streamed[name].hist, expected[name].hist), name
            assert np.array_equal(streamed[name].bins, expected[name].bins), name


MEMORY_PROBE = """
import json, resource, sys
import numpy as np, onnx
from onnx import TensorProto, helper, numpy_helper
from abtf_ssd.model.calibrate import calibrate

frames_count, path = int(sys.argv[1]), sys.argv[2]
# A mid-size network: 3 x 512 x 1024 input, eight 16-channel 3x3 convolutions with ReLUs and a
# residual Add: 32 MB a tensor, 0.75 GB of calibrated tensors a frame.
rng = np.random.default_rng(0)
nodes, inits, x, c = [], [], "image", 3
for i in range(8):
    w = numpy_helper.from_array((rng.standard_normal((16, c, 3, 3)) * 0.2).astype(np.float32), f"w{i}")
    inits.append(w)
    nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"conv{i}"], pads=[1, 1, 1, 1], name=f"conv{i}"))
    nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"], name=f"relu{i}"))
    x, c = f"relu{i}", 16
nodes.append(helper.make_node("Add", ["relu1", x], ["sum"], name="add"))
graph = helper.make_graph(
    nodes, "mid", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 512, 1024])],
    [helper.make_tensor_value_info("sum", TensorProto.FLOAT, [1, 16, 512, 1024])], inits)
onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

class Frames:
    def __len__(self):
        return frames_count
    def __getitem__(self, i):
        return np.random.default_rng(i).standard_normal((1, 3, 512, 1024), dtype=np.float32)

Frames()[0]
calibrate(path, [Frames()[0]], "minmax", budget_bytes=64 << 20, threads=1)  # warm the imports
base = status("VmRSS:")
ranges = calibrate(path, Frames(), "entropy", budget_bytes=64 << 20, threads=1)
print(json.dumps({"peak": status("VmHWM:"), "base": base, "tensors": len(ranges.keys())}))
"""


def test_calibration_memory_is_flat_in_the_number_of_frames(tmp_path: Path) -> None:
    """Peak resident memory of a streaming calibration (entropy: both passes) of a mid-size network
    with 1 and 5 frames: the same, and under one frame's calibrated tensors (0.75 GB), which
    ONNX Runtime's calibration holds per frame."""
    script = tmp_path / "probe.py"
    script.write_text(MEMORY_PROBE)
    peaks = {}
    for frames in (1, 5):
        proc = subprocess.run(
            [sys.executable, str(script), str(frames), str(tmp_path / "mid.onnx")],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        assert result["tensors"] >= 17
        peaks[frames] = result["peak"]
    one, five = peaks[1], peaks[5]
    assert five <= one * 1.05 + (16 << 20), peaks
    assert five < 700 << 20, peaks


def test_cpu_vector_extensions_from_flags() -> None:
    from abtf_ssd.submission.sysinfo import cpu_vector_extensions

    assert cpu_vector_extensions("fpu sse2 avx fma avx2") == ["AVX2"]
    server = "avx2 avx512f avx512_vnni avx512_bf16 amx_tile amx_int8"
    assert cpu_vector_extensions(server) == ["AVX2", "AVX-512", "AVX-512 VNNI", "AVX-512 BF16", "AMX"]
    assert cpu_vector_extensions("avx2 avx_vnni") == ["AVX2", "AVX-VNNI"]
    assert cpu_vector_extensions("neon asimd") == []


def test_fp16_model_keeps_float32_io_and_stays_close(
    demo_onnx_model: Path, tiny_dataset, tmp_path: Path
) -> None:
    from abtf_ssd.data.store import open_dataset

    out = tmp_path / "ssd_fp16.onnx"
    proc = abtf_ssd(
        "quantize", "--model", str(demo_onnx_model), "--precision", "fp16", "--out", str(out), cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert quantize.model_data_types(out) == quantize.ModelDataTypes(
        weights="fp16", activations="fp16", inputs="fp32"
    )
    image = open_dataset(tiny_dataset.preprocessed).image(0)
    try:
        half = outputs(out, image)
    except Exception as error:  # an onnxruntime build whose CPU provider has no float16 kernels
        pytest.skip(f"the CPU provider cannot run the float16 model: {error}")
    for got, want in zip(half, outputs(demo_onnx_model, image), strict=True):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=0.05 + 0.01 * np.abs(want).max())


@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(), reason="no CUDA provider")
def test_fp16_model_runs_on_cuda(demo_onnx_model: Path, tiny_dataset, tmp_path: Path) -> None:
    from abtf_ssd.data.store import open_dataset
    from abtf_ssd.model.backends import create_backend

    half = quantize.convert_fp16(demo_onnx_model, tmp_path / "ssd_fp16.onnx")
    image = open_dataset(tiny_dataset.preprocessed).image(0)
    got = create_backend("onnxruntime", half, "cuda").predict(image)
    want = create_backend("onnxruntime", demo_onnx_model, "cpu").predict(image)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=0.05 + 0.01 * np.abs(w).max())


@pytest.mark.parametrize(
    "autocast", ["bf16", pytest.param("fp16", marks=pytest.mark.skipif(not CUDA, reason="no CUDA device"))]
)
def test_pytorch_autocast_stays_close_to_float32(autocast: str, tiny_dataset, tmp_path: Path) -> None:
    from abtf_ssd.config import DEMO_CONFIG
    from abtf_ssd.data.store import open_dataset
    from abtf_ssd.model.backends import create_backend
    from abtf_ssd.model.export import export_model

    weights = export_model(DEMO_CONFIG, tmp_path / "demo.pth", seed=0, model_format="pytorch")
    device = "cuda" if autocast == "fp16" else "cpu"
    backend = create_backend("pytorch", weights, device, 2)
    image = open_dataset(tiny_dataset.preprocessed).image(0)
    want = backend.predict(image)
    backend.autocast = autocast
    got = backend.predict(image)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == np.float32 and not np.array_equal(g, w), "autocast changed nothing"
        np.testing.assert_allclose(g, w, atol=0.05 + 0.02 * np.abs(w).max())
    backend.autocast = "int4"
    with pytest.raises(ValueError, match="autocast 'int4'"):
        backend.predict(image)


def test_bad_inputs_get_one_line(
    demo_onnx_model: Path, calibration_split: Path, tiny_dataset, tmp_path: Path
) -> None:
    out = tmp_path / "out.onnx"
    base = ("quantize", "--model", str(demo_onnx_model), "--out", str(out))
    one_line_error(
        abtf_ssd(*base, "--calibration", str(tmp_path / "nowhere"), cwd=tmp_path), "nowhere", "no such folder"
    )
    not_onnx = tmp_path / "weights.onnx"
    not_onnx.write_text("not a model\n")
    one_line_error(
        abtf_ssd(
            "quantize",
            "--model",
            str(not_onnx),
            "--calibration",
            str(calibration_split),
            "--out",
            str(out),
            cwd=tmp_path,
        ),
        str(not_onnx),
        "not an ONNX model",
    )
    # Validation frames may never calibrate.
    one_line_error(
        abtf_ssd(*base, "--calibration", str(tiny_dataset.preprocessed), cwd=tmp_path),
        "--calibration",
        "'calib'",
    )
    one_line_error(
        abtf_ssd(*base, "--calibration", str(calibration_split), "--keep-fp32", "loc.9*", cwd=tmp_path),
        "--keep-fp32 'loc.9*' matches no node",
    )
    one_line_error(
        abtf_ssd(*base, "--calibration", str(calibration_split), "--frames", "99", cwd=tmp_path),
        "--frames 99",
        f"only {CALIBRATION_FRAMES} frames",
    )
    one_line_error(abtf_ssd(*base, cwd=tmp_path), "needs --calibration")
    assert not out.exists() and not list(tmp_path.glob(".*")), "a refused request left files behind"


@pytest.fixture(scope="module")
def mlc_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], Path]:
    return registered_mlc_home(tmp_path_factory, "mlc_quantize_home")


def test_mlc_int8_model_is_cached_apart_and_reused(mlc_home: tuple[dict[str, str], Path]) -> None:
    env, home = mlc_home
    args = (f"{MODEL_TAGS},_int8", *TINY_SYNTH, "--quantize_method=minmax")
    int8 = Path(exported(mlcr(env, home, *args), MODEL_LABEL))
    state = json.loads((int8.parent / "mlc-cached-state.json").read_text())["new_env"]
    assert state["MLC_ABTF_ML_MODEL_PRECISION"] == "int8"
    assert state["MLC_ABTF_ML_MODEL_WEIGHT_DATA_TYPES"].startswith("int8")
    assert state["MLC_ABTF_ML_MODEL_INPUT_DATA_TYPES"] == "fp32"
    recipe = quantize.precision_record(int8)["recipe"]
    assert recipe["frames"] == 2 and recipe["method"] == "minmax"
    made = int8.stat().st_mtime_ns

    # The second request takes the cached model: nothing is quantized again.
    again = Path(exported(mlcr(env, home, *args), MODEL_LABEL))
    assert again == int8 and int8.stat().st_mtime_ns == made
    assert len(finished_cache_entries(env, home, f"{MODEL_TAGS},_int8")) == 1

    # Another recipe, or the plain FP32 request, never gets that entry.
    other = Path(exported(mlcr(env, home, *args[:-1], "--quantize_method=entropy"), MODEL_LABEL))
    assert other != int8 and quantize.precision_record(other)["recipe"]["method"] == "entropy"
    fp32 = Path(exported(mlcr(env, home, MODEL_TAGS), MODEL_LABEL))
    assert fp32.parent != int8.parent and quantize.precision_record(fp32) is None
    # Calibration frames matter to INT8 only: an FP32 request with them takes the same entry.
    assert Path(exported(mlcr(env, home, MODEL_TAGS, *TINY_SYNTH), MODEL_LABEL)) == fp32


def test_mlc_precision_of_a_pytorch_model_is_refused_before_any_work(
    mlc_home: tuple[dict[str, str], Path],
) -> None:
    env, home = mlc_home
    calibration_sets = len(finished_cache_entries(env, home, CALIBRATION_TAGS))
    output = mlcr(
        env, home, "get,ml-model,ssd,resnet50,_synthetic,_pytorch,_int8", *TINY_SYNTH, "--seed=5", ok=False
    )
    assert "_int8 converts ONNX models; use _onnx" in output and "Traceback" not in output
    assert len(finished_cache_entries(env, home, CALIBRATION_TAGS)) == calibration_sets
    assert not finished_cache_entries(env, home, "get,ml-model,ssd,resnet50,_pytorch")


def test_cli_help_lists_quantize() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "abtf_ssd.cli", "quantize", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and "--keep-fp32" in proc.stdout and "entropy" in proc.stdout


def test_int8_submission_carries_its_data_types(mlc_home: tuple[dict[str, str], Path]) -> None:
    """``run-abtf-inference --precision=int8``: the model script's _int8, and a submission that says so."""
    env, home = mlc_home
    results, tree = home / "int8-results", home / "int8-submission"
    mlcr(
        env,
        home,
        "run-abtf-inference,reference,_v0.5,_synthetic,_short,_submission",
        "--model=ssd",
        "--device=cpu",
        "--framework=onnxruntime",
        "--scenario=SingleStream",
        "--precision=int8",
        "--frames=8",
        "--calibration_frames=2",
        f"--results_dir={results}",
        f"--submission_dir={tree}",
    )
    submitter = next((tree / "open").iterdir())
    (measured,) = (submitter / "measurements").glob("*/ssd/SingleStream/*.json")
    values = json.loads(measured.read_text())
    assert values["weight_data_types"] == "int8" and values["input_data_types"] == "fp32"
    assert values["weight_transformations"].startswith("quantization (entropy, 2 calibration frames")
    (system,) = (submitter / "systems").glob("*.json")
    assert "model: int8 weights, uint8" in json.loads(system.read_text())["sw_notes"]
    # A PyTorch run cannot take a reduced-precision model: refused before any getter.
    output = mlcr(
        env,
        home,
        "run-abtf-inference,reference,_v0.5,_synthetic,_short",
        "--framework=pytorch",
        "--precision=int8",
        f"--results_dir={home / 'refused'}",
        ok=False,
    )
    assert "--precision=int8: reduced-precision models are ONNX" in output
    assert not (home / "refused").exists()
