"""Readable results of a LoadGen run: the numbers from its logs, a table, and a latency histogram.

Sources, all written by LoadGen into the run's folder:

* ``mlperf_log_detail.txt``: one ``:::MLLOG {json}`` record a line; performance results
  (``result_*``, ``early_stopping_*``), effective settings, and every error and warning.
* ``mlperf_log_summary.txt``: ``key : value`` lines, the human summary.
* ``mlperf_log_trace.json``: a trace whose ``Sample`` begin events carry when each sample's query
  was scheduled and its ``complete_ns`` from then, i.e. LoadGen's own per-sample latencies, in
  accuracy mode too (the detail log has only percentiles). The file is not strict JSON
  (some names are double-quoted twice), so its sample lines are read with a pattern.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from abtf_ssd.fileio import atomic_output

SUMMARY_LOG = "mlperf_log_summary.txt"
DETAIL_LOG = "mlperf_log_detail.txt"
TRACE_LOG = "mlperf_log_trace.json"
HISTOGRAM_PNG = "latency_histogram.png"

_MLLOG_PREFIX = ":::MLLOG "
_TRACE_SAMPLE = re.compile(
    r'"name":"Sample".*?"ph":"b".*?"ts":([\d.]+).*?"query_seq":(\d+),"sample_idx":(\d+),'
    r'"issue_start_ns":\d+,"complete_ns":(\d+)'
)
_PERCENTILES = ("50.00", "90.00", "99.00", "99.90")


class LogFormatError(ValueError):
    """A LoadGen log that cannot be read; the message names the file and line."""


# ---------------------------------------------------------------------------------------------
# Reading the logs


def read_detail_log(path: str | Path) -> list[dict]:
    """The MLLOG records of ``mlperf_log_detail.txt``, in file order."""
    path = Path(path)
    records = []
    with path.open(encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if not line.startswith(_MLLOG_PREFIX):
                continue
            try:
                records.append(json.loads(line[len(_MLLOG_PREFIX) :]))
            except json.JSONDecodeError as e:
                raise LogFormatError(f"{path}: line {number} is not an MLLOG JSON record ({e})") from None
    return records


def detail_values(records: list[dict]) -> dict[str, object]:
    """``key -> value`` of the detail records (the last one wins for a repeated key)."""
    return {r["key"]: r.get("value") for r in records if "key" in r}


def detail_messages(records: list[dict], kind: str = "is_error") -> list[str]:
    """``key: value`` of the records flagged ``kind`` (``is_error`` or ``is_warning``) in their metadata."""
    return [f"{r.get('key')}: {r.get('value')}" for r in records if r.get("metadata", {}).get(kind)]


def parse_summary(path: str | Path) -> dict[str, str]:
    """``key : value`` lines of ``mlperf_log_summary.txt`` (keys stripped, first occurrence kept)."""
    values: dict[str, str] = {}
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() and not key.startswith((" *", "=")):
            values.setdefault(key.strip(), value.strip())
    return values


@dataclass(frozen=True)
class TraceLatencies:
    """LoadGen's latencies from the trace, in ns: one per sample, and one per query (its slowest sample)."""

    sample_ns: np.ndarray
    query_ns: np.ndarray
    sample_index: np.ndarray
    """QSL index of each sample, aligned with :attr:`sample_ns`."""
    completed_at_ns: np.ndarray
    """When each sample completed, in ns on the trace's clock, aligned with :attr:`sample_ns`."""


def loadgen_percentile(latencies: np.ndarray, fraction: float) -> float:
    """The ``fraction`` (e.g. 0.999) percentile as LoadGen reports it: ``sorted[floor(n * fraction)]``.

    No interpolation, so for fewer than 1000 queries the 99.9th percentile is the slowest one.
    ``latencies`` (N,), N >= 1.
    """
    ordered = np.sort(np.asarray(latencies).ravel())
    return float(ordered[min(ordered.size - 1, int(ordered.size * fraction))])


