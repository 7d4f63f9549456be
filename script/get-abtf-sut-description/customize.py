"""MLC glue for get-abtf-sut-description: env -> abtf_ssd.sysinfo.write_sut_info (mlc-sut-info.json)."""

import os


def preprocess(i):
    from abtf_ssd.mlc_scripts import mlc_step

    return mlc_step("get-abtf-sut-description", _describe, i["env"])


def _describe(env):
    from abtf_ssd.sysinfo import SUT_INFO_NAME, write_sut_info

    path = env.get("MLC_ABTF_SUT_INFO_PATH") or os.path.join(os.getcwd(), SUT_INFO_NAME)
    env["MLC_ABTF_SUT_INFO_PATH"] = str(
        write_sut_info(path, env["MLC_ABTF_RUN_FRAMEWORK"], env["MLC_ABTF_RUN_DEVICE"])
    )
