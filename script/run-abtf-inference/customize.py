"""MLC glue for run-abtf-inference: checks the request, then reports what the chained scripts ran.

The work happens in the dependencies (meta.yaml): system description, model, dataset, the
app runs (find-performance, performance, accuracy, TEST01), the accuracy script and, for
``_submission``, generate-mlperf-submission-automotive. ``predeps`` refuses impossible requests
before any of them starts, so nothing is downloaded for a run that cannot happen; ``preprocess``
(after them) prints the results table. With ``--docker`` the dependencies are skipped except the
downloads MLC_USE_*_FROM_HOST ask for, and ``preprocess`` runs the same command in a container.
"""

import os
import sys

# App run folder exported by app-abtf-ssd-reference -> the mode shown in the table.
_RUN_FOLDERS = {
    "MLC_ABTF_APP_FIND_PERFORMANCE_DIR": "find-performance",
    "MLC_ABTF_APP_PERFORMANCE_DIR": "performance",
    "MLC_ABTF_APP_ACCURACY_DIR": "accuracy",
    "MLC_ABTF_APP_TEST01_PERFORMANCE_DIR": "TEST01",
}
_IMPLEMENTATIONS = ("reference",)
_CATEGORIES = ("adas",)
_RUN_KINDS = ("FIND_PERFORMANCE", "PERFORMANCE", "ACCURACY", "TEST01", "SUBMISSION")
_SCRIPT = "run-abtf-inference"


def predeps(i):
    from abtf_ssd.mlc_scripts import mlc_step

    return mlc_step(_SCRIPT, _plan, i["env"])


def _plan(env):
    """Check the request, then set what the dependencies (meta.yaml) read."""
    from abtf_ssd import rules, sysinfo
    from abtf_ssd.checker import DIVISIONS
    from abtf_ssd.harness import RunOptions
    from abtf_ssd.mlc_scripts import env_flag

    in_container = env_flag(env.get("MLC_ABTF_RUN_DOCKER", "")) and env.get("MLC_RUN_STATE_DOCKER") != "yes"
    problem = _request_problem(env, rules, sysinfo, DIVISIONS, check_device=not in_container)
    if problem:
        raise ValueError(problem)
    defaults = RunOptions(dataset_dir="")
    env["MLC_ABTF_RUN_MODEL_FORMAT"] = sysinfo.MODEL_FORMAT_OF_FRAMEWORK[env["MLC_ABTF_RUN_FRAMEWORK"]]
    env["MLC_ABTF_RUN_RESULTS_DIR"] = os.path.abspath(
        env.get("MLC_ABTF_RUN_RESULTS_DIR") or defaults.results_dir
    )
    env.setdefault("MLC_ABTF_RUN_SYSTEM_NAME", defaults.system_name)
    env["MLC_ABTF_SUT_INFO_PATH"] = os.path.join(
        env["MLC_ABTF_RUN_RESULTS_DIR"], env["MLC_ABTF_RUN_SYSTEM_NAME"], sysinfo.SUT_INFO_NAME
    )
    valid = env.get("MLC_ABTF_RUN_EXECUTION_MODE") == "valid"
    if (
        valid
        and env.get("MLC_ABTF_RUN_DO_PERFORMANCE") == "yes"
        and not env.get("MLC_ABTF_RUN_TARGET_LATENCY")
    ):
        # A valid run lasts as planned only with a measured expected latency.
        env["MLC_ABTF_RUN_DO_FIND_PERFORMANCE"] = "yes"
    if env.get("MLC_ABTF_RUN_DO_SUBMISSION") == "yes":
        # What generate-mlperf-submission-automotive needs from this run.
        env["MLC_ABTF_SUBMISSION_RESULTS_DIR"] = env["MLC_ABTF_RUN_RESULTS_DIR"]
        env["MLC_ABTF_SUBMISSION_SYSTEM_NAME"] = env["MLC_ABTF_RUN_SYSTEM_NAME"]
        env["MLC_ABTF_SUBMISSION_SUT_INFO"] = env["MLC_ABTF_SUT_INFO_PATH"]
        env["MLC_ABTF_SUBMISSION_VERSION"] = env["MLC_ABTF_RUN_ROUND"]
        env["MLC_ABTF_SUBMISSION_TEST_MODE"] = "no" if valid else "yes"
        if env["MLC_ABTF_SUBMISSION_DIVISION"] == "closed":
            env["MLC_ABTF_RUN_DO_TEST01"] = "yes"
    if in_container:
        _run_in_container_only(env)


