"""What LoadGen calls during a run: the QSL over a dataset, the SUT around a backend, the CTRL-C guard.

:class:`SampleLibrary` (the QSL) loads the samples LoadGen asks for and records, instead of raising,
what cannot be loaded; :class:`SystemUnderTest` answers each query inline (predict, decode,
respond), and a query whose inference raises with an empty response that it counts in ``failures``.
:class:`InterruptGuard` turns SIGINT into a flag both of them read, so that no Python exception
crosses LoadGen's C++ frames. :func:`warm_up` makes the one inference before timing starts and
:func:`start_loadgen` runs LoadGen with the two. :mod:`abtf_ssd.loadgen.harness` puts them together
into one run.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import mlperf_loadgen as lg
import numpy as np

from abtf_ssd.config import get_config
from abtf_ssd.data.store import Dataset
from abtf_ssd.loadgen import accuracy
from abtf_ssd.model.boxes import decode_batch

_NO_DETECTIONS = np.zeros((0, accuracy.DETECTION_COLUMNS), dtype=np.float32)
INTERRUPT_GRACE_S = 10.0
"""Seconds LoadGen gets after CTRL-C to run out of (empty-answered) queries and write its logs."""
EXIT_INTERRUPTED = 130
"""Exit status of an interrupted run: 128 + SIGINT, as a shell reports it."""


class Backend(Protocol):
    def predict(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass
class QueryFailure:
    samples: list[int]
    error: str


class SampleLibrary:
    """The QSL over a :class:`~abtf_ssd.data.store.Dataset`: loads the samples LoadGen asks for, keeps
    every loaded sample's ``gt_boxes``, and records (instead of raising) what cannot be loaded."""

    def __init__(self, dataset: Dataset, interrupt: threading.Event | None = None) -> None:
        self.dataset = dataset
        self.interrupt = interrupt if interrupt is not None else threading.Event()
        self.ground_truth: dict[int, np.ndarray] = {}
        self.load_errors: dict[int, str] = {}

    def load(self, indices: list[int]) -> None:
        for index in indices:
            if self.interrupt.is_set():
                return  # the SUT answers every query empty from now on
            # An exception must not cross into LoadGen's thread: a sample that cannot be loaded
            # fails the queries that use it instead.
            try:
                self.dataset.load([index])
                self.ground_truth[index] = self.dataset.gt_boxes(index)
            except Exception as e:  # noqa: BLE001
                self.load_errors[index] = f"{type(e).__name__}: {e}"

    def image(self, index: int) -> np.ndarray:
        """float32 (1, 3, H, W) of a loaded sample."""
        if index in self.load_errors:
            raise LookupError(self.load_errors[index])
        return self.dataset.image(index)

    def unload(self, indices: list[int]) -> None:
        self.dataset.unload(indices)


class SystemUnderTest:
    """Answers LoadGen's queries inline: predict, decode, respond. No per-query bookkeeping.

    Once ``interrupt`` is set every query is answered at once with no detections (and not counted
    as failed), so that LoadGen runs out of queries and finishes its logs; ``on_interrupted_query``
    is called before each such answer (the run's :meth:`InterruptGuard.poll`).
    """

    def __init__(
        self,
        backend: Backend,
        library: SampleLibrary,
        config_name: str,
        batch_size: int,
        interrupt: threading.Event | None = None,
    ) -> None:
        self.backend = backend
        self.library = library
        self.config = get_config(config_name)
        self.batch_size = max(1, batch_size)
        self.interrupt = interrupt if interrupt is not None else threading.Event()
        self.on_interrupted_query: Callable[[], None] | None = None
        self.failures: list[QueryFailure] = []

    def infer(self, indices: list[int]) -> list[np.ndarray]:
        """Detections (K, 6) float32 C-contiguous for each sample index."""
        if len(indices) == 1:
            batch = self.library.image(indices[0])
        else:
            batch = np.concatenate([self.library.image(i) for i in indices], axis=0)
        loc, conf = self.backend.predict(batch)
        return [np.ascontiguousarray(d, dtype=np.float32) for d in decode_batch(loc, conf, self.config)]

    def issue_queries(self, query_samples: list) -> None:
        step = self.batch_size
        for start in range(0, len(query_samples), step):
            chunk = query_samples[start : start + step]
            indices = [q.index for q in chunk]
            if self.interrupt.is_set():
                if self.on_interrupted_query is not None:
                    self.on_interrupted_query()
                detections = [_NO_DETECTIONS] * len(chunk)
            else:
                try:
                    detections = self.infer(indices)
                except Exception as e:  # noqa: BLE001 - any failure must still be answered
                    self.failures.append(QueryFailure(indices, self._describe(indices, e)))
                    detections = [_NO_DETECTIONS] * len(chunk)
            # ``detections`` keeps the buffers alive until QuerySamplesComplete has copied them.
            responses = [
                lg.QuerySampleResponse(q.id, d.ctypes.data, d.nbytes)
                for q, d in zip(chunk, detections, strict=True)
            ]
            lg.QuerySamplesComplete(responses)

    def _describe(self, indices: list[int], error: Exception) -> str:
        load_errors = [self.library.load_errors[i] for i in indices if i in self.library.load_errors]
        if load_errors:
            return f"sample could not be loaded: {load_errors[0]}"
        return f"{type(error).__name__}: {error}"

    def flush_queries(self) -> None:
        pass


