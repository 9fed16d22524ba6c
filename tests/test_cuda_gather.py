"""The CUDA gathers, dense_warp and exact_knn against the cpu kernels and the reference, forward
and backward: non-square maps, query and key of different sizes, batches, value widths other
than the feature width, K from 1 to beyond what fits in shared memory. Also gradcheck, opcheck,
torch.compile, the deterministic backward, and indices or coordinates outside the maps.
Marked cuda: skipped without a GPU."""

import pytest
import torch
from kernel_cases import integer_features

import cocosnet_ops
from cocosnet_ops import reference

pytestmark = pytest.mark.cuda  # skipped without a GPU and the CUDA kernels (conftest.py)
CUDA = torch.device("cuda")
ops = torch.ops.cocosnet_ops
TEMPERATURE = 0.2
# float32 against float32 or float64: sums in another order, over up to 70 candidates.
CLOSE = dict(rtol=1e-4, atol=1e-4)


def unit_features(generator, *shape, dtype=torch.float32, device=None):
    x = torch.randn(*shape, generator=generator, dtype=torch.float64, device=device)
    return torch.nn.functional.normalize(x, dim=1).to(dtype)


GATHER_CASES = [
    # (B, C, Cv, Hq, Wq, Hk, Wk, K)
    (1, 8, 3, 9, 11, 7, 13, 1),
    (2, 16, 5, 12, 7, 10, 9, 5),
    (2, 32, 3, 16, 16, 12, 20, 16),  # 16-byte rows, 8 lanes per pixel
    (1, 3, 7, 5, 8, 6, 4, 5),  # C not a multiple of 4, more value channels than features
    (2, 64, 70, 6, 5, 7, 4, 16),  # 32 lanes per pixel
    (1, 136, 3, 4, 6, 5, 5, 16),  # rows longer than 32 lanes take in one pass
    (1, 8, 3, 6, 7, 9, 9, 70),  # the bilinear backward keeps its per-candidate values in a global buffer
]


def gather_inputs(case, seed=0, dtype=torch.float32):
    """Features, values, a random NNF (repeated indices included) and coordinates that reach
    past every border, on the CPU."""
    B, C, Cv, Hq, Wq, Hk, Wk, K = case
    g = torch.Generator().manual_seed(seed)
    query, key = unit_features(g, B, C, Hq, Wq, dtype=dtype), unit_features(g, B, C, Hk, Wk, dtype=dtype)
    value = torch.rand(B, Cv, Hk, Wk, generator=g, dtype=torch.float64).to(dtype)
    nnf = torch.randint(0, Hk * Wk, (B, K, Hq, Wq), generator=g, dtype=torch.int32)
    scale = torch.tensor([Wk + 2.0, Hk + 2.0], dtype=torch.float64)
    coords = (torch.rand(B, K, Hq, Wq, 2, generator=g, dtype=torch.float64) * scale - 1.5).to(dtype)
    grad_out = torch.randn(B, Cv, Hq, Wq, generator=g, dtype=torch.float64).to(dtype)
    return query, key, value, nnf, coords, grad_out


def forward_backward(fn, tensors, grad_out):
    """fn(*tensors) and the gradients of <out, grad_out> for every floating-point input."""
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in tensors]
    out = fn(*leaves)
    grads = torch.autograd.grad(out, [t for t in leaves if t.requires_grad], grad_out)
    return (out, *grads)


def on(device, tensors, dtype=None):
    """The tensors on `device`, the floating-point ones in `dtype` if given."""
    return [
        t.to(device, dtype) if dtype is not None and t.is_floating_point() else t.to(device) for t in tensors
    ]


def weighted(backend):
    return lambda q, k, v, nnf: cocosnet_ops.weighted_gather(q, k, v, nnf, TEMPERATURE, backend=backend)


def bilinear(backend):
    return lambda q, k, v, xy: cocosnet_ops.bilinear_weighted_gather(
        q, k, v, xy, TEMPERATURE, backend=backend
    )


def reference_weighted(q, k, v, nnf):
    return reference.weighted_gather(q, k, v, nnf, TEMPERATURE)


def reference_bilinear(q, k, v, xy):
    return reference.bilinear_weighted_gather(q, k, v, xy, TEMPERATURE)


