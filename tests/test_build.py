"""The build itself: when _C says it has CUDA kernels, every op defined in csrc/schemas.h has one.

CI builds with FORCE_CUDA=1 wherever nvcc exists and sets COCOSNET_EXPECT_CUDA_KERNELS=1, so a
CUDA kernel that was not compiled, linked or registered fails there, GPU or not.
"""

import os
import re
from pathlib import Path

import pytest
import torch

import cocosnet_ops

SCHEMAS = Path(__file__).resolve().parents[1] / "csrc" / "schemas.h"


def defined_ops() -> list[str]:
    """The ops whose kernels register per device: every schema but the process settings (a
    leading underscore, defined with their function: no tensors, so no dispatch key)."""
    names = re.findall(r'm\.def\(\s*"(\w+)\(', SCHEMAS.read_text())
    assert len(names) >= 10, f"expected the op schemas in {SCHEMAS}, found {names}"
    return [name for name in names if not name.startswith("_")]


@pytest.mark.skipif(not cocosnet_ops.HAS_COMPILED, reason="cocosnet_ops._C is not built")
def test_the_search_variant_setting_is_callable_and_restores():
    ops = torch.ops.cocosnet_ops
    assert ops._set_search_variant(5) == 0
    assert ops._set_search_variant(0) == 5
    with pytest.raises(ValueError, match="^variant"):
        ops._set_search_variant(16)


def test_cuda_kernels_expected_by_the_build_are_there():
    if os.environ.get("COCOSNET_EXPECT_CUDA_KERNELS") == "1":
        assert cocosnet_ops.HAS_CUDA_KERNELS, (
            "this build was asked for CUDA kernels (FORCE_CUDA=1) but has none"
        )
    elif not cocosnet_ops.HAS_CUDA_KERNELS:
        pytest.skip("this build has no CUDA kernels and none was asked for")


@pytest.mark.skipif(not cocosnet_ops.HAS_COMPILED, reason="cocosnet_ops._C is not built")
@pytest.mark.parametrize("dispatch_key", ["CPU", "CUDA"])
def test_every_op_has_a_kernel(dispatch_key):
    if dispatch_key == "CUDA" and not cocosnet_ops.HAS_CUDA_KERNELS:
        pytest.skip("this build has no CUDA kernels")
    missing = [
        op
        for op in defined_ops()
        if not torch._C._dispatch_has_kernel_for_dispatch_key(f"cocosnet_ops::{op}", dispatch_key)
    ]
    assert not missing, f"ops without a {dispatch_key} kernel: {missing}"
