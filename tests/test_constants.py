"""Definitions that both the C++ kernels and the Python side hold, pinned together so they cannot
drift apart: the random streams, PCG constants and search-draw numbering (csrc/patch_match.h and
reference.py), the argument bounds (csrc/cpu/common.h and ops.py), and the random-search radii
(the kernels' and reference.search_radii, through the search itself)."""

from __future__ import annotations

import ast
import inspect
import operator
import re
from pathlib import Path

import pytest
import torch

import cocosnet_ops as co
from cocosnet_ops import ops
from cocosnet_ops import reference as ref

CSRC = Path(__file__).resolve().parents[1] / "csrc"
OPERATORS = {ast.LShift: operator.lshift, ast.BitOr: operator.or_, ast.Mult: operator.mul}


def _evaluate(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
        return OPERATORS[type(node.op)](_evaluate(node.left), _evaluate(node.right))
    raise ValueError(f"not a constant expression: {ast.dump(node)}")


def cpp_constant(path: Path, name: str) -> int | float:
    """The value of ``constexpr <type> name = <expression>;`` in a C++ file."""
    (expression,) = re.findall(rf"constexpr\s+[\w:]+\s+{name}\s*=\s*([^;]+);", path.read_text())
    expression = re.sub(r"\b(\d+)u\b", r"\1", expression.replace("int64_t{1}", "1"))
    return _evaluate(ast.parse(expression, mode="eval").body)


def test_random_streams_and_draw_numbering_match_the_kernels():
    header = CSRC / "patch_match.h"
    assert cpp_constant(header, "kStreamFill") == ref.STREAM_FILL
    assert cpp_constant(header, "kStreamSearchY") == ref.STREAM_SEARCH_Y
    assert cpp_constant(header, "kStreamSearchX") == ref.STREAM_SEARCH_X
    assert cpp_constant(header, "kMaxRadii") == ref.MAX_RADII
    assert cpp_constant(header, "kSearchAnchors") == ref.SEARCH_ANCHORS


def test_pcg_constants_match_the_kernels():
    header = (CSRC / "patch_match.h").read_text()
    body = re.search(r"uint32_t pcg_hash\(uint32_t x\) \{(.*?)\n\}", header, re.S).group(1)
    cpp = [int(n) for n in re.findall(r"\b(\d+)u\b", body)]
    python = [int(n) for n in re.findall(r"\b(\d+)\b", inspect.getsource(ref.pcg_hash).split('"""')[-1])]
    assert cpp == [747796405, 2891336453, 28, 4, 277803737, 22]
    assert [n for n in python if n != ref.MASK32] == cpp


def test_argument_bounds_match_the_kernels():
    common = CSRC / "cpu" / "common.h"
    assert cpp_constant(common, "kMaxPatchSize") == ops.MAX_PATCH_SIZE
    assert cpp_constant(common, "kMaxIters") == ops.MAX_ITERS
    assert cpp_constant(common, "kMaxStep") == ops.MAX_STEP
    assert cpp_constant(common, "kMaxWindow") == ops.MAX_WINDOW
    assert cpp_constant(common, "kMinTemperature") == ops.MIN_TEMPERATURE


@pytest.mark.skipif(not co.HAS_COMPILED, reason="cocosnet_ops._C is not built")
@pytest.mark.parametrize("key_size", [(1, 37), (23, 3), (64, 1), (5, 40), (17, 18)])
def test_search_radii_match_the_kernels(key_size):
    """Random search draws one point per anchor and radius: with other radii the kernels would
    propose other candidates. Integer features, so any difference shows in the indices."""
    gen = torch.Generator().manual_seed(sum(key_size))
    fq = torch.randint(-3, 4, (2, 3, 6, 7), generator=gen).float()
    fk = torch.randint(-3, 4, (2, 3, *key_size), generator=gen).float()
    args = dict(k=3, iters=3, jump=[1], random_search=True, seed=4)
    cpu = co.patch_match(fq, fk, backend="cpu", **args)
    torch_ = co.patch_match(fq, fk, backend="torch", **args)
    assert torch.equal(cpu[0], torch_[0]) and torch.equal(cpu[1], torch_[1])
