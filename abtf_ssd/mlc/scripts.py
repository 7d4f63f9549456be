"""What the MLC scripts' ``customize.py`` files share: env values read one way, errors reported one way,
and what a request leaves behind cleaned up in one place.

A ``customize.py`` imports the library (this module included) inside its functions, never with a
module-level import statement: mlcflow pip-installs every top-level import of a customize.py it
cannot import, and ``abtf_ssd`` is this repository, not a PyPI package.

Leftovers. mlcflow makes the cache entry of a cached script, tagged ``tmp``, before the script's
dependencies run, and takes the tag off only when the whole script succeeded; a failed request
leaves the entry, which ``mlc search cache`` lists and an identical request reuses. It also writes
its ``tmp-state.json`` into the folder a script runs in and removes it only from the folder it
started in, never from ``--outdirname``. Every hook goes through :func:`mlc_step`, which notes the
``tmp`` entry the hook runs in (each cached script's ``predeps`` hook,
:func:`forget_failed_cache_entry`, runs in it before anything else) and the folder it runs in; when
the ``mlcr`` process ends, an entry still tagged ``tmp`` is removed through mlcflow (``mlc rm
cache``), unless it holds unfinished work of ours (a partial download, part of a preprocessed set)
that a rerun of the same command resumes: that one is kept, and a line says so. A ``tmp-state.json``
that was not there before is removed.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

TRUE_VALUES = ("1", "yes", "true", "on")
"""What an MLC boolean input (``--tar``, ``--test_mode``, ``--docker``) is when it is set."""
INSTALL_HINT = "install the package: pip install -e ."
INPUT_ERRORS = (ValueError, OSError, RuntimeError)
"""What the library raises for bad input, a missing file or a failed step: reported as one line."""

MlcResult = dict[str, Any]
"""An MLC hook's answer: ``{"return": 0}`` or ``{"return": 1, "error": message}``."""


def env_flag(value: object) -> bool:
    """Whether an env value says yes: one of :data:`TRUE_VALUES`, any case, spaces ignored."""
    return str(value).strip().lower() in TRUE_VALUES


def env_int(env: Mapping[str, Any], key: str, flag: str) -> int | None:
    """``env[key]`` as an int; None when unset or empty. A ValueError names the input ``flag``."""
    value = str(env.get(key, "")).strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{flag} must be an integer, got {value!r}") from None


STORE_ENV = "MLC_ABTF_DATASET_STORE"
"""The env key of the ``--store`` input of the dataset script, the app and run-abtf-inference."""


def env_store_kind(env: Mapping[str, Any]) -> str:
    """``--store``: one of :data:`abtf_ssd.data.store.STORE_KINDS`, the first (pickle) when unset; a
    ValueError for any other value."""
    from abtf_ssd.data.store import STORE_KINDS, check_store_kind

    return check_store_kind(env.get(STORE_ENV) or STORE_KINDS[0])


def mlc_step(script: str, step: Callable[..., MlcResult | None], *args: Any) -> MlcResult:
    """Run one hook's work, ``step(*args)``, and answer mlcflow.

    ``step`` returns None (success) or its own result. A library error (:data:`INPUT_ERRORS`)
    becomes ``{"return": 1, "error": "<script>: <message>"}``; an ImportError (a dependency
    missing) the same with :data:`INSTALL_HINT`.
    """
    try:
        _note_folder(Path.cwd())
    except OSError:  # the folder it runs in is gone: nothing to note
        pass
    try:
        result = step(*args)
    except ImportError as error:
        return {"return": 1, "error": f"{script}: {error}; {INSTALL_HINT}"}
    except INPUT_ERRORS as error:
        return {"return": 1, "error": f"{script}: {error}"}
    return result if result is not None else {"return": 0}


# ---------------------------------------------------------------------------------------------
# Leftovers of a request (see the module docstring)

