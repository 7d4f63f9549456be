"""MLC glue for get-ml-model-ssd-resnet50: env -> abtf_ssd.model.export.export_model or the download."""

import os

# --format -> file extension of the model written.
_EXTENSIONS = {"onnx": ".onnx", "pytorch": ".pth"}


def predeps(i):
    """Refuse a precision the format cannot have before the calibration split is fetched."""
    from abtf_ssd.mlc.scripts import mlc_step
    from abtf_ssd.model.quantize import check_precision

    env = i["env"]
    return mlc_step(
        "get-ml-model-ssd-resnet50",
        check_precision,
        env["MLC_ABTF_ML_MODEL_PRECISION"],
        env["MLC_ABTF_ML_MODEL_FORMAT"],
    )


def preprocess(i):
    from abtf_ssd.mlc.scripts import mlc_step

    return mlc_step("get-ml-model-ssd-resnet50", _get_model, i["env"])


def _get_model(env):
    source = env["MLC_ABTF_ML_MODEL_SOURCE"]
    model_format = env["MLC_ABTF_ML_MODEL_FORMAT"]
    if source == "mlc":
        from abtf_ssd.data import fetch
        from abtf_ssd.mlc.scripts import download_folder

        path = fetch.fetch_model(
            model_format,
            download_folder(env, "get-ml-model-ssd-resnet50"),
            env["MLC_ABTF_DOWNLOAD_TOOL"],
            dry_run=env.get("MLC_ABTF_DOWNLOAD_DRY_RUN") == "yes",
            interactive=env.get("MLC_QUIET") != "yes",
        )
    elif source == "local":
        path = _local_model(env["MLC_ABTF_ML_MODEL_LOCAL_PATH"], model_format)
    else:
        from abtf_ssd.mlc.scripts import env_int
        from abtf_ssd.model.export import export_model
        from abtf_ssd.model.ssd import DEMO_WEIGHTS

        # The demo model is the committed checkpoint; until it exists, seeded random demo weights.
        checkpoint = DEMO_WEIGHTS if source == "synthetic" and DEMO_WEIGHTS.is_file() else None
        env["MLC_ABTF_ML_MODEL_WEIGHTS"] = str(checkpoint) if checkpoint else "random"
        path = export_model(
            env["MLC_ABTF_ML_MODEL_CONFIG"],
            os.path.join(os.getcwd(), f"ssd_resnet50_{source}{_EXTENSIONS[model_format]}"),
            checkpoint=checkpoint,
            seed=env_int(env, "MLC_ABTF_ML_MODEL_SEED", "--seed"),
            model_format=model_format,
        )
    env["MLC_ABTF_ML_MODEL_PATH"] = str(path)
    if env.get("MLC_ABTF_DOWNLOAD_DRY_RUN") == "yes":
        return
    from abtf_ssd.model.quantize import DEFAULT_TEXT, model_data_types, reduce_precision

    env["MLC_ABTF_ML_MODEL_FP32_PATH"] = str(path)
    path = reduce_precision(
        path,
        env["MLC_ABTF_ML_MODEL_PRECISION"],
        os.getcwd(),
        # --calibration_path, else the calibration split the _int8 dependency made
        calibration_dir=env.get("MLC_ABTF_ML_MODEL_CALIBRATION_PATH") or env.get("MLC_ABTF_DATASET_PATH"),
        method=env.get("MLC_ABTF_ML_MODEL_QUANTIZE_METHOD", DEFAULT_TEXT),
        frames=env.get("MLC_ABTF_ML_MODEL_QUANTIZE_FRAMES", DEFAULT_TEXT),
        keep_fp32=env.get("MLC_ABTF_ML_MODEL_KEEP_FP32", DEFAULT_TEXT),
    )
    env["MLC_ABTF_ML_MODEL_PATH"] = str(path)
    # What a submission reports (measurements.json, system description).
    types = model_data_types(path)
    env["MLC_ABTF_ML_MODEL_WEIGHT_DATA_TYPES"] = types.weights
    env["MLC_ABTF_ML_MODEL_ACTIVATION_DATA_TYPES"] = types.activations
    env["MLC_ABTF_ML_MODEL_INPUT_DATA_TYPES"] = types.inputs


def _local_model(path, model_format):
    if not os.path.isfile(path):
        raise ValueError(f"_local.<path>: no model file at {path!r}")
    if not path.endswith(_EXTENSIONS[model_format]):
        raise ValueError(f"_local.<path>: {path} is not a {model_format} model ({_EXTENSIONS[model_format]})")
    return os.path.abspath(path)