@pytest.mark.parametrize("case", GATHER_CASES)
@pytest.mark.parametrize("op", ["weighted", "bilinear"])
def test_gather_equals_cpu_and_reference(case, op):
    query, key, value, nnf, coords, grad_out = gather_inputs(case, seed=sum(case))
    where = nnf if op == "weighted" else coords
    make = weighted if op == "weighted" else bilinear
    ref_fn = reference_weighted if op == "weighted" else reference_bilinear
    tensors = [query, key, value, where]
    got = forward_backward(make("cuda"), on(CUDA, tensors), grad_out.to(CUDA))
    cpu = forward_backward(make("cpu"), tensors, grad_out)
    ref = forward_backward(ref_fn, on("cpu", tensors, torch.float64), grad_out.double())
    assert got[0].device.type == "cuda" and got[0].dtype == torch.float32
    assert got[0].shape == (case[0], case[2], case[3], case[4])
    for a, b, c in zip(got, cpu, ref, strict=True):
        torch.testing.assert_close(a.cpu(), b, **CLOSE)
        torch.testing.assert_close(a.cpu().double(), c, **CLOSE)


@pytest.mark.parametrize("op", ["weighted", "bilinear"])
def test_gather_float64_equals_reference_closely(op):
    case = (2, 12, 5, 7, 9, 8, 6, 9)
    query, key, value, nnf, coords, grad_out = gather_inputs(case, seed=3, dtype=torch.float64)
    tensors = [query, key, value, nnf if op == "weighted" else coords]
    make, ref_fn = (weighted, reference_weighted) if op == "weighted" else (bilinear, reference_bilinear)
    got = forward_backward(make("cuda"), on(CUDA, tensors), grad_out.to(CUDA))
    ref = forward_backward(ref_fn, tensors, grad_out)
    for a, b in zip(got, ref, strict=True):
        assert a.dtype == torch.float64
        torch.testing.assert_close(a.cpu(), b, rtol=1e-10, atol=1e-12)


def test_bilinear_at_integer_coordinates_is_weighted_gather():
    query, key, value, nnf, _, _ = on(CUDA, gather_inputs((2, 16, 3, 9, 10, 8, 11, 6), seed=4))
    coords = cocosnet_ops.nnf.nnf_to_coords(nnf, (8, 11))
    torch.testing.assert_close(
        ops.bilinear_weighted_gather(query, key, value, coords, 0.1),
        ops.weighted_gather(query, key, value, nnf, 0.1),
    )


@pytest.mark.parametrize("k", [4, 40])  # 40: the bilinear backward's values go to a global buffer
def test_gradcheck(k):
    case = (2, 5, 3, 2, 3, 3, 3, k)
    query, key, value, nnf, coords, _ = on(CUDA, gather_inputs(case, seed=k, dtype=torch.float64))
    leaves = [t.requires_grad_() for t in (query, key, value)]
    assert torch.autograd.gradcheck(lambda q, kk, v: ops.weighted_gather(q, kk, v, nnf, 0.5), leaves)
    assert torch.autograd.gradcheck(
        lambda q, kk, v, xy: ops.bilinear_weighted_gather(q, kk, v, xy, 0.5),
        [*leaves, coords.requires_grad_()],
    )


def test_opcheck_gathers():
    query, key, value, nnf, coords, grad_out = on(CUDA, gather_inputs((2, 8, 3, 6, 5, 5, 7, 4), seed=5))
    grads = lambda *ts: tuple(t.clone().requires_grad_() for t in ts)  # noqa: E731
    torch.library.opcheck(ops.weighted_gather.default, (*grads(query, key, value), nnf, 0.1))
    torch.library.opcheck(ops.bilinear_weighted_gather.default, (*grads(query, key, value, coords), 0.1))
    torch.library.opcheck(ops.weighted_gather_backward.default, (grad_out, query, key, value, nnf, 0.1))
    torch.library.opcheck(
        ops.bilinear_weighted_gather_backward.default, (grad_out, query, key, value, coords, 0.1)
    )


