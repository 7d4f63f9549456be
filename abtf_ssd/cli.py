"""``abtf-ssd``: the command line over the library, one subcommand per library entry point.

    abtf-ssd synth | preprocess | convert-store | export-onnx | train | run | accuracy | show | sysinfo

Each subcommand maps its options onto one library function (``--store mmap`` picks the
memory-mapped store's function: :mod:`abtf_ssd.data.store_writer`). Options left out are not passed at
all, so the library's own defaults apply and are stated only there. Errors the library raises for
bad input (``ValueError``, ``OSError``, ``RuntimeError``) are printed as one line and exit 1; so is a
``run`` in which queries failed, after its results table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from abtf_ssd.cognata import SPLIT_PREFIXES, SPLITS, official_split
from abtf_ssd.data.download import MODEL_FORMATS
from abtf_ssd.loadgen import rate_search
from abtf_ssd.model.backends import FRAMEWORKS

PROG = "abtf-ssd"
"""The console script's name: how help, errors and recorded commands name this program."""


# ---------------------------------------------------------------------------------------------
# Subcommands: each takes the parsed options as keyword arguments.


def _synth(**options: Any) -> None:
    from abtf_ssd.data.synth import generate

    print(generate(**options))


def _preprocess(split: str | None = None, store: str = "pickle", **options: Any) -> None:
    from abtf_ssd.data.preprocess import build_preprocessed
    from abtf_ssd.data.store_writer import preprocess_to_store

    if split is not None:
        options["split_csv"] = official_split(split)
    print((preprocess_to_store if store == "mmap" else build_preprocessed)(**options))


def _convert_store(pickle_dir: str, store_dir: str | None = None, **options: Any) -> None:
    from abtf_ssd.data.store import default_store_dir
    from abtf_ssd.data.store_writer import StoreNotWritableError, convert_pickles_to_store

    out = store_dir if store_dir is not None else default_store_dir(pickle_dir)
    try:
        print(convert_pickles_to_store(pickle_dir, out, **options))
    except StoreNotWritableError as e:
        raise StoreNotWritableError(f"{e}; give --out <a folder you can write>") from None


def _export(**options: Any) -> None:
    from abtf_ssd.model.export import export_model

    print(export_model(**options))


def _train(**options: Any) -> None:
    from abtf_ssd.model.train import train

    result = train(**options)
    print(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in vars(result).items()}))


def _run(store: str = "pickle", **options: Any) -> None:
    from abtf_ssd.loadgen.harness import RunOptions, run

    if store == "mmap":
        from abtf_ssd.data.store_writer import prepare_store

        prefix = options.get("dataset_prefix", RunOptions.dataset_prefix)
        options["dataset_dir"] = str(prepare_store(options["dataset_dir"], prefix))
    result = run(RunOptions(**options))
    print(f"results: {result.output_dir}")
    if not result.ok:
        # A performance run with failed queries returns (its logs and table are kept): exit 1 all the same.
        raise RuntimeError(result.failure_message())


def _accuracy(**options: Any) -> None:
    from abtf_ssd.data.metric import format_accuracy
    from abtf_ssd.loadgen.accuracy import accuracy_main

    print(format_accuracy(accuracy_main(**options)), end="")


def _show(**options: Any) -> None:
    from abtf_ssd.loadgen.show import render

    print(render(**options))


def _plan(**options: Any) -> None:
    from abtf_ssd.submission.plan.cli import main_action

    main_action(**options)


def _sysinfo(out: str | None = None, **options: Any) -> None:
    from abtf_ssd.submission.sysinfo import collect, write_sut_info

    if out is None:
        print(json.dumps(collect(**options), indent=2))
    else:
        print(write_sut_info(out, **options))


