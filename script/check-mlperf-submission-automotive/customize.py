"""MLC glue for check-mlperf-submission-automotive: env -> abtf_ssd.submission.checker.run_checks."""

_SCRIPT = "check-mlperf-submission-automotive"


def preprocess(i):
    from abtf_ssd.mlc.scripts import mlc_step

    return mlc_step(_SCRIPT, _check, i["env"])


def _check(env):
    from abtf_ssd.mlc.scripts import env_flag
    from abtf_ssd.submission.checker import format_report, run_checks

    submission_dir = env.get("MLC_ABTF_SUBMISSION_DIR", "")
    if not submission_dir:
        raise ValueError("give --submission_dir=<tree root>")
    version = env["MLC_ABTF_SUBMISSION_VERSION"]
    report = run_checks(submission_dir, version, env_flag(env.get("MLC_ABTF_SUBMISSION_TEST_MODE", "")))
    print(format_report(report, submission_dir, version), end="")
    env["MLC_ABTF_SUBMISSION_CHECK_ERRORS"] = str(len(report.errors))
    if report.errors:
        raise ValueError(f"{len(report.errors)} error(s), listed above")
    if env.get("MLC_ABTF_SUBMISSION_OFFICIAL_TOOLS"):
        from abtf_ssd.submission.official import check_with_official

        test_mode = env_flag(env.get("MLC_ABTF_SUBMISSION_TEST_MODE", ""))
        passed, text = check_with_official(
            env["MLC_ABTF_SUBMISSION_OFFICIAL_TOOLS"], submission_dir, version, test_mode
        )
        print(text, end="")
        if not passed:
            raise ValueError("the official checker does not accept the tree (above)")
