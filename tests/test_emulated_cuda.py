"""The CUDA kernels of csrc/cuda/*.cu, run on the CPU by the emulator (cocosnet_ops._C_emulated,
built with COCOSNET_EMULATED_CUDA=1; see csrc/emulated/), against the cpu kernels. The same
sources as on a GPU, every simulated thread a fiber and every shuffle an exchange among the
lanes of its group, so a kernel change is checked here before any GPU runs it. The search
kernels run the per-pixel code the cpu kernels run: on integer-valued features (exact scores
in any summation order) they must agree bitwise. The gathers sum in another order: float64
within 1e-12, float32 within 1e-4. Speed is not emulated."""

from __future__ import annotations

import importlib

import pytest
import torch
from kernel_cases import SEARCH_CASES, init_with_holes, integer_features, unit_features

try:
    importlib.import_module("cocosnet_ops._C_emulated")
except ImportError as error:  # conftest.py makes this a failure where CI runs
    pytest.skip(
        f"cocosnet_ops._C_emulated is not built ({error}): COCOSNET_EMULATED_CUDA=1 pip install "
        "--no-build-isolation -e .",
        allow_module_level=True,
    )

import cocosnet_ops  # noqa: E402

EMULATED = torch.ops.cocosnet_ops_emulated
CPU = torch.ops.cocosnet_ops

EMULATED_SEARCH_CASES = [
    *SEARCH_CASES,
    (1, 6, 9, 8, 10, 9, 33, 2, 1, True, 5),  # the largest list bound (64)
    (1, 7, 8, 9, 9, 8, 20, 2, 3, True, 11),  # bound 32, patches
]


def assert_same(got, expected):
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b)


@pytest.mark.parametrize("case", EMULATED_SEARCH_CASES)
def test_patch_match_equals_cpu(case):
    B, C, Hq, Wq, Hk, Wk, k, iters, patch_size, random_search, seed = case
    g = torch.Generator().manual_seed(sum(case[:8]))
    fq, fk = integer_features(g, B, C, Hq, Wq), integer_features(g, B, C, Hk, Wk)
    args = (fq, fk, k, iters, None, patch_size, [], random_search, seed)
    assert_same(EMULATED.patch_match(*args), CPU.patch_match(*args))


@pytest.mark.parametrize("max_radius", [None, 0, 1, 3])
def test_patch_match_with_init_jumps_and_bounds_equals_cpu(max_radius):
    g = torch.Generator().manual_seed(3)
    fq, fk = integer_features(g, 2, 6, 10, 12), integer_features(g, 2, 6, 9, 7)
    init = init_with_holes(g, 2, 9, 10, 12, 63)
    for jumps in ([], [3, 1]):
        args = (fq, fk, 5, 3, init, 1, jumps, True, 4, max_radius)
        assert_same(EMULATED.patch_match(*args), CPU.patch_match(*args))


def test_patch_match_float64_patches_equal_cpu():
    g = torch.Generator().manual_seed(4)
    fq, fk = integer_features(g, 1, 8, 14, 9).double(), integer_features(g, 1, 8, 11, 13).double()
    args = (fq, fk, 7, 4, None, 3, [], True, 0)
    assert_same(EMULATED.patch_match(*args), CPU.patch_match(*args))


