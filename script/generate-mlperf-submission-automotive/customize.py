"""MLC glue for generate-mlperf-submission-automotive: env -> abtf_ssd.submission.tree.generate_submission."""

import os

_SCRIPT = "generate-mlperf-submission-automotive"


def preprocess(i):
    from abtf_ssd.mlc.scripts import mlc_step

    return mlc_step(_SCRIPT, _generate, i["env"])


def _generate(env):
    from abtf_ssd.mlc.scripts import env_flag
    from abtf_ssd.submission import tree as submission
    from abtf_ssd.submission.layout import DEFAULT_IMPLEMENTATION, TEST_MODE_RELAXED_RULES

    results_dir = env.get("MLC_ABTF_SUBMISSION_RESULTS_DIR", "")
    submitter = env.get("MLC_ABTF_SUBMISSION_SUBMITTER", "")
    if not results_dir:
        raise ValueError("give --results_dir=<harness results>")
    if not submitter:
        raise ValueError("give --submitter=<organisation>")
    submission_dir = env.get("MLC_ABTF_SUBMISSION_DIR") or os.path.join(
        os.getcwd(), "mlperf-automotive-submission"
    )
    test_mode = env_flag(env.get("MLC_ABTF_SUBMISSION_TEST_MODE", ""))
    tar = env_flag(env.get("MLC_ABTF_SUBMISSION_TAR", ""))
    system_name = env.get("MLC_ABTF_SUBMISSION_SYSTEM_NAME") or submission.default_system_name(results_dir)
    root = submission.generate_submission(
        results_dir,
        submission_dir,
        submitter,
        env["MLC_ABTF_SUBMISSION_DIVISION"],
        system_name,
        status=env["MLC_ABTF_SUBMISSION_STATUS"],
        sut_info=env.get("MLC_ABTF_SUBMISSION_SUT_INFO") or None,
        tar=tar,
        allow_test_mode=test_mode,
        version=env["MLC_ABTF_SUBMISSION_VERSION"],
        dataset_dir=env.get("MLC_ABTF_SUBMISSION_DATASET_DIR") or None,
        implementation=env.get("MLC_ABTF_SUBMISSION_IMPLEMENTATION") or DEFAULT_IMPLEMENTATION,
        official_tools=env.get("MLC_ABTF_SUBMISSION_OFFICIAL_TOOLS") or None,
    )
    if test_mode:
        print("test mode: relaxed rules: " + "; ".join(TEST_MODE_RELAXED_RULES.values()))
    env["MLC_ABTF_SUBMISSION_DIR"] = str(root)
    if tar:
        env["MLC_ABTF_SUBMISSION_TARBALL"] = str(submission.tarball_path(root))
        print(f"tarball: {env['MLC_ABTF_SUBMISSION_TARBALL']}")
