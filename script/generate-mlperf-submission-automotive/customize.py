"""MLC glue for generate-mlperf-submission-automotive: env -> abtf_ssd.submission.generate_submission."""

import os

_TRUE = ("1", "yes", "true", "on")


def _yes(value):
    return str(value).strip().lower() in _TRUE


def preprocess(i):
    env = i["env"]
    results_dir = env.get("MLC_ABTF_SUBMISSION_RESULTS_DIR", "")
    submitter = env.get("MLC_ABTF_SUBMISSION_SUBMITTER", "")
    if not results_dir:
        return {
            "return": 1,
            "error": "generate-mlperf-submission-automotive: give --results_dir=<harness results>",
        }
    if not submitter:
        return {
            "return": 1,
            "error": "generate-mlperf-submission-automotive: give --submitter=<organisation>",
        }
    submission_dir = env.get("MLC_ABTF_SUBMISSION_DIR") or os.path.join(
        os.getcwd(), "mlperf-automotive-submission"
    )
    test_mode = _yes(env.get("MLC_ABTF_SUBMISSION_TEST_MODE", ""))
    tar = _yes(env.get("MLC_ABTF_SUBMISSION_TAR", ""))
    try:
        from abtf_ssd import submission
        from abtf_ssd.checker import TEST_MODE_RELAXED_RULES

        system_name = env.get("MLC_ABTF_SUBMISSION_SYSTEM_NAME") or submission.default_system_name(
            results_dir
        )
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
        )
    except ImportError as e:
        return {
            "return": 1,
            "error": f"generate-mlperf-submission-automotive: {e}; install the package: pip install -e .",
        }
    except (ValueError, OSError) as e:
        return {"return": 1, "error": f"generate-mlperf-submission-automotive: {e}"}
    if test_mode:
        print("test mode: relaxed rules: " + "; ".join(TEST_MODE_RELAXED_RULES.values()))
    env["MLC_ABTF_SUBMISSION_DIR"] = str(root)
    if tar:
        env["MLC_ABTF_SUBMISSION_TARBALL"] = str(submission.tarball_path(root))
        print(f"tarball: {env['MLC_ABTF_SUBMISSION_TARBALL']}")
    return {"return": 0}