def test_patch_match_float_features_take_the_vector_loads():
    """Rows of a multiple of 4 float32 channels are read 16 bytes at a time: the scores are the
    inner products of the matches, as the cpu kernels compute them."""
    g = torch.Generator().manual_seed(5)
    fq, fk = unit_features(g, 2, 32, 12, 10), unit_features(g, 2, 32, 9, 13)
    nnf, scores = EMULATED.patch_match(fq, fk, 8, 3, None, 1, [], True, 2)
    torch.testing.assert_close(scores, cocosnet_ops.reference.patch_scores(fq, fk, nnf), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- search variants

VARIANTS = {1: "coalesced_lists", 2: "pipelined_rows", 4: "bounded_registers", 8: "split_lists"}
ALL_VARIANTS = range(1, 16)

# (B, C, Hq, Wq, Hk, Wk, k, patch_size): k in (8, 16], the list bound the variants are built for;
# 32 and 64 channels take the pipelined rows, 6 the scalar path and patch 3 the plain offers.
VARIANT_CASES = [
    (2, 32, 9, 11, 10, 8, 16, 1),
    (1, 64, 7, 9, 9, 12, 12, 1),
    (1, 6, 8, 7, 9, 9, 9, 1),
    (1, 32, 7, 8, 8, 9, 10, 3),
    (1, 68, 6, 7, 7, 6, 11, 1),  # past the pipeline's 64 channels: plain offers
]


@pytest.fixture
def search_variant():
    """Sets the emulated library's search-step variant for one test, then the default again."""
    chosen = []

    def choose(variant: int) -> None:
        chosen.append(EMULATED._set_search_variant(variant))

    yield choose
    EMULATED._set_search_variant(0)


def variant_name(bits: int) -> str:
    return "+".join(name for bit, name in VARIANTS.items() if bits & bit)


@pytest.mark.parametrize("variant", ALL_VARIANTS, ids=variant_name)
@pytest.mark.parametrize("case", VARIANT_CASES, ids=str)
def test_search_variants_return_the_default_kernels_results(case, variant, search_variant):
    """Every variant gives the default kernel's matches and scores bit for bit: on integer
    features (the cpu kernels' too) and on unit features (rounding, where order would show)."""
    B, C, Hq, Wq, Hk, Wk, k, patch_size = case
    g = torch.Generator().manual_seed(sum(case) + variant)
    integer = integer_features(g, B, C, Hq, Wq), integer_features(g, B, C, Hk, Wk)
    unit = unit_features(g, B, C, Hq, Wq), unit_features(g, B, C, Hk, Wk)
    init = init_with_holes(g, B, 5, Hq, Wq, Hk * Wk)
    calls = [
        (*integer, k, 3, None, patch_size, [], True, 7),
        (*unit, k, 3, init, patch_size, [4, 1], True, 2, 2),
    ]
    default = [EMULATED.patch_match(*args) for args in calls]
    search_variant(variant)
    for args, expected in zip(calls, default, strict=True):
        assert_same(EMULATED.patch_match(*args), expected)
    assert_same(default[0], CPU.patch_match(*calls[0]))


@pytest.mark.parametrize("variant", [-1, 16])
def test_unknown_search_variant_is_refused(variant):
    with pytest.raises(ValueError, match="variant"):
        EMULATED._set_search_variant(variant)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    ("channels", "patch_size", "variant"), [(32, 1, 0), (32, 1, 3), (6, 1, 0), (12, 3, 0)]
)
def test_patch_match_reads_half_precision_features(dtype, channels, patch_size, variant, search_variant):
    """Half-precision features are read as they are, widened exactly, scored in float32: the
    float32 kernel's results on the same values, bit for bit; the cpu kernels' on integers."""
    g = torch.Generator().manual_seed(channels + patch_size)
    fq = unit_features(g, 2, channels, 9, 10).to(dtype)
    fk = unit_features(g, 2, channels, 8, 11).to(dtype)
    fk[0, :3, 0, 0] = torch.tensor([3e-7, -5e-6, 6e-5], dtype=dtype)  # subnormal in float16
    search_variant(variant)
    args = (13, 2, None, patch_size, [], True, 5)
    nnf, scores = EMULATED.patch_match(fq, fk, *args)
    assert nnf.dtype == torch.int32 and scores.dtype == torch.float32
    assert_same((nnf, scores), EMULATED.patch_match(fq.float(), fk.float(), *args))
    iq, ik = integer_features(g, 1, channels, 7, 6), integer_features(g, 1, channels, 6, 9)
    assert_same(EMULATED.patch_match(iq.to(dtype), ik.to(dtype), *args), CPU.patch_match(iq, ik, *args))


def test_half_precision_features_must_match_in_dtype():
    g = torch.Generator().manual_seed(0)
    fq, fk = unit_features(g, 1, 8, 5, 5), unit_features(g, 1, 8, 5, 5)
    with pytest.raises(TypeError, match="key"):
        EMULATED.patch_match(fq.half(), fk.bfloat16(), 4, 1, None, 1, [], True, 0)
    with pytest.raises(TypeError, match="key"):
        EMULATED.patch_match(fq.half(), fk, 4, 1, None, 1, [], True, 0)


@pytest.mark.parametrize("candidates", [1, 5, 40])
@pytest.mark.parametrize("patch_size", [1, 3])
def test_evaluate_candidates_equals_cpu(candidates, patch_size):
    g = torch.Generator().manual_seed(candidates)
    fq, fk = integer_features(g, 2, 4, 6, 7), integer_features(g, 2, 4, 5, 9)
    cand = torch.randint(-2, 45, (2, candidates, 6, 7), generator=g, dtype=torch.int32)
    args = (fq, fk, cand, 4, patch_size)
    assert_same(EMULATED.evaluate_candidates(*args), CPU.evaluate_candidates(*args))


@pytest.mark.parametrize("k", [4, 16, 40])
def test_share_matches_equals_cpu(k):
    g = torch.Generator().manual_seed(k)
    fq, fk = integer_features(g, 2, 5, 8, 9), integer_features(g, 2, 5, 9, 8)
    nnf, scores = CPU.patch_match(fq, fk, k, 1, None, 1, [], True, 0)
    neighbours = torch.randint(-1, 8 * 9, (2, 6, 8, 9), generator=g, dtype=torch.int32)
    for top, patch_size in ((1, 1), (min(k, 4), 3)):
        args = (fq, fk, nnf, scores, neighbours, top, patch_size)
        assert_same(EMULATED.share_matches(*args), CPU.share_matches(*args))


