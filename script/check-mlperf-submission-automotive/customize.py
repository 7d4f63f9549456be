"""MLC glue for check-mlperf-submission-automotive: env -> abtf_ssd.checker.run_checks."""

_TRUE = ("1", "yes", "true", "on")


def preprocess(i):
    env = i["env"]
    submission_dir = env.get("MLC_ABTF_SUBMISSION_DIR", "")
    if not submission_dir:
        return {"return": 1, "error": "check-mlperf-submission-automotive: give --submission_dir=<tree root>"}
    version = env["MLC_ABTF_SUBMISSION_VERSION"]
    test_mode = str(env.get("MLC_ABTF_SUBMISSION_TEST_MODE", "")).strip().lower() in _TRUE
    try:
        from abtf_ssd.checker import format_report, run_checks

        report = run_checks(submission_dir, version, test_mode)
    except ImportError as e:
        return {
            "return": 1,
            "error": f"check-mlperf-submission-automotive: {e}; install the package: pip install -e .",
        }
    except (ValueError, OSError) as e:
        return {"return": 1, "error": f"check-mlperf-submission-automotive: {e}"}
    print(format_report(report, submission_dir, version), end="")
    env["MLC_ABTF_SUBMISSION_CHECK_ERRORS"] = str(len(report.errors))
    if report.errors:
        return {
            "return": 1,
            "error": f"check-mlperf-submission-automotive: {len(report.errors)} error(s), listed above",
        }
    return {"return": 0}