def _quantize(precision: str = "int8", **options: Any) -> None:
    from abtf_ssd.model import quantize

    if precision == "int8":
        if "calibration_dir" not in options:
            raise ValueError("--precision int8 needs --calibration <the preprocessed calibration split>")
        print(quantize.quantize_int8(**options))
        return
    unused = sorted({"calibration_dir", "method", "frames", "per_channel"} & options.keys())
    if unused:
        raise ValueError(f"--precision {precision} takes no calibration options ({', '.join(unused)})")
    print(quantize.convert_fp16(**options))


# ---------------------------------------------------------------------------------------------
# The parser


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _field_type(field: dataclasses.Field) -> type:
    """int for fields annotated ``int`` / ``int | None``, str for everything else (paths, names)."""
    kinds = {part.strip() for part in str(field.type).split("|")}
    return int if "int" in kinds else float if "float" in kinds else str


RUN_HELP = {
    "dataset_dir": "folder of preprocessed samples: <prefix>_<i>.pkl files or a memory-mapped store",
    "model_path": "model file: .onnx for onnxruntime, .pth for pytorch",
    "framework": "inference framework",
    "device": "cpu, cuda[:N], or tensorrt[:N] with onnxruntime-gpu",
    "config_name": "model config (default: inferred from the model)",
    "scenario": "LoadGen scenario",
    "mode": "performance; accuracy (logs every detection and computes the mAP); find-performance "
    "(measures the expected latency later runs use)",
    "round": "MLPerf Automotive round whose rules apply",
    "execution_mode": "test: a short run of --test-query-count queries; valid: the full rules of the round",
    "test_query_count": "queries (and samples) of a test-mode or find-performance run",
    "performance_sample_count": "samples LoadGen keeps loaded (default: the round's; never more than the "
    "run has: a larger value is lowered, with a warning, and the lowered one is recorded)",
    "batch_size": "largest batch the SUT sends the backend (SingleStream sends 1)",
    "threads": "CPU threads for inference (default: every core)",
    "results_dir": "results folder: <results-dir>/<system-name>/ssd/<scenario>/...",
    "system_name": "system name: the <results-dir>/<system-name> folder",
    "user_conf": "LoadGen user.conf to apply on top of the round's settings",
    "audit_config": "audit.config of a compliance test: makes this a compliance run",
    "expected_latency_ns": "expected latency of a query in ns (default: the one find-performance stored)",
    "target_qps": "ConstantStream rate in queries per second (default: the one find-performance stored, "
    "in v1.0 only when it is the round's; else the round's)",
    "rate_margin": "ConstantStream find-performance: fraction of the latency bound a trial's p99.9 "
    f"must leave free (default: {rate_search.DEFAULT_MARGIN:g})",
    "rate_trial_seconds": "ConstantStream find-performance: minimum length of each rate trial in seconds "
    f"(default: {rate_search.DEFAULT_TRIAL_SECONDS:g}; test mode {rate_search.TEST_TRIAL_SECONDS:g})",
    "rate_trial_queries": "ConstantStream find-performance: minimum queries of each rate trial (default: "
    f"{rate_search.DEFAULT_TRIAL_QUERIES}; test mode {rate_search.TEST_TRIAL_QUERIES})",
    "rate_resolution_qps": "ConstantStream find-performance: the search stops when the rate that holds and "
    f"the one that fails are this close (default: {rate_search.DEFAULT_RESOLUTION_QPS:g}; test mode "
    f"{rate_search.TEST_RESOLUTION_QPS:g})",
    "rate_max_trials": "ConstantStream find-performance: most trials of the search (default: "
    f"{rate_search.DEFAULT_MAX_TRIALS}; test mode {rate_search.TEST_MAX_TRIALS})",
    "dataset_prefix": "sample file prefix: val (validation split) or calib (calibration split)",
    "output_dir": "folder LoadGen writes into, instead of the results layout",
    "command": "command line recorded in command.txt (default: this abtf-ssd command)",
}
"""Help text of each ``abtf-ssd run`` option, by :class:`~abtf_ssd.loadgen.harness.RunOptions` field."""


