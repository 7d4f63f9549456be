"""What a submission says of its system and results: ``systems/<system>.json``, measurements, README.md.

:func:`system_description` fills the round's system fields from the system description and the
run's results.json; :func:`measurements` the measurements JSON from the model file (its data types,
and for a reduced-precision model the transformation that made it); :func:`scenario_readme` the
README.md of one scenario: its results table, how it was run, notes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from abtf_ssd.loadgen.rules import METRIC_LABELS, MODEL_NAME, get_round
from abtf_ssd.submission.layout import MAP_TARGET, RESULT_KEY, STATUSES, SYSTEM_FIELDS, SYSTEM_TYPE
from abtf_ssd.submission.logs import loadgen_description
from abtf_ssd.submission.runs import SubmissionError

NOT_APPLICABLE = "N/A"
DEFAULT_MEASUREMENTS = {
    "input_data_types": "fp32",
    "retraining": "no",
    "weight_data_types": "fp32",
    "weight_transformations": "none",
}


def _text(value: Any) -> str:
    # The checker wants meaningful fields truthy: a count of 0 must be "0", not 0.
    return (
        value
        if isinstance(value, str)
        else json.dumps(value)
        if isinstance(value, (list, dict))
        else str(value)
    )


def system_description(
    sut_info: dict[str, Any],
    submitter: str,
    division: str,
    system_name: str,
    status: str,
    run_info: dict[str, Any] | None = None,
) -> tuple[dict[str, str], list[str]]:
    """The 35 fields of ``systems/<system>.json`` and the names of those nothing described.

    Fields come from ``sut_info`` (:func:`abtf_ssd.submission.sysinfo.collect` uses the same names); the
    user's submitter, division, system name and status win; ``system_type`` is always "adas".
    The framework falls back to the run's results.json, ``sw_notes`` to the Python version and
    device of the description. Fields still unknown become "N/A" (and are returned).
    """
    if status not in STATUSES:
        raise SubmissionError(f"status {status!r} is not one of {', '.join(STATUSES)}")
    run_info = run_info or {}
    fixed = {
        "division": division,
        "submitter": submitter,
        "status": status,
        "system_name": system_name,
        "system_type": SYSTEM_TYPE,
    }
    fallback = {
        "framework": run_info.get("framework"),
        "sw_notes": ", ".join(
            f"{key} {sut_info[key]}" for key in ("python", "device") if sut_info.get(key) not in (None, "")
        ),
    }
    system: dict[str, str] = {}
    defaulted = []
    for key in SYSTEM_FIELDS:
        if key in fixed:
            system[key] = fixed[key]
        elif sut_info.get(key) not in (None, ""):
            system[key] = _text(sut_info[key])
        elif fallback.get(key):
            system[key] = _text(fallback[key])
        else:
            system[key] = NOT_APPLICABLE
            defaulted.append(key)
    precision = _reduced_precision_note(run_info)
    if precision:
        notes = system["sw_notes"]
        system["sw_notes"] = precision if notes == NOT_APPLICABLE else f"{notes}; {precision}"
    return system, defaulted


def _reduced_precision_note(run_info: dict[str, Any]) -> str | None:
    """``model: int8 weights, uint8,fp32 activations`` for a model that is not FP32 throughout."""
    model = run_info.get("model_path")
    if not model or not Path(str(model)).is_file():
        return None
    from abtf_ssd.model.quantize import model_data_types

    types = model_data_types(Path(str(model)))
    if types.weights == "fp32" and types.activations == "fp32":
        return None
    return f"model: {types.weights} weights, {types.activations} activations"


def model_measurements(model: Path) -> dict[str, str]:
    """What the model file says of itself: its data types, and for a reduced-precision model made by
    :mod:`abtf_ssd.model.quantize` the transformation and the FP32 weights it started from."""
    from abtf_ssd.model.quantize import model_data_types, precision_record

    types = model_data_types(model)
    values = {"weight_data_types": types.weights, "input_data_types": types.inputs}
    record = precision_record(model) if model.suffix == ".onnx" else None
    if record:
        recipe = record.get("recipe", {})
        if record.get("precision") == "int8":
            how = f"quantization ({recipe.get('method')}, {recipe.get('frames')} calibration frames)"
        else:
            how = f"{record.get('precision')} conversion"
        values["weight_transformations"] = how
        values["starting_weights_filename"] = str(record.get("source") or model.name)
    return values


def measurements(run_info: dict[str, Any], overrides: dict[str, str] | None) -> dict[str, str]:
    """measurements.json: the five fields, the weights file from the run's results.json and, where that
    file is still there, its data types (:func:`model_measurements`)."""
    values = dict(DEFAULT_MEASUREMENTS)
    model = run_info.get("model_path") or run_info.get("model")
    values["starting_weights_filename"] = Path(str(model)).name if model else NOT_APPLICABLE
    if model and Path(str(model)).is_file():
        values.update(model_measurements(Path(str(model))))
    values.update(overrides or {})
    return values


def _ms(nanoseconds: Any) -> str:
    return f"{nanoseconds / 1e6:.3f}" if isinstance(nanoseconds, (int, float)) else "n/a"


def scenario_readme(
    system_name: str,
    scenario: str,
    perf: dict[str, Any],
    map_value: float | None,
    run_info: dict[str, Any],
    command: str | None,
    notes: list[str],
    version: str = "v0.5",
) -> str:
    """README.md of one scenario: the results table (with the metric ``version`` reports), how it was
    run, notes."""
    metric = get_round(version).metric(scenario)
    value = perf.get(metric)
    if not value:
        shown = "n/a (too few queries for an estimate)"
    else:
        shown = f"{value:.3f}" if metric.endswith("_per_sec") else _ms(value)
    rows = [(f"{METRIC_LABELS[metric].capitalize()}, the metric round {version} reports", shown)]
    if metric != RESULT_KEY:
        rows.append(("Early-stopping 99.9th percentile latency (ms)", _ms(perf.get(RESULT_KEY))))
    rows += [
        ("99.9th percentile latency (ms)", _ms(perf.get("result_99.90_percentile_latency_ns"))),
        ("Mean latency (ms)", _ms(perf.get("result_mean_latency_ns"))),
        ("Queries", str(perf.get("result_query_count", "n/a"))),
        ("LoadGen result", str(perf.get("result_validity", "n/a"))),
        ("mAP", f"{map_value:.5f}" if map_value is not None else "n/a"),
        ("mAP target (99.9 % of 0.7179)", f"{MAP_TARGET:.7f}"),
        ("LoadGen", loadgen_description(perf)),
    ]
    qps = perf.get("effective_target_qps")
    if scenario == "ConstantStream" and isinstance(qps, (int, float)):
        rows.append(("Target QPS", f"{qps:g}"))
        warning = get_round(version).constant_stream.rate_warning(float(qps))
        notes = [*notes, warning] if warning else notes
    for key, label in (("framework", "Framework"), ("device", "Device"), ("config_name", "Model config")):
        if run_info.get(key):
            rows.append((label, str(run_info[key])))
    lines = [
        f"# {MODEL_NAME} {scenario} on {system_name}",
        "",
        "| | |",
        "|---|---|",
        *(f"| {label} | {value} |" for label, value in rows),
        "",
    ]
    if command:
        lines += ["## Command", "", "```", command.strip(), "```", ""]
    if notes:
        lines += ["## Notes", "", *(f"- {note}" for note in notes), ""]
    return "\n".join(lines)
