"""MLC glue for get-raw-dataset-cognata: env -> abtf_ssd.synth.generate or the MLCommons download."""

import os


def preprocess(i):
    env = i["env"]
    out_root = os.getcwd()  # the cache entry, or --outdirname (mlcflow has changed into it)
    source = env["MLC_ABTF_RAW_DATASET_SOURCE"]
    try:
        if source == "mlc":
            return _download(env, out_root)
        from abtf_ssd import synth

        synth.generate(
            out_root,
            frames=_int(env, "MLC_ABTF_SYNTH_FRAMES", "--frames"),
            width=_int(env, "MLC_ABTF_SYNTH_WIDTH", "--width"),
            height=_int(env, "MLC_ABTF_SYNTH_HEIGHT", "--height"),
            seed=_int(env, "MLC_ABTF_SYNTH_SEED", "--seed"),
            calibration_frames=_int(env, "MLC_ABTF_SYNTH_CALIBRATION_FRAMES", "--calibration_frames"),
            workers=_int(env, "MLC_ABTF_WORKERS", "--workers") if env.get("MLC_ABTF_WORKERS") else None,
        )
        env["MLC_ABTF_RAW_DATASET_VAL_CSV"] = os.path.join(out_root, synth.SPLIT_FILES["validation"])
        env["MLC_ABTF_RAW_DATASET_CALIBRATION_CSV"] = os.path.join(out_root, synth.SPLIT_FILES["calibration"])
    except ImportError as e:
        return {"return": 1, "error": f"get-raw-dataset-cognata: {e}; install the package: pip install -e ."}
    except (ValueError, OSError, RuntimeError) as e:
        return {"return": 1, "error": f"get-raw-dataset-cognata: {e}"}
    env["MLC_ABTF_RAW_DATASET_PATH"] = out_root
    return {"return": 0}


def _int(env, key, flag):
    value = str(env[key]).strip()
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{flag} must be an integer, got {value!r}") from None


def _download(env, out_root):
    """The MLCommons raw recordings (needs membership and a login), with the official split CSVs."""
    from abtf_ssd import cognata, download

    root = download.fetch_dataset(
        "raw",
        out_root,
        env["MLC_ABTF_DOWNLOAD_TOOL"],
        dry_run=env.get("MLC_ABTF_DOWNLOAD_DRY_RUN") == "yes",
        interactive=env.get("MLC_QUIET") != "yes",
    )
    env["MLC_ABTF_RAW_DATASET_PATH"] = str(root)
    env["MLC_ABTF_RAW_DATASET_VAL_CSV"] = str(cognata.official_split("validation"))
    env["MLC_ABTF_RAW_DATASET_CALIBRATION_CSV"] = str(cognata.official_split("calibration"))
    return {"return": 0}