def test_compiled_gathers_match_eager_with_gradients():
    query, key, value, nnf, coords, _ = on(CUDA, gather_inputs((1, 16, 3, 12, 10, 9, 11, 8), seed=6))

    def warp(q, k, v, xy):
        return cocosnet_ops.weighted_gather(q, k, v, nnf, 0.05) + cocosnet_ops.bilinear_weighted_gather(
            q, k, v, xy, 0.05
        )

    compiled = torch.compile(warp, fullgraph=True)
    tensors = [query, key, value, coords]
    got = forward_backward(compiled, tensors, torch.ones_like(query[:, :3]))
    eager = forward_backward(warp, tensors, torch.ones_like(query[:, :3]))
    for a, b in zip(got, eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert all(bool(t.abs().sum() > 0) for t in got[1:])


def gradients(op, tensors, grad_out):
    fn = weighted("cuda") if op == "weighted" else bilinear("cuda")
    return forward_backward(fn, tensors, grad_out)[1:]


@pytest.mark.parametrize("op", ["weighted", "bilinear"])
def test_deterministic_backward_is_bitwise_stable_and_matches_atomics(op):
    # A large query map onto 16 key pixels: hundreds of entries add into every key pixel.
    query, key, value, nnf, coords, grad_out = on(CUDA, gather_inputs((2, 16, 3, 24, 24, 4, 4, 8), seed=7))
    tensors = [query, key, value, nnf if op == "weighted" else coords]
    atomic = gradients(op, tensors, grad_out)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first = gradients(op, tensors, grad_out)
        second = gradients(op, tensors, grad_out)
    finally:
        torch.use_deterministic_algorithms(previous)
    for a, b, c in zip(first, second, atomic, strict=True):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, c, **CLOSE)


@pytest.mark.parametrize("deterministic", [False, True])
def test_indices_and_coordinates_outside_the_maps_are_clamped(deterministic):
    """Past the Python checks, the kernels clamp NNF entries into the key map and coordinates
    to its border (NaN to 0), so nothing reads out of bounds (compute-sanitizer runs this too)."""
    query, key, value, _, _, grad_out = on(CUDA, gather_inputs((2, 8, 3, 5, 6, 4, 5, 4), seed=8))
    bad = torch.tensor([-7, 20, 10**6, -(2**31)], dtype=torch.int32, device=CUDA)
    bad = bad.view(1, 4, 1, 1).expand(2, 4, 5, 6).contiguous()
    xy = torch.tensor(
        [[float("nan"), 1.0], [float("inf"), -float("inf")], [-1e30, 1e30], [2.5, 7.0]], device=CUDA
    )
    xy = xy.view(1, 4, 1, 1, 2).expand(2, 4, 5, 6, 2).contiguous()
    border = torch.tensor([4.0, 3.0], device=CUDA)  # (Wk - 1, Hk - 1)
    inside = xy.nan_to_num(0.0).clamp(min=torch.zeros_like(border), max=border)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        for fn, outside, clamped in (
            (ops.weighted_gather, bad, bad.clamp(0, 19)),
            (ops.bilinear_weighted_gather, xy, inside),
        ):
            out = fn(query, key, value, outside, 0.1)
            assert bool(out.isfinite().all())
            assert torch.equal(out, fn(query, key, value, clamped, 0.1))
        grads = ops.weighted_gather_backward(grad_out, query, key, value, bad, 0.1)
        want = ops.weighted_gather_backward(grad_out, query, key, value, bad.clamp(0, 19), 0.1)
        for a, b in zip(grads, want, strict=True):
            torch.testing.assert_close(a, b, **CLOSE)
        grads = ops.bilinear_weighted_gather_backward(grad_out, query, key, value, xy, 0.1)
        assert all(bool(t.isfinite().all()) for t in grads)
        # A coordinate clamped (or NaN) has no gradient: x of the first three candidates, y of
        # the second and third.
        assert bool((grads[3][:, :3, ..., 0] == 0).all()) and bool((grads[3][:, 1:3, ..., 1] == 0).all())
    finally:
        torch.use_deterministic_algorithms(previous)


