"""MLC glue for app-abtf-ssd-reference: env -> one `abtf-ssd run` (abtf_ssd.loadgen.harness), own process."""

import dataclasses
import os
import subprocess
import sys
import tempfile

_SCRIPT = "app-abtf-ssd-reference"
# RunOptions field -> (env key, converter). Only keys present in env are passed: the harness's
# defaults apply to the rest.
_OPTIONS = {
    "model_path": ("MLC_ABTF_ML_MODEL_PATH", str),
    "framework": ("MLC_ABTF_RUN_FRAMEWORK", str),
    "device": ("MLC_ABTF_RUN_DEVICE", str),
    "scenario": ("MLC_ABTF_RUN_SCENARIO", str),
    "mode": ("MLC_ABTF_RUN_MODE", str),
    "round": ("MLC_ABTF_RUN_ROUND", str),
    "execution_mode": ("MLC_ABTF_RUN_EXECUTION_MODE", str),
    "test_query_count": ("MLC_ABTF_RUN_TEST_QUERY_COUNT", int),
    "performance_sample_count": ("MLC_ABTF_RUN_PERFORMANCE_SAMPLE_COUNT", int),
    "batch_size": ("MLC_ABTF_RUN_BATCH_SIZE", int),
    "threads": ("MLC_ABTF_RUN_THREADS", int),
    "results_dir": ("MLC_ABTF_RUN_RESULTS_DIR", str),
    "system_name": ("MLC_ABTF_RUN_SYSTEM_NAME", str),
    "user_conf": ("MLC_ABTF_RUN_USER_CONF", str),
    "audit_config": ("MLC_ABTF_RUN_AUDIT_CONFIG", str),
    "dataset_prefix": ("MLC_ABTF_DATASET_PREFIX", str),
    "target_qps": ("MLC_ABTF_RUN_CONSTANTSTREAM_TARGET_QPS", float),
    "rate_margin": ("MLC_ABTF_RUN_CONSTANTSTREAM_MARGIN", float),
    "rate_trial_seconds": ("MLC_ABTF_RUN_CONSTANTSTREAM_TRIAL_SECONDS", float),
    "rate_trial_queries": ("MLC_ABTF_RUN_CONSTANTSTREAM_TRIAL_QUERIES", int),
    "rate_resolution_qps": ("MLC_ABTF_RUN_CONSTANTSTREAM_RESOLUTION", float),
    "rate_max_trials": ("MLC_ABTF_RUN_CONSTANTSTREAM_MAX_TRIALS", int),
}


def predeps(i):
    """Refuse an impossible run before the model and dataset are fetched."""
    from abtf_ssd.mlc.scripts import mlc_step

    return mlc_step(_SCRIPT, _check_request, i["env"])


def _check_request(env):
    from abtf_ssd.mlc.scripts import env_store_kind
    from abtf_ssd.submission.sysinfo import MODEL_FORMAT_OF_FRAMEWORK, run_problem

    env_store_kind(env)
    framework = env["MLC_ABTF_RUN_FRAMEWORK"]
    problem = run_problem(framework, env["MLC_ABTF_RUN_DEVICE"], env.get("MLC_ABTF_ML_MODEL_PATH"))
    if problem:
        raise ValueError(problem)
    env["MLC_ABTF_RUN_MODEL_FORMAT"] = MODEL_FORMAT_OF_FRAMEWORK[framework]


def preprocess(i):
    from abtf_ssd.mlc.scripts import mlc_step

    return mlc_step(_SCRIPT, _run, i["env"])


