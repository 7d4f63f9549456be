#!/usr/bin/env bash
# The GPU checks in one command, for a machine with an NVIDIA GPU:
#
#   bash bench/device_check.sh
#
# 1. shows the GPU (nvidia-smi);
# 2. gives $PYTHON a CUDA torch and onnxruntime-gpu: whichever of the two is missing is installed
#    into $SITE, a folder put first on PYTHONPATH (so onnxruntime-gpu shadows a CPU onnxruntime,
#    and $PYTHON itself is left as it is), from the wheels in $WHEELS when that folder holds any,
#    else from $INDEX_URL when it answers; a framework still without CUDA is left out of the
#    benchmark, which says why;
# 3. runs bench/bench_cuda.py (the 8 MP model; --runs $RUNS after --warmup $WARMUP);
# 3b. runs bench/bench_quantize.py --parts cuda: the 8 MP model FP16 vs FP32 on ONNX Runtime's CUDA
#    provider, mean and p99.9 (target: FP16 p99.9 under 25 ms on an H200);
# 4. runs the tests that exercise CUDA where it is usable (tests/test_io_binding.py,
#    tests/test_backends.py, tests/test_quantize.py: their CUDA cases skip themselves elsewhere);
# 5. leaves bench_cuda.json and the logs in $RESULTS (default: $OUT when set, else bench/out/cuda).
#
# This repository is used from its folder (PYTHONPATH), not pip-installed: `pip install -e .`
# would replace the machine's torch with the one pyproject.toml pins (gigabytes, or a failure
# offline). A venv is no help either: one made from a venv's Python does not see that venv's
# packages.
# About 3-6 minutes on an H200 machine whose Python already has a CUDA torch (the 8 MP export and
# cuDNN's algorithm search take most of it); downloads, where needed, add to that.
#
# Settings, all optional (environment variables):
#   PYTHON        the interpreter (default: python3)
#   SITE          folder for the packages installed here (default: /tmp/abtf-cuda-site)
#   SETUP         install (default), or none: nothing installed
#   INDEX_URL     package index for missing packages (default: https://pypi.org/simple)
#   WHEELS        folder of wheels to install from, offline (default: .whl in the repository);
#                 NAME.whl.part-* files there are joined into NAME.whl first (a wheel too big to
#                 carry in one piece, cut with `split -b 60M NAME.whl NAME.whl.part-`)
#   TORCH_SPEC    default: torch (the index's default Linux wheel is a CUDA build)
#   ORT_GPU_SPEC  default: onnxruntime-gpu
#   DEVICE        default: cuda
#   RUNS, WARMUP  default: 30 and 3
#   RESULTS       default: $OUT, else bench/out/cuda

set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
SITE="${SITE:-/tmp/abtf-cuda-site}"
SETUP="${SETUP:-install}"
INDEX_URL="${INDEX_URL:-https://pypi.org/simple}"
WHEELS="${WHEELS:-$REPO/.whl}"
TORCH_SPEC="${TORCH_SPEC:-torch}"
ORT_GPU_SPEC="${ORT_GPU_SPEC:-onnxruntime-gpu}"
DEVICE="${DEVICE:-cuda}"
RUNS="${RUNS:-30}"
WARMUP="${WARMUP:-3}"
RESULTS="${RESULTS:-${OUT:-$REPO/bench/out/cuda}}"

mkdir -p "$RESULTS"
SETUP_LOG="$RESULTS/setup.log"
: >"$SETUP_LOG"
failures=()

step() {
    printf '\n== %s (at %s s)\n' "$1" "$SECONDS" | tee -a "$SETUP_LOG"
}

note() {
    printf '%s\n' "$*" | tee -a "$SETUP_LOG"
}

step "GPU"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi 2>&1 | tee -a "$SETUP_LOG"
else
    note "nvidia-smi not found"
fi

step "Python"
PY="$(command -v "$PYTHON")"
if [[ -z "$PY" ]]; then
    note "no Python '$PYTHON'"
    exit 2
fi
case "$SETUP" in
    install) export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}" ;;
    none) export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" ;;
    *)
        note "SETUP must be install or none, not '$SETUP'"
        exit 2
        ;;
esac
export PYTHONUNBUFFERED=1
note "using $PY with PYTHONPATH=$PYTHONPATH"

torch_has_cuda() {
    "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1
}

ort_has_cuda() {
    "$PY" -c 'import sys, onnxruntime as o; sys.exit(0 if "CUDAExecutionProvider" in o.get_available_providers() else 1)' \
        >/dev/null 2>&1
}