MLCFLOW_STATE_FILE = "tmp-state.json"
"""The state file mlcflow writes into the folder a script runs in (its ``tmp_file_state``)."""
_CACHE_META = "meta.json"
_CACHE_FOLDER = "cache"
_TMP_TAG = "tmp"
_MLCFLOW_FILE_PREFIX = "tmp-"
"""mlcflow's own files in a cache entry (``tmp-run-state.json``, ``tmp-env.sh``, ...), besides meta.json."""
NEW_CACHE_ENTRY = "<new entry>"
"""Stands for the id of a cache entry that a real run would make (a dry run makes none)."""

_entries: set[Path] = set()
_folders: set[Path] = set()
_registered = False


def _tmp_cache_entry(folder: Path) -> str | None:
    """The uid of the MLC cache entry ``folder`` when it is one still tagged ``tmp``, else None."""
    if folder.parent.name != _CACHE_FOLDER:
        return None
    try:
        meta = json.loads((folder / _CACHE_META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or _TMP_TAG not in meta.get("tags", []):
        return None
    return str(meta.get("uid") or "") or None


def _holds_our_work(entry: Path) -> bool:
    """Whether a cache entry holds anything but mlcflow's own files: unfinished work to resume."""
    return any(p.name != _CACHE_META and not p.name.startswith(_MLCFLOW_FILE_PREFIX) for p in entry.iterdir())


def _note_folder(folder: Path) -> None:
    """Remember the folder a hook runs in: its tmp cache entry, or a folder whose state file to remove."""
    global _registered
    if _tmp_cache_entry(folder):
        _entries.add(folder)
    elif not (folder / MLCFLOW_STATE_FILE).exists():
        _folders.add(folder)
    if not _registered:
        atexit.register(remove_leftovers)
        _registered = True


def remove_leftovers() -> None:
    """Remove what this process's requests left: the noted cache entries still tagged ``tmp`` (a
    failed or interrupted request; kept when they hold work a rerun resumes) and mlcflow's state
    file in the noted folders. Runs when the process ends; safe to call again."""
    for folder in sorted(_folders):
        try:
            (folder / MLCFLOW_STATE_FILE).unlink(missing_ok=True)
        except OSError:
            pass
    _folders.clear()
    for entry in sorted(_entries):
        uid = _tmp_cache_entry(entry) if entry.is_dir() else None
        if uid is None:
            continue  # finished (mlcflow took the tag off) or gone
        if _holds_our_work(entry):
            print(
                f"kept the unfinished MLC cache entry {entry} (tagged tmp): rerun the same command to "
                f"resume; `mlc rm cache {uid} -f` discards it",
                file=sys.stderr,
            )
            continue
        _remove_cache_entry(uid, entry)
    _entries.clear()


def _remove_cache_entry(uid: str, entry: Path) -> None:
    """``mlc rm cache <uid> -f`` in this process (mlcflow updates its index), else the folder itself."""
    try:
        import mlc

        result = mlc.access({"action": "rm", "target": "cache", "item": uid, "f": True, "quiet": True})
        if result.get("return", 1) == 0 and not entry.exists():
            return
    except Exception:  # mlcflow's own failure must not hide the request's error: fall back
        pass
    import shutil

    shutil.rmtree(entry, ignore_errors=True)


def forget_failed_cache_entry(script: str) -> MlcResult:
    """The ``predeps`` hook of a cached script: runs in the new ``tmp`` entry before the dependencies,
    so that the entry is removed if the request fails anywhere after (module docstring)."""
    return mlc_step(script, _nothing)


def _nothing() -> None:
    return None


def download_folder(env: Mapping[str, Any], script: str) -> str:
    """Where a getter's download goes: the folder mlcflow has changed into (the cache entry or
    ``--outdirname``); for a dry run without ``--outdirname``, which makes no cache entry, the folder
    a real run would make: ``<MLC cache>/<script>_<new entry>``."""
    if env.get("MLC_ABTF_DOWNLOAD_DRY_RUN") == "yes" and not env.get("MLC_OUTDIRNAME"):
        from mlc.action import default_parent

        return os.path.join(default_parent.local_cache_path, f"{script}_{NEW_CACHE_ENTRY}")
    return os.getcwd()