@pytest.mark.parametrize(("window", "dilation"), [(4, 2), (3, 1), (1, 0), (2, 3)])
def test_nnf_upsample_equals_cpu(window, dilation):
    g = torch.Generator().manual_seed(window * 10 + dilation)
    coarse = torch.randint(0, 6 * 7, (2, 3, 5, 4), generator=g, dtype=torch.int32)
    for key_size, query_size in (([12, 14], [10, 8]), ([13, 20], [11, 9])):
        args = (coarse, [6, 7], key_size, query_size, window, dilation)
        assert torch.equal(EMULATED.nnf_upsample(*args), CPU.nnf_upsample(*args))


@pytest.mark.parametrize("patch_size", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bilinear_scores_equal_cpu(patch_size, dtype):
    g = torch.Generator().manual_seed(11 + patch_size)
    fq, fk = unit_features(g, 2, 12, 9, 13, dtype=dtype), unit_features(g, 2, 12, 11, 7, dtype=dtype)
    coords = (torch.rand(2, 5, 9, 13, 2, generator=g) * torch.tensor([8.0, 12.0]) - 1.0).to(dtype)
    args = (fq, fk, coords, patch_size)
    close = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(EMULATED.bilinear_scores(*args), CPU.bilinear_scores(*args), **close)


# ----------------------------------------------------------------------------- gathers

GATHER_CASES = [
    # (B, C, Cv, Hq, Wq, Hk, Wk, K): lanes per pixel 4 to 32, both scratch places
    (1, 8, 3, 9, 11, 7, 13, 1),
    (2, 16, 5, 6, 7, 10, 9, 5),
    (1, 32, 3, 8, 8, 12, 10, 16),  # 16-byte rows, 8 lanes per pixel
    (1, 3, 7, 5, 8, 6, 4, 5),  # C not a multiple of 4: the scalar path
    (1, 64, 70, 4, 5, 7, 4, 16),  # 32 lanes per pixel
    (1, 8, 3, 4, 5, 9, 9, 70),  # the bilinear backward keeps its per-candidate values in a global buffer
]


def gather_inputs(case, dtype):
    B, C, Cv, Hq, Wq, Hk, Wk, K = case
    g = torch.Generator().manual_seed(sum(case))
    query, key = unit_features(g, B, C, Hq, Wq, dtype=dtype), unit_features(g, B, C, Hk, Wk, dtype=dtype)
    value = torch.rand(B, Cv, Hk, Wk, generator=g, dtype=dtype)
    nnf = torch.randint(0, Hk * Wk, (B, K, Hq, Wq), generator=g, dtype=torch.int32)
    scale = torch.tensor([Wk + 2.0, Hk + 2.0], dtype=dtype)
    coords = torch.rand(B, K, Hq, Wq, 2, generator=g, dtype=dtype) * scale - 1.5  # past every border
    grad_out = torch.randn(B, Cv, Hq, Wq, generator=g, dtype=dtype)
    return query, key, value, nnf, coords, grad_out


def gather_results(ops, op, inputs):
    query, key, value, nnf, coords, grad_out = inputs
    where = nnf if op == "weighted" else coords
    name = "bilinear_weighted_gather" if op == "bilinear" else "weighted_gather"
    forward, backward = getattr(ops, name), getattr(ops, f"{name}_backward")
    out = forward(query, key, value, where, 0.3)
    return (out, *backward(grad_out, query, key, value, where, 0.3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", GATHER_CASES)
@pytest.mark.parametrize("op", ["weighted", "bilinear"])
def test_gathers_forward_and_backward_equal_cpu(op, case, dtype):
    inputs = gather_inputs(case, dtype)
    # float32: the sums' order differs from the cpu kernels' (lanes, atomics), and a gradient
    # entry that cancels to ~1e-3 keeps ~1e-6 of rounding.
    close = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    expected_results = gather_results(CPU, op, inputs)
    for got, expected in zip(gather_results(EMULATED, op, inputs), expected_results, strict=True):
        assert got.dtype == expected.dtype and got.shape == expected.shape
        torch.testing.assert_close(got, expected, **close)


@pytest.mark.parametrize("op", ["weighted", "bilinear"])
def test_deterministic_backward_is_bitwise_stable_and_matches_atomics(op):
    """With deterministic algorithms the key and value gradients come from scatter_to_keys_kernel
    (entry order per key pixel) instead of atomics."""
    inputs = gather_inputs((2, 16, 5, 6, 7, 5, 6, 9), torch.float32)
    atomic = gather_results(EMULATED, op, inputs)
    torch.use_deterministic_algorithms(True)
    try:
        first, second = gather_results(EMULATED, op, inputs), gather_results(EMULATED, op, inputs)
    finally:
        torch.use_deterministic_algorithms(False)
    for a, b, c in zip(first, second, atomic, strict=True):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-5)
