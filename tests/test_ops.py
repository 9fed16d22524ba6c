"""The compiled CPU kernels against the pure-PyTorch reference, gradients, opcheck, torch.compile."""

import pytest
import torch
from kernel_cases import SEARCH_CASES, check_within_bound, init_with_holes, integer_features, unit_features

import cocosnet_ops
from cocosnet_ops import reference

pytestmark = pytest.mark.skipif(not cocosnet_ops.HAS_COMPILED, reason="cocosnet_ops._C is not built")


@pytest.mark.parametrize("case", SEARCH_CASES)
def test_patch_match_equals_reference(case):
    B, C, Hq, Wq, Hk, Wk, k, iters, patch_size, random_search, seed = case
    g = torch.Generator().manual_seed(hash(case) % 2**31)
    fq, fk = integer_features(g, B, C, Hq, Wq), integer_features(g, B, C, Hk, Wk)
    args = dict(k=k, iters=iters, patch_size=patch_size, random_search=random_search, seed=seed)
    nnf, scores = cocosnet_ops.patch_match(fq, fk, backend="cpu", **args)
    ref_nnf, ref_scores = cocosnet_ops.patch_match(fq, fk, backend="torch", **args)
    assert torch.equal(nnf, ref_nnf)
    assert torch.equal(scores, ref_scores)


@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize("score_dtype", [torch.float16, torch.bfloat16])
def test_patch_match_score_dtype(backend, score_dtype):
    """The search on rounded copies, the matches scored again from the features as given: on
    integer features (exact in half precision) the plain search's results; on unit features
    the float32 scores of the matches found, best first, no index twice."""
    g = torch.Generator().manual_seed(12)
    fq, fk = integer_features(g, 2, 8, 9, 11), integer_features(g, 2, 8, 10, 7)
    args = dict(k=6, iters=3, backend=backend)
    plain = cocosnet_ops.patch_match(fq, fk, **args)
    rounded = cocosnet_ops.patch_match(fq, fk, score_dtype=score_dtype, **args)
    assert torch.equal(rounded[0], plain[0]) and torch.equal(rounded[1], plain[1])
    uq, uk = unit_features(g, 2, 16, 9, 11), unit_features(g, 2, 16, 10, 7)
    nnf, scores = cocosnet_ops.patch_match(uq, uk, score_dtype=score_dtype, **args)
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores.double(), reference.patch_scores(uq.double(), uk.double(), nnf))
    assert bool((scores[:, :-1] >= scores[:, 1:]).all())
    assert bool((nnf.sort(1).values.diff(dim=1) != 0).all())


@pytest.mark.parametrize("score_dtype", [torch.float32, "float16", torch.int8])
def test_patch_match_score_dtype_must_be_half_precision(score_dtype):
    fq = torch.randn(1, 4, 5, 5)
    with pytest.raises(TypeError, match="^score_dtype"):
        cocosnet_ops.patch_match(fq, fq, k=2, score_dtype=score_dtype)


def test_patch_match_with_init_equals_reference():
    g = torch.Generator().manual_seed(3)
    fq, fk = integer_features(g, 2, 6, 10, 12), integer_features(g, 2, 6, 9, 7)
    init = torch.randint(-5, 63, (2, 9, 10, 12), generator=g, dtype=torch.int32)
    for backend_args in ({}, {"jump": [3, 1]}):
        out = cocosnet_ops.patch_match(fq, fk, k=5, iters=3, init=init, backend="cpu", **backend_args)
        ref = cocosnet_ops.patch_match(fq, fk, k=5, iters=3, init=init, backend="torch", **backend_args)
        assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])


@pytest.mark.parametrize("max_radius", [0, 1, 3])
@pytest.mark.parametrize("case", SEARCH_CASES)
def test_bounded_patch_match_equals_reference(case, max_radius):
    B, C, Hq, Wq, Hk, Wk, k, iters, patch_size, random_search, seed = case
    g = torch.Generator().manual_seed(hash(case) % 2**31)
    fq, fk = integer_features(g, B, C, Hq, Wq), integer_features(g, B, C, Hk, Wk)
    init = init_with_holes(g, B, 3, Hq, Wq, Hk * Wk)
    args = dict(
        k=k,
        iters=iters,
        init=init,
        patch_size=patch_size,
        random_search=random_search,
        seed=seed,
        max_radius=max_radius,
    )
    nnf, scores = cocosnet_ops.patch_match(fq, fk, backend="cpu", **args)
    ref_nnf, ref_scores = cocosnet_ops.patch_match(fq, fk, backend="torch", **args)
    assert torch.equal(nnf, ref_nnf)
    assert torch.equal(scores, ref_scores)
    check_within_bound(nnf, init, Wk, max_radius, k)