def read_trace_latencies(path: str | Path) -> TraceLatencies | None:
    """Per-sample and per-query latencies of a run; None when the run wrote no trace.

    A ``Sample`` begin event's ``ts`` (us) is when LoadGen scheduled the query, and its ``complete_ns``
    counts from there: that is LoadGen's latency. ``issue_start_ns`` is how late the query was issued,
    0 in SingleStream but the queueing delay of a constant-rate run, so it is part of the latency.
    """
    path = Path(path)
    if not path.is_file():
        return None
    queries, indices, latencies, completions = [], [], [], []
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            match = _TRACE_SAMPLE.search(line)
            if match:
                scheduled_us = float(match.group(1))
                query, index, latency = map(int, match.groups()[1:])
                queries.append(query)
                indices.append(index)
                latencies.append(latency)
                completions.append(round(scheduled_us * 1000) + latency)
    sample_ns = np.asarray(latencies, dtype=np.int64)
    query_seq = np.asarray(queries, dtype=np.int64)
    if len(sample_ns):
        order = np.unique(query_seq, return_inverse=True)[1]
        query_ns = np.zeros(order.max() + 1, dtype=np.int64)
        np.maximum.at(query_ns, order, sample_ns)
    else:
        query_ns = sample_ns
    return TraceLatencies(
        sample_ns=sample_ns,
        query_ns=query_ns,
        sample_index=np.asarray(indices, np.int64),
        completed_at_ns=np.asarray(completions, np.int64),
    )


def longest_completion_gap(trace: TraceLatencies) -> tuple[int, int]:
    """The longest time in which no sample completed, and when it ended (ns on the trace's clock).

    A gap far longer than a query's service time is a stall of the whole system (on a virtual machine,
    often the host taking the CPU away): at a constant rate every query issued during it queues.
    ``(0, 0)`` for fewer than two samples.
    """
    done = np.sort(trace.completed_at_ns)
    if done.size < 2:
        return 0, 0
    gaps = np.diff(done)
    last = int(np.argmax(gaps))
    return int(gaps[last]), int(done[last + 1])


def stall_note(trace: TraceLatencies, interval_ns: float) -> str | None:
    """Why a constant-rate run failed when the system stopped: a note, or None when it did not.

    A query is scheduled every ``interval_ns``, so a gap between two completions longer than two
    intervals made a query late whatever its service time: the queries scheduled in it waited. A gap
    far longer than the model's latency is a stall (other work on the machine, or on a virtual
    machine the hypervisor taking the CPU: ``steal`` in /proc/stat), which a lower rate cannot absorb.
    """
    gap_ns, ended_ns = longest_completion_gap(trace)
    if gap_ns <= 2 * interval_ns:
        return None
    return (
        f"no query completed for {gap_ns / 1e9:.2f} s (until {ended_ns / 1e9:.0f} s into the run), over "
        f"{gap_ns / interval_ns:.0f} query intervals of {interval_ns / 1e6:.1f} ms: the queries scheduled "
        f"meanwhile queued. If that is far longer than the model's latency (p50 "
        f"{loadgen_percentile(trace.query_ns, 0.5) / 1e6:.1f} ms), the system stalled: other work on the "
        "machine, or the hypervisor's steal on a virtual machine (/proc/stat)"
    )


# ---------------------------------------------------------------------------------------------
# One run's numbers


@dataclass
class RunSummary:
    """The row of the results table for one run; latencies in ms, None where not measured."""

    scenario: str
    mode: str
    queries: int | None = None
    mean_ms: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    p999_ms: float | None = None
    early_stopping_ms: float | None = None
    samples_per_second: float | None = None
    result: str | None = None
    """``VALID`` / ``INVALID`` from LoadGen (performance runs), else None."""
    invalid_reasons: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    """Every ``is_error`` record of the detail log (a test run's capped query count is one)."""
    latency_source: str = "loadgen"
    """``loadgen``: the detail log's results; ``trace``: computed from the trace (accuracy runs)."""
    map: float | None = None
    failed_queries: int = 0
    loadgen_version: str | None = None
    metric: str | None = None
    """The round's reported metric with its unit (a performance run summarized for a round), else None."""
    target_qps: float | None = None
    """ConstantStream: the rate LoadGen issued queries at."""
    warnings: list[str] = field(default_factory=list)
    """What a reader of the table must know about the run (a v1.0 ConstantStream off the round's rate)."""

    def to_dict(self) -> dict:
        return asdict(self)


def _ms(nanoseconds: object) -> float | None:
    return None if nanoseconds is None else float(nanoseconds) / 1e6


def _invalid_reasons(values: dict[str, object]) -> list[str]:
    reasons = []
    if values.get("result_min_duration_met") is False:
        reasons.append(f"min duration not met (min_duration {values.get('effective_min_duration_ms')} ms)")
    if values.get("result_min_queries_met") is False:
        reasons.append(f"min query count not met (min_query_count {values.get('effective_min_query_count')})")
    if values.get("early_stopping_met") is False:
        detail = " ".join(str(values.get("early_stopping_result", "")).replace("*", "").split())
        reasons.append(f"early stopping not met ({detail})" if detail else "early stopping not met")
    extra = str(values.get("result_invalid_reason") or "").strip()
    if extra:
        reasons.append(extra)
    return reasons


