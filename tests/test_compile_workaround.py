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


def test_compiled_backward_keeps_sizes_dynamic():
    """torch 2.13 alone: ConstraintViolationError, the sizes specialised to the first call's."""
    assert compile_workaround.install() == {"fast_vector_index_analysis": True, "sizes_dynamic": True}
    torch._dynamo.reset()
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)

    def loss(x: torch.Tensor) -> torch.Tensor:
        return torch.relu(conv(x)).square().sum()

    compiled = torch.compile(loss)
    for index, size in enumerate([(32, 48), (32, 32)]):
        x = torch.randn(1, 3, *size, requires_grad=True)
        if index == 0:
            torch._dynamo.mark_dynamic(x, (2, 3))
        with torch._dynamo.config.patch(error_on_recompile=index > 0):
            (got,) = torch.autograd.grad(compiled(x), x)
        (expected,) = torch.autograd.grad(loss(x), x)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
    torch._dynamo.reset()
