"""Triton kernels of the ops, for ``backend="triton"``.

Loaded on first use, not with ``cocosnet_ops``: importing triton takes a while, and whether
``@triton.jit`` compiles the kernels for the GPU or runs them in Triton's interpreter (on CPU
tensors, for tests) is decided when the kernel modules are imported, by ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import torch

# The ops with Triton kernels (the others have none: asking for triton there is an error).
OPS = frozenset(
    {"patch_match", "evaluate_candidates", "weighted_gather", "bilinear_weighted_gather", "bilinear_scores"}
)
_KERNELS = __name__ + ".ops"


def _interpreter_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _language_interpreted() -> bool:
    """Whether triton.language's own @triton.jit functions (tl.zeros, ...) were made for the
    interpreter: they are decorated once, when triton is first imported."""
    from triton.language import standard
    from triton.runtime.jit import JITFunction

    return not isinstance(standard.zeros, JITFunction)


@torch.compiler.assume_constant_result
def unavailable(device_type: str) -> str:
    """Why the Triton kernels cannot run on tensors of ``device_type`` here, or "" when they can
    (and are then loaded). A constant for torch.compile: it depends on the installation only."""
    if importlib.util.find_spec("triton") is None:
        return "the triton package is not installed (pip install triton)"
    loaded = sys.modules.get(_KERNELS)
    interpreted = loaded.INTERPRETED if loaded is not None else _interpreter_requested()
    if device_type == "cpu" and not interpreted:
        return (
            "Triton runs on CPU tensors only in its interpreter: set TRITON_INTERPRET=1 before "
            "triton is first imported (importing cocosnet_ops imports it)"
        )
    if interpreted and not _language_interpreted():
        return (
            "TRITON_INTERPRET=1 was set after triton was imported (importing cocosnet_ops imports "
            "it), so triton.language was built for the GPU: set it before"
        )
    if device_type == "cuda" and not interpreted and not torch.cuda.is_available():
        return "no GPU is available"
    if device_type not in ("cpu", "cuda"):
        return f"the Triton kernels run on CUDA tensors, not {device_type}"
    importlib.import_module(_KERNELS)
    return ""
