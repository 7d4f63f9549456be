"""Build the automotive LoadGen from the ``mlperf_automotive`` repository into a Python environment.

The PyPI wheel ``mlcommons-loadgen`` is the *inference* LoadGen: no ConstantStream, and in
performance mode it loads samples 0..127 instead of a seeded random 128. A valid automotive
submission needs the LoadGen of ``loadgen/`` in https://github.com/mlcommons/mlperf_automotive at
the round's tag. Both install the module ``mlperf_loadgen``, so an environment holds one or the other.

The steps, each one argument list run without a shell (:func:`build_steps` lists them exactly):

1. ``git clone --depth 1 --branch <tag>`` (skipped with ``src``, an existing checkout);
2. ``git status`` of ``loadgen/``: a modified tree is refused, because LoadGen records the
   status at build time and then logs an error in every run, which fails the submission checker
   (untracked files are ignored, as LoadGen ignores them: a build leaves some behind);
3. ``git rev-parse <tag>^{commit} HEAD``: the checkout must be at the round's tag;
4. ``pip wheel`` of ``loadgen/`` (a C++ compiler; pybind11 and setuptools come from PyPI
   through pip's isolated build), so a failed compile leaves the environment as it was;
5. ``pip uninstall`` of the PyPI wheel, then ``pip install`` of the wheel just built;
6. a fresh interpreter imports ``mlperf_loadgen`` and must find the automotive one.

Which LoadGen is installed is told by :func:`abtf_ssd.loadgen.rules.has_constant_stream` (the module);
the submission checker tells it from a run's detail log (``checker.is_automotive_loadgen``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

AUTOMOTIVE_REPO_URL = "https://github.com/mlcommons/mlperf_automotive"
ROUND_TAGS: dict[str, str] = {"v0.5": "v0.5", "v1.0": "v1.0"}
"""Git ref of the automotive LoadGen for each round of ``rules.ROUNDS``.

Not verifiable from here (no machine reaches GitHub): BENCHMARK.md names the tag ``v0.5``; the
upstream README sends v0.5 reproducers to the ref ``v0.5abtf``; ``v1.0`` follows the pattern.
``build(..., ref=...)`` (``--ref``) names another ref.
"""
PYPI_DISTRIBUTION = "mlcommons-loadgen"
"""The distribution of both LoadGens (the PyPI wheel's, and the automotive ``loadgen/setup.py``'s:
checked on the wheel built before anything is uninstalled)."""
LOADGEN_DIR = "loadgen"
CHECKOUT_NAME = "mlperf_automotive"
WHEEL_DIR_NAME = "loadgen-wheel"
KINDS = ("automotive", "inference")

_RULES_PATH = Path(__file__).resolve().with_name("rules.py")
_KIND_PROBE = (
    "import importlib.util, sys; "
    f'spec = importlib.util.spec_from_file_location("_abtf_ssd_rules", {json.dumps(str(_RULES_PATH))}); '
    "rules = sys.modules[spec.name] = importlib.util.module_from_spec(spec); "
    "spec.loader.exec_module(rules); "
    'print("automotive" if rules.has_constant_stream() else "inference", rules.lg.__file__)'
)
"""Run by the target interpreter: prints ``<kind> <path of its mlperf_loadgen>``.

