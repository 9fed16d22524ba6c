"""The CUDA search kernels (patch_match, evaluate_candidates, nnf_upsample) against the cpu
kernels and the reference. They run the same per-pixel code (csrc/patch_match.h), so on
integer-valued features, where every score is exact whatever the order of the sums, the three
backends must agree bitwise. Marked cuda: skipped without a GPU."""

import pytest
import torch
from kernel_cases import SEARCH_CASES as BASE_SEARCH_CASES
from kernel_cases import check_within_bound, init_with_holes, integer_features, unit_features

import cocosnet_ops
from cocosnet_ops import reference

pytestmark = pytest.mark.cuda  # skipped without a GPU and the CUDA kernels (conftest.py)
CUDA = torch.device("cuda")


SEARCH_CASES = [
    *BASE_SEARCH_CASES,
    (1, 32, 40, 24, 30, 50, 33, 3, 1, True, 5),  # the largest list bound
    (2, 7, 20, 20, 20, 20, 64, 2, 5, True, 11),
]


@pytest.mark.parametrize("case", SEARCH_CASES)
def test_patch_match_equals_cpu_and_reference(case):
    B, C, Hq, Wq, Hk, Wk, k, iters, patch_size, random_search, seed = case
    g = torch.Generator().manual_seed(hash(case) % 2**31)
    fq, fk = integer_features(g, B, C, Hq, Wq), integer_features(g, B, C, Hk, Wk)
    args = dict(k=k, iters=iters, patch_size=patch_size, random_search=random_search, seed=seed)
    nnf, scores = cocosnet_ops.patch_match(fq.to(CUDA), fk.to(CUDA), backend="cuda", **args)
    cpu_nnf, cpu_scores = cocosnet_ops.patch_match(fq, fk, backend="cpu", **args)
    assert nnf.device.type == "cuda" and nnf.dtype == torch.int32
    assert torch.equal(nnf.cpu(), cpu_nnf)
    assert torch.equal(scores.cpu(), cpu_scores)
    if Hq * Wq * Hk * Wk <= 40_000:
        ref_nnf, ref_scores = cocosnet_ops.patch_match(fq, fk, backend="torch", **args)
        assert torch.equal(nnf.cpu(), ref_nnf)


def test_patch_match_with_init_and_jumps_equals_cpu():
    g = torch.Generator().manual_seed(3)
    fq, fk = integer_features(g, 2, 6, 10, 12), integer_features(g, 2, 6, 9, 7)
    init = torch.randint(-5, 63, (2, 9, 10, 12), generator=g, dtype=torch.int32)
    for extra in ({}, {"jump": [3, 1]}):
        out = cocosnet_ops.patch_match(fq.to(CUDA), fk.to(CUDA), k=5, iters=3, init=init.to(CUDA), **extra)
        cpu = cocosnet_ops.patch_match(fq, fk, k=5, iters=3, init=init, backend="cpu", **extra)
        assert torch.equal(out[0].cpu(), cpu[0]) and torch.equal(out[1].cpu(), cpu[1])


@pytest.mark.parametrize("max_radius", [0, 1, 3])
@pytest.mark.parametrize("case", SEARCH_CASES)
def test_bounded_patch_match_equals_cpu_and_reference(case, max_radius):
    """max_radius: the window is read from the init list in global memory, per candidate."""
    B, C, Hq, Wq, Hk, Wk, k, iters, patch_size, random_search, seed = case
    g = torch.Generator().manual_seed(hash(case) % 2**31 + max_radius)
    fq, fk = integer_features(g, B, C, Hq, Wq), integer_features(g, B, C, Hk, Wk)
    init = init_with_holes(g, B, 40, Hq, Wq, Hk * Wk)
    args = dict(k=k, iters=iters, patch_size=patch_size, random_search=random_search, seed=seed)

    def search(backend, radius):
        device = CUDA if backend == "cuda" else torch.device("cpu")
        out = cocosnet_ops.patch_match(
            fq.to(device), fk.to(device), init=init.to(device), max_radius=radius, backend=backend, **args
        )
        return out[0].cpu(), out[1].cpu()

    nnf, scores = search("cuda", max_radius)
    cpu_nnf, cpu_scores = search("cpu", max_radius)
    assert torch.equal(nnf, cpu_nnf) and torch.equal(scores, cpu_scores)
    check_within_bound(nnf, init, Wk, max_radius, k)
    if Hq * Wq * Hk * Wk <= 40_000:
        assert torch.equal(nnf, search("torch", max_radius)[0])
    unbounded, wide = search("cuda", None), search("cuda", max(Hk, Wk))
    assert torch.equal(wide[0], unbounded[0]) and torch.equal(wide[1], unbounded[1])


