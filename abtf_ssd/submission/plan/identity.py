"""A step's sources, folder and identity: what a rerun compares to keep a finished step.

:func:`resolve_source` finds (or builds, or downloads) a run's model and dataset; :func:`step_folder`
is the harness's folder of a step (:func:`abtf_ssd.loadgen.harness.output_dir`). A finished step
writes, last and atomically, :data:`MARKER_NAME` with its identity (:func:`step_identity`: round,
scenario, mode, framework, device, model sha256, dataset identity, LoadGen kind, settings). A rerun
skips a step whose marker matches and that finished VALID (or finished at all in test mode)
(:func:`finished`); a changed model changes only its own steps' identity; an interrupted step has
no marker (it is removed before the step starts) and runs again from scratch.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from abtf_ssd.cognata import SPLIT_PREFIXES
from abtf_ssd.fileio import atomic_write_json
from abtf_ssd.loadgen.harness import COMPLIANCE_TEST, RunOptions, output_dir
from abtf_ssd.submission.plan.format import (
    FIND_PERFORMANCE,
    PERFORMANCE,
    Plan,
    PlannedRun,
    Source,
    Step,
)

MARKER_NAME = "plan-run.json"
"""Written last, atomically, into a finished step's folder: the step's identity and outcome."""
SOURCES_DIR_NAME = "sources"


# ---------------------------------------------------------------------------------------------
# Sources


@dataclass(frozen=True)
class Resolved:
    """A run's model file and preprocessed dataset."""

    model: Path
    dataset: Path
    config_name: str | None


def _synthetic_folder(plan: Plan, source: Source) -> Path:
    frames = source.frames if source.frames is not None else _generate_default("frames")
    seed = source.seed if source.seed is not None else _generate_default("seed")
    return plan.output / SOURCES_DIR_NAME / f"synthetic-frames{frames}-seed{seed}"


def _generate_default(name: str) -> Any:
    """A default of :func:`abtf_ssd.data.synth.generate` (the synthetic set's own, stated there only)."""
    from abtf_ssd.data import synth

    return inspect.signature(synth.generate).parameters[name].default


def _model_suffix(framework: str) -> str:
    from abtf_ssd.submission.sysinfo import MODEL_SUFFIXES

    return MODEL_SUFFIXES[framework][0]


def resolve_source(plan: Plan, run: PlannedRun, build: bool) -> Resolved | None:
    """The model and dataset of ``run``; ``build`` makes or downloads them (each resumes), else
    None when they are not there yet."""
    from abtf_ssd.config import BENCHMARK_CONFIG, DEMO_CONFIG
    from abtf_ssd.submission.sysinfo import MODEL_FORMAT_OF_FRAMEWORK

    source = run.source
    if source.kind == "local":
        model = source.model[run.framework] if isinstance(source.model, dict) else source.model
        assert model is not None and source.dataset is not None
        return Resolved(model, source.dataset, None)
    if source.kind == "synthetic":
        folder = _synthetic_folder(plan, source)
        dataset = folder / "val"
        model = folder / f"ssd_demo{_model_suffix(run.framework)}"
        if not build:
            from abtf_ssd.data.preprocess import read_manifest

            ready = dataset.is_dir() and read_manifest(dataset) is not None and model.is_file()
            return Resolved(model, dataset, DEMO_CONFIG) if ready else None
        _build_synthetic(source, folder, dataset)
        if not model.is_file():
            from abtf_ssd.model.export import export_model
            from abtf_ssd.model.ssd import DEMO_WEIGHTS

            export_model(
                DEMO_CONFIG,
                model,
                checkpoint=DEMO_WEIGHTS,
                model_format=MODEL_FORMAT_OF_FRAMEWORK[run.framework],
            )
        return Resolved(model, dataset, DEMO_CONFIG)
    folder = source.dir or plan.output / SOURCES_DIR_NAME / "mlc"
    record = folder / f"fetched-{run.framework}.json"
    if not build:
        if not record.is_file():
            return None
        paths = json.loads(record.read_text(encoding="utf-8"))
        return Resolved(Path(paths["model"]), Path(paths["dataset"]), BENCHMARK_CONFIG)
    from abtf_ssd.data import fetch

    interactive = sys.stdin.isatty()
    dataset = fetch.fetch_dataset(
        "validation", folder / "dataset", source.download_tool, interactive=interactive
    )
    model_format = MODEL_FORMAT_OF_FRAMEWORK[run.framework]
    model = fetch.fetch_model(
        model_format, folder / f"model-{model_format}", source.download_tool, interactive=interactive
    )
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(record, {"model": str(model), "dataset": str(dataset)})
    return Resolved(Path(model), Path(dataset), BENCHMARK_CONFIG)


def _build_synthetic(source: Source, folder: Path, dataset: Path) -> None:
    from abtf_ssd.config import DEMO_CONFIG
    from abtf_ssd.data.preprocess import build_preprocessed, read_manifest
    from abtf_ssd.data.synth import SPLIT_FILES, generate

    if dataset.is_dir() and read_manifest(dataset) is not None:
        return
    options = {
        name: value for name, value in (("frames", source.frames), ("seed", source.seed)) if value is not None
    }
    raw = generate(folder / "raw", calibration_frames=0, workers=1, **options)
    build_preprocessed(
        raw,
        raw / SPLIT_FILES["validation"],
        dataset,
        SPLIT_PREFIXES["validation"],
        DEMO_CONFIG,
        workers=1,
        progress=False,
    )


# ---------------------------------------------------------------------------------------------
# Identity