It loads ``rules.py`` by path, so the answer comes from :func:`abtf_ssd.loadgen.rules.has_constant_stream`
without putting any folder of this environment on the other interpreter's ``sys.path`` (so
``rules.py`` must keep importing nothing but the standard library and ``mlperf_loadgen``; the
throwaway-venv test of ``tests/test_loadgen_build.py`` fails otherwise).
"""


class LoadgenBuildError(RuntimeError):
    """A bad request (round, ``src``), a modified or wrong checkout, or a step that failed."""


def round_ref(round: str, ref: str | None = None) -> str:
    """The git ref to build for ``round``: ``ref`` when given, else :data:`ROUND_TAGS`."""
    if round not in ROUND_TAGS:
        raise LoadgenBuildError(f"unknown round {round!r}; known: {', '.join(ROUND_TAGS)}")
    return ref or ROUND_TAGS[round]


def check_source(src: str | Path) -> Path:
    """``src`` as an absolute path, after checking it is a checkout root holding a ``loadgen/`` package."""
    root = Path(src).expanduser().resolve()
    if not root.is_dir():
        raise LoadgenBuildError(f"--src {src}: no such folder")
    loadgen = root / LOADGEN_DIR
    if not loadgen.is_dir():
        raise LoadgenBuildError(
            f"--src {src}: no {LOADGEN_DIR}/ folder; give the root of a mlperf_automotive checkout"
        )
    if not (loadgen / "setup.py").is_file() and not (loadgen / "pyproject.toml").is_file():
        raise LoadgenBuildError(f"{loadgen}: neither setup.py nor pyproject.toml; not a LoadGen source tree")
    return root


def _commands(ref: str, checkout: Path, wheel_dir: Path, python: str, clone: bool) -> dict[str, list[str]]:
    """Every step's argument list by step name, in the order they run."""
    pip = [python, "-m", "pip"]
    commands = {}
    if clone:
        commands["clone"] = [
            "git",
            "clone",
            "--depth",
            "1",
            "--branch",
            ref,
            AUTOMOTIVE_REPO_URL,
            str(checkout),
        ]
    git = ["git", "-C", str(checkout)]
    commands["status"] = [*git, "status", "--porcelain", "--untracked-files=no", "--", LOADGEN_DIR]
    commands["revision"] = [*git, "rev-parse", f"{ref}^{{commit}}", "HEAD"]
    commands["wheel"] = [
        *pip,
        "wheel",
        "--no-deps",
        "--wheel-dir",
        str(wheel_dir),
        str(checkout / LOADGEN_DIR),
    ]
    commands["uninstall"] = [*pip, "uninstall", "-y", PYPI_DISTRIBUTION]
    commands["install"] = [
        *pip, "install", "--no-deps", "--no-index", "--find-links", str(wheel_dir), PYPI_DISTRIBUTION
    ]  # fmt: skip
    commands["verify"] = [python, "-c", _KIND_PROBE]
    return commands


def _layout(src: str | Path | None, workdir: str | Path) -> tuple[Path, Path]:
    """(checkout, wheel folder): the clone goes to ``workdir`` unless ``src`` is given."""
    work = Path(workdir).expanduser().resolve()
    checkout = check_source(src) if src is not None else work / CHECKOUT_NAME
    return checkout, work / WHEEL_DIR_NAME


def build_steps(
    round: str,
    src: str | Path | None = None,
    workdir: str | Path = ".",
    python: str = sys.executable,
    ref: str | None = None,
) -> list[list[str]]:
    """The exact argument lists :func:`build` runs, in order (see the module docstring).

    ``src``: an existing mlperf_automotive checkout (no clone; checked by :func:`check_source`).
    ``workdir``: where the clone and the built wheel go. ``python``: the environment to install into.
    """
    checkout, wheel_dir = _layout(src, workdir)
    return list(_commands(round_ref(round, ref), checkout, wheel_dir, python, src is None).values())


def build(
    round: str,
    src: str | Path | None = None,
    dry_run: bool = False,
    python: str = sys.executable,
    workdir: str | Path | None = None,
    ref: str | None = None,
) -> dict[str, Any]:
    """Build and install the automotive LoadGen of ``round`` into ``python``'s environment.

    ``workdir`` None: a temporary folder, removed afterwards. ``dry_run`` prints the steps and
    changes nothing. Returns ``{"round", "ref", "checkout", "python", "steps", "dry_run",
    "revision" (the commit built), "wheel" (its file name), "kind", "module" (where the
    installed mlperf_loadgen lives)}``; the last four are None in a dry run. Raises
    :class:`LoadgenBuildError` naming the step and what to do.
    """
    tag = round_ref(round, ref)
    with tempfile.TemporaryDirectory(prefix="abtf-loadgen-") as temporary:
        checkout, wheel_dir = _layout(src, workdir if workdir is not None else temporary)
        commands = _commands(tag, checkout, wheel_dir, python, src is None)
        result: dict[str, Any] = {
            "round": round,
            "ref": tag,
            "checkout": str(checkout),
            "python": python,
            "steps": list(commands.values()),
            "dry_run": dry_run,
            "revision": None,
            "wheel": None,
            "kind": None,
            "module": None,
        }
        if dry_run:
            for argv in commands.values():
                print(shlex.join(argv), flush=True)
            return result
        if src is None and checkout.exists():
            raise LoadgenBuildError(f"{checkout} exists already; pass it as --src or use an empty workdir")
        if wheel_dir.exists() and any(wheel_dir.iterdir()):
            raise LoadgenBuildError(f"{wheel_dir} holds files of an earlier build; remove it first")
        for step, argv in commands.items():
            _STEPS[step](argv, result)
        return result


