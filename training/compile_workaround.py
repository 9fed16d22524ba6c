"""Workarounds for two problems of torch 2.13's Inductor with this model under dynamic shapes.

**Compile time.** Before it vectorises a loop, Inductor's C++ back end asks, for every index
expression of the loop, how the index moves from one vector lane to the next
(``stride_at_vec_range`` in ``torch/_inductor/sizevars.py``). With dynamic shapes those expressions
hold the image sizes as symbols, floor divisions and moduli, and torch 2.13 runs a full
``sympy.simplify`` over each one, twice: once after rewriting the lane-uniform divisions
(``simplify_index_in_vec_range``) and once on the difference of two neighbouring indices
(``stride_at``). On this model's U-Nets those simplifications are most of the compile time
(PyTorch issue #133734; the open fix, pytorch/pytorch#186319, drops the first of them).

:func:`use_fast_vector_index_analysis` replaces the two helpers by versions without the general
simplification: the lane-uniform divisions and moduli are rewritten into fresh symbols as before,
and the stride is the expanded difference of the two neighbouring indices. Where that difference
no longer depends on the loop variable it is the number or size expression the full simplification
gives; where it still does, the C++ back end treats the access as non-contiguous either way (it only
asks whether a stride is 0, 1, a number, or free of the loop variables). The generated code
computes the same values; at worst a loop the full simplification would have proved contiguous is
not vectorised.

**Sizes pinned by the backward.** With dynamic shapes AOTAutograd compiles the backward with the
forward, and three things in torch 2.13 then turn the image sizes into constants (a second size
recompiles; with ``mark_dynamic`` compilation fails):

1. the strides the compiled forward reports for the activations saved for the backward are
   evaluated to numbers, the first call's (``set_tracing_context_output_strides`` in
   ``torch/_inductor/utils.py``; fixed upstream by pytorch/pytorch#191885 and #194420), and every
   saved activation whose symbolic strides cannot be proved equal to them is restrided to them;
2. on a CPU with oneDNN, Inductor lays the tensors around convolutions out channels-last even
   under dynamic shapes (``GraphLowering.decide_layout_opt`` returns before its dynamic-shape
   check), so the backward's layout checks compare symbolic sizes with those constant strides;
3. Inductor's lowering of ``convolution_backward`` guards the input gradient's strides to integers
   to pick their order (``guard_int_seq`` in ``torch/_inductor/kernel/conv.py``).

:func:`keep_sizes_dynamic` reports the strides as expressions of the size symbols (as torch already
does in its ``fakify_first_call`` mode), turns the layout optimisation off, and lets the
``convolution_backward`` lowering pick the order from the sizes' current values without a guard
(an order only: a later size with another order gets a copy, never different values).

Both patch only the torch version they were written against; :func:`install` applies both.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any
from unittest import mock

import sympy
import torch

PATCHED_VERSION = "2.13."
# torch's own helpers, kept when they are replaced (the tests compare against them).
ORIGINAL_HELPERS: dict[str, object] = {}


def use_fast_vector_index_analysis() -> bool:
    """Installs the faster index analysis in Inductor's C++ back end (once per process); returns
    whether it is in place. On a torch other than 2.13, or one whose helpers moved, it changes
    nothing and returns False."""
    if not torch.__version__.startswith(PATCHED_VERSION):
        return False
    from torch._inductor import sizevars
    from torch._inductor.codegen import cpp

    if getattr(sizevars.stride_at_vec_range, "_cocosnet_workaround", False):
        return True
    if not all(hasattr(sizevars, name) for name in ("stride_at", "stride_at_vec_range", "sympy_subs")):
        return False
    if getattr(cpp, "stride_at_vec_range", None) is not sizevars.stride_at_vec_range:
        return False
    ORIGINAL_HELPERS.update(stride_at=sizevars.stride_at, stride_at_vec_range=sizevars.stride_at_vec_range)

    @functools.lru_cache
    def stride_at(index: sympy.Expr, var: sympy.Symbol) -> sympy.Expr:
        if not index.has(var):
            return sympy.S.Zero
        return sympy.expand(sizevars.sympy_subs(index, {var: var + 1}) - index)

    @functools.lru_cache
    def stride_at_vec_range(
        index: sympy.Expr, var: sympy.Symbol, vec_length: int | None = None
    ) -> sympy.Expr:
        if vec_length:
            index = lane_uniform_terms_as_symbols(index, var, vec_length)
        return stride_at(index, var)

    stride_at_vec_range._cocosnet_workaround = True
    sizevars.stride_at = stride_at
    sizevars.stride_at_vec_range = stride_at_vec_range
    cpp.stride_at_vec_range = stride_at_vec_range
    return True


@functools.lru_cache
def lane_uniform_terms_as_symbols(index: sympy.Expr, var: sympy.Symbol, vec_length: int) -> sympy.Expr:
    """``index`` with every ``FloorDiv(var, d)`` / ``ModularIndexing(var, d, m)`` that is constant
    over ``vec_length`` consecutive values of ``var`` (d a multiple of ``vec_length``) replaced by a
    fresh symbol, and ``ModularIndexing(var, 1, m)`` with m a multiple of ``vec_length`` by ``var``
    plus one: torch's ``simplify_index_in_vec_range`` without its full simplification."""
    from torch.utils._sympy.functions import FloorDiv, ModularIndexing

    fresh = 0

    def symbol(kind: str) -> sympy.Symbol:
        nonlocal fresh
        fresh += 1
        return sympy.Symbol(f"{var}_{kind}_c{fresh - 1}")

    def floor_div(divisor: sympy.Expr) -> sympy.Expr:
        if sympy.gcd(divisor, vec_length) == vec_length:
            return symbol("div")
        return FloorDiv(var, divisor)

    def modular(divisor: sympy.Expr, modulus: sympy.Expr) -> sympy.Expr:
        if sympy.gcd(divisor, vec_length) == vec_length:
            return symbol("mod")
        if divisor == 1 and sympy.gcd(modulus, vec_length) == vec_length:
            return var + symbol("mod")
        return ModularIndexing(var, divisor, modulus)

    divisor, modulus = sympy.Wild("divisor", integer=True), sympy.Wild("modulus", integer=True)
    rewritten = index
    if rewritten.has(FloorDiv):
        rewritten = rewritten.replace(FloorDiv(var, divisor), floor_div)
    if rewritten.has(ModularIndexing):
        rewritten = rewritten.replace(ModularIndexing(var, divisor, modulus), modular)
    # A rewrite can expose another pattern (as in torch's helper): repeat until nothing changes.
    return rewritten if rewritten == index else lane_uniform_terms_as_symbols(rewritten, var, vec_length)


