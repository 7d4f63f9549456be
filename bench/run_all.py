"""Run every ``bench/bench_*.py`` and write ``bench/REPORT.md`` and ``bench/REPORT.json``.

Each benchmark runs in its own process with ``--json <path>`` when its source mentions that flag
(the contract in ``bench/README.md``: ``{"rows": [{"name", "ours", "baseline", "unit", "ratio",
"target", "met"}, ...]}``); a script that does not follow the contract yet runs without it and its
output goes into the report verbatim. A failing or timed-out script is reported, not fatal.

    .venv/bin/python bench/run_all.py [--only load decode] [--skip preprocess] [--timeout 1800]
        [--args "preprocess=--frames 2"] [--out bench] [--cuda-note TEXT]

Benchmarks may import :func:`make_row` and :func:`write_results` from here (``bench/`` is on their
``sys.path`` when run as scripts) so that every table computes ratios the same way.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from abtf_ssd.fileio import atomic_write_json, atomic_write_text

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
REPORT_MD = "REPORT.md"
REPORT_JSON = "REPORT.json"
ROW_KEYS = ("name", "ours", "baseline", "unit", "ratio", "target", "met")
"""Keys every row of a benchmark's ``--json`` output has (values may be null)."""
JSON_FLAG = "--json"
DEFAULT_TIMEOUT_S = 1800
_TAIL_CHARS = 4000
_VERSIONED_PACKAGES = ("numpy", "torch", "onnxruntime", "mlcommons-loadgen", "pillow")


# ---------------------------------------------------------------------------------------------
# The contract, for benchmark scripts


def make_row(
    name: str,
    ours: float | None,
    baseline: float | None,
    unit: str,
    better: str = "lower",
    target: float | None = None,
    note: str | None = None,
) -> dict[str, Any]:
    """One result row. ``ratio`` > 1 always means ours is better: baseline / ours when lower is better
    (seconds, bytes), ours / baseline when higher is better (frames/s); None when a side is missing or
    the denominator is 0. ``target`` is the least ratio that counts as met; None makes the row
    informational (``met`` None)."""
    if better not in ("lower", "higher"):
        raise ValueError(f"better must be 'lower' or 'higher', got {better!r}")
    ratio = None
    if _finite(ours) and _finite(baseline):
        numerator, denominator = (baseline, ours) if better == "lower" else (ours, baseline)
        ratio = numerator / denominator if denominator else None
    met = None if target is None or ratio is None else bool(ratio >= target)
    row: dict[str, Any] = {
        "name": name,
        "ours": ours,
        "baseline": baseline,
        "unit": unit,
        "ratio": ratio,
        "target": target,
        "met": met,
        "better": better,
    }
    if note:
        row["note"] = note
    return row


def write_results(
    path: str | Path,
    rows: list[dict[str, Any]],
    title: str = "",
    notes: list[str] | None = None,
    params: dict[str, Any] | None = None,
    skipped: str | None = None,
) -> Path:
    """Write a benchmark's ``--json`` output atomically. ``skipped``: why nothing could be measured
    here (e.g. no CUDA device); the report then shows the benchmark as skipped with that reason."""
    data: dict[str, Any] = {"title": title, "rows": rows, "notes": notes or [], "params": params or {}}
    if skipped:
        data["skipped"] = skipped
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_json(path, data, default=_json_default)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# ---------------------------------------------------------------------------------------------
# Running the scripts


@dataclass
class BenchResult:
    script: str
    status: str
    """``ok`` (contract JSON read), ``skipped`` (contract JSON with a ``skipped`` reason: nothing
    could be measured here), ``stdout`` (no contract: output kept verbatim), ``failed``, ``timeout``."""
    seconds: float
    command: list[str]
    returncode: int | None = None
    title: str = ""
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    output: str = ""
    """stdout of a script without the contract; the tail of stdout + stderr of a failed one."""
    error: str = ""
    skipped: str = ""
    """Why a ``skipped`` benchmark measured nothing (its ``--json`` output's ``skipped``)."""


def discover(only: list[str], skip: list[str]) -> list[Path]:
    """``bench_*.py`` files in ``bench/``, by name; ``only`` / ``skip`` match the part after ``bench_``."""
    scripts = sorted(BENCH_DIR.glob("bench_*.py"))
    short = {path: path.stem.removeprefix("bench_") for path in scripts}
    unknown = [name for name in [*only, *skip] if name not in short.values()]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; found: {sorted(short.values())}")
    return [p for p in scripts if (not only or short[p] in only) and short[p] not in skip]


def follows_contract(script: Path) -> bool:
    return JSON_FLAG in script.read_text(encoding="utf-8")