def _run_in_container_only(env):
    """--docker: this machine fetches only what MLC_USE_*_FROM_HOST asks for; the rest runs inside."""
    from abtf_ssd.mlc_scripts import env_flag

    env["MLC_ABTF_RUN_DOCKER_HOST"] = "yes"
    for what in ("MODEL", "DATASET"):
        if not env_flag(env.get(f"MLC_USE_{what}_FROM_HOST", "")):
            env[f"MLC_ABTF_RUN_SKIP_{what}"] = "yes"
    for kind in _RUN_KINDS:
        env.pop(f"MLC_ABTF_RUN_DO_{kind}", None)


def _request_problem(env, rules, sysinfo, divisions, check_device):
    """What makes this request impossible, or None."""
    from abtf_ssd.mlc_scripts import env_store_kind

    model = env["MLC_ABTF_RUN_MODEL"]
    if model != rules.MODEL_NAME:
        return f"--model={model} is not supported; supported models: {rules.MODEL_NAME}"
    if env["MLC_ABTF_RUN_IMPLEMENTATION"] not in _IMPLEMENTATIONS:
        return f"--implementation={env['MLC_ABTF_RUN_IMPLEMENTATION']}: only {', '.join(_IMPLEMENTATIONS)}"
    if env["MLC_ABTF_RUN_CATEGORY"] not in _CATEGORIES:
        return f"--category={env['MLC_ABTF_RUN_CATEGORY']}: MLPerf Automotive has one category: adas"
    if env["MLC_ABTF_SUBMISSION_DIVISION"] not in divisions:
        return f"--division={env['MLC_ABTF_SUBMISSION_DIVISION']}: use {' or '.join(divisions)}"
    try:
        env_store_kind(env)
        rules.get_round(env["MLC_ABTF_RUN_ROUND"])
        rules.loadgen_scenario(env["MLC_ABTF_RUN_SCENARIO"])
    except ValueError as e:
        return str(e)
    framework, model_path = env["MLC_ABTF_RUN_FRAMEWORK"], env.get("MLC_ABTF_ML_MODEL_PATH")
    if not check_device:  # the container has its own frameworks and devices
        return sysinfo.model_problem(framework, model_path)
    return sysinfo.run_problem(framework, env["MLC_ABTF_RUN_DEVICE"], model_path)


def preprocess(i):
    from abtf_ssd.mlc_scripts import mlc_step

    env = i["env"]
    return mlc_step(_SCRIPT, _docker if env.get("MLC_ABTF_RUN_DOCKER_HOST") == "yes" else _report, env)


def _report(env):
    """The results table of the runs the dependencies made."""
    from abtf_ssd import report

    summaries = [
        report.summarize_run(
            env[key],
            env["MLC_ABTF_RUN_SCENARIO"],
            mode,
            map_value=float(env["MLC_ABTF_ACCURACY_MAP"]) if mode == "accuracy" else None,
        )
        for key, mode in _RUN_FOLDERS.items()
        if env.get(key)
    ]
    print()
    print(report.format_table(summaries))
    print()
    print(f"Results folder: {env['MLC_ABTF_APP_SCENARIO_DIR']}")
    if env.get("MLC_ABTF_ACCURACY_TXT"):
        print(f"Accuracy: {env['MLC_ABTF_ACCURACY_TXT']}")
    if env.get("MLC_ABTF_RUN_DO_SUBMISSION") == "yes":
        print(f"Submission: {env['MLC_ABTF_SUBMISSION_DIR']}")
    env["MLC_ABTF_RUN_RESULTS_SCENARIO_DIR"] = env["MLC_ABTF_APP_SCENARIO_DIR"]


def _docker(env):
    """The same mlcr command inside a container (abtf_ssd.container); results land in results_dir."""
    from abtf_ssd.container import run_from_mlc
    from abtf_ssd.mlc_scripts import env_flag

    device = env["MLC_ABTF_RUN_DEVICE"].partition(":")[0]
    result = run_from_mlc(
        sys.argv,
        device="cpu" if device == "cpu" else "cuda",
        results_dir=env["MLC_ABTF_RUN_RESULTS_DIR"],
        dataset_path=env.get("MLC_ABTF_DATASET_PATH") or None,
        model_path=env.get("MLC_ABTF_ML_MODEL_PATH") or None,
        dataset_from_host=env_flag(env.get("MLC_USE_DATASET_FROM_HOST", "")),
        model_from_host=env_flag(env.get("MLC_USE_MODEL_FROM_HOST", "")),
    )
    if result["return"]:
        return {"return": 1, "error": f"{_SCRIPT} --docker: {result['error']}"}
    print(f"Results folder: {env['MLC_ABTF_RUN_RESULTS_DIR']}")
    env["MLC_ABTF_RUN_RESULTS_SCENARIO_DIR"] = env["MLC_ABTF_RUN_RESULTS_DIR"]
    return None
