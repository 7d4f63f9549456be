"""Description of the system under test (SUT): what an MLPerf result says it ran on.

:func:`collect` reads the operating system, processor, memory, storage, accelerators and the
versions of the software in the measurement path, using field names of the submission's
``systems/<system>.json`` where one fits; :func:`write_sut_info` saves it as ``mlc-sut-info.json``
(:func:`sut_info_path`: in the results folder of the system).
Everything is read from ``/proc``, ``/sys``, ``platform`` and the installed packages; a value that
cannot be found is ``""`` rather than a guess. :func:`run_problem` says, before any download,
why a run cannot work here (the device through :func:`abtf_ssd.model.backends.check_device`, the
model file's format).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

from abtf_ssd.fileio import atomic_write_json
from abtf_ssd.model.backends import FRAMEWORK_PACKAGES, check_device

SUT_INFO_NAME = "mlc-sut-info.json"

MODEL_SUFFIXES = {"onnxruntime": (".onnx",), "pytorch": (".pth", ".pt")}
"""--framework value -> the model file suffixes it loads."""
MODEL_FORMAT_OF_FRAMEWORK = {"onnxruntime": "onnx", "pytorch": "pytorch"}
"""--framework value -> the model format (``_onnx`` / ``_pytorch`` of get-ml-model-ssd-resnet50)."""

SOFTWARE_PACKAGES = ("mlcommons-loadgen", "numpy", "onnx", "torchmetrics", "faster-coco-eval", "mlcflow")
"""Other packages whose versions belong in ``other_software_stack``."""

_NVIDIA_SMI_TIMEOUT_S = 20


def package_version(distribution: str) -> str:
    """Installed version of a distribution, or "" when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return ""


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def operating_system() -> str:
    """``PRETTY_NAME`` of /etc/os-release plus the kernel, e.g. "Ubuntu 24.04 LTS (Linux 6.8.0)"."""
    pretty = ""
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            pretty = line.split("=", 1)[1].strip().strip('"')
    kernel = f"{platform.system()} {platform.release()}".strip()
    return f"{pretty} ({kernel})" if pretty else kernel


def _cpuinfo_blocks() -> list[dict[str, str]]:
    blocks = []
    for block in _read("/proc/cpuinfo").split("\n\n"):
        fields = {}
        for line in block.splitlines():
            if ":" in line:
                key, value = line.split(":", 1)
                fields[key.strip()] = value.strip()
        if fields:
            blocks.append(fields)
    return blocks


def processor() -> dict[str, Any]:
    """Model name, sockets, physical cores, logical CPUs, maximum frequency and caches."""
    blocks = _cpuinfo_blocks()
    model = next((b["model name"] for b in blocks if "model name" in b), "") or platform.processor()
    sockets = {b.get("physical id", "0") for b in blocks} or {"0"}
    cores = {(b.get("physical id", "0"), b["core id"]) for b in blocks if "core id" in b}
    logical = os.cpu_count() or len(blocks)
    max_khz = _read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").strip()
    if max_khz.isdigit():
        frequency = f"{int(max_khz) / 1e6:.2f} GHz"
    else:
        mhz = next((b["cpu MHz"] for b in blocks if "cpu MHz" in b), "")
        frequency = f"{float(mhz) / 1e3:.2f} GHz" if mhz else ""
    return {
        "host_processor_model_name": model,
        "host_processors_per_node": len(sockets),
        "host_processor_core_count": len(cores) or logical,
        "host_logical_cpus": logical,
        "host_processor_frequency": frequency,
        "host_processor_caches": processor_caches(),
        "host_processor_architecture": platform.machine(),
    }


VECTOR_EXTENSIONS = (
    ("AVX2", ("avx2",)),
    ("AVX-512", ("avx512f",)),
    ("AVX-512 VNNI", ("avx512_vnni", "avx512vnni")),
    ("AVX-VNNI", ("avx_vnni", "avxvnni")),
    ("AVX-512 BF16", ("avx512_bf16",)),
    ("AMX", ("amx_tile", "amx_int8")),
)
"""(name, /proc/cpuinfo flags that show it): the x86 vector extensions INT8 and FP32 kernels depend on.
INT8 convolutions run several times faster with VNNI (one instruction per 4 int8 products) or AMX
than with AVX2 alone (docs/reduced-precision.md)."""


def cpu_vector_extensions(flags: str | None = None) -> list[str]:
    """The vector extensions of :data:`VECTOR_EXTENSIONS` this CPU has, e.g. ``["AVX2"]`` or
    ``["AVX2", "AVX-512", "AVX-512 VNNI", "AMX"]``; from the ``flags`` line of /proc/cpuinfo
    (or the ``flags`` text given); ``[]`` where it cannot be read (not Linux, not x86)."""
    if flags is None:
        flags = next((b.get("flags", "") for b in _cpuinfo_blocks() if "flags" in b), "")
    present = set(flags.split())
    return [name for name, names in VECTOR_EXTENSIONS if present.intersection(names)]