def test_coarse_to_fine_bounded_search_equals_reference():
    """The intended use: a coarser level's NNF upsampled into windows, refined within 2 pixels."""
    g = torch.Generator().manual_seed(8)
    fq, fk = integer_features(g, 2, 8, 16, 12), integer_features(g, 2, 8, 14, 18)
    coarse = torch.randint(0, 7 * 9, (2, 4, 8, 6), generator=g, dtype=torch.int32)
    init = cocosnet_ops.nnf_upsample(coarse, (14, 18), (16, 12))  # 4 * 16 candidates per pixel
    args = dict(k=6, iters=4, init=init, patch_size=3, seed=1, max_radius=2)
    nnf, scores = cocosnet_ops.patch_match(fq, fk, backend="cpu", **args)
    ref_nnf, ref_scores = cocosnet_ops.patch_match(fq, fk, backend="torch", **args)
    assert torch.equal(nnf, ref_nnf) and torch.equal(scores, ref_scores)
    check_within_bound(nnf, init, 18, 2, 6)


@pytest.mark.parametrize("channels", [5, 16])
def test_patch_match_float_features_equal_reference_search(channels):
    """The compiled search against the reference search on real-valued features. With fewer than
    8 channels the kernel's dot product adds in channel order like the reference, so the two
    agree bitwise; with more it keeps 8 partial sums, so scores agree within rounding and the
    matches are the same except between candidates tied within it."""
    g = torch.Generator().manual_seed(5)
    fq, fk = unit_features(g, 2, channels, 12, 12), unit_features(g, 2, channels, 10, 14)
    for patch_size in (1, 3):
        args = dict(k=4, iters=3, patch_size=patch_size, seed=3)
        nnf, scores = cocosnet_ops.patch_match(fq, fk, backend="cpu", **args)
        ref_nnf, ref_scores = cocosnet_ops.patch_match(fq, fk, backend="torch", **args)
        if channels < 8:
            assert torch.equal(nnf, ref_nnf) and torch.equal(scores, ref_scores)
        else:
            torch.testing.assert_close(scores, ref_scores, rtol=1e-6, atol=1e-6)
            tied = (
                reference.patch_scores(fq.double(), fk.double(), nnf, patch_size)
                - reference.patch_scores(fq.double(), fk.double(), ref_nnf, patch_size)
            ).abs() <= 1e-6
            assert ((nnf == ref_nnf) | tied).all()


@pytest.mark.parametrize("window,dilation", [(4, 2), (3, 1), (1, 0), (2, 3)])
def test_nnf_upsample_equals_reference(window, dilation):
    g = torch.Generator().manual_seed(window * 10 + dilation)
    coarse = torch.randint(0, 6 * 7, (2, 3, 5, 4), generator=g, dtype=torch.int32)
    for key_size, query_size, coarse_key in (((12, 14), (10, 8), (6, 7)), ((13, 20), (11, 9), (6, 7))):
        out = cocosnet_ops.nnf_upsample(
            coarse, key_size, query_size, window, dilation, coarse_key, backend="cpu"
        )
        ref = reference.nnf_upsample(coarse, key_size, query_size, window, dilation, coarse_key)
        assert torch.equal(out, ref)
        assert int(out.min()) >= 0 and int(out.max()) < key_size[0] * key_size[1]


@pytest.mark.parametrize("candidates", [1, 5, 40])
def test_evaluate_candidates_equals_reference(candidates):
    g = torch.Generator().manual_seed(candidates)
    fq, fk = integer_features(g, 2, 4, 6, 7), integer_features(g, 2, 4, 5, 9)
    cand = torch.randint(-2, 45, (2, candidates, 6, 7), generator=g, dtype=torch.int32)
    for patch_size in (1, 3):
        out = cocosnet_ops.evaluate_candidates(fq, fk, cand, 6, patch_size, backend="cpu")
        ref = cocosnet_ops.evaluate_candidates(fq, fk, cand, 6, patch_size, backend="torch")
        assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])


def test_exact_knn_equals_reference_with_ties():
    g = torch.Generator().manual_seed(11)
    fq, fk = integer_features(g, 2, 3, 7, 6), integer_features(g, 2, 3, 8, 9)  # many exact ties
    out = cocosnet_ops.exact_knn(fq, fk, 7, backend="cpu")
    ref = cocosnet_ops.exact_knn(fq, fk, 7, backend="torch")
    assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])