def _run_shown(argv: list[str], what: str, hint: str = "") -> None:
    """Run a step whose output the user should see (clone, pip)."""
    print(f"+ {shlex.join(argv)}", flush=True)
    try:
        # No credential prompt: a missing tag must fail, not wait for a password.
        returncode = subprocess.run(
            argv, check=False, env={**os.environ, "GIT_TERMINAL_PROMPT": "0"}
        ).returncode
    except FileNotFoundError:
        raise LoadgenBuildError(f"{what}: {argv[0]} not found") from None
    if returncode != 0:
        raise LoadgenBuildError(f"{what} failed with exit status {returncode}: {shlex.join(argv)}{hint}")


def _run_quiet(argv: list[str], what: str) -> str:
    """Run a check and return its stdout; a failure becomes an error that quotes its stderr."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise LoadgenBuildError(f"{what}: {argv[0]} not found") from None
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise LoadgenBuildError(
            f"{what} failed ({shlex.join(argv)}): {detail[-1] if detail else 'no output'}"
        )
    return proc.stdout


def _clone(argv: list[str], result: dict[str, Any]) -> None:
    _run_shown(argv, "git clone", f" (needs network access to {AUTOMOTIVE_REPO_URL}; offline, use --src)")


def _check_unmodified(argv: list[str], result: dict[str, Any]) -> None:
    checkout = result["checkout"]
    changes = _run_quiet(argv, f"{checkout}: git status (--src must be a git checkout)").splitlines()
    if changes:
        shown = ", ".join(line[3:] for line in changes[:5]) + (", ..." if len(changes) > 5 else "")
        raise LoadgenBuildError(
            f"{checkout}: modified files in {LOADGEN_DIR}/ ({shown}); a LoadGen built from a modified "
            "tree logs an error in every run, which fails the submission checker: commit or discard "
            f"them (git -C {checkout} checkout -- {LOADGEN_DIR})"
        )


def _check_at_ref(argv: list[str], result: dict[str, Any]) -> None:
    checkout, ref = result["checkout"], result["ref"]
    try:
        wanted, head = _run_quiet(argv, f"{checkout}: git rev-parse").split()
    except LoadgenBuildError as error:
        raise LoadgenBuildError(
            f"{checkout}: no ref {ref!r} ({error}); fetch the tags or name the ref with --ref"
        ) from None
    if wanted != head:
        raise LoadgenBuildError(
            f"{checkout}: HEAD is {head[:12]}, not {ref} ({wanted[:12]}); check out {ref} "
            f"(git -C {checkout} checkout {ref})"
        )
    result["revision"] = head


def _build_wheel(argv: list[str], result: dict[str, Any]) -> None:
    _run_shown(
        argv, "building the LoadGen wheel", " (needs a C++ compiler, and PyPI for pybind11 and setuptools)"
    )
    wheel_dir = Path(argv[argv.index("--wheel-dir") + 1])
    wheels = sorted(wheel_dir.glob("*.whl"))
    if len(wheels) != 1:
        raise LoadgenBuildError(f"{wheel_dir}: expected one built wheel, found {[w.name for w in wheels]}")
    distribution = wheels[0].name.split("-")[0].lower().replace("_", "-")
    if distribution != PYPI_DISTRIBUTION:
        raise LoadgenBuildError(
            f"{wheels[0]}: built distribution {distribution!r}, not {PYPI_DISTRIBUTION!r}; "
            "the installed LoadGen was left as it was"
        )
    result["wheel"] = wheels[0].name


def _uninstall(argv: list[str], result: dict[str, Any]) -> None:
    _run_shown(argv, f"pip uninstall {PYPI_DISTRIBUTION}")


def _install(argv: list[str], result: dict[str, Any]) -> None:
    _run_shown(
        argv,
        f"pip install of {result['wheel']}",
        f"; {result['python']} has no LoadGen now: install {PYPI_DISTRIBUTION} from PyPI or rerun",
    )


def _verify(argv: list[str], result: dict[str, Any]) -> None:
    kind, module = _probe_output(
        _run_quiet(argv, f"{result['python']}: import mlperf_loadgen after the build")
    )
    if kind != "automotive":
        raise LoadgenBuildError(
            f"after the build, {result['python']} imports the {kind} LoadGen from {module}: the "
            f"checkout is not the automotive LoadGen, or another mlperf_loadgen comes first on sys.path"
        )
    result["kind"], result["module"] = kind, module


_STEPS: dict[str, Callable[[list[str], dict[str, Any]], None]] = {
    "clone": _clone,
    "status": _check_unmodified,
    "revision": _check_at_ref,
    "wheel": _build_wheel,
    "uninstall": _uninstall,
    "install": _install,
    "verify": _verify,
}


def _probe_output(output: str) -> tuple[str, str]:
    """``(kind, module path)`` from the line :data:`_KIND_PROBE` prints."""
    kind, _, module = output.strip().partition(" ")
    if kind not in KINDS:
        raise LoadgenBuildError(f"unexpected answer from the LoadGen probe: {output.strip()!r}")
    return kind, module


def installed_loadgen_kind(python: str | None = None) -> str:
    """``"automotive"`` or ``"inference"``: the LoadGen ``mlperf_loadgen`` is in an environment.

    ``python`` None: this process (a module imported before a build stays the one in use);
    otherwise a fresh process of that interpreter. Raises :class:`LoadgenBuildError` when
    ``mlperf_loadgen`` cannot be imported.
    """
    if python is not None:
        return _probe_output(_run_quiet([python, "-c", _KIND_PROBE], f"{python}: import mlperf_loadgen"))[0]
    try:
        from abtf_ssd.loadgen.rules import has_constant_stream
    except ModuleNotFoundError as error:
        if error.name != "mlperf_loadgen":
            raise
        raise LoadgenBuildError(
            f"{sys.executable}: no mlperf_loadgen; pip install {PYPI_DISTRIBUTION} (inference LoadGen) "
            "or build the automotive one: python -m abtf_ssd.loadgen.build --round v0.5"
        ) from None
    return "automotive" if has_constant_stream() else "inference"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m abtf_ssd.loadgen.build",
        description="Build the automotive LoadGen (mlperf_automotive loadgen/ at the round's tag) "
        f"and install it in place of the PyPI wheel {PYPI_DISTRIBUTION}.",
    )
    parser.add_argument("--round", default="v0.5", choices=sorted(ROUND_TAGS))
    parser.add_argument("--src", help="an existing mlperf_automotive checkout (offline; no clone)")
    parser.add_argument("--ref", help="git ref to build (default: the round's tag)")
    parser.add_argument("--workdir", help="folder for the clone and the wheel (default: a temporary one)")
    parser.add_argument("--python", default=sys.executable, help="interpreter whose environment gets it")
    parser.add_argument("--dry-run", action="store_true", help="print the steps, change nothing")
    parser.add_argument("--kind", action="store_true", help="print which LoadGen this interpreter imports")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.kind:
            kind = installed_loadgen_kind()
            import mlperf_loadgen

            print(kind, mlperf_loadgen.__file__)
            return 0
        result = build(args.round, args.src, args.dry_run, args.python, args.workdir, args.ref)
    except LoadgenBuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if not args.dry_run:
        print(f"installed the automotive LoadGen {result['wheel']} ({result['ref']}, {result['revision']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