def test_patch_match_float64_equals_cpu():
    g = torch.Generator().manual_seed(4)
    fq, fk = integer_features(g, 1, 8, 14, 9).double(), integer_features(g, 1, 8, 11, 13).double()
    out = cocosnet_ops.patch_match(fq.to(CUDA), fk.to(CUDA), k=7, iters=4, patch_size=3)
    cpu = cocosnet_ops.patch_match(fq, fk, k=7, iters=4, patch_size=3, backend="cpu")
    assert out[1].dtype == torch.float64
    assert torch.equal(out[0].cpu(), cpu[0]) and torch.equal(out[1].cpu(), cpu[1])


def test_patch_match_float_features_scores_are_inner_products():
    g = torch.Generator().manual_seed(5)
    fq, fk = unit_features(g, 2, 32, 48, 40).to(CUDA), unit_features(g, 2, 32, 36, 52).to(CUDA)
    nnf, scores = cocosnet_ops.patch_match(fq, fk, k=16, iters=5)
    torch.testing.assert_close(scores, reference.patch_scores(fq, fk, nnf), rtol=1e-5, atol=1e-5)
    assert bool((scores[:, :-1] >= scores[:, 1:]).all())
    sorted_nnf = nnf.sort(dim=1).values
    assert bool((sorted_nnf[:, 1:] != sorted_nnf[:, :-1]).all())
    assert int(nnf.min()) >= 0 and int(nnf.max()) < 36 * 52


def test_patch_match_is_deterministic_and_batch_independent():
    g = torch.Generator().manual_seed(6)
    fq, fk = unit_features(g, 3, 16, 30, 30).to(CUDA), unit_features(g, 3, 16, 30, 30).to(CUDA)
    first = cocosnet_ops.patch_match(fq, fk, k=8, iters=4, seed=9)
    second = cocosnet_ops.patch_match(fq, fk, k=8, iters=4, seed=9)
    alone = cocosnet_ops.patch_match(fq[1:2], fk[1:2], k=8, iters=4, seed=9)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert torch.equal(first[0][1:2], alone[0]) and torch.equal(first[1][1:2], alone[1])


@pytest.mark.parametrize("candidates", [1, 5, 40])
def test_evaluate_candidates_equals_cpu(candidates):
    g = torch.Generator().manual_seed(candidates)
    fq, fk = integer_features(g, 2, 4, 6, 7), integer_features(g, 2, 4, 5, 9)
    cand = torch.randint(-2, 45, (2, candidates, 6, 7), generator=g, dtype=torch.int32)
    for patch_size in (1, 3):
        out = cocosnet_ops.evaluate_candidates(fq.to(CUDA), fk.to(CUDA), cand.to(CUDA), 4, patch_size)
        cpu = cocosnet_ops.evaluate_candidates(fq, fk, cand, 4, patch_size, backend="cpu")
        assert torch.equal(out[0].cpu(), cpu[0]) and torch.equal(out[1].cpu(), cpu[1])


