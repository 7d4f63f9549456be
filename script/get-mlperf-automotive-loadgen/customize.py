"""MLC glue for get-mlperf-automotive-loadgen: env -> abtf_ssd.loadgen.build.build."""

import sys


def preprocess(i):
    from abtf_ssd.mlc.scripts import mlc_step

    return mlc_step("get-mlperf-automotive-loadgen", _build, i["env"])


def _build(env):
    from abtf_ssd.loadgen import build as loadgen_build
    from abtf_ssd.mlc.scripts import env_flag

    dry_run = env_flag(env.get("MLC_ABTF_LOADGEN_DRY_RUN", ""))
    # The benchmark's environment: the interpreter mlcflow (and so the app script) runs in.
    python = sys.executable
    result = loadgen_build.build(
        env["MLC_ABTF_LOADGEN_ROUND"],
        src=env.get("MLC_ABTF_LOADGEN_SRC") or None,
        dry_run=dry_run,
        python=python,
        workdir=env.get("MLC_ABTF_LOADGEN_WORKDIR") or None,
        ref=env.get("MLC_ABTF_LOADGEN_REF") or None,
    )
    # Outputs get names of their own: an input key written back here would be taken as the input
    # of the next run in the same mlcflow process (mlc test script runs its variations that way).
    env["MLC_ABTF_LOADGEN_BUILT_REF"] = result["ref"]
    env["MLC_ABTF_LOADGEN_PYTHON"] = python
    if dry_run:
        try:
            env["MLC_ABTF_LOADGEN_KIND"] = (
                loadgen_build.installed_loadgen_kind(python) + " (unchanged: dry run)"
            )
        except loadgen_build.LoadgenBuildError:
            env["MLC_ABTF_LOADGEN_KIND"] = "none (unchanged: dry run)"
        return
    env["MLC_ABTF_LOADGEN_KIND"] = result["kind"]
    env["MLC_ABTF_LOADGEN_REVISION"] = result["revision"]
    env["MLC_ABTF_LOADGEN_WHEEL"] = result["wheel"]
    env["MLC_ABTF_LOADGEN_MODULE"] = result["module"]