def gather_inputs(dtype=torch.float64, seed=0, k=5):
    g = torch.Generator().manual_seed(seed)
    fq = unit_features(g, 2, 6, 5, 7, dtype=dtype).requires_grad_()
    fk = unit_features(g, 2, 6, 4, 6, dtype=dtype).requires_grad_()
    v = torch.randn(2, 3, 4, 6, generator=g, dtype=dtype).requires_grad_()
    nnf = cocosnet_ops.patch_match(fq.detach(), fk.detach(), k=k, backend="cpu")[0]
    # Coordinates that reach past every border, to cover the clamped (no-gradient) case.
    scale = torch.tensor([6.0 + 2, 4.0 + 2], dtype=dtype)
    coords = (torch.rand(2, k, 5, 7, 2, generator=g, dtype=dtype) * scale - 1).requires_grad_()
    return fq, fk, v, nnf, coords


def assert_same_forward_backward(fn, inputs, rtol=1e-10, atol=1e-12):
    out = fn("cpu", *inputs)
    ref = fn("torch", *inputs)
    outs = out if isinstance(out, tuple) else (out,)
    refs = ref if isinstance(ref, tuple) else (ref,)
    for a, b in zip(outs, refs, strict=True):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)
    grads = [torch.randn_like(o) for o in outs]
    differentiable = [t for t in inputs if t.requires_grad]
    got = torch.autograd.grad(outs, differentiable, grads)
    want = torch.autograd.grad(refs, differentiable, grads)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


def test_weighted_gather_matches_reference():
    fq, fk, v, nnf, _ = gather_inputs()
    assert_same_forward_backward(
        lambda be, a, b, c: cocosnet_ops.weighted_gather(a, b, c, nnf, 0.3, backend=be), (fq, fk, v)
    )


def test_bilinear_weighted_gather_matches_reference():
    fq, fk, v, _, coords = gather_inputs()
    assert_same_forward_backward(
        lambda be, a, b, c, d: cocosnet_ops.bilinear_weighted_gather(a, b, c, d, 0.3, backend=be),
        (fq, fk, v, coords),
    )