def _run(env):
    from abtf_ssd.cli import run_arguments
    from abtf_ssd.loadgen.harness import (
        COMPLIANCE_TEST,
        RunOptions,
        output_dir,
        reusable_find_performance,
        scenario_dir,
    )
    from abtf_ssd.mlc.scripts import env_store_kind

    options = RunOptions(dataset_dir=_dataset(env), config_name=_config(env), **_given_options(env))
    if env.get("MLC_ABTF_RUN_DATASET_SOURCE", "").startswith("synthetic") and not env.get(
        "MLC_ABTF_RUN_TEST_QUERY_COUNT"
    ):
        # A synthetic set is small: a test run covers all of it, so the mAP is over every frame.
        options = dataclasses.replace(options, test_query_count=_sample_count(options))
    options = dataclasses.replace(options, results_dir=os.path.abspath(options.results_dir))
    reuse = None
    if options.mode == "find-performance" and env.get("MLC_ABTF_RUN_FIND_PERFORMANCE_IMPLIED") == "yes":
        reuse = reusable_find_performance(options)
        if reuse:
            print(reuse)
    with tempfile.TemporaryDirectory(prefix="abtf-audit-") as audit_dir:
        test = env.get("MLC_ABTF_RUN_COMPLIANCE_TEST")
        if test and options.audit_config is None:
            audit_config = _official_audit_config(options.round, test, audit_dir)
            options = dataclasses.replace(options, audit_config=audit_config)
        # LoadGen runs in a process of its own: a crash there cannot take mlcflow down with it.
        command = [sys.executable, "-m", "abtf_ssd.cli", "run", *run_arguments(options)]
        if env_store_kind(env) == "mmap":
            command += ["--store", "mmap"]  # a pickle folder is converted once into <folder>/mmap
        if not reuse and subprocess.run(command, check=False).returncode != 0:
            raise RuntimeError(f"the {options.mode} run failed (see above)")
    kind = (f"{COMPLIANCE_TEST}_" if options.audit_config else "") + options.mode.upper().replace("-", "_")
    env[f"MLC_ABTF_APP_{kind}_DIR"] = str(output_dir(options))
    env["MLC_ABTF_APP_SCENARIO_DIR"] = str(scenario_dir(options))
    env["MLC_ABTF_APP_RESULTS_DIR"] = str(options.results_dir)
    env["MLC_ABTF_APP_SYSTEM_NAME"] = options.system_name
    env["MLC_ABTF_APP_CONFIG"] = options.config_name


def _sample_count(options):
    from abtf_ssd.data.metric import count_samples

    return count_samples(options.dataset_dir, options.dataset_prefix)


def _official_audit_config(round, test, folder):
    from abtf_ssd.fileio import atomic_write_text
    from abtf_ssd.loadgen.rules import audit_config_text

    return str(atomic_write_text(os.path.join(folder, "audit.config"), audit_config_text(round, test)))


def _given_options(env):
    options = {}
    for name, (key, convert) in _OPTIONS.items():
        value = str(env.get(key, "")).strip()
        if value:
            try:
                options[name] = convert(value)
            except ValueError:
                raise ValueError(f"{key}={value!r} is not a valid {name}") from None
    latency_ms = str(env.get("MLC_ABTF_RUN_TARGET_LATENCY", "")).strip()
    if latency_ms:
        try:
            options["expected_latency_ns"] = round(float(latency_ms) * 1e6)
        except ValueError:
            raise ValueError(f"--target_latency={latency_ms!r} is not a number of milliseconds") from None
    return options


def _dataset(env):
    path = env.get("MLC_ABTF_DATASET_PATH", "")
    if not path:
        raise ValueError("no preprocessed dataset: give --dataset_path=<folder> or a source variation")
    return path


def _config(env):
    """The model config: --config, else the model's, else the one the dataset was preprocessed for."""
    from abtf_ssd.data.store import recorded_config

    recorded = recorded_config(env["MLC_ABTF_DATASET_PATH"])  # dataset.json, or a store's store.json
    config = env.get("MLC_ABTF_RUN_CONFIG") or env.get("MLC_ABTF_ML_MODEL_CONFIG") or recorded
    if not config:
        raise ValueError("unknown model config: give --config=<name>")
    if recorded and recorded != config:
        raise ValueError(
            f"the dataset {env['MLC_ABTF_DATASET_PATH']} was preprocessed for config {recorded!r} "
            f"but the model is {config!r}"
        )
    return config