def test_rows_not_16_byte_aligned_take_the_scalar_path():
    query, key, value, nnf, coords, _ = on(CUDA, gather_inputs((1, 16, 3, 7, 8, 6, 9, 5), seed=9))
    # A channels-last view one element into its storage: the kernels read it in place.
    storage = torch.empty(query.numel() + 1, device=CUDA)
    shifted = storage[1:].view(1, 7, 8, 16).copy_(query.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    assert shifted.permute(0, 2, 3, 1).is_contiguous() and shifted.data_ptr() % 16 != 0
    for fn, where in ((ops.weighted_gather, nnf), (ops.bilinear_weighted_gather, coords)):
        torch.testing.assert_close(fn(shifted, key, value, where, 0.1), fn(query, key, value, where, 0.1))


def test_large_maps_match_direct_computation_and_conserve_gradients():
    """Batch 4 at 1024 x 1024 with 64 channels: offsets past 2^31 bytes. Sampled pixels of the
    last batch item against a direct computation; the value gradient sums to the output
    gradient (softmax weights sum to 1), the key gradient to zero."""
    B, C, side, K = 4, 64, 1024, 16
    g = torch.Generator(device=CUDA).manual_seed(10)
    query = unit_features(g, B, C, side, side, device=CUDA)
    key = unit_features(g, B, C, side, side, device=CUDA)
    value = torch.rand(B, 3, side, side, device=CUDA, generator=g)
    nnf = torch.randint(0, side * side, (B, K, side, side), device=CUDA, generator=g, dtype=torch.int32)
    grad_out = torch.randn(B, 3, side, side, device=CUDA, generator=g)
    out = ops.weighted_gather(query, key, value, nnf, 0.1)
    grad_q, grad_k, grad_v = ops.weighted_gather_backward(grad_out, query, key, value, nnf, 0.1)

    pixels = torch.randint(0, side * side, (2000,), device=CUDA, generator=g)
    q = query[-1].flatten(1)[:, pixels].T.double()  # (P, C)
    index = nnf[-1].flatten(1)[:, pixels].T.long()  # (P, K)
    k = key[-1].flatten(1).T.double()[index]  # (P, K, C)
    v = value[-1].flatten(1).T.double()[index]  # (P, K, 3)
    weights = torch.softmax(torch.einsum("pc,pkc->pk", q, k) / 0.1, dim=1)
    torch.testing.assert_close(
        out[-1].flatten(1)[:, pixels].T.double(), torch.einsum("pk,pkc->pc", weights, v), **CLOSE
    )
    value_dots = torch.einsum("pc,pkc->pk", grad_out[-1].flatten(1)[:, pixels].T.double(), v)
    logit_grads = weights * (value_dots - (weights * value_dots).sum(1, keepdim=True)) / 0.1
    torch.testing.assert_close(
        grad_q[-1].flatten(1)[:, pixels].T.double(), torch.einsum("pk,pkc->pc", logit_grads, k), **CLOSE
    )
    torch.testing.assert_close(
        grad_v.double().sum((2, 3)), grad_out.double().sum((2, 3)), rtol=1e-5, atol=1e-2
    )
    assert float(grad_k.double().sum((2, 3)).abs().max()) < 1e-1


# ----------------------------------------------------------------------------- dense_warp

DENSE_CASES = [
    # (B, C, Cv, Hq, Wq, Hk, Wk)
    (2, 6, 3, 5, 7, 4, 6),
    (1, 16, 11, 9, 8, 7, 10),
    (2, 3, 6, 33, 1, 5, 7),  # 33 query pixels: the logsumexp is padded to 64 inside
    (1, 64, 3, 16, 16, 12, 20),
]


def dense(backend):
    return lambda q, k, v: cocosnet_ops.dense_warp(q, k, v, TEMPERATURE, cycle=True, backend=backend)


@pytest.mark.parametrize("case", DENSE_CASES)
def test_dense_warp_equals_cpu_and_reference(case):
    B, C, Cv, Hq, Wq, Hk, Wk = case
    query, key, value, _, _, _ = gather_inputs((B, C, Cv, Hq, Wq, Hk, Wk, 1), seed=sum(case))
    g = torch.Generator().manual_seed(1)
    grads = (torch.randn(B, Cv, Hq, Wq, generator=g), torch.randn(B, Cv, Hk, Wk, generator=g))
    tensors = [query, key, value]

    def both(fn, ts, gs):
        leaves = [t.detach().clone().requires_grad_() for t in ts]
        outs = fn(*leaves)
        return (*outs, *torch.autograd.grad(outs, leaves, gs))

    got = both(dense("cuda"), on(CUDA, tensors), on(CUDA, grads))
    cpu = both(dense("cpu"), tensors, grads)
    ref = both(
        lambda q, k, v: reference.dense_warp(q, k, v, TEMPERATURE, cycle=True),
        on("cpu", tensors, torch.float64),
        [t.double() for t in grads],
    )
    for a, b, c in zip(got, cpu, ref, strict=True):
        torch.testing.assert_close(a.cpu(), b, **CLOSE)
        torch.testing.assert_close(a.cpu().double(), c, **CLOSE)
    out, logsumexp = ops.dense_warp(*on(CUDA, tensors), TEMPERATURE)
    cpu_out, cpu_logsumexp = ops.dense_warp(*tensors, TEMPERATURE)
    assert logsumexp.shape == (B, 1, Hq * Wq) and logsumexp.dtype == torch.float32
    torch.testing.assert_close(logsumexp.cpu(), cpu_logsumexp, rtol=1e-5, atol=1e-5)


def test_dense_warp_float64_in_chunks_equals_reference():
    """float64 runs the chunked exact softmax: 4096 query pixels against 8281 key pixels take
    three chunks."""
    g = torch.Generator(device=CUDA).manual_seed(11)
    query = unit_features(g, 1, 8, 64, 64, dtype=torch.float64, device=CUDA)
    key = unit_features(g, 1, 8, 91, 91, dtype=torch.float64, device=CUDA)
    value = torch.rand(1, 3, 91, 91, device=CUDA, generator=g, dtype=torch.float64)
    grad = torch.randn(1, 3, 64, 64, device=CUDA, generator=g, dtype=torch.float64)
    got = forward_backward(lambda q, k, v: ops.dense_warp(q, k, v, 0.1)[0], [query, key, value], grad)
    ref = forward_backward(lambda q, k, v: reference.attention_warp(q, k, v, 0.1), [query, key, value], grad)
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_gradcheck_dense_warp():
    inputs = gather_inputs((2, 6, 3, 5, 7, 4, 6, 1), seed=12, dtype=torch.float64)
    query, key, value, _, _, _ = on(CUDA, inputs)
    leaves = [t.requires_grad_() for t in (query, key, value)]
    assert torch.autograd.gradcheck(lambda q, k, v: cocosnet_ops.dense_warp(q, k, v, 0.5, cycle=True), leaves)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck_dense_warp(dtype):
    query, key, value, _, _, _ = on(CUDA, gather_inputs((2, 4, 3, 6, 5, 5, 7, 1), seed=13, dtype=dtype))
    grad = torch.randn(2, 3, 6, 5, device=CUDA, dtype=dtype)
    torch.library.opcheck(
        ops.dense_warp.default, (*(t.clone().requires_grad_() for t in (query, key, value)), 0.1)
    )
    out, logsumexp = ops.dense_warp(query, key, value, 0.1)
    torch.library.opcheck(ops.dense_warp_backward.default, (grad, query, key, value, out, logsumexp, 0.1))


# ----------------------------------------------------------------------------- exact_knn


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(2, 3, 7, 6, 8, 9, 7), (1, 4, 64, 64, 64, 128, 20)])
def test_exact_knn_equals_reference_with_ties(dtype, shape):
    """Small integer features: every score is exact and many tie, so the order must match the
    reference's (score descending, ties to the lower index) bitwise. The second shape takes two
    chunks of query pixels."""
    B, C, Hq, Wq, Hk, Wk, k = shape
    g = torch.Generator().manual_seed(14)
    query = integer_features(g, B, C, Hq, Wq, dtype=dtype)
    key = integer_features(g, B, C, Hk, Wk, dtype=dtype)
    nnf, scores = cocosnet_ops.exact_knn(query.to(CUDA), key.to(CUDA), k, backend="cuda")
    ref_nnf, ref_scores = reference.exact_knn(query.to(CUDA), key.to(CUDA), k)
    assert nnf.dtype == torch.int32 and scores.dtype == dtype
    assert torch.equal(nnf, ref_nnf) and torch.equal(scores, ref_scores)


