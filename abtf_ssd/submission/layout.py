"""What each round's official checker looks for in a submission tree: where, under which names, which fields.

The tree of round v1.0 (the official checker's layout for that round)::

    <root>/                      only .md / .pdf files
      closed|open/<submitter>/
        systems/<system>.json    35 fields, system_type "adas"
        src/ssd/...              the code
        results/<system>/ssd/<scenario>/
          user.conf README.md measurements.json
          performance/run_1/     mlperf_log_summary.txt mlperf_log_detail.txt [mlperf_log_accuracy.json]
          accuracy/              mlperf_log_summary.txt mlperf_log_detail.txt accuracy.txt
                                 mlperf_log_accuracy.json (<= 10 KiB, truncated)
          TEST01/ (closed)       verify_performance.txt verify_accuracy.txt
                                 performance/run_1/{summary, detail} accuracy/{log, accuracy.txt}

Round v0.5 keeps the measurement files and the code apart (:data:`LAYOUTS`)::

      closed|open/<submitter>/
        systems/<system>.json
        code/ssd/<implementation>/...
        measurements/<system>/ssd/<scenario>/  user.conf README.md <system>_<implementation>_<scenario>.json
        results/<system>/ssd/<scenario>/       performance/run_1/ accuracy/
        compliance/<system>/ssd/<scenario>/TEST01/ (closed; the v0.5 checker does not check it)

Beside the layout: the division, status and system-type values, the fields of the system and
measurements JSON, the file names and size limits, the mAP target, and the rule ids with what
``allow_test_mode`` relaxes (:data:`TEST_MODE_RELAXED_RULES`), what is only a warning
(:data:`WARNING_RULES`) and the official checker's wording of each (:data:`OFFICIAL_MESSAGES`).
The checks themselves are in :mod:`abtf_ssd.submission.checker`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from abtf_ssd.loadgen.rules import MODEL_NAME, ROUND_SCENARIOS, SINGLE_STREAM_METRIC, get_round

MAP_TARGET = 0.7179 * 0.999
"""The checker's mAP threshold: 99.9 % of the reference mAP as the checker rounds it (0.7171821)."""

TEST01_ACCURACY_DELTA_PERCENT = 1.0
"""Non-deterministic TEST01: how far baseline and compliance mAP may differ (upstream's ssd value)."""

DIVISIONS = ("closed", "open")
STATUSES = ("hardened", "development", "engineering_samples", "presilicon")
SYSTEM_TYPE = "adas"
REQUIRED_SCENARIOS = ROUND_SCENARIOS[:1]
OPTIONAL_SCENARIOS = ROUND_SCENARIOS[1:]
RESULT_KEY = SINGLE_STREAM_METRIC
"""Detail-log key of the reported SingleStream metric (ns); ConstantStream's is the round's."""
DEFAULT_IMPLEMENTATION = "reference"
"""The implementation name of the v0.5 layout (``code/ssd/<implementation>``)."""

SYSTEM_FIELDS = (
    "division",
    "submitter",
    "status",
    "system_name",
    "number_of_nodes",
    "host_processor_model_name",
    "host_processors_per_node",
    "host_processor_core_count",
    "host_memory_capacity",
    "host_storage_capacity",
    "host_storage_type",
    "accelerators_per_node",
    "accelerator_model_name",
    "accelerator_memory_capacity",
    "framework",
    "operating_system",
    "system_type",
    "other_software_stack",
    "host_processor_frequency",
    "host_processor_caches",
    "host_memory_configuration",
    "host_processor_interconnect",
    "host_networking",
    "host_networking_topology",
    "accelerator_frequency",
    "accelerator_host_interconnect",
    "accelerator_interconnect",
    "accelerator_interconnect_topology",
    "accelerator_memory_configuration",
    "accelerator_on-chip_memories",
    "cooling",
    "hw_notes",
    "sw_notes",
    "host_network_card_count",
    "system_type_detail",
)
"""The 35 fields every ``systems/<system>.json`` must have."""

SYSTEM_MEANINGFUL_FIELDS = (
    "division",
    "submitter",
    "system_type",
    "status",
    "system_name",
    "number_of_nodes",
    "host_processor_model_name",
    "host_processors_per_node",
    "host_processor_core_count",
    "host_memory_capacity",
    "host_memory_configuration",
    "host_storage_capacity",
    "host_storage_type",
    "host_networking",
    "host_network_card_count",
    "host_networking_topology",
    "accelerators_per_node",
    "accelerator_model_name",
    "accelerator_memory_capacity",
    "accelerator_host_interconnect",
    "accelerator_memory_configuration",
    "accelerator_interconnect",
    "cooling",
    "framework",
    "operating_system",
    "other_software_stack",
)
"""Fields the checker also wants non-empty (a falsy value, 0 included, fails)."""

MEASUREMENT_FIELDS = (
    "input_data_types",
    "retraining",
    "starting_weights_filename",
    "weight_data_types",
    "weight_transformations",
)