def _add_dataclass_options(
    parser: argparse.ArgumentParser, cls: type, choices: dict[str, Sequence[str]], helps: dict[str, str]
) -> None:
    """One option a field, ``--field-name``, described by ``helps``; fields without a default are
    required. A field missing from ``helps`` is described by its name."""
    for field in dataclasses.fields(cls):
        required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        described = helps.get(field.name, field.name.replace("_", " "))
        shown = required or field.default is None or "default:" in described
        default = "" if shown else f" (default: {field.default})"
        _opt(
            parser,
            _flag(field.name),
            field.name,
            f"{described}{default}",
            type=_field_type(field),
            required=required,
            choices=choices.get(field.name),
        )


def run_arguments(options: Any) -> list[str]:
    """``abtf-ssd run`` arguments that recreate the :class:`~abtf_ssd.loadgen.harness.RunOptions` ``options``.

    Only values that differ from the dataclass defaults are written, so the command stays short.
    """
    args = []
    for field in dataclasses.fields(options):
        value = getattr(options, field.name)
        if value is not None and value != field.default:
            args += [_flag(field.name), str(value)]
    return args


def _opt(parser: argparse.ArgumentParser, flag: str, dest: str, help: str, **kwargs: Any) -> None:
    """An option that is absent from the namespace unless given (library default applies)."""
    kwargs.setdefault("default", argparse.SUPPRESS)
    parser.add_argument(flag, dest=dest, help=help, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from abtf_ssd.data.store import STORE_KINDS

    parser = argparse.ArgumentParser(
        prog=PROG, description="MLPerf Automotive SSD-ResNet50 on Cognata: library commands."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="write a synthetic Cognata dataset (raw layout + split CSVs)")
    _opt(p, "--out", "out_root", "dataset root to write", required=True)
    _opt(p, "--frames", "frames", "validation frames", type=int)
    _opt(p, "--calibration-frames", "calibration_frames", "calibration frames", type=int)
    _opt(p, "--train-frames", "train_frames", "training frames", type=int)
    _opt(p, "--width", "width", "frame width in pixels", type=int)
    _opt(p, "--height", "height", "frame height in pixels", type=int)
    _opt(p, "--seed", "seed", "scene seed", type=int)
    _opt(p, "--workers", "workers", "processes (default: one per CPU)", type=int)
    p.set_defaults(handler=_synth)

    p = sub.add_parser("preprocess", help="raw frames -> <prefix>_<i>.pkl samples")
    _opt(p, "--raw", "raw_root", "raw dataset root the split CSV is relative to", required=True)
    split = p.add_mutually_exclusive_group(required=True)
    _opt(split, "--split-csv", "split_csv", "img,ann split CSV")
    _opt(split, "--split", "split", "official split", choices=SPLITS)
    _opt(p, "--out", "out_dir", "output folder", required=True)
    official_prefixes = ", ".join(f"{prefix} ({name})" for name, prefix in SPLIT_PREFIXES.items())
    _opt(p, "--prefix", "prefix", f"sample file prefix: {official_prefixes}", required=True)
    _opt(p, "--config", "config_name", "model config the images are resized for", required=True)
    _opt(p, "--workers", "workers", "processes (default: one per CPU)", type=int)
    _opt(p, "--count", "count", "only the first N rows of the split", type=int)
    _opt(
        p,
        "--store",
        "store",
        "pickle (default): one <prefix>_<i>.pkl per frame in --out; mmap: the memory-mapped sample store "
        "in <out>/mmap instead (no pickles; byte-identical samples)",
        choices=STORE_KINDS,
    )
    p.set_defaults(handler=_preprocess)

    p = sub.add_parser(
        "convert-store", help="convert a folder of <prefix>_<i>.pkl samples into a memory-mapped sample store"
    )
    p.add_argument("pickle_dir", help="folder of <prefix>_<i>.pkl samples (ours or the official download)")
    _opt(p, "--out", "store_dir", "store folder (default: <pickle_dir>/mmap)")
    _opt(p, "--workers", "workers", "processes reading pickles (default: 1)", type=int)
    _opt(p, "--prefix", "prefix", "sample file prefix (default: the folder's only one)")
    _opt(p, "--count", "count", "only the first N samples", type=int)
    p.set_defaults(handler=_convert_store)

    p = sub.add_parser("export-onnx", help="write a model of a config as ONNX (or a PyTorch checkpoint)")
    _opt(p, "--config", "config", "model config name", required=True)
    _opt(p, "--out", "out", "output file", required=True)
    _opt(p, "--checkpoint", "checkpoint", "weights to load (default: seeded random initialisation)")
    _opt(p, "--seed", "seed", "initialisation seed without --checkpoint", type=int)
    _opt(p, "--format", "model_format", "output format", choices=tuple(MODEL_FORMATS))
    _opt(p, "--batch-size", "batch_size", "example batch size of the export", type=int)
    p.set_defaults(handler=_export)

    p = sub.add_parser("train", help="train a model from scratch on preprocessed samples")
    _opt(p, "--data", "train_dir", "folder of <prefix>_<i>.pkl samples", required=True)
    _opt(p, "--out", "out_path", "checkpoint to write", required=True)
    _opt(p, "--config", "config_name", "model config name")
    _opt(p, "--minutes", "minutes", "wall-clock budget", type=float)
    _opt(p, "--max-iters", "max_iters", "stop after this many iterations instead", type=int)
    _opt(p, "--seed", "seed", "initialisation and sampling seed", type=int)
    _opt(p, "--batch-size", "batch_size", "samples per step", type=int)
    _opt(p, "--lr", "lr", "peak learning rate", type=float)
    _opt(p, "--threads", "threads", "torch threads", type=int)
    _opt(p, "--prefix", "prefix", "sample file prefix")
    _opt(p, "--full-precision", "half", "store float32 weights", action="store_false")
    p.set_defaults(handler=_train)

    from abtf_ssd.config import CONFIGS
    from abtf_ssd.loadgen import rules
    from abtf_ssd.loadgen.harness import RunOptions

    p = sub.add_parser("run", help="one LoadGen run (performance, accuracy or find-performance)")
    run_choices = {
        "framework": FRAMEWORKS,
        "config_name": tuple(CONFIGS),
        "scenario": rules.SCENARIOS,
        "mode": rules.MODES,
        "round": tuple(rules.ROUNDS),
        "execution_mode": rules.EXECUTION_MODES,
    }
    _add_dataclass_options(p, RunOptions, run_choices, RUN_HELP)
    _opt(
        p,
        "--store",
        "store",
        "pickle (default): read --dataset-dir as it is; mmap: run on its memory-mapped sample store, "
        "converting a pickle folder into <dataset-dir>/mmap once (a rerun reuses it)",
        choices=STORE_KINDS,
    )
    p.set_defaults(handler=_run)

    p = sub.add_parser("accuracy", help="mAP of an accuracy log; writes accuracy.txt")
    source = p.add_mutually_exclusive_group(required=True)
    _opt(source, "--result-dir", "result_dir", "run folder (its accuracy/ or itself holds the log)")
    _opt(source, "--log", "log_path", "a mlperf_log_accuracy.json")
    _opt(p, "--dataset", "dataset_path", "preprocessed folder (default: named by the run's results.json)")
    _opt(p, "--out", "out", "accuracy.txt to write (default: beside the log)")
    _opt(p, "--prefix", "prefix", "sample file prefix")
    p.set_defaults(handler=_accuracy)

    p = sub.add_parser("show", help="draw one frame of an accuracy run: ground truth and predictions (PNG)")
    _opt(p, "--result-dir", "source", "accuracy run folder or its mlperf_log_accuracy.json", required=True)
    _opt(p, "--dataset", "dataset_dir", "the run's preprocessed folder", required=True)
    _opt(p, "--sample", "sample_index", "sample index (qsl_idx)", type=int, required=True)
    _opt(p, "--out", "out_png", "PNG to write", required=True)
    _opt(p, "--raw-frame", "raw_frame", "the original PNG to draw on (default: the denormalised input)")
    _opt(p, "--config", "config_name", "model config (default: from the image size)")
    _opt(p, "--score-threshold", "score_threshold", "lowest score drawn", type=float)
    _opt(p, "--max-predictions", "max_predictions", "most predictions drawn", type=int)
    _opt(p, "--prefix", "prefix", "sample file prefix")
    p.set_defaults(handler=_show)

    from abtf_ssd.submission.plan.cli import ACTIONS

    p = sub.add_parser("plan", help="run a submission plan (automation/plans/*.yaml), its status or estimate")
    p.add_argument("action", choices=ACTIONS, help="run | status | estimate")
    p.add_argument("plan_file", help="the plan (YAML): automation/README.md")
    _opt(p, "--output", "output", "output folder (default: the plan's output, else <plan name>-submission)")
    _opt(p, "--max-hours", "max_hours", "refuse a plan estimated longer than this", type=float)
    _opt(p, "--latency-ms", "latency_ms", "latency of one query for the estimate", type=float)
    _opt(p, "--official-tools", "official_tools", "unpacked mlperf_automotive: also run its checker (run)")
    p.set_defaults(handler=_plan)

    p = sub.add_parser("sysinfo", help="describe this system (mlc-sut-info.json)")
    _opt(p, "--out", "out", "file to write (default: print)")
    _opt(p, "--framework", "framework", "framework whose version to record", choices=FRAMEWORKS)
    _opt(p, "--device", "device", "device the run uses: cpu, cuda[:N], tensorrt[:N]")
    p.set_defaults(handler=_sysinfo)

    from abtf_ssd.model import quantize

    p = sub.add_parser(
        "quantize", help="a reduced-precision ONNX model: INT8 calibrated on the calibration split, FP16"
    )
    _opt(p, "--model", "model_path", "FP32 ONNX model", required=True)
    _opt(p, "--out", "out_path", "ONNX model to write", required=True)
    _opt(
        p,
        "--precision",
        "precision",
        "int8 (default: CPU) or fp16 (CUDA/TensorRT)",
        choices=quantize.PRECISIONS,
    )
    _opt(p, "--calibration", "calibration_dir", "preprocessed calibration split (int8; calib_<i> samples)")
    _opt(p, "--method", "method", "activation range calibration (int8)", choices=quantize.CALIBRATION_METHODS)
    _opt(p, "--frames", "frames", "calibrate on the first N frames (int8; default: all)", type=int)
    _opt(
        p,
        "--keep-fp32",
        "keep_fp32",
        f"nodes left in FP32: {', '.join(quantize.KEEP_FP32_GROUPS)} or fnmatch patterns over node or "
        "weight names, e.g. 'loc.*' (default: the int8 recipe's; give it empty to quantize every node)",
        nargs="*",
    )
    _opt(
        p,
        "--per-tensor",
        "per_channel",
        "one weight scale per tensor (int8; default: per channel)",
        action="store_false",
    )
    p.set_defaults(handler=_quantize)
    return parser


def _error_line(error: BaseException) -> str:
    """What a library error says to a person, with the flag that resolves it where there is one."""
    from abtf_ssd.data.store import UnknownPrefixError

    if isinstance(error, UnknownPrefixError):
        return f"{error}; give --prefix {' or --prefix '.join(error.prefixes)}"
    return str(error.args[0] if isinstance(error, KeyError) and error.args else error)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = vars(build_parser().parse_args(argv))
    logging.basicConfig(level=logging.INFO if args.pop("verbose") else logging.WARNING, format="%(message)s")
    command = args.pop("command")
    handler: Callable[..., None] = args.pop("handler")
    if handler is _run:
        # command.txt (and a submission's README) shows what a person would type, not `python .../cli.py`.
        args.setdefault("command", shlex.join([PROG, *argv]))
    try:
        handler(**args)
    except (ValueError, OSError, RuntimeError, KeyError) as error:
        print(f"abtf-ssd {command}: error: {_error_line(error)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
