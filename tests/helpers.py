"""Plain helpers shared by the test modules and the faults suite (fixtures live in ``conftest.py``).

Importable as ``helpers`` because pytest puts ``tests/`` on ``sys.path`` (rootdir-relative import of
the ``conftest.py`` and test modules there).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
"""The venv's ``bin`` folder: ``mlc`` and ``mlcr`` are installed beside this Python."""


def finished_cache_entries(env: dict[str, str], cwd: Path, tags: str) -> list[Path]:
    """Finished (not ``tmp``) MLC cache entries whose tags include ``tags``, via ``mlc search cache``."""
    proc = subprocess.run(
        [str(BIN / "mlc"), "search", "cache", f"--tags={tags},-tmp"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return sorted(Path(p) for p in re.findall(r"Item path: (\S+)", proc.stdout + proc.stderr))


def build_demo_val_set(
    raw_root: Path, split_csv: Path, out: Path, workers: int = 1, **options: object
) -> Path:
    """``split_csv`` preprocessed for the demo config as ``val_<i>.pkl`` in ``out``, no progress bar."""
    from abtf_ssd.config import DEMO_CONFIG
    from abtf_ssd.data.preprocess import build_preprocessed

    return build_preprocessed(
        raw_root, split_csv, out, "val", DEMO_CONFIG, workers=workers, progress=False, **options
    )


def val_sample_names(folder: Path) -> list[str]:
    """Sorted names of the ``val_<i>.pkl`` files in ``folder``."""
    return sorted(p.name for p in folder.glob("val_*.pkl"))


def store_kill_script(call: str) -> str:
    """Python source that runs ``call`` (with ``abtf_ssd.data.store_writer`` imported as ``store_writer``
    and the command line in ``sys.argv``) and SIGKILLs itself when the store is about to commit
    sample 5: that sample's bytes are on disk, the state that counts it in is not."""
    return f"""
import os, signal, sys

from abtf_ssd.data import store_writer

real_write_json = store_writer._write_json


def write_or_die(path, data):
    if data.get("filled") == 6:
        os.kill(os.getpid(), signal.SIGKILL)
    real_write_json(path, data)


store_writer._write_json = write_or_die
{call}
"""


def run_instant_sut(
    out: Path, settings, samples: int, answer_after_s: float, stall: tuple[int, float] | None = None
) -> Path:
    """A real LoadGen run with ``settings`` of an SUT that answers each sample with six zero floats
    after ``answer_after_s`` (``stall``: query number n, counted from 0, answers after s seconds);
    its logs go to ``out`` (created), away from any audit.config."""
    import itertools
    import time

    import mlperf_loadgen as lg
    import numpy as np

    response = np.zeros(6, np.float32)
    issued = itertools.count()

    def issue(query_samples: list) -> None:
        time.sleep(stall[1] if stall and next(issued) == stall[0] else answer_after_s)
        lg.QuerySamplesComplete(
            [lg.QuerySampleResponse(s.id, response.ctypes.data, response.nbytes) for s in query_samples]
        )

    sut = lg.ConstructSUT(issue, lambda: None)
    qsl = lg.ConstructQSL(samples, samples, lambda _: None, lambda _: None)
    log_settings = lg.LogSettings()
    log_settings.log_output.outdir = str(out)
    log_settings.log_output.copy_summary_to_stdout = False
    out.mkdir(parents=True)
    try:
        lg.StartTestWithLogSettings(sut, qsl, settings, log_settings, str(out / "no-audit.config"))
    finally:
        lg.DestroyQSL(qsl)
        lg.DestroySUT(sut)
    return out
