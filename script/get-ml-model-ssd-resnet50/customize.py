"""MLC glue for get-ml-model-ssd-resnet50: env -> abtf_ssd.cli.export_model or the MLCommons download."""

import os

# --format -> file extension of the model written.
_EXTENSIONS = {"onnx": ".onnx", "pytorch": ".pth"}


def preprocess(i):
    from abtf_ssd.mlc_scripts import mlc_step

    return mlc_step("get-ml-model-ssd-resnet50", _get_model, i["env"])


def _get_model(env):
    source = env["MLC_ABTF_ML_MODEL_SOURCE"]
    model_format = env["MLC_ABTF_ML_MODEL_FORMAT"]
    if source == "mlc":
        from abtf_ssd import download
        from abtf_ssd.mlc_scripts import download_folder

        path = download.fetch_model(
            model_format,
            download_folder(env, "get-ml-model-ssd-resnet50"),
            env["MLC_ABTF_DOWNLOAD_TOOL"],
            dry_run=env.get("MLC_ABTF_DOWNLOAD_DRY_RUN") == "yes",
            interactive=env.get("MLC_QUIET") != "yes",
        )
    elif source == "local":
        path = _local_model(env["MLC_ABTF_ML_MODEL_LOCAL_PATH"], model_format)
    else:
        from abtf_ssd.cli import export_model
        from abtf_ssd.mlc_scripts import env_int
        from abtf_ssd.model import DEMO_WEIGHTS

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


def _local_model(path, model_format):
    if not os.path.isfile(path):
        raise ValueError(f"_local.<path>: no model file at {path!r}")
    if not path.endswith(_EXTENSIONS[model_format]):
        raise ValueError(f"_local.<path>: {path} is not a {model_format} model ({_EXTENSIONS[model_format]})")
    return os.path.abspath(path)