def test_exact_knn_nan_scores_rank_last():
    g = torch.Generator().manual_seed(15)
    query, key = integer_features(g, 1, 3, 4, 5), integer_features(g, 1, 3, 3, 4)
    key[0, :, 1, 2] = float("nan")
    nnf, scores = ops.exact_knn(query.to(CUDA), key.to(CUDA), 12)
    ref_nnf, ref_scores = reference.exact_knn(query, key, 12)
    assert torch.equal(nnf.cpu(), ref_nnf) and torch.equal(scores.cpu(), ref_scores)
    assert bool((nnf[:, -1] == 1 * 4 + 2).all()) and bool(scores[:, -1].isneginf().all())


def test_exact_knn_float_features_scores_are_sorted_inner_products():
    g = torch.Generator().manual_seed(16)
    query, key = unit_features(g, 2, 16, 20, 24).to(CUDA), unit_features(g, 2, 16, 18, 22).to(CUDA)
    nnf, scores = ops.exact_knn(query, key, 8)
    torch.testing.assert_close(scores, reference.patch_scores(query, key, nnf), rtol=1e-5, atol=1e-5)
    assert bool((scores[:, :-1] >= scores[:, 1:]).all())
    ref_nnf, _ = reference.exact_knn(query.double(), key.double(), 8)
    assert float((nnf == ref_nnf).float().mean()) > 0.99
    torch.library.opcheck(ops.exact_knn.default, (query, key, 8))