@pytest.mark.parametrize("window,dilation", [(4, 2), (3, 1), (1, 0), (2, 3)])
def test_nnf_upsample_equals_cpu(window, dilation):
    g = torch.Generator().manual_seed(window * 10 + dilation)
    coarse = torch.randint(0, 6 * 7, (2, 3, 5, 4), generator=g, dtype=torch.int32)
    for key_size, query_size in (((12, 14), (10, 8)), ((13, 20), (11, 9))):
        out = cocosnet_ops.nnf_upsample(coarse.to(CUDA), key_size, query_size, window, dilation, (6, 7))
        cpu = cocosnet_ops.nnf_upsample(coarse, key_size, query_size, window, dilation, (6, 7), backend="cpu")
        assert torch.equal(out.cpu(), cpu)


def test_out_of_range_indices_never_read_outside():
    """Called past the Python checks, the kernels skip or clamp bad indices instead of reading
    out of bounds (compute-sanitizer runs this file too)."""
    g = torch.Generator().manual_seed(8)
    fq, fk = unit_features(g, 1, 8, 6, 6).to(CUDA), unit_features(g, 1, 8, 5, 5).to(CUDA)
    bad = torch.tensor([-7, 25, 10**6, 3], dtype=torch.int32, device=CUDA).view(1, 4, 1, 1).expand(1, 4, 6, 6)
    nnf, scores = torch.ops.cocosnet_ops.evaluate_candidates(fq, fk, bad.contiguous(), 3, 1)
    assert int(nnf.min()) >= 0 and int(nnf.max()) < 25 and bool(scores.isfinite().all())
    nnf, _ = torch.ops.cocosnet_ops.patch_match(fq, fk, 3, 2, bad.contiguous(), 3, [1], True, 0)
    assert int(nnf.min()) >= 0 and int(nnf.max()) < 25
    up = torch.ops.cocosnet_ops.nnf_upsample(bad[:, :2, :2, :2].contiguous(), [2, 2], [5, 5], [6, 6], 2, 1)
    assert int(up.min()) >= 0 and int(up.max()) < 25


@pytest.mark.parametrize("variant", range(1, 16))
def test_search_variants_return_the_default_kernels_results(variant):
    """Every search-step variant (kernels.h's SearchVariant bits) gives the default kernel's
    results bit for bit, on the GPU (tests/test_emulated_cuda.py checks the same in the emulator)."""
    g = torch.Generator().manual_seed(variant)
    ops = torch.ops.cocosnet_ops
    cases = [
        (unit_features(g, 2, 32, 33, 29), unit_features(g, 2, 32, 31, 35), 16, 1),
        (unit_features(g, 1, 64, 20, 21), unit_features(g, 1, 64, 22, 19), 12, 1),
        (unit_features(g, 1, 6, 20, 21), unit_features(g, 1, 6, 22, 19), 9, 3),
    ]
    for fq, fk, k, patch_size in cases:
        args = (fq.to(CUDA), fk.to(CUDA), k, 4, None, patch_size, [4, 2, 1], True, 3)
        ops._set_search_variant(0)
        expected = ops.patch_match(*args)
        ops._set_search_variant(variant)
        try:
            got = ops.patch_match(*args)
        finally:
            ops._set_search_variant(0)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_patch_match_reads_half_precision_features(dtype):
    """Read without a float32 copy and scored in float32: the float32 kernel's results on the same
    values; score_dtype rescores in float32 and keeps the float32 contract; opcheck on the op."""
    g = torch.Generator().manual_seed(13)
    fq, fk = unit_features(g, 2, 32, 40, 36).to(CUDA), unit_features(g, 2, 32, 38, 42).to(CUDA)
    half = cocosnet_ops.patch_match(fq.to(dtype), fk.to(dtype), k=16, iters=4)
    widened = cocosnet_ops.patch_match(fq.to(dtype).float(), fk.to(dtype).float(), k=16, iters=4)
    assert half[1].dtype == torch.float32
    assert torch.equal(half[0], widened[0]) and torch.equal(half[1], widened[1])
    nnf, scores = cocosnet_ops.patch_match(fq, fk, k=16, iters=4, score_dtype=dtype)
    torch.testing.assert_close(scores, reference.patch_scores(fq, fk, nnf), rtol=1e-5, atol=1e-6)
    ops = torch.ops.cocosnet_ops
    torch.library.opcheck(
        ops.patch_match.default, (fq.to(dtype), fk.to(dtype), 8, 2, None, 1, [2, 1], True, 3)
    )


