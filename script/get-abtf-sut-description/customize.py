"""MLC glue for get-abtf-sut-description: env -> abtf_ssd.submission.sysinfo.write_sut_info."""


def preprocess(i):
    from abtf_ssd.mlc.scripts import mlc_step

    return mlc_step("get-abtf-sut-description", _describe, i["env"])


def _describe(env):
    from abtf_ssd.submission.sysinfo import sut_info_path, write_sut_info

    path = env.get("MLC_ABTF_SUT_INFO_PATH") or sut_info_path(
        env.get("MLC_ABTF_RUN_RESULTS_DIR"), env.get("MLC_ABTF_RUN_SYSTEM_NAME")
    )
    env["MLC_ABTF_SUT_INFO_PATH"] = str(
        write_sut_info(path, env["MLC_ABTF_RUN_FRAMEWORK"], env["MLC_ABTF_RUN_DEVICE"])
    )