_SHA256_OF: dict[tuple[str, int, int], str] = {}


def sha256_of(path: Path) -> str:
    """sha256 of a file, remembered for this process while its size and mtime stay the same (a
    plan hashes the same model before each of its runs)."""
    from abtf_ssd.submission.checker import sha256_file

    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA256_OF:
        _SHA256_OF[key] = sha256_file(path)
    return _SHA256_OF[key]


def dataset_identity(dataset: Path) -> dict[str, Any]:
    """What the samples are, without reading 600 GB: the manifest's hash where preprocessing or a
    store conversion wrote one, else (an official download) the folder, its sample count and bytes."""
    from abtf_ssd.data.metric import count_samples
    from abtf_ssd.data.preprocess import MANIFEST_NAME
    from abtf_ssd.data.store import STORE_MANIFEST

    count = count_samples(dataset)
    for name in (MANIFEST_NAME, STORE_MANIFEST):
        if (dataset / name).is_file():
            return {"samples": count, "manifest": name, "manifest_sha256": sha256_of(dataset / name)}
    total = sum(p.stat().st_size for p in dataset.iterdir() if p.is_file())
    return {"samples": count, "folder": str(dataset.resolve()), "bytes": total}


def run_options(plan: Plan, step: Step, resolved: Resolved) -> RunOptions:
    """The harness options of ``step``."""
    run = step.run
    options = RunOptions(
        dataset_dir=resolved.dataset,
        model_path=resolved.model,
        framework=run.framework,
        device=run.device,
        config_name=resolved.config_name,
        scenario=run.scenario,
        mode=step.mode,
        round=plan.round,
        execution_mode=run.execution_mode,
        batch_size=run.batch_size,
        threads=run.threads,
        results_dir=plan.results_dir,
        system_name=run.system,
        user_conf=run.user_conf,
        expected_latency_ns=round(run.latency_ms * 1e6) if run.latency_ms is not None else None,
        target_qps=run.target_qps,
    )
    if run.test_query_count is not None:
        options = dataclasses.replace(options, test_query_count=run.test_query_count)
    return options


def step_folder(plan: Plan, step: Step) -> Path:
    """The folder the harness writes ``step`` into (known without its source)."""
    options = RunOptions(
        dataset_dir="",
        scenario=step.run.scenario,
        mode=step.mode,
        results_dir=plan.results_dir,
        system_name=step.run.system,
        # Any audit config puts the run in the compliance folder; which one does not matter here.
        audit_config=COMPLIANCE_TEST if step.kind == COMPLIANCE_TEST else None,
    )
    return output_dir(options)


def step_identity(plan: Plan, step: Step, resolved: Resolved, loadgen_kind: str) -> dict[str, Any]:
    """Everything that makes a step's result what it is; a finished step with the same identity is kept."""
    from abtf_ssd.loadgen import find_rate
    from abtf_ssd.loadgen.harness import scenario_dir, stored_expected_latency

    run = step.run
    options = run_options(plan, step, resolved)
    expected = options.expected_latency_ns
    if expected is None and step.mode == PERFORMANCE:
        expected = stored_expected_latency(options)
    target_qps = None
    if run.scenario == "ConstantStream" and step.kind != FIND_PERFORMANCE:
        target_qps, _ = find_rate.run_rate(plan.round, options.target_qps, scenario_dir(options))
    return {
        "round": plan.round,
        "system": run.system,
        "scenario": run.scenario,
        "mode": step.kind,
        "framework": run.framework,
        "device": run.device,
        "execution_mode": run.execution_mode,
        "model_sha256": sha256_of(resolved.model),
        "dataset": dataset_identity(resolved.dataset),
        "loadgen": loadgen_kind,
        "settings": {
            "config": resolved.config_name,
            "threads": run.threads,
            "batch_size": run.batch_size,
            "test_query_count": options.test_query_count
            if run.execution_mode == "test" or step.kind == FIND_PERFORMANCE
            else None,
            "user_conf_sha256": sha256_of(run.user_conf) if run.user_conf else None,
            "expected_latency_ns": expected,
            "target_qps": target_qps,
        },
    }


def read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        marker = json.loads((folder / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def finished(marker: dict[str, Any] | None, identity: dict[str, Any]) -> bool:
    """A step to skip: same identity, finished; VALID too for a valid-mode performance run."""
    if marker is None or marker.get("identity") != identity:
        return False
    if identity["execution_mode"] == "valid" and identity["mode"] in (PERFORMANCE, COMPLIANCE_TEST):
        return marker.get("result") == "VALID"
    return True


def identity_changes(marker: dict[str, Any] | None, identity: dict[str, Any]) -> list[str]:
    """The identity keys that differ from the marker's (``settings.threads``, ``model_sha256``...)."""
    if marker is None:
        return []
    old = marker.get("identity") or {}
    changed = []
    for key in sorted(set(old) | set(identity)):
        if isinstance(identity.get(key), dict) and isinstance(old.get(key), dict):
            changed += [
                f"{key}.{k}"
                for k in sorted(set(old[key]) | set(identity[key]))
                if old[key].get(k) != identity[key].get(k)
            ]
        elif old.get(key) != identity.get(key):
            changed.append(key)
    return changed


def _step_done_on_disk(plan: Plan, step: Step) -> bool:
    """Whether a marker says the step finished (identity unchecked: for the estimate of what is left)."""
    marker = read_marker(step_folder(plan, step))
    return marker is not None and finished(marker, marker.get("identity") or {})