def test_k_above_the_list_bound_is_a_clear_error():
    fq = torch.randn(1, 4, 12, 12, device=CUDA)
    with pytest.raises(ValueError, match=r"^k: the CUDA search kernels keep at most 64"):
        cocosnet_ops.patch_match(fq, fq, k=65)
    with pytest.raises(ValueError, match=r"^k\b"):
        torch.ops.cocosnet_ops.patch_match(fq, fq, 65, 1, None, 1, [1], True, 0)


def test_opcheck_search_ops():
    g = torch.Generator().manual_seed(9)
    fq, fk = unit_features(g, 2, 8, 9, 10).to(CUDA), unit_features(g, 2, 8, 7, 11).to(CUDA)
    cand = torch.randint(-1, 77, (2, 6, 9, 10), generator=g, dtype=torch.int32).to(CUDA)
    coarse = torch.randint(0, 12, (2, 2, 3, 4), generator=g, dtype=torch.int32).to(CUDA)
    ops = torch.ops.cocosnet_ops
    torch.library.opcheck(ops.patch_match.default, (fq, fk, 4, 2, cand, 3, [2, 1], True, 3))
    torch.library.opcheck(ops.patch_match.default, (fq, fk, 4, 2, cand, 1, [2, 1], True, 3, 2))
    torch.library.opcheck(ops.evaluate_candidates.default, (fq, fk, cand, 4, 1))
    torch.library.opcheck(ops.nnf_upsample.default, (coarse, [3, 4], [7, 11], [9, 10], 3, 1))


def test_compiled_search_matches_eager():
    g = torch.Generator().manual_seed(10)
    fq, fk = unit_features(g, 1, 16, 24, 20).to(CUDA), unit_features(g, 1, 16, 22, 26).to(CUDA)

    def search(query, key):
        nnf, scores = cocosnet_ops.patch_match(query, key, k=8, iters=3)
        return cocosnet_ops.patch_match(query, key, k=8, iters=2, init=nnf, max_radius=2)

    compiled = torch.compile(search, fullgraph=True)
    out, eager = compiled(fq, fk), search(fq, fk)
    assert torch.equal(out[0], eager[0]) and torch.equal(out[1], eager[1])


@pytest.mark.parametrize("patch_size", [1, 3])
def test_bilinear_scores_equal_cpu_and_reference(patch_size):
    g = torch.Generator().manual_seed(11 + patch_size)
    fq, fk = unit_features(g, 2, 12, 9, 13), unit_features(g, 2, 12, 11, 7)
    coords = torch.rand(2, 5, 9, 13, 2, generator=g) * torch.tensor([8.0, 12.0]) - 1.0  # past every border
    out = cocosnet_ops.bilinear_scores(fq.to(CUDA), fk.to(CUDA), coords.to(CUDA), patch_size)
    cpu = cocosnet_ops.bilinear_scores(fq, fk, coords, patch_size, backend="cpu")
    torch.testing.assert_close(out.cpu(), cpu, rtol=1e-5, atol=1e-6)
    ref = reference.bilinear_scores(fq.double(), fk.double(), coords.double(), patch_size)
    torch.testing.assert_close(out.cpu().double(), ref, rtol=1e-5, atol=1e-6)
    torch.library.opcheck(
        torch.ops.cocosnet_ops.bilinear_scores.default,
        (fq.to(CUDA), fk.to(CUDA), coords.to(CUDA), patch_size),
    )