def test_bilinear_at_integer_coordinates_is_weighted_gather():
    fq, fk, v, nnf, _ = gather_inputs(dtype=torch.float32)
    coords = torch.stack([nnf % 6, nnf // 6], dim=-1).float()
    a = cocosnet_ops.bilinear_weighted_gather(fq, fk, v, coords, 0.2, backend="cpu")
    b = cocosnet_ops.weighted_gather(fq, fk, v, nnf, 0.2, backend="cpu")
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("value_channels", [3, 6, 11])
def test_dense_warp_matches_reference(value_channels):
    fq, fk, _, _, _ = gather_inputs()
    v = torch.randn(2, value_channels, 4, 6, dtype=torch.float64, requires_grad=True)
    assert_same_forward_backward(
        lambda be, a, b, c: cocosnet_ops.dense_warp(a, b, c, 0.3, cycle=True, backend=be), (fq, fk, v)
    )


def test_gradcheck_weighted_gather():
    fq, fk, v, nnf, _ = gather_inputs()
    assert torch.autograd.gradcheck(
        lambda a, b, c: cocosnet_ops.weighted_gather(a, b, c, nnf, 0.5, backend="cpu"), (fq, fk, v)
    )


def test_gradcheck_bilinear_weighted_gather_including_coordinates():
    fq, fk, v, _, coords = gather_inputs()
    assert torch.autograd.gradcheck(
        lambda a, b, c, d: cocosnet_ops.bilinear_weighted_gather(a, b, c, d, 0.5, backend="cpu"),
        (fq, fk, v, coords),
    )
    # The coordinate gradient is really there (not all zero) for coordinates inside the map.
    inside = coords.detach().clamp(0.2, 3.7).requires_grad_()
    out = cocosnet_ops.bilinear_weighted_gather(fq, fk, v, inside, 0.5, backend="cpu")
    (grad,) = torch.autograd.grad(out.square().sum(), inside)
    assert grad.abs().gt(1e-6).float().mean() > 0.5


def test_gradcheck_dense_warp():
    fq, fk, v, _, _ = gather_inputs()
    assert torch.autograd.gradcheck(
        lambda a, b, c: cocosnet_ops.dense_warp(a, b, c, 0.5, cycle=True, backend="cpu"), (fq, fk, v)
    )


def opcheck_cases():
    g = torch.Generator().manual_seed(2)
    fq, fk = unit_features(g, 2, 4, 6, 5), unit_features(g, 2, 4, 5, 7)
    v = torch.randn(2, 3, 5, 7, generator=g)
    nnf = cocosnet_ops.patch_match(fq, fk, k=4, backend="cpu")[0]
    coords = torch.rand(2, 4, 6, 5, 2, generator=g) * 4
    ops = torch.ops.cocosnet_ops
    grads = lambda *ts: tuple(t.clone().requires_grad_() for t in ts)  # noqa: E731
    dense_out = (*torch.ops.cocosnet_ops.dense_warp(fq, fk, v, 0.1), 0.1)
    return [
        (ops.patch_match.default, (fq, fk, 4, 3, None, 1, [2, 1], True, 0)),
        (ops.patch_match.default, (fq, fk, 3, 2, nnf, 3, [1], False, 5)),
        (ops.patch_match.default, (fq, fk, 3, 2, nnf, 1, [2, 1], True, 5, 1)),
        (ops.evaluate_candidates.default, (fq, fk, nnf, 3, 1)),
        (ops.nnf_upsample.default, (nnf, [5, 7], [10, 14], [12, 10], 4, 2)),
        (ops.exact_knn.default, (fq, fk, 4)),
        (ops.weighted_gather.default, (*grads(fq, fk, v), nnf, 0.1)),
        (ops.bilinear_weighted_gather.default, (*grads(fq, fk, v, coords), 0.1)),
        (ops.dense_warp.default, (*grads(fq, fk, v), 0.1)),
        (ops.weighted_gather_backward.default, (torch.randn(2, 3, 6, 5, generator=g), fq, fk, v, nnf, 0.1)),
        (
            ops.bilinear_weighted_gather_backward.default,
            (torch.randn(2, 3, 6, 5, generator=g), fq, fk, v, coords, 0.1),
        ),
        (ops.dense_warp_backward.default, (torch.randn(2, 3, 6, 5, generator=g), fq, fk, v, *dense_out)),
    ]


@pytest.mark.parametrize("case", range(12))
def test_opcheck(case):
    op, args = opcheck_cases()[case]
    torch.library.opcheck(op, args)


def test_torch_compile_fullgraph_matches_eager():
    g = torch.Generator().manual_seed(4)
    fq, fk = unit_features(g, 1, 8, 12, 10), unit_features(g, 1, 8, 9, 11)
    v = torch.rand(1, 3, 9, 11, generator=g)

    def warp(query, key, value):
        nnf, _ = cocosnet_ops.patch_match(query, key, k=4, iters=3)
        return cocosnet_ops.weighted_gather(query, key, value, nnf, 0.05)

    compiled = torch.compile(warp, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(fq, fk, v), warp(fq, fk, v))
    # Gradients flow through the compiled graph too.
    q = fq.clone().requires_grad_()
    compiled(q, fk, v).sum().backward()
    assert q.grad is not None and q.grad.abs().sum() > 0


def test_torch_compile_fullgraph_with_max_radius_matches_eager():
    """max_radius through torch.compile, with an int seed and with a tensor seed (its own op)."""
    g = torch.Generator().manual_seed(6)
    fq, fk = unit_features(g, 1, 8, 12, 10), unit_features(g, 1, 8, 9, 11)
    init = init_with_holes(g, 1, 5, 12, 10, 9 * 11)

    def search(query, key, init, seed):
        return cocosnet_ops.patch_match(query, key, k=4, iters=3, init=init, seed=seed, max_radius=2)

    compiled = torch.compile(search, fullgraph=True, backend="aot_eager")
    want = search(fq, fk, init, 3)
    for seed in (3, torch.tensor(3)):
        got = compiled(fq, fk, init, seed)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        eager = search(fq, fk, init, seed)
        assert torch.equal(eager[0], want[0]) and torch.equal(eager[1], want[1])


def test_torch_compile_fullgraph_with_score_dtype_matches_eager():
    g = torch.Generator().manual_seed(7)
    fq, fk = unit_features(g, 1, 8, 12, 10), unit_features(g, 1, 8, 9, 11)

    def search(query, key):
        return cocosnet_ops.patch_match(query, key, k=4, iters=3, score_dtype=torch.bfloat16)

    got, want = torch.compile(search, fullgraph=True, backend="aot_eager")(fq, fk), search(fq, fk)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
