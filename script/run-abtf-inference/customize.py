"""MLC glue for run-abtf-inference: checks the request, then reports what the chained scripts ran.

The work happens in the dependencies (meta.yaml): system description, model, dataset, the
app runs (find-performance, performance, accuracy, TEST01), the accuracy script and, for
``_submission``, generate-mlperf-submission-automotive. ``predeps`` runs the one pre-flight check
(abtf_ssd.mlc.preflight) before any of them starts, so nothing is downloaded for a run that cannot
happen; ``preprocess`` (after them) prints the results table. With ``--docker`` the dependencies are
skipped except the downloads MLC_USE_*_FROM_HOST ask for, and ``preprocess`` runs the same request
in a container (abtf_ssd.mlc.container).
"""

# App run folder exported by app-abtf-ssd-reference -> the mode shown in the table.
_RUN_FOLDERS = {
    "MLC_ABTF_APP_FIND_PERFORMANCE_DIR": "find-performance",
    "MLC_ABTF_APP_PERFORMANCE_DIR": "performance",
    "MLC_ABTF_APP_ACCURACY_DIR": "accuracy",
    "MLC_ABTF_APP_TEST01_PERFORMANCE_DIR": "TEST01",
}
_SCRIPT = "run-abtf-inference"


def predeps(i):
    from abtf_ssd.mlc.scripts import mlc_step

    return mlc_step(_SCRIPT, _plan, i)


def _plan(i):
    """The pre-flight check; with --docker, the request must also be one the container can repeat."""
    from abtf_ssd.mlc import container, preflight

    env, flags = i["env"], preflight.flag_names(i["meta"]["input_mapping"])
    if env.get("MLC_ABTF_RUN_ALL_SCENARIOS") == "yes":
        preflight.check_all_scenarios(env, flags, "scenario" in i["input"])
    request = preflight.prepare_run(env, flags)
    if request.docker is not None:
        container.request_from_mlc_input(i["input"])
    elif env.get("MLC_ABTF_RUN_ALL_SCENARIOS") == "yes":
        preflight.run_nothing_here(env)
        container.request_from_mlc_input(i["input"], why="_all-scenarios")
    print(f"{_SCRIPT}: {request.summary()}")


def preprocess(i):
    from abtf_ssd.mlc.scripts import mlc_step

    if i["env"].get("MLC_ABTF_RUN_DOCKER_HOST") == "yes":
        return mlc_step(_SCRIPT, _docker, i)
    if i["env"].get("MLC_ABTF_RUN_ALL_SCENARIOS") == "yes":
        return mlc_step(_SCRIPT, _each_scenario, i)
    return mlc_step(_SCRIPT, _report, i["env"])


def _each_scenario(i):
    """_all-scenarios: the same request once a scenario of the round, each a real mlcr run."""
    import subprocess
    import sys
    from pathlib import Path

    from abtf_ssd.mlc import container, preflight

    request = container.request_from_mlc_input(i["input"], why="_all-scenarios")
    for scenario in preflight.ROUND_SCENARIOS:
        one = container.request_without_variation(request, "all-scenarios", scenario=scenario)
        command = [str(Path(sys.executable).with_name("mlcr")), *container.mlc_arguments(one)]
        print(f"{_SCRIPT} _all-scenarios: {scenario}", flush=True)
        if subprocess.run(command, check=False).returncode != 0:
            raise RuntimeError(
                f"_all-scenarios: the {scenario} request failed (above); the others were not run"
            )
    i["env"]["MLC_ABTF_RUN_RESULTS_SCENARIO_DIR"] = i["env"]["MLC_ABTF_RUN_RESULTS_DIR"]


def _report(env):
    """The results table of the runs the dependencies made."""
    from abtf_ssd.loadgen import report

    summaries = [
        report.summarize_run(
            env[key],
            env["MLC_ABTF_RUN_SCENARIO"],
            mode,
            map_value=float(env["MLC_ABTF_ACCURACY_MAP"]) if mode == "accuracy" else None,
            round=env["MLC_ABTF_RUN_ROUND"],
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


def _docker(i):
    """The same request inside a container (abtf_ssd.mlc.container); results land in results_dir."""
    from abtf_ssd.mlc import container, preflight
    from abtf_ssd.mlc.scripts import env_flag

    env = i["env"]
    result = container.run_from_mlc(
        container.request_from_mlc_input(i["input"]),
        preflight.docker_options(env, preflight.flag_names(i["meta"]["input_mapping"])),
        device=env["MLC_ABTF_RUN_DEVICE"],
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
