"""Loading the compiled kernels ``cocosnet_ops._C``, and saying what to do when that fails.

Without them every op still runs through the pure-PyTorch reference (backend ``"torch"``), so a
failed load is a warning, not an error; CI and the test suite make it an error with
``COCOSNET_REQUIRE_COMPILED=1`` (see ``tests/conftest.py``).
"""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType

import torch

REBUILD_COMMAND = "pip install --no-build-isolation -e ."


def built_torch_version() -> str | None:
    """The torch version ``_C`` was compiled against, as setup.py recorded it (None if unknown).

    Under ``pip install -e .`` with build isolation, pip builds against whatever torch it
    resolves into the isolated environment, which need not be the one installed here."""
    try:
        from ._build_info import TORCH_VERSION
    except ImportError:
        return None
    return TORCH_VERSION


def load_failure_message(error: ImportError, built_against: str | None, installed: str) -> str:
    """One message for a failed import of ``_C``: why, and the command that fixes it."""
    fallback = "every op runs the pure-PyTorch reference (backend 'torch') instead"
    if isinstance(error, ModuleNotFoundError) and error.name == f"{__package__}._C":
        return f"cocosnet_ops._C is not built: {fallback}. Build it with `{REBUILD_COMMAND}`."
    if built_against is not None and built_against != installed:
        return (
            f"cocosnet_ops._C was built against torch {built_against} but torch {installed} is "
            f"installed, so it cannot load ({error}); rebuild it against this torch with "
            f"`{REBUILD_COMMAND}`. Until then {fallback}."
        )
    return f"cocosnet_ops._C failed to load ({error}): {fallback}. Rebuild it with `{REBUILD_COMMAND}`."


def load_compiled() -> tuple[ModuleType | None, str | None]:
    """``(module, None)`` when the kernels load (importing registers them), else ``(None, message)``
    after warning with that message once."""
    try:
        compiled = importlib.import_module(f"{__package__}._C")
    except ImportError as error:
        message = load_failure_message(error, built_torch_version(), str(torch.__version__))
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        return None, message
    return compiled, None
