"""Export an SSD-ResNet50 as ONNX or as a PyTorch checkpoint (``abtf-ssd export-onnx``, the model getter).

The ONNX graph has one input ``image`` (B, 3, H, W) float32 and two outputs, ``bboxes`` (B, 4, A)
and ``scores`` (B, 15, A), the reference model's names; the batch axis is dynamic.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from abtf_ssd.data.download import MODEL_FORMATS
from abtf_ssd.fileio import atomic_output
from abtf_ssd.model.ssd import SSDResNet50, build_ssd, init_weights, load_checkpoint
from abtf_ssd.model.train import save_checkpoint

ONNX_INPUT_NAME = "image"
ONNX_OUTPUT_NAMES = ("bboxes", "scores")
ONNX_OPSET = 18


def export_onnx(model: SSDResNet50, path: str | os.PathLike[str], batch_size: int = 1) -> Path:
    """Write the model as ONNX: input ``image`` (B, 3, H, W) float32, outputs ``bboxes``, ``scores``.

    The batch axis is dynamic (``batch_size`` only sets the example). Uses the ``torch.export``
    based exporter, which traces with fake tensors: no real forward even at 8 MP.
    """
    path = Path(path)
    model = model.eval()
    example = torch.zeros(batch_size, 3, *model.config.image_size)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        verbose=False,
        input_names=[ONNX_INPUT_NAME],
        output_names=list(ONNX_OUTPUT_NAMES),
        dynamic_shapes={"images": {0: batch}},
        opset_version=ONNX_OPSET,
        external_data=False,
        optimize=True,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as temp:
        program.save(temp, external_data=False)
    return path


def export_model(
    config: str,
    out: str | Path,
    checkpoint: str | Path | None = None,
    seed: int = 0,
    model_format: str = "onnx",
    batch_size: int = 1,
) -> Path:
    """Write an SSD-ResNet50 of ``config`` as ONNX or as a PyTorch checkpoint.

    Weights come from ``checkpoint`` when given, else from the seeded initialisation.
    """
    if model_format not in MODEL_FORMATS:
        raise ValueError(f"unknown model format {model_format!r}; known: {', '.join(MODEL_FORMATS)}")
    model = build_ssd(config)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    else:
        init_weights(model, seed)
    if model_format == "onnx":
        with _quiet_onnx_exporter():
            return export_onnx(model, out, batch_size=batch_size)
    return save_checkpoint(model, out, half=False, seed=seed, source=str(checkpoint or "random"))


_ONNX_EXPORTER_LOGGER = "torch.onnx"
_PYTREE_DEPRECATION = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
"""A FutureWarning torch's own exporter triggers in torch 2.13: nothing the caller can act on."""


@contextlib.contextmanager
def _quiet_onnx_exporter() -> Iterator[None]:
    """Hold back the ONNX exporter's chatter unless INFO logging is on (``abtf-ssd -v``).

    The ``[torch.onnx]`` progress lines it prints are kept and written to stderr if the export
    fails; its warnings about operator libraries the model does not use (torchvision) and the
    pytree deprecation are dropped. Errors it logs and exceptions it raises still come through.
    """
    if logging.getLogger().isEnabledFor(logging.INFO):
        yield
        return
    exporter_logger = logging.getLogger(_ONNX_EXPORTER_LOGGER)
    level = exporter_logger.level
    progress = io.StringIO()
    exporter_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(progress):
            warnings.filterwarnings("ignore", message=_PYTREE_DEPRECATION, category=FutureWarning)
            yield
    except BaseException:
        sys.stderr.write(progress.getvalue())
        raise
    finally:
        exporter_logger.setLevel(level)