def run_script(script: Path, extra_args: list[str], timeout_s: float, work: Path) -> BenchResult:
    contract = follows_contract(script)
    json_path = work / f"{script.stem}.json"
    command = [sys.executable, str(script), *extra_args]
    shown = ["python", str(script.relative_to(REPO_ROOT)), *extra_args]  # the report's: no temp paths
    if contract:
        command += [JSON_FLAG, str(json_path)]
        shown += [JSON_FLAG, "<json>"]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    print(f"== {script.name}: {shlex.join(shown)}", flush=True)
    start = time.perf_counter()
    try:
        process = subprocess.run(
            command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as e:
        output = _text(e.stdout) + _text(e.stderr)
        return BenchResult(
            script.name,
            "timeout",
            time.perf_counter() - start,
            shown,
            output=output[-_TAIL_CHARS:],
            error=f"did not finish within {timeout_s:.0f} s",
        )
    seconds = time.perf_counter() - start
    print(process.stdout, end="", flush=True)
    result = BenchResult(script.name, "ok", seconds, shown, returncode=process.returncode)
    if process.returncode != 0:
        result.status = "failed"
        result.output = (process.stdout + process.stderr)[-_TAIL_CHARS:]
        result.error = f"exit status {process.returncode}"
        return result
    if not contract:
        result.status, result.output = "stdout", process.stdout
        return result
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
        result.rows = _checked_rows(data)
    except (OSError, ValueError) as e:
        result.status, result.error = "failed", f"{json_path.name}: {e}"
        result.output = (process.stdout + process.stderr)[-_TAIL_CHARS:]
        return result
    result.title = str(data.get("title") or "")
    result.notes = [str(note) for note in data.get("notes") or []]
    result.params = data.get("params") or {}
    if data.get("skipped"):
        result.status, result.skipped = "skipped", str(data["skipped"])
    return result


def _text(value: str | bytes | None) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value or ""


def _checked_rows(data: Any) -> list[dict[str, Any]]:
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise ValueError('expected an object with a list "rows"')
    for number, row in enumerate(data["rows"]):
        missing = [key for key in ROW_KEYS if not isinstance(row, dict) or key not in row]
        if missing:
            raise ValueError(f"row {number} lacks {missing} (every row needs {list(ROW_KEYS)})")
    return data["rows"]


# ---------------------------------------------------------------------------------------------
# The machine


def machine() -> dict[str, Any]:
    """CPU, memory, OS and versions, from :mod:`abtf_ssd.submission.sysinfo` (one description for all)."""
    from abtf_ssd.submission import sysinfo

    cpu = sysinfo.processor()
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpu["host_logical_cpus"]
    packages = dict.fromkeys((*_VERSIONED_PACKAGES, *sysinfo.SOFTWARE_PACKAGES))
    return {
        "cpu_model": cpu["host_processor_model_name"],
        "physical_cores": cpu["host_processor_core_count"],
        "logical_cpus": cpu["host_logical_cpus"],
        "cpus_available_to_this_process": affinity,
        "cpu_frequency": cpu["host_processor_frequency"],
        "cpu_vector_extensions": sysinfo.cpu_vector_text(),
        "cpu_caches": cpu["host_processor_caches"],
        "memory": f"{sysinfo.memory_gb()} GB",
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()]
        if hasattr(os, "getloadavg")
        else None,
        "operating_system": sysinfo.operating_system(),
        "python": platform.python_version(),
        "versions": {name: sysinfo.package_version(name) or "not installed" for name in packages},
    }


def cuda_status() -> dict[str, Any]:
    """Whether CUDA benchmarks could run here, and why not."""
    from abtf_ssd.model.backends import FRAMEWORKS, check_device
    from abtf_ssd.submission import sysinfo

    gpus = sysinfo.nvidia_gpus()
    problems = {framework: check_device(framework, "cuda") for framework in FRAMEWORKS}
    return {
        "gpus": gpus,
        "available": bool(gpus) and any(p is None for p in problems.values()),
        "problems": problems,
    }


# ---------------------------------------------------------------------------------------------
# The report


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        magnitude = abs(value)
        if magnitude == 0 or 0.01 <= magnitude < 1e6:
            return f"{value:.3g}" if magnitude < 100 else f"{value:.0f}"
        return f"{value:.2e}"
    return str(value)