SUMMARY_LOG = "mlperf_log_summary.txt"
DETAIL_LOG = "mlperf_log_detail.txt"
ACCURACY_LOG = "mlperf_log_accuracy.json"
ACCURACY_TXT = "accuracy.txt"
PERFORMANCE_FILES = (SUMMARY_LOG, DETAIL_LOG)
ACCURACY_FILES = (SUMMARY_LOG, DETAIL_LOG, ACCURACY_TXT, ACCURACY_LOG)
TEST01_ACCURACY_FILES = (ACCURACY_LOG, ACCURACY_TXT)
TEST01_NONDETERMINISTIC_FILES = ("baseline_accuracy.txt", "compliance_accuracy.txt")
IGNORED_EXTRA_FILES = ("mlperf_log_trace.json", "results.json", ".gitkeep")
"""Files the upstream checker tolerates beside the required ones in a log folder."""
IGNORED_ROOT_FOLDERS = (".git", ".github", "assets")

MAX_ACCURACY_LOG_BYTES = 10 * 1024
MAX_FILE_BYTES = 50 * 1024 * 1024
TRUNCATION_MARKER = "\n\n...\n\n"
"""What the truncation tool writes between the kept head and tail of an accuracy log."""


TEST_MODE_RELAXED_RULES: dict[str, str] = {
    "result-valid": "LoadGen result VALID",
    "min-duration": "min_duration >= 600000 ms",
    "min-query-count": "minimum query count / early stopping met",
    "perf-sample-count": "performance sample count >= 128",
    "test01-perf-score": "TEST01 performance within 10 % of the submission run (two short runs: noise)",
}
"""The run-length rules a test-mode run cannot meet, relaxed by ``allow_test_mode`` (rule id -> what
it asks). The mAP target is not among them: a closed result under it fails in every mode."""

WARNING_RULES = {
    "map-target-open": "mAP under the target: accepted for the open division only",
    "constant-stream-rate": "v1.0 ConstantStream off the round's rate (not checked by the official checker)",
}
"""Findings that are warnings, not errors (the official checker logs them and accepts the result)."""

OFFICIAL_MESSAGES: dict[str, str] = {
    "result-valid": "result is INVALID / Reference results are invalid",
    "min-duration": "Test duration lesser than ... ms",
    "min-query-count": "Early stopping condition was not met / too few queries",
    "perf-sample-count": "performance_sample_count, found ..., needs to be >= 128",
    "seed": "seeds are wrong",
    "percentile": "target_latency_percentile is required to be 0.999",
    "constant-gen": "constant_gen is required to be set to True",
    "detail-error": "Detected errors in mlperf_log_detail.txt",
    "map-target": "accuracy not valid (Accuracy = ..., Threshold = ...)",
    "map-target-open": "accuracy not valid but taken for open",
    "measure-files": "<measurement dir> is missing user.conf / README.md",
    "measurements-json": "<result>, field ... is missing (meaningful value)",
    "measurements-dir": "no measurement_dir for ...",
    "code-dir": "... is missing code_dir ...",
    "acc-files": "... has file list mismatch",
    "perf-files": "... has file list mismatch",
    "acc-log-size": "accuracy log is too large",
    "acc-hash": "hash in accuracy.txt",
    "system-field": "field ... is missing (meaningful value)",
    "system-type": "has invalid system type",
    "status": "has invalid status",
    "test01-missing": "Missing TEST01 in compliance dir",
    "test01-perf": "Compliance test performance check in ... failed",
    "test01-perf-score": "Compliance test performance check in ... failed",
    "test01-acc": "compliance TEST01 accuracy dir: file list mismatch / non-deterministic check failed",
    "root-files": "Root contains files outside division folder",
    "scenario": "... ignoring scenario ... (neither required nor optional)",
}
"""Rule id -> the official checker's wording of the same rule, quoted in our messages."""


@dataclass(frozen=True)
class TreeLayout:
    """Where a round's official checker looks for each part of a submitter's folder."""

    round: str
    code_folder: str
    """``src`` (v1.0: ``src/ssd``) or ``code`` (v0.5: ``code/ssd/<implementation>``)."""
    separate_measurements: bool
    """v0.5: ``measurements/<system>/ssd/<scenario>/``; v1.0: the results scenario folder."""

    def code_dir(self, submitter_dir: Path, implementation: str = DEFAULT_IMPLEMENTATION) -> Path:
        base = submitter_dir / self.code_folder / MODEL_NAME
        return base / implementation if self.separate_measurements else base

    def measurements_dir(self, submitter_dir: Path, system: str, scenario: str) -> Path:
        top = "measurements" if self.separate_measurements else "results"
        return submitter_dir / top / system / MODEL_NAME / scenario

    def measurements_file(
        self, system: str, scenario: str, implementation: str = DEFAULT_IMPLEMENTATION
    ) -> str:
        return (
            f"{system}_{implementation}_{scenario}.json"
            if self.separate_measurements
            else "measurements.json"
        )

    def compliance_dir(self, submitter_dir: Path, system: str, scenario: str) -> Path:
        """The folder that holds ``TEST01/``."""
        top = "compliance" if self.separate_measurements else "results"
        return submitter_dir / top / system / MODEL_NAME / scenario


LAYOUTS: dict[str, TreeLayout] = {
    "v0.5": TreeLayout("v0.5", code_folder="code", separate_measurements=True),
    "v1.0": TreeLayout("v1.0", code_folder="src", separate_measurements=False),
}


def layout(round: str) -> TreeLayout:
    """The tree layout of ``round`` (a :class:`rules.RulesError` for an unknown one)."""
    get_round(round)
    return LAYOUTS[round]
