"""The options of one benchmark run (:func:`abtf_ssd.loadgen.harness.run`), every field a
``abtf-ssd run`` flag (:func:`abtf_ssd.cli.run_arguments`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from abtf_ssd.cognata import SPLIT_PREFIXES
from abtf_ssd.loadgen import rules


@dataclass
class RunOptions:
    """Everything one benchmark run needs. Paths may be relative to the caller's directory."""

    dataset_dir: str | Path
    model_path: str | Path | None = None
    framework: str = "onnxruntime"
    device: str = "cpu"
    config_name: str | None = None
    """None: the backend's (inferred from the model), else the benchmark config."""
    scenario: str = "SingleStream"
    mode: str = "performance"
    """``performance`` | ``accuracy`` | ``find-performance``."""
    round: str = rules.DEFAULT_ROUND
    execution_mode: str = "test"
    """``test``: at most ``test_query_count`` queries (and QSL samples); ``valid``: the full rules."""
    test_query_count: int = rules.DEFAULT_TEST_QUERY_COUNT
    performance_sample_count: int | None = None
    """None: the round's (128), lowered to the QSL size when that is smaller."""
    batch_size: int = 1
    """Largest batch the SUT sends the backend (Offline and MultiStream; SingleStream is 1)."""
    threads: int | None = None
    results_dir: str | Path = "results"
    system_name: str = "default"
    user_conf: str | Path | None = None
    audit_config: str | Path | None = None
    """An explicit audit.config makes this a compliance run; None keeps every audit.config away."""
    expected_latency_ns: int | None = None
    """None: the value a find-performance run stored for this scenario, if any."""
    target_qps: float | None = None
    """ConstantStream's rate; None: the one a find-performance run stored (v1.0: only when the round's
    holds), else the round's."""
    rate_margin: float | None = None
    """ConstantStream find-performance: fraction of the bound a trial's p99.9 leaves free (None: the
    search's default); the other ``rate_*`` fields likewise (:mod:`abtf_ssd.loadgen.rate_search`)."""
    rate_trial_seconds: float | None = None
    rate_trial_queries: int | None = None
    rate_resolution_qps: float | None = None
    rate_max_trials: int | None = None
    dataset_prefix: str = SPLIT_PREFIXES["validation"]
    output_dir: str | Path | None = None
    """Overrides the results layout (the folder LoadGen writes into)."""
    command: str | None = None
    """Written to command.txt; None records this process's command line."""