join_wheel_parts() {
    local first whole
    shopt -s nullglob
    for first in "$WHEELS"/*.whl.part-aa; do
        whole="${first%.part-aa}"
        if [[ ! -f "$whole" ]]; then
            cat "${whole}".part-* >"$whole.tmp" && mv "$whole.tmp" "$whole"
            note "joined $(basename "$whole") from its parts"
        fi
    done
    shopt -u nullglob
}

have_wheels() {
    compgen -G "$WHEELS/*.whl" >/dev/null
}

index_answers() {
    "$PY" - "$INDEX_URL" <<'PYTHON_END' >/dev/null 2>&1
import sys
import urllib.request

urllib.request.urlopen(sys.argv[1], timeout=10)
PYTHON_END
}

pip_install() {
    local into=(-m pip install --upgrade --target "$SITE")
    if have_wheels && "$PY" "${into[@]}" --no-index --find-links "$WHEELS" "$@" 2>&1 | tee -a "$SETUP_LOG"; then
        return 0
    fi
    if index_answers; then
        "$PY" "${into[@]}" --index-url "$INDEX_URL" --timeout 60 "$@" 2>&1 | tee -a "$SETUP_LOG"
    else
        note "not in $WHEELS, and no answer from $INDEX_URL: cannot install $*"
        return 1
    fi
}

if [[ "$SETUP" == "install" ]]; then
    if [[ -d "$WHEELS" ]]; then
        join_wheel_parts
    fi
    if ! torch_has_cuda; then
        step "install $TORCH_SPEC (this Python's torch sees no CUDA device)"
        pip_install "$TORCH_SPEC" || note "torch without CUDA: PyTorch is left out of the benchmark"
    fi
    if ! ort_has_cuda; then
        step "install $ORT_GPU_SPEC (this Python's onnxruntime has no CUDAExecutionProvider)"
        # Its needs (numpy, protobuf, flatbuffers, packaging) are those of the onnxruntime there.
        pip_install --no-deps "$ORT_GPU_SPEC" || note "onnxruntime without CUDA: ONNX Runtime is left out of the benchmark"
    fi
fi


step "versions"
"$PY" - <<'PYTHON_END' 2>&1 | tee -a "$SETUP_LOG"
import importlib.metadata
import platform

print("python", platform.python_version())
for name in ("numpy", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu", "torch", "pytest"):
    try:
        print(name, importlib.metadata.version(name))
    except importlib.metadata.PackageNotFoundError:
        print(name, "not installed")
try:
    import torch

    print("torch CUDA", torch.version.cuda, "available:", torch.cuda.is_available(), "cuDNN", torch.backends.cudnn.version())
    if torch.cuda.is_available():
        print("GPU", torch.cuda.get_device_name(0))
except Exception as error:  # report, never stop: the benchmark says what it cannot do
    print("torch:", error)
try:
    import onnxruntime

    print("onnxruntime", onnxruntime.__version__, "providers:", onnxruntime.get_available_providers())
except Exception as error:
    print("onnxruntime:", error)
from abtf_ssd.model.backends import check_device

for framework in ("onnxruntime", "pytorch"):
    print(f"check_device({framework!r}, 'cuda'):", check_device(framework, "cuda") or "usable")
PYTHON_END

step "bench/bench_cuda.py --device $DEVICE --runs $RUNS --warmup $WARMUP"
(cd "$REPO" && "$PY" bench/bench_cuda.py --device "$DEVICE" --runs "$RUNS" --warmup "$WARMUP" \
    --json "$RESULTS/bench_cuda.json") 2>&1 | tee "$RESULTS/bench_cuda.log"
bench_status="${PIPESTATUS[0]}"
if [[ "$bench_status" != 0 ]]; then
    failures+=("bench_cuda.py (exit status $bench_status)")
fi

step "bench/bench_quantize.py --parts cuda (FP16 vs FP32) --cuda-runs $RUNS --cuda-warmup $WARMUP"
(cd "$REPO" && "$PY" bench/bench_quantize.py --parts cuda --cuda-runs "$RUNS" --cuda-warmup "$WARMUP" \
    --json "$RESULTS/bench_quantize_cuda.json") 2>&1 | tee "$RESULTS/bench_quantize_cuda.log"
fp16_status="${PIPESTATUS[0]}"
if [[ "$fp16_status" != 0 ]]; then
    failures+=("bench_quantize.py --parts cuda (exit status $fp16_status)")
fi

step "tests with CUDA cases: tests/test_io_binding.py tests/test_backends.py tests/test_quantize.py"
(cd "$REPO" && "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_io_binding.py tests/test_backends.py \
    tests/test_quantize.py::test_fp16_model_runs_on_cuda tests/test_quantize.py::test_pytorch_autocast_stays_close_to_float32) \
    2>&1 |
    tee "$RESULTS/pytest_cuda.log"
tests_status="${PIPESTATUS[0]}"
if [[ "$tests_status" != 0 ]]; then
    failures+=("pytest (exit status $tests_status)")
fi

step "done"
results=("$RESULTS"/*)
note "results: ${results[*]}"
if ((${#failures[@]})); then
    note "failed: ${failures[*]}"
    exit 1
fi