def format_metric(key: str, value: object) -> str:
    """A reported metric (a detail-log key of :data:`abtf_ssd.loadgen.rules.METRIC_LABELS`) with its unit."""
    number = float(value)  # type: ignore[arg-type]
    return f"{number:.3f} samples/s" if key.endswith("_per_sec") else f"{number / 1e6:.3f} ms"


def summarize_run(
    log_dir: str | Path,
    scenario: str,
    mode: str,
    map_value: float | None = None,
    failed_queries: int = 0,
    round: str | None = None,
) -> RunSummary:
    """The table row of the run whose LoadGen logs are in ``log_dir``; ``round``: show its metric."""
    log_dir = Path(log_dir)
    detail_path = log_dir / DETAIL_LOG
    if not detail_path.is_file():
        raise FileNotFoundError(f"{log_dir}: no {DETAIL_LOG}; did LoadGen run here?")
    records = read_detail_log(detail_path)
    values = detail_values(records)
    summary = RunSummary(
        scenario=scenario,
        mode=mode,
        map=map_value,
        failed_queries=failed_queries,
        errors=detail_messages(records),
        loadgen_version=str(values["loadgen_version"]) if "loadgen_version" in values else None,
    )
    if "result_validity" in values:
        per_query = "_per_query" if scenario == "MultiStream" else ""
        summary.queries = _int(values.get("result_query_count"))
        summary.mean_ms = _ms(
            values.get("result_mean_query_latency_ns" if per_query else "result_mean_latency_ns")
        )
        p50, p90, p99, p999 = (
            _ms(values.get(f"result_{p}_percentile{per_query}_latency_ns")) for p in _PERCENTILES
        )
        summary.p50_ms, summary.p90_ms, summary.p99_ms, summary.p999_ms = p50, p90, p99, p999
        early_key = {"SingleStream": "early_stopping_latency_ss", "MultiStream": "early_stopping_latency_ms"}
        if scenario in early_key and values.get(early_key[scenario]):
            summary.early_stopping_ms = _ms(values[early_key[scenario]])
        if "result_samples_per_second" in values:
            summary.samples_per_second = float(values["result_samples_per_second"])  # type: ignore[arg-type]
        summary.result = str(values["result_validity"])
        summary.invalid_reasons = _invalid_reasons(values)
        if round is not None:
            from abtf_ssd.loadgen.rules import get_round

            key = get_round(round).metric(str(values.get("effective_scenario", scenario)).replace(" ", ""))
            if mode != "find-performance" and values.get(key):  # 0: too few queries for an estimate
                summary.metric = format_metric(key, values[key])
        if values.get("effective_scenario") == "ConstantStream" and "effective_target_qps" in values:
            summary.target_qps = float(values["effective_target_qps"])  # type: ignore[arg-type]
            if round is not None:
                from abtf_ssd.loadgen.rules import get_round

                warning = get_round(round).constant_stream.rate_warning(summary.target_qps)
                summary.warnings += [warning] if warning else []
    else:
        trace = read_trace_latencies(log_dir / TRACE_LOG)
        if trace is not None and len(trace.query_ns):
            summary.latency_source = "trace"
            summary.queries = len(trace.query_ns)
            summary.mean_ms = float(trace.query_ns.mean()) / 1e6
            summary.p50_ms, summary.p90_ms, summary.p99_ms, summary.p999_ms = (
                loadgen_percentile(trace.query_ns, float(p) / 100) / 1e6 for p in _PERCENTILES
            )
    return summary


def _int(value: object) -> int | None:
    return None if value is None else int(value)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# The table

_COLUMNS = (
    ("scenario", 16),
    ("mode", 18),
    ("queries", 8),
    ("mean ms", 10),
    ("p50 ms", 10),
    ("p90 ms", 10),
    ("p99 ms", 10),
    ("p99.9 ms", 10),
    ("early-stop ms", 14),
    ("metric", 22),
    ("mAP", 9),
    ("failed", 7),
    ("result", 0),
)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if value < 1 else f"{value:.3f}" if value < 1000 else f"{value:.1f}"
    return str(value)


