"""MLC glue for get-raw-dataset-cognata: env -> abtf_ssd.synth.generate or the MLCommons download."""

import os


def preprocess(i):
    env = i["env"]
    out_root = os.getcwd()  # the cache entry, or --outdirname (mlcflow has changed into it)
    source = env["MLC_ABTF_RAW_DATASET_SOURCE"]
    try:
        if source == "mlc":
            return _not_yet_downloadable()
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
    except (ValueError, OSError) as e:
        return {"return": 1, "error": f"get-raw-dataset-cognata: {e}"}
    env["MLC_ABTF_RAW_DATASET_PATH"] = out_root
    return {"return": 0}


def _int(env, key, flag):
    value = str(env[key]).strip()
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{flag} must be an integer, got {value!r}") from None


def _not_yet_downloadable():
    return {
        "return": 1,
        "error": "get-raw-dataset-cognata,_mlc: downloading the real Cognata frames is not implemented yet "
        "(it needs MLCommons membership and the abtf_ssd.download module). Use _synthetic, or fetch the "
        "frames yourself and run get,preprocessed,dataset,cognata,_local --raw_path=<folder>.",
    }