def cpu_vector_text() -> str:
    """:func:`cpu_vector_extensions` as one phrase for a report: "AVX2 (no AVX-512, no VNNI)"."""
    found = cpu_vector_extensions()
    if not found:
        return "no AVX2/AVX-512 flags found"
    missing = [n for n in ("AVX-512",) if n not in found]
    if not any("VNNI" in n for n in found):
        missing.append("VNNI")
    if "AMX" not in found and "AVX-512" in found:
        missing.append("AMX")
    return ", ".join(found) + (f" (no {', no '.join(missing)})" if missing else "")


def processor_caches() -> str:
    """Caches of CPU 0 as "L1d 48K, L1i 32K, L2 2048K, L3 ..." from sysfs (empty if not exposed)."""
    caches = []
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        level = _read(str(index / "level")).strip()
        kind = _read(str(index / "type")).strip()
        size = _read(str(index / "size")).strip()
        if level and size:
            suffix = {"Data": "d", "Instruction": "i"}.get(kind, "")
            caches.append(f"L{level}{suffix} {size}")
    return ", ".join(caches)


def memory_gb() -> float:
    """Total RAM in GB (10^9 bytes) from /proc/meminfo, 0.0 if unknown."""
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) * 1024 / 1e9, 1)
    return 0.0


def storage_gb(path: str | os.PathLike[str] = ".") -> float:
    """Capacity in GB of the file system holding ``path``."""
    try:
        return round(shutil.disk_usage(path).total / 1e9, 1)
    except OSError:
        return 0.0


def nvidia_gpus() -> list[dict[str, str]]:
    """Name and memory of each NVIDIA GPU that ``nvidia-smi`` lists; [] without a driver."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=_NVIDIA_SMI_TIMEOUT_S,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.splitlines():
        if "," in line:
            name, memory = (part.strip() for part in line.split(",", 1))
            gpus.append({"name": name, "memory": memory})
    return gpus


def model_problem(framework: str, model_path: str | None) -> str | None:
    """Why ``framework`` cannot load the model file ``model_path`` (judged by its suffix), or None."""
    suffixes = MODEL_SUFFIXES.get(framework)
    if suffixes is None:
        return f"unknown framework {framework!r}; supported: {', '.join(MODEL_SUFFIXES)}"
    if not model_path or str(model_path).endswith(suffixes):
        return None
    return f"--framework={framework} loads {' or '.join(suffixes)} models, not {model_path}"


def run_problem(framework: str, device: str, model_path: str | None = None) -> str | None:
    """Why a run of ``framework`` on ``device`` (with the model file ``model_path``) cannot work here.

    Checked before anything is downloaded: the device (:func:`abtf_ssd.model.backends.check_device`) and
    whether the model file is in the framework's format (:func:`model_problem`).
    """
    return check_device(framework, device) or model_problem(framework, model_path)


def collect(framework: str | None = None, device: str = "cpu", storage_path: str = ".") -> dict[str, Any]:
    """The system description as a flat JSON-ready dict."""
    gpus = nvidia_gpus()
    on_gpu = device != "cpu"
    framework_version = package_version(FRAMEWORK_PACKAGES.get(framework or "", "")) if framework else ""
    software = {name: package_version(name) for name in SOFTWARE_PACKAGES}
    return {
        "system_name": platform.node(),
        "number_of_nodes": 1,
        "operating_system": operating_system(),
        **processor(),
        "host_memory_capacity": f"{memory_gb()} GB",
        "host_storage_capacity": f"{storage_gb(storage_path)} GB",
        "accelerators_per_node": len(gpus) if on_gpu else 0,
        "accelerator_model_name": gpus[0]["name"] if gpus and on_gpu else "",
        "accelerator_memory_capacity": gpus[0]["memory"] if gpus and on_gpu else "",
        "accelerators_present": [gpu["name"] for gpu in gpus],
        "framework": f"{framework} {framework_version}".strip() if framework else "",
        "device": device,
        "python": platform.python_version(),
        "other_software_stack": ", ".join(f"{k} {v}" for k, v in software.items() if v),
    }


def sut_info_path(results_dir: str | os.PathLike[str] | None = None, system_name: str | None = None) -> Path:
    """Where a run's results keep the description: ``<results_dir>/<system_name>/mlc-sut-info.json``
    (absolute), with the harness's defaults (``results``, ``default``) for what is not given."""
    from abtf_ssd.loadgen.harness import RunOptions

    defaults = RunOptions(dataset_dir="")
    folder = Path(results_dir or defaults.results_dir).absolute()
    return folder / (system_name or defaults.system_name) / SUT_INFO_NAME


def write_sut_info(path: str | os.PathLike[str], framework: str | None = None, device: str = "cpu") -> Path:
    """Collect the description and write it as JSON to ``path`` atomically; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_json(path, collect(framework, device, storage_path=str(path.parent)))