def format_table(summaries: list[RunSummary]) -> str:
    """A fixed-width table, one row a run; INVALID reasons and LoadGen errors follow as notes."""
    header = "".join(name.ljust(width) if width else name for name, width in _COLUMNS)
    lines = [header, "-" * len(header)]
    notes = []
    for s in summaries:
        result = s.result or "-"
        if s.result == "INVALID":
            result += " (see reasons)"
        cells = (
            s.scenario,
            s.mode,
            s.queries,
            s.mean_ms,
            s.p50_ms,
            s.p90_ms,
            s.p99_ms,
            s.p999_ms,
            s.early_stopping_ms,
            s.metric,
            s.map,
            s.failed_queries,
            result,
        )
        lines.append(
            "".join(
                _cell(c).ljust(width) if width else _cell(c)
                for c, (_, width) in zip(cells, _COLUMNS, strict=True)
            )
        )
        label = f"{s.scenario} {s.mode}"
        notes += [f"  {label}: INVALID: {reason}" for reason in s.invalid_reasons]
        if s.latency_source == "trace":
            notes.append(f"  {label}: latencies from LoadGen's trace (accuracy runs report no percentiles)")
        if s.failed_queries:
            notes.append(f"  {label}: {s.failed_queries} queries raised and were answered empty: run FAILED")
        notes += [f"  {label}: LoadGen error: {error}" for error in s.errors]
        notes += [f"  {label}: {warning}" for warning in s.warnings]
    if notes:
        lines += ["", "notes:", *notes]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The histogram


def write_latency_histogram(
    latencies_ns: np.ndarray, png_path: str | Path, title: str, bins: int = 50
) -> Path:
    """Draw a histogram of ``latencies_ns`` (ms axis) with the mean and p99.9 marked, as a PNG."""
    latencies_ms = np.asarray(latencies_ns, dtype=np.float64) / 1e6
    if latencies_ms.size == 0:
        raise ValueError(f"{png_path}: no latencies to draw")
    width, height = 900, 480
    left, right, top, bottom = 70, 40, 70, 60
    plot_w, plot_h = width - left - right, height - top - bottom
    low, high = float(latencies_ms.min()), float(latencies_ms.max())
    if high - low < 1e-9:
        low, high = low * 0.99, high * 1.01 + 1e-6
    counts, _ = np.histogram(latencies_ms, bins=bins, range=(low, high))
    count_step = max(1, math.ceil(int(counts.max()) / 5))
    count_top = count_step * math.ceil(max(int(counts.max()), 1) / count_step)

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    black, bar_color = (0, 0, 0), (70, 110, 180)
    draw.line([(left, top), (left, top + plot_h), (left + plot_w, top + plot_h)], fill=black)

    def x_of(ms: float) -> float:
        return left + (ms - low) / (high - low) * plot_w

    def y_of(count: float) -> float:
        return top + plot_h - count / count_top * plot_h

    bar_w = plot_w / bins
    for i, count in enumerate(counts):
        if count:
            x0 = left + i * bar_w
            draw.rectangle([x0 + 1, y_of(count), x0 + bar_w - 1, top + plot_h], fill=bar_color)
    for k in range(6):
        ms = low + (high - low) * k / 5
        draw.line([(x_of(ms), top + plot_h), (x_of(ms), top + plot_h + 5)], fill=black)
        draw.text((x_of(ms) - 20, top + plot_h + 8), f"{ms:.4g}", fill=black, font=font)
    for count in range(0, count_top + 1, count_step):
        draw.line([(left - 5, y_of(count)), (left, y_of(count))], fill=black)
        draw.text((left - 40, y_of(count) - 6), str(count), fill=black, font=font)
    draw.text((left + plot_w / 2 - 30, height - 25), "latency (ms)", fill=black, font=font)
    draw.text((10, top - 16), "queries", fill=black, font=font)

    mean = float(latencies_ms.mean())
    p999 = loadgen_percentile(latencies_ms, 0.999)
    draw.text((left, 10), title, fill=black, font=font)
    legend = [
        (f"n = {latencies_ms.size}, min {low:.3f} ms, max {high:.3f} ms", black),
        (f"mean {mean:.3f} ms", (200, 60, 40)),
        (f"p99.9 {p999:.3f} ms", (40, 150, 60)),
    ]
    x = left
    for text, color in legend:
        draw.text((x, 30), text, fill=color, font=font)
        x += draw.textlength(text, font=font) + 24
    for value, (_, color) in zip((mean, p999), legend[1:], strict=True):
        draw.line([(x_of(value), top), (x_of(value), top + plot_h)], fill=color, width=2)

    png_path = Path(png_path)
    with atomic_output(png_path) as temp:
        image.save(temp, format="PNG")
    return png_path
