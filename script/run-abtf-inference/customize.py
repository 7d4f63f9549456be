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
_OFF = ("", "no", "false", "off", "0")


def _on(value):
    return str(value).strip().lower() not in _OFF


def predeps(i):
    env = i["env"]
    try:
        from abtf_ssd import rules, sysinfo
        from abtf_ssd.checker import DIVISIONS
        from abtf_ssd.harness import RunOptions

        in_container = _on(env.get("MLC_ABTF_RUN_DOCKER", "")) and env.get("MLC_RUN_STATE_DOCKER") != "yes"
        problem = _request_problem(env, rules, sysinfo, DIVISIONS, check_device=not in_container)
        defaults = RunOptions(dataset_dir="")
    except ImportError as e:
        return {"return": 1, "error": f"run-abtf-inference: {e}; install the package: pip install -e ."}
    if problem:
        return {"return": 1, "error": f"run-abtf-inference: {problem}"}
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
    return {"return": 0}


def _run_in_container_only(env):
    """--docker: this machine fetches only what MLC_USE_*_FROM_HOST asks for; the rest runs inside."""
    env["MLC_ABTF_RUN_DOCKER_HOST"] = "yes"
    for what in ("MODEL", "DATASET"):
        if not _on(env.get(f"MLC_USE_{what}_FROM_HOST", "")):
            env[f"MLC_ABTF_RUN_SKIP_{what}"] = "yes"
    for kind in _RUN_KINDS:
        env.pop(f"MLC_ABTF_RUN_DO_{kind}", None)


def _request_problem(env, rules, sysinfo, divisions, check_device):
    """What makes this request impossible, or None."""
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
        rules.get_round(env["MLC_ABTF_RUN_ROUND"])
        rules.loadgen_scenario(env["MLC_ABTF_RUN_SCENARIO"])
    except ValueError as e:
        return str(e)
    framework, model_path = env["MLC_ABTF_RUN_FRAMEWORK"], env.get("MLC_ABTF_ML_MODEL_PATH")
    if not check_device:  # the container has its own frameworks and devices
        return sysinfo.model_problem(framework, model_path)
    return sysinfo.run_problem(framework, env["MLC_ABTF_RUN_DEVICE"], model_path)


def preprocess(i):
    env = i["env"]
    if env.get("MLC_ABTF_RUN_DOCKER_HOST") == "yes":
        return _docker(env)
    try:
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
    except (ValueError, OSError, RuntimeError) as e:
        return {"return": 1, "error": f"run-abtf-inference: {e}"}
    print()
    print(report.format_table(summaries))
    print()
    print(f"Results folder: {env['MLC_ABTF_APP_SCENARIO_DIR']}")
    if env.get("MLC_ABTF_ACCURACY_TXT"):
        print(f"Accuracy: {env['MLC_ABTF_ACCURACY_TXT']}")
    if env.get("MLC_ABTF_RUN_DO_SUBMISSION") == "yes":
        print(f"Submission: {env['MLC_ABTF_SUBMISSION_DIR']}")
    env["MLC_ABTF_RUN_RESULTS_SCENARIO_DIR"] = env["MLC_ABTF_APP_SCENARIO_DIR"]
    return {"return": 0}


def _docker(env):
    """The same mlcr command inside a container (abtf_ssd.container); results land in results_dir."""
    from abtf_ssd.container import run_from_mlc

    device = env["MLC_ABTF_RUN_DEVICE"].partition(":")[0]
    result = run_from_mlc(
        sys.argv,
        device="cpu" if device == "cpu" else "cuda",
        results_dir=env["MLC_ABTF_RUN_RESULTS_DIR"],
        dataset_path=env.get("MLC_ABTF_DATASET_PATH") or None,
        model_path=env.get("MLC_ABTF_ML_MODEL_PATH") or None,
        dataset_from_host=_on(env.get("MLC_USE_DATASET_FROM_HOST", "")),
        model_from_host=_on(env.get("MLC_USE_MODEL_FROM_HOST", "")),
    )
    if result["return"]:
        return {"return": 1, "error": f"run-abtf-inference --docker: {result['error']}"}
    print(f"Results folder: {env['MLC_ABTF_RUN_RESULTS_DIR']}")
    env["MLC_ABTF_RUN_RESULTS_SCENARIO_DIR"] = env["MLC_ABTF_RUN_RESULTS_DIR"]
    return {"return": 0}
