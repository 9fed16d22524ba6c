"""Compile every Triton kernel launch of the triton backend's ops for an sm_90 GPU, without one.

Triton's interpreter, which runs the kernels in the CPU tests, checks less than the compiler
(non-constexpr globals, mixed-signedness division, constexpr-specialised arguments all pass
it). This script runs each op's Python side with launches recorded instead of made, then
compiles every recorded launch with the same argument types the GPU launcher would give it,
down to a cubin (Triton's bundled ptxas). tests/test_triton.py runs it in a process of its own,
since the kernels must be loaded without TRITON_INTERPRET. Exit status 1 names the failures.
"""

import sys

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from cocosnet_ops.triton import ops as triton_ops

TARGET = GPUTarget("cuda", 90, 32)
POINTER_TYPES = {torch.float32: "*fp32", torch.float64: "*fp64", torch.int32: "*i32", torch.int64: "*i64"}
launches = []


class RecordLaunch:
    """Stands in for torch.library.wrap_triton: ``RecordLaunch(kernel)[grid](*args)`` records."""

    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        return lambda *args, **kwargs: launches.append((self.kernel, args, kwargs))


def signature(kernel, args: tuple, kwargs: dict) -> tuple[dict, dict]:
    """Argument types as the launcher specialises them: an int equal to 1 becomes a constant
    unless the kernel says not to specialise it."""
    values = dict(zip(kernel.arg_names, args, strict=False)) | kwargs
    unspecialised = {kernel.arg_names[i] if isinstance(i, int) else i for i in kernel.do_not_specialize}
    types, constants = {}, {}
    for param, name in zip(kernel.params, kernel.arg_names, strict=True):
        value = values[name]
        if isinstance(value, torch.Tensor):
            types[name] = POINTER_TYPES[value.dtype]
        elif param.is_constexpr or (value == 1 and name not in unspecialised):
            types[name], constants[name] = "constexpr", value
        else:
            types[name] = "i32" if -(2**31) <= value < 2**31 else ("u32" if value < 2**32 else "i64")
    return types, constants


def run_ops(dtype: torch.dtype, B: int, C: int, query: tuple, key: tuple, k: int, patch_size: int, seed: int):
    fq, fk = torch.randn(B, C, *query, dtype=dtype), torch.randn(B, C, *key, dtype=dtype)
    value = torch.rand(B, 3, *key, dtype=dtype)
    nnf = torch.randint(0, key[0] * key[1], (B, k, *query), dtype=torch.int32)
    coords = torch.rand(B, k, *query, 2, dtype=dtype)
    grad_out = torch.randn(B, 3, *query, dtype=dtype)
    triton_ops.patch_match(fq, fk, k, 2, nnf, patch_size, [2, 1], True, seed)
    # Bounded by max_radius: the variant that reads each pixel's sorted init candidates.
    triton_ops.patch_match(fq, fk, k, 2, torch.cat([nnf] * 6, 1), patch_size, [2, 1], True, seed, 1)
    triton_ops.bilinear_scores(fq, fk, coords, patch_size)
    triton_ops.weighted_gather(fq, fk, value, nnf, 0.1)
    triton_ops.bilinear_weighted_gather(fq, fk, value, coords, 0.1)
    for deterministic in (False, True):
        torch.use_deterministic_algorithms(deterministic)
        triton_ops.weighted_gather_backward(grad_out, fq, fk, value, nnf, 0.1)
        triton_ops.bilinear_weighted_gather_backward(grad_out, fq, fk, value, coords, 0.1)
    torch.use_deterministic_algorithms(False)


def main() -> int:
    assert not triton_ops.INTERPRETED, "run without TRITON_INTERPRET"
    triton_ops._launch = RecordLaunch
    run_ops(torch.float32, 2, 5, (9, 10), (11, 9), 6, 3, 7)
    run_ops(torch.float64, 1, 1, (1, 1), (1, 1), 1, 1, 1)  # sizes and seed of 1: specialised constants
    failures, compiled = [], set()
    for kernel, args, kwargs in launches:
        types, constants = signature(kernel, args, kwargs)
        key = (kernel.fn.__name__, tuple(types.items()), tuple((n, str(v)) for n, v in constants.items()))
        if key in compiled:
            continue
        compiled.add(key)
        try:
            triton.compile(ASTSource(kernel, types, constants), target=TARGET)
        except Exception as error:  # report every kernel that fails, not only the first
            failures.append(f"{kernel.fn.__name__} {constants}: {str(error)[-2000:]}")
    print(f"{len(compiled)} kernel variants compiled for sm_90, {len(failures)} failed")
    print("\n\n".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
