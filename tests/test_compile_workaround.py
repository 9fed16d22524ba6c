"""The faster index analysis for Inductor's C++ back end gives the strides torch's own helpers give."""

from __future__ import annotations

import pytest
import sympy
import torch
from torch.utils._sympy.functions import FloorDiv, ModularIndexing

from training import compile_workaround

pytestmark = pytest.mark.skipif(
    not torch.__version__.startswith(compile_workaround.PATCHED_VERSION), reason="patches torch 2.13 only"
)

x0, x1 = sympy.symbols("x0 x1", integer=True, nonnegative=True)
s0, s1 = sympy.symbols("s0 s1", integer=True, positive=True)

# Index expressions of the kinds Inductor's C++ back end asks about: plain strides, size symbols,
# lane-uniform divisions and moduli (divisor a multiple of the vector length), and divisions by a
# symbolic size, which stay as they are.
INDICES = [
    3 * x0 + s0,
    x0 + x1 * s0 + 16 * s0 * s1 * FloorDiv(x0, 32),
    s0 * FloorDiv(x0, 16) + ModularIndexing(x0, 1, 16),
    2 * x0 + 8 * FloorDiv(s0 - 1, 8) + 8,
    ModularIndexing(x0, 1, s1) + s1 * FloorDiv(x0, s1),
    x1 + s0 * FloorDiv(x0, 2) + ModularIndexing(x0, 2, 4),
    (x0 + 1) * (s0 + 2) - x1,
    s0 * s1,
]


@pytest.fixture(scope="module")
def helpers():
    assert compile_workaround.use_fast_vector_index_analysis()
    from torch._inductor import sizevars
    from torch._inductor.codegen import cpp

    # Installed where the C++ back end looks, and a second call keeps the first installation.
    assert cpp.stride_at_vec_range is sizevars.stride_at_vec_range
    installed = sizevars.stride_at_vec_range
    assert compile_workaround.use_fast_vector_index_analysis()
    assert sizevars.stride_at_vec_range is installed
    return compile_workaround.ORIGINAL_HELPERS["stride_at_vec_range"], installed


@pytest.mark.parametrize("index", INDICES, ids=str)
@pytest.mark.parametrize("vec_length", [None, 16])
def test_strides_equal_torchs(helpers, index, vec_length):
    original, fast = helpers
    expected, got = original(index, x0, vec_length), fast(index, x0, vec_length)
    # Fresh lane-uniform symbols are named the same way by both, so the two compare as expressions.
    assert sympy.simplify(got - expected) == 0, (got, expected)


def test_constant_strides_come_out_as_numbers(helpers):
    _, fast = helpers
    assert fast(3 * x0 + s0, x0, 16) == 3
    assert fast(s0 * FloorDiv(x0, 16) + ModularIndexing(x0, 1, 16), x0, 16) == 1
    assert fast(x1 * s0, x0, 16) == 0
