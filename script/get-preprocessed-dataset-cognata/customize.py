"""MLC glue for get-preprocessed-dataset-cognata: env -> abtf_ssd.preprocess.build_preprocessed."""

import os

# Split name -> env key of the raw dataset's split CSV; the pickles' prefix is cognata.SPLIT_PREFIXES.
_RAW_CSV_KEYS = {
    "validation": "MLC_ABTF_RAW_DATASET_VAL_CSV",
    "calibration": "MLC_ABTF_RAW_DATASET_CALIBRATION_CSV",
}


def preprocess(i):
    from abtf_ssd.mlc_scripts import mlc_step

    return mlc_step("get-preprocessed-dataset-cognata", _get_preprocessed, i["env"])


def _get_preprocessed(env):
    out_dir = os.getcwd()  # the cache entry, or --outdirname (mlcflow has changed into it)
    from abtf_ssd import cognata

    split = env["MLC_ABTF_DATASET_SPLIT"]
    prefix = cognata.SPLIT_PREFIXES[split]
    source = env["MLC_ABTF_DATASET_SOURCE"]
    env["MLC_ABTF_DATASET_PREFIX"] = prefix
    if source == "mlc":
        _download(env, out_dir, split)
        return
    from abtf_ssd import preprocess
    from abtf_ssd.mlc_scripts import env_int

    if source == "local":
        raw_root = env.get("MLC_ABTF_DATASET_RAW_PATH", "")
        if not raw_root:
            raise ValueError("_local needs --raw_path=<raw Cognata folder>")
        split_csv = env.get("MLC_ABTF_DATASET_SPLIT_CSV") or cognata.official_split(split)
    else:
        raw_root = env["MLC_ABTF_RAW_DATASET_PATH"]
        split_csv = env.get("MLC_ABTF_DATASET_SPLIT_CSV") or env[_RAW_CSV_KEYS[split]]
    preprocess.build_preprocessed(
        raw_root,
        split_csv,
        out_dir,
        prefix,
        env["MLC_ABTF_DATASET_CONFIG"],
        workers=env_int(env, "MLC_ABTF_WORKERS", "--workers"),
        count=env_int(env, "MLC_ABTF_DATASET_COUNT", "--count"),
        progress=False,
    )
    env["MLC_ABTF_DATASET_PATH"] = out_dir


def _download(env, out_dir, split):
    """The MLCommons preprocessed set of ``split`` (needs membership and a login)."""
    from abtf_ssd import download

    env["MLC_ABTF_DATASET_PATH"] = str(
        download.fetch_dataset(
            split,
            out_dir,
            env["MLC_ABTF_DOWNLOAD_TOOL"],
            dry_run=env.get("MLC_ABTF_DOWNLOAD_DRY_RUN") == "yes",
            interactive=env.get("MLC_QUIET") != "yes",
        )
    )
