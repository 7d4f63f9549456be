"""MLC glue for get-raw-dataset-cognata: env -> abtf_ssd.data.synth.generate or the MLCommons download."""

import os


def predeps(i):
    from abtf_ssd.mlc.scripts import forget_failed_cache_entry

    return forget_failed_cache_entry("get-raw-dataset-cognata")


def preprocess(i):
    from abtf_ssd.mlc.scripts import mlc_step

    return mlc_step("get-raw-dataset-cognata", _get_raw, i["env"])


def _get_raw(env):
    out_root = os.getcwd()  # the cache entry, or --outdirname (mlcflow has changed into it)
    if env["MLC_ABTF_RAW_DATASET_SOURCE"] == "mlc":
        _download(env, out_root)
        return
    from abtf_ssd.data import synth
    from abtf_ssd.mlc.scripts import env_int

    synth.generate(
        out_root,
        frames=env_int(env, "MLC_ABTF_SYNTH_FRAMES", "--frames"),
        width=env_int(env, "MLC_ABTF_SYNTH_WIDTH", "--width"),
        height=env_int(env, "MLC_ABTF_SYNTH_HEIGHT", "--height"),
        seed=env_int(env, "MLC_ABTF_SYNTH_SEED", "--seed"),
        calibration_frames=env_int(env, "MLC_ABTF_SYNTH_CALIBRATION_FRAMES", "--calibration_frames"),
        workers=env_int(env, "MLC_ABTF_WORKERS", "--workers"),
    )
    env["MLC_ABTF_RAW_DATASET_VAL_CSV"] = os.path.join(out_root, synth.SPLIT_FILES["validation"])
    env["MLC_ABTF_RAW_DATASET_CALIBRATION_CSV"] = os.path.join(out_root, synth.SPLIT_FILES["calibration"])
    env["MLC_ABTF_RAW_DATASET_PATH"] = out_root


def _download(env, out_root):
    """The MLCommons raw recordings (needs membership and a login), with the official split CSVs."""
    from abtf_ssd import cognata
    from abtf_ssd.data import fetch
    from abtf_ssd.mlc.scripts import download_folder

    root = fetch.fetch_dataset(
        "raw",
        download_folder(env, "get-raw-dataset-cognata"),
        env["MLC_ABTF_DOWNLOAD_TOOL"],
        dry_run=env.get("MLC_ABTF_DOWNLOAD_DRY_RUN") == "yes",
        interactive=env.get("MLC_QUIET") != "yes",
    )
    env["MLC_ABTF_RAW_DATASET_PATH"] = str(root)
    env["MLC_ABTF_RAW_DATASET_VAL_CSV"] = str(cognata.official_split("validation"))
    env["MLC_ABTF_RAW_DATASET_CALIBRATION_CSV"] = str(cognata.official_split("calibration"))
