"""MLC glue for process-mlperf-accuracy-cognata: env -> abtf_ssd.loadgen.accuracy.accuracy_main."""

import os


def preprocess(i):
    from abtf_ssd.mlc.scripts import mlc_step

    return mlc_step("process-mlperf-accuracy-cognata", _process, i["env"])


def _process(env):
    from abtf_ssd.data.metric import format_accuracy
    from abtf_ssd.loadgen.accuracy import ACCURACY_TXT, accuracy_main, find_accuracy_log
    from abtf_ssd.mlc.scripts import STORE_ENV

    # Inside run-abtf-inference the accuracy run of app-abtf-ssd-reference has just written its folder.
    result_dir = env.get("MLC_ABTF_ACCURACY_RESULT_DIR") or env.get("MLC_ABTF_APP_ACCURACY_DIR", "")
    if not result_dir:
        raise ValueError("give --result_dir=<accuracy run folder>")
    result_dir = os.path.abspath(result_dir)
    out = env.get("MLC_ABTF_ACCURACY_TXT") or str(find_accuracy_log(result_dir).parent / ACCURACY_TXT)
    prefix = {"prefix": env["MLC_ABTF_DATASET_PREFIX"]} if env.get("MLC_ABTF_DATASET_PREFIX") else {}
    dataset = env.get("MLC_ABTF_DATASET_PATH") or None
    if dataset and env.get(STORE_ENV) == "mmap":
        from abtf_ssd.data.store import find_store

        # --store=mmap with a pickle folder: the run converted it; its ground truth reads without unpickling.
        dataset = find_store(dataset) or dataset
    result = accuracy_main(
        result_dir=result_dir,
        dataset_path=dataset,
        out=os.path.abspath(out),
        **prefix,
    )
    print(format_accuracy(result), end="")
    env["MLC_ABTF_ACCURACY_MAP"] = f"{result.map:.7f}"
    env["MLC_ABTF_ACCURACY_TXT"] = os.path.abspath(out)
