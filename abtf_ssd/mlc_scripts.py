"""What the MLC scripts' ``customize.py`` files share: env values read one way, errors reported one way.

A ``customize.py`` imports the library (this module included) inside its functions, never with a
module-level import statement: mlcflow pip-installs every top-level import of a customize.py it
cannot import, and ``abtf_ssd`` is this repository, not a PyPI package.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

TRUE_VALUES = ("1", "yes", "true", "on")
"""What an MLC boolean input (``--tar``, ``--test_mode``, ``--docker``) is when it is set."""
INSTALL_HINT = "install the package: pip install -e ."
INPUT_ERRORS = (ValueError, OSError, RuntimeError)
"""What the library raises for bad input, a missing file or a failed step: reported as one line."""

MlcResult = dict[str, Any]
"""An MLC hook's answer: ``{"return": 0}`` or ``{"return": 1, "error": message}``."""


def env_flag(value: object) -> bool:
    """Whether an env value says yes: one of :data:`TRUE_VALUES`, any case, spaces ignored."""
    return str(value).strip().lower() in TRUE_VALUES


def env_int(env: Mapping[str, Any], key: str, flag: str) -> int | None:
    """``env[key]`` as an int; None when unset or empty. A ValueError names the input ``flag``."""
    value = str(env.get(key, "")).strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{flag} must be an integer, got {value!r}") from None


STORE_ENV = "MLC_ABTF_DATASET_STORE"
"""The env key of the ``--store`` input of the dataset script, the app and run-abtf-inference."""


def env_store_kind(env: Mapping[str, Any]) -> str:
    """``--store``: one of :data:`abtf_ssd.store.STORE_KINDS`, the first (pickle) when unset; a
    ValueError for any other value."""
    from abtf_ssd.store import STORE_KINDS, check_store_kind

    return check_store_kind(env.get(STORE_ENV) or STORE_KINDS[0])


def mlc_step(script: str, step: Callable[..., MlcResult | None], *args: Any) -> MlcResult:
    """Run one hook's work, ``step(*args)``, and answer mlcflow.

    ``step`` returns None (success) or its own result. A library error (:data:`INPUT_ERRORS`)
    becomes ``{"return": 1, "error": "<script>: <message>"}``; an ImportError (a dependency
    missing) the same with :data:`INSTALL_HINT`.
    """
    try:
        result = step(*args)
    except ImportError as error:
        return {"return": 1, "error": f"{script}: {error}; {INSTALL_HINT}"}
    except INPUT_ERRORS as error:
        return {"return": 1, "error": f"{script}: {error}"}
    return result if result is not None else {"return": 0}
