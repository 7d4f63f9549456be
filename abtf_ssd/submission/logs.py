"""A result's logs read the way the official checker reads them.

The values and flagged errors of ``mlperf_log_detail.txt`` (:func:`read_detail`), which LoadGen wrote
it (:func:`is_automotive_loadgen`), the entries of ``mlperf_log_accuracy.json``
(:func:`read_accuracy_entries`), and the ``mAP:`` and ``hash=`` lines of ``accuracy.txt``. Used by the
checker and by the generator of the tree.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from abtf_ssd.loadgen.report import LogFormatError, detail_messages
from abtf_ssd.loadgen.report import read_detail_log as read_detail_records

AUTOMOTIVE_LOADGEN_KEYS = ("effective_use_grouped_qsl", "effective_server_constant_gen")
"""Settings only the automotive LoadGen logs: their presence tells which LoadGen wrote a log."""

MAP_PATTERN = re.compile(r"^mAP:\s*([0-9.]+)")
HASH_PATTERN = re.compile(r"^hash=([\w\d]+)$")


def read_detail(path: str | Path) -> tuple[dict[str, Any], list[str]]:
    """Values of ``mlperf_log_detail.txt`` by key and the messages LoadGen flagged as errors.

    The first record of a repeated key wins, as in the upstream checker's log parser; a
    ``num_errors`` above the flagged messages counts as an error too.

    Raises:
        LogFormatError: the file is unreadable, has a bad MLLOG line or no MLLOG line at all.
    """
    path = Path(path)
    try:
        records = read_detail_records(path)
    except OSError as exc:
        raise LogFormatError(f"{path}: cannot read ({exc.strerror or exc})") from None
    values: dict[str, Any] = {}
    for record in records:
        if "key" in record:
            values.setdefault(record["key"], record.get("value"))
    if not values:
        raise LogFormatError(f"{path}: no ':::MLLOG' records; not a LoadGen detail log")
    errors = detail_messages(records, "is_error")
    num_errors = values.get("num_errors")
    if isinstance(num_errors, int) and num_errors > len(errors):
        errors.append(f"num_errors: {num_errors}")
    return values, errors


def is_automotive_loadgen(values: dict[str, Any]) -> bool:
    """Whether a detail log (values from :func:`read_detail`) was written by the automotive LoadGen."""
    return all(key in values for key in AUTOMOTIVE_LOADGEN_KEYS)


def loadgen_description(values: dict[str, Any]) -> str:
    """``"automotive LoadGen <version>"`` or ``"inference LoadGen <version> (PyPI mlcommons-loadgen)"``."""
    version = values.get("loadgen_version", "unknown version")
    if is_automotive_loadgen(values):
        return f"automotive LoadGen {version}"
    return f"inference LoadGen {version} (PyPI mlcommons-loadgen)"


def read_accuracy_entries(path: str | Path) -> list[dict[str, Any]]:
    """Entries ``{seq_id, qsl_idx, data}`` of an (untruncated) ``mlperf_log_accuracy.json``."""
    path = Path(path)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise LogFormatError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except json.JSONDecodeError as exc:
        raise LogFormatError(f"{path}: not JSON ({exc.msg} at line {exc.lineno}); truncated?") from None
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and "qsl_idx" in e and "data" in e for e in entries
    ):
        raise LogFormatError(f"{path}: expected a list of {{qsl_idx, data}} entries")
    return entries


def read_map(path: str | Path) -> float | None:
    """The value of the first ``mAP: <value>`` line of an accuracy.txt, None if there is none."""
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        match = MAP_PATTERN.match(line)
        if match:
            try:
                return float(match.group(1))
            except ValueError:
                return None
    return None


def read_hash(path: str | Path) -> str | None:
    """The value of the ``hash=`` line of an accuracy.txt, None if there is none."""
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        match = HASH_PATTERN.match(line)
        if match:
            return match.group(1)
    return None