def _ratio(value: Any) -> str:
    return "-" if value is None else f"{_number(value)}x"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(report: dict[str, Any]) -> str:
    info, cuda = report["machine"], report["cuda"]
    lines = [
        "# Benchmark report",
        "",
        f"Written {report['generated']} by `{report['command']}` ({report['seconds']:.0f} s).",
        "Ratio > 1 means ours is better (baseline / ours for times and sizes, ours / baseline for rates);",
        "a target is the least ratio that counts as met.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        f"| CPU | {info['cpu_model']} ({info['cpu_frequency'] or 'frequency unknown'}), "
        f"{info.get('cpu_vector_extensions') or 'vector extensions unknown'} |",
        f"| cores | {info['physical_cores']} physical, {info['logical_cpus']} logical, "
        f"{info['cpus_available_to_this_process']} available to the run |",
        f"| caches | {info['cpu_caches'] or '-'} |",
        f"| memory | {info['memory']} |",
        f"| load average at start | {info['load_average_at_start']} (other jobs share these CPUs) |",
        f"| OS | {info['operating_system']} |",
        f"| Python | {info['python']} |",
        f"| versions | {', '.join(f'{k} {v}' for k, v in info['versions'].items())} |",
        "",
        "## CUDA",
        "",
    ]
    if cuda["available"]:
        names = ", ".join(gpu["name"] for gpu in cuda["gpus"])
        lines.append(f"GPU(s) present: {names}. Frameworks that cannot use them:")
        lines += [f"- {k}: {v}" for k, v in cuda["problems"].items() if v] or ["- none"]
    else:
        lines.append(
            "No CUDA GPU was available where this report was made, so no benchmark ran on a GPU and every "
            "number below is from the CPU. "
            + ("nvidia-smi lists no GPU. " if not cuda["gpus"] else "")
            + "; ".join(f"{k}: {v}" for k, v in cuda["problems"].items() if v)
            + ". GPU numbers need `make bench` on a machine with an NVIDIA GPU and a CUDA build of the "
            "framework."
        )
    if cuda.get("note"):
        lines += ["", _cell(cuda["note"])]
    lines += [
        "",
        "## Summary",
        "",
        "| benchmark | status | rows | targets met | seconds |",
        "|---|---|---|---|---|",
    ]
    for bench in report["benchmarks"]:
        targeted = [row for row in bench["rows"] if row.get("met") is not None]
        met = sum(1 for row in targeted if row["met"])
        met_text = f"{met} / {len(targeted)}" if targeted else "-"
        lines.append(
            f"| {bench['script']} | {bench['status']} | {len(bench['rows']) or '-'} | {met_text} | "
            f"{bench['seconds']:.0f} |"
        )
    for bench in report["benchmarks"]:
        lines += ["", f"## {bench['script']}", ""]
        if bench["title"]:
            lines += [bench["title"], ""]
        lines.append(f"`{shlex.join(bench['command'])}`")
        lines.append("")
        if bench["status"] in ("failed", "timeout"):
            lines += [
                f"**{bench['status']}**: {bench['error']}",
                "",
                "```text",
                bench["output"].rstrip(),
                "```",
            ]
            continue
        if bench["status"] == "skipped":
            lines.append(f"**skipped**: {_cell(bench.get('skipped', ''))}")
            if bench["notes"]:
                lines += [""] + [f"- {_cell(note)}" for note in bench["notes"]]
            continue
        if bench["status"] == "stdout":
            lines += [
                f"This script does not follow the `{JSON_FLAG}` contract yet; its output, verbatim:",
                "",
                "```text",
                bench["output"].rstrip(),
                "```",
            ]
            continue
        lines += ["| row | ours | baseline | unit | ratio | target | met |", "|---|---|---|---|---|---|---|"]
        for row in bench["rows"]:
            target = "-" if row.get("target") is None else f">= {_number(row['target'])}x"
            name = _cell(row["name"]) + (f" ({_cell(row['note'])})" if row.get("note") else "")
            lines.append(
                f"| {name} | {_number(row['ours'])} | {_number(row['baseline'])} | {_cell(row['unit'])} | "
                f"{_ratio(row['ratio'])} | {target} | {_number(row['met'])} |"
            )
        if bench["notes"]:
            lines.append("")
            lines += [f"- {_cell(note)}" for note in bench["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=[], help="benchmark names (after bench_) to run")
    parser.add_argument("--skip", nargs="*", default=[], help="benchmark names to leave out")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per script")
    parser.add_argument(
        "--args",
        action="append",
        default=[],
        metavar="NAME=ARGS",
        help='extra arguments for one script, e.g. "preprocess=--frames 2" (repeatable)',
    )
    parser.add_argument("--out", type=Path, default=BENCH_DIR, help="folder for REPORT.md and REPORT.json")
    parser.add_argument(
        "--cuda-note", default="", help="a line for the report's CUDA section (e.g. why no GPU was used)"
    )
    args = parser.parse_args(argv)

    extra: dict[str, list[str]] = {}
    for item in args.args:
        name, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--args {item!r}: expected NAME=ARGS")
        extra[name] = shlex.split(value)
    scripts = discover(args.only, args.skip)
    unused = set(extra) - {p.stem.removeprefix("bench_") for p in scripts}
    if unused:
        parser.error(f"--args for benchmarks that do not run: {sorted(unused)}")

    start = time.perf_counter()
    generated = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    info, cuda = machine(), cuda_status()
    if args.cuda_note:
        cuda["note"] = args.cuda_note
    with tempfile.TemporaryDirectory(prefix="bench_run_all_") as work:
        results = [
            run_script(script, extra.get(script.stem.removeprefix("bench_"), []), args.timeout, Path(work))
            for script in scripts
        ]
    report = {
        "generated": generated,
        "command": shlex.join(["bench/run_all.py", *(argv if argv is not None else sys.argv[1:])]),
        "seconds": time.perf_counter() - start,
        "machine": info,
        "cuda": cuda,
        "benchmarks": [asdict(result) for result in results],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / REPORT_JSON, report, default=_json_default)
    atomic_write_text(args.out / REPORT_MD, render_markdown(report))
    print(f"wrote {args.out / REPORT_MD} and {args.out / REPORT_JSON}")
    failed = [r.script for r in results if r.status in ("failed", "timeout")]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