class InterruptGuard:
    """SIGINT while LoadGen runs: set ``event`` instead of raising KeyboardInterrupt.

    LoadGen calls the QSL and SUT from the thread that started it, the main thread, which is where
    Python runs signal handlers: a KeyboardInterrupt raised there would unwind LoadGen's C++ frames
    (SIGSEGV). The first SIGINT sets ``event`` and starts a ``grace_s`` deadline; the second SIGINT,
    or the deadline, calls ``abandon`` (write what can be written) and ends the process with exit
    status 130. The deadline is checked by :meth:`poll` on every query answered while interrupted
    (the main thread then holds the GIL most of the time, and a timer thread would hardly get it) and
    by a timer thread for when no queries come. Outside the main thread (no handler can be installed
    there) the guard does nothing.
    """

    def __init__(self, event: threading.Event, abandon: Callable[[], None], grace_s: float) -> None:
        self.event = event
        self.abandon = abandon
        self.grace_s = grace_s
        self._lock = threading.RLock()  # the handler may run in the thread inside __exit__
        self._done = False
        self._deadline: float | None = None
        self._timer: threading.Timer | None = None
        self._previous: Callable | int | None = None
        self._installed = False

    def __enter__(self) -> InterruptGuard:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        # Under the lock: a give-up already under way finishes (and exits) before the run goes on.
        with self._lock:
            self._done = True
            if self._timer is not None:
                self._timer.cancel()
        if self._installed:
            # None: a handler not installed from Python; the default is the closest to it.
            signal.signal(signal.SIGINT, self._previous if self._previous is not None else signal.SIG_DFL)

    def _handle(self, signum: int, frame: object) -> None:
        if self.event.is_set():
            self._give_up()
            return
        self._deadline = time.monotonic() + self.grace_s
        self.event.set()
        print(
            f"interrupted: answering the remaining queries empty so that LoadGen can write its logs "
            f"(at most {self.grace_s:g} s; CTRL-C again to stop at once)",
            file=sys.stderr,
            flush=True,
        )
        self._timer = threading.Timer(self.grace_s, self._give_up)
        self._timer.daemon = True
        self._timer.start()

    def poll(self) -> None:
        """Give up if the grace period after CTRL-C is over."""
        if self._deadline is not None and time.monotonic() > self._deadline:
            self._give_up()

    def _give_up(self) -> None:
        with self._lock:
            if self._done:
                return
            try:
                self.abandon()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                # LoadGen is still running its C++ threads: no interpreter shutdown, no unwinding.
                os._exit(EXIT_INTERRUPTED)


def warm_up(sut: SystemUnderTest, library: SampleLibrary, batch_size: int) -> None:
    """One inference before timing starts, in every mode: lazy initialisation stays out of the first
    query, and a model whose output shapes only a forward pass shows is refused before LoadGen."""
    library.load([0])
    if 0 in library.load_errors:
        raise ValueError(f"warm-up: sample 0 could not be loaded: {library.load_errors.pop(0)}")
    sut.infer([0] * batch_size)
    library.unload([0])


def start_loadgen(
    sut: SystemUnderTest,
    library: SampleLibrary,
    settings: lg.TestSettings,
    out_dir: Path,
    total: int,
    performance_count: int,
) -> None:
    log_settings = lg.LogSettings()
    log_settings.log_output.outdir = str(out_dir)
    log_settings.log_output.copy_summary_to_stdout = False
    sut_handle = lg.ConstructSUT(sut.issue_queries, sut.flush_queries)
    qsl_handle = lg.ConstructQSL(total, performance_count, library.load, library.unload)
    previous_cwd = os.getcwd()
    try:
        os.chdir(out_dir)
        lg.StartTestWithLogSettings(sut_handle, qsl_handle, settings, log_settings)
    finally:
        os.chdir(previous_cwd)
        lg.DestroyQSL(qsl_handle)
        lg.DestroySUT(sut_handle)
