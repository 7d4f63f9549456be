import numpy as np, onnxruntime as ort
from abtf_ssd.harness import RunOptions, run

class OrtBackend:
    def __init__(self, path):
        o = ort.SessionOptions(); o.intra_op_num_threads = 2
        self.s = ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])
    def predict(self, batch):
        return tuple(self.s.run(None, {"image": batch}))

def test_smoke(tiny_dataset, demo_onnx_model, tmp_path):
    b = OrtBackend(demo_onnx_model)
    for mode in ("performance", "accuracy", "find-performance"):
        r = run(RunOptions(dataset_dir=tiny_dataset.preprocessed, model_path=demo_onnx_model, config_name="demo", mode=mode, results_dir=tmp_path / "res", system_name="sys"), backend=b)
        print(mode, r.summary, r.expected_latency_ns)
    import subprocess; print(subprocess.run(["find", str(tmp_path)], capture_output=True, text=True).stdout)
    print(open(r.output_dir.parent / "accuracy" / "accuracy.txt").read() if False else open(tmp_path / "res/sys/ssd/SingleStream/accuracy/accuracy.txt").read())
