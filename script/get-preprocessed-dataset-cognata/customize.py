"""MLC glue for get-preprocessed-dataset-cognata: env -> abtf_ssd.data.preprocess.build_preprocessed,
or with ``--store=mmap`` abtf_ssd.data.store_writer.preprocess_to_store (raw frames) /
convert_pickles_to_store (the download)."""

import os

# Split name -> env key of the raw dataset's split CSV; the pickles' prefix is cognata.SPLIT_PREFIXES.
_RAW_CSV_KEYS = {
    "validation": "MLC_ABTF_RAW_DATASET_VAL_CSV",
    "calibration": "MLC_ABTF_RAW_DATASET_CALIBRATION_CSV",
}


def predeps(i):
    """Refuse an unknown --store before the raw frames are made or fetched (mlc_step also notes the new
    cache entry, removed if the request fails: abtf_ssd.mlc.scripts)."""
    from abtf_ssd.mlc.scripts import mlc_step

    return mlc_step("get-preprocessed-dataset-cognata", _check_store, i["env"])


def preprocess(i):
    from abtf_ssd.mlc.scripts import mlc_step

    return mlc_step("get-preprocessed-dataset-cognata", _get_preprocessed, i["env"])


def _check_store(env):
    from abtf_ssd.mlc.scripts import env_store_kind

    env_store_kind(env)


def _get_preprocessed(env):
    out_dir = os.getcwd()  # the cache entry, or --outdirname (mlcflow has changed into it)
    from abtf_ssd import cognata

    split = env["MLC_ABTF_DATASET_SPLIT"]
    prefix = cognata.SPLIT_PREFIXES[split]
    source = env["MLC_ABTF_DATASET_SOURCE"]
    from abtf_ssd.mlc.scripts import env_store_kind

    store = env_store_kind(env)
    env["MLC_ABTF_DATASET_PREFIX"] = prefix
    if source == "mlc":
        _download(env, out_dir, split, store)
        return
    from abtf_ssd.data import preprocess
    from abtf_ssd.data.store_writer import preprocess_to_store
    from abtf_ssd.mlc.scripts import env_int

    if source == "local":
        raw_root = env.get("MLC_ABTF_DATASET_RAW_PATH", "")
        if not raw_root:
            raise ValueError("_local needs --raw_path=<raw Cognata folder>")
        split_csv = env.get("MLC_ABTF_DATASET_SPLIT_CSV") or cognata.official_split(split)
    else:
        raw_root = env["MLC_ABTF_RAW_DATASET_PATH"]
        split_csv = env.get("MLC_ABTF_DATASET_SPLIT_CSV") or env[_RAW_CSV_KEYS[split]]
    # mmap: the same samples straight into <out_dir>/mmap, no pickles on disk.
    build = preprocess_to_store if store == "mmap" else preprocess.build_preprocessed
    path = build(
        raw_root,
        split_csv,
        out_dir,
        prefix,
        env["MLC_ABTF_DATASET_CONFIG"],
        workers=env_int(env, "MLC_ABTF_WORKERS", "--workers"),
        count=env_int(env, "MLC_ABTF_DATASET_COUNT", "--count"),
        progress=False,
    )
    if store == "mmap":
        # Every reader of MLC_ABTF_DATASET_PATH (app, accuracy) opens a store as well as pickles.
        env["MLC_ABTF_DATASET_PATH"] = env["MLC_ABTF_DATASET_STORE_PATH"] = str(path)
    else:
        env["MLC_ABTF_DATASET_PATH"] = out_dir


def _download(env, out_dir, split, store):
    """The MLCommons preprocessed set of ``split`` (needs membership and a login); with ``--store=mmap``
    converted once into ``<pickle folder>/mmap``."""
    from abtf_ssd.data import fetch
    from abtf_ssd.data.store_writer import prepare_store
    from abtf_ssd.mlc.scripts import download_folder, env_int

    dry_run = env.get("MLC_ABTF_DOWNLOAD_DRY_RUN") == "yes"
    pickle_dir = fetch.fetch_dataset(
        split,
        download_folder(env, "get-preprocessed-dataset-cognata"),
        env["MLC_ABTF_DOWNLOAD_TOOL"],
        dry_run=dry_run,
        interactive=env.get("MLC_QUIET") != "yes",
    )
    env["MLC_ABTF_DATASET_PATH"] = str(pickle_dir)
    if store != "mmap":
        return
    if dry_run:
        samples = f"{env['MLC_ABTF_DATASET_PREFIX']}_<i>.pkl"
        print(f"--store=mmap, then: abtf-ssd convert-store <the {samples} folder in {pickle_dir}>")
        return
    store_dir = prepare_store(
        pickle_dir,
        env["MLC_ABTF_DATASET_PREFIX"],
        workers=env_int(env, "MLC_ABTF_WORKERS", "--workers") or 1,
        progress=False,
    )
    env["MLC_ABTF_DATASET_PATH"] = env["MLC_ABTF_DATASET_STORE_PATH"] = str(store_dir)