def keep_sizes_dynamic() -> bool:
    """Keeps the image sizes symbolic through the compiled backward (see the module's docstring),
    once per process; returns whether that is in place. On a torch other than 2.13, or one whose
    helpers moved, it changes nothing and returns False."""
    if not torch.__version__.startswith(PATCHED_VERSION):
        return False
    from torch._inductor import config, lowering, output_code, sizevars, utils
    from torch._inductor.virtualized import V

    report_strides = getattr(output_code, "set_tracing_context_output_strides", None)
    if getattr(report_strides, "_cocosnet_workaround", False):
        return True
    conv_backward = torch.ops.aten.convolution_backward.default
    if (
        report_strides is None
        or report_strides is not getattr(utils, "set_tracing_context_output_strides", None)
        or conv_backward not in lowering.lowerings
        or not hasattr(sizevars.SizeVarAllocator, "optimization_hints")
    ):
        return False
    lower_conv_backward = lowering.lowerings[conv_backward]

    def set_tracing_context_output_strides(example_inputs: Sequence[object], compiled_graph: Any) -> None:
        context = torch._guards.TracingContext.try_get()
        shape_env = utils.shape_env_from_inputs(example_inputs)
        if context is None or context.output_strides is None or shape_env is None:
            report_strides(example_inputs, compiled_graph)
            return
        for exprs in compiled_graph.output_strides:
            strides = None if exprs is None else tuple(shape_env.deserialize_symexpr(e) for e in exprs)
            context.output_strides.append(strides)

    @functools.wraps(lower_conv_backward)
    def convolution_backward(*args: Any, **kwargs: Any) -> Any:
        sizes = V.graph.sizevars
        with mock.patch.object(sizes, "guard_int_seq", lambda exprs: list(sizes.optimization_hints(exprs))):
            return lower_conv_backward(*args, **kwargs)

    set_tracing_context_output_strides._cocosnet_workaround = True
    output_code.set_tracing_context_output_strides = set_tracing_context_output_strides
    lowering.lowerings[conv_backward] = convolution_backward
    config.layout_optimization = False
    return True


def install() -> dict[str, bool]:
    """Applies both workarounds; returns which are in place."""
    return {
        "fast_vector_index_analysis": use_fast_vector_index_analysis(),
        "sizes_dynamic": keep_sizes_dynamic(),
    }
