"""Hypothesis property tests of the search ops (patch_match, evaluate_candidates, exact_knn).

Whatever the shapes, k, patch size, iterations, jumps, init and seed: indices lie in the key
map, scores are the recomputed patch inner products, every pixel's top-K is sorted (ties by
lower index) and duplicate-free, and a sample's output does not depend on its batch position,
on every backend and whatever the thread count (exact_knn within rounding: a vendor matmul computes
its scores).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_cases import check_within_bound

import cocosnet_ops as co
from cocosnet_ops import reference as ref

# Example counts come from the profile conftest.py loads (ci: 50, dev: fewer); FEW for the slow ones.
SETTINGS = settings()
FEW = settings(max_examples=max(2, settings().max_examples // 4))
needs_cpu = pytest.mark.skipif(not co.HAS_COMPILED, reason="cocosnet_ops._C (backend 'cpu') is not built")

# ----------------------------------------------------------------------------- strategies


def _features(b, c, h, w, seed, integer):
    gen = torch.Generator().manual_seed(seed)
    if integer:  # exact inner products: ranking, ties included, is the same in any sum order
        return torch.randint(-3, 4, (b, c, h, w), generator=gen).float()
    return torch.nn.functional.normalize(torch.randn(b, c, h, w, generator=gen), dim=1)


def _distinct_candidates(b, m, hq, wq, key_pixels, seed, hole_rate):
    """(B, M, Hq, Wq) int32 with no valid index twice per pixel and some -1 holes."""
    gen = torch.Generator().manual_seed(seed)
    m = min(m, key_pixels)
    order = torch.rand(b, hq, wq, key_pixels, generator=gen).argsort(-1)[..., :m]
    cand = order.permute(0, 3, 1, 2)
    holes = torch.rand(cand.shape, generator=gen) < hole_rate
    return torch.where(holes, torch.full_like(cand, -1), cand).int().contiguous()


@st.composite
def search_cases(draw, max_side=10, integer=None):
    b = draw(st.integers(1, 2))
    c = draw(st.integers(1, 8))
    hq, wq, hk, wk = (draw(st.integers(1, max_side)) for _ in range(4))
    key_pixels = hk * wk
    integer = draw(st.booleans()) if integer is None else integer
    seed = draw(st.integers(0, 2**16))
    case = SimpleNamespace(
        fq=_features(b, c, hq, wq, seed, integer),
        fk=_features(b, c, hk, wk, seed + 1, integer),
        k=draw(st.integers(1, min(8, key_pixels))),
        patch_size=draw(st.sampled_from([1, 3])),
        iters=draw(st.integers(0, 4)),
        random_search=draw(st.booleans()),
        seed=draw(st.one_of(st.just(0), st.integers(0, 2**32 - 1))),
        jump=draw(st.one_of(st.none(), st.lists(st.integers(1, 12), min_size=1, max_size=4))),
        init=None,
        max_radius=None,
    )
    if draw(st.booleans()):
        m = draw(st.integers(0, 12))
        hole_rate = draw(st.sampled_from([0, 0.3, 1]))
        case.init = _distinct_candidates(b, m, hq, wq, key_pixels, seed + 2, hole_rate)
    return case


@st.composite
def bounded_search_cases(draw, max_side=10, integer=None, radius=None):
    """search_cases with init candidates (holes included, sometimes all holes) and a max_radius:
    drawn small (0 to 3, where the bound matters) unless ``radius`` maps the case to one."""
    case = draw(search_cases(max_side, integer))
    if case.init is None or case.init.shape[1] == 0:
        b, _, hq, wq = case.fq.shape
        m, seed = draw(st.integers(1, 12)), draw(st.integers(0, 2**16))
        hole_rate = draw(st.sampled_from([0, 0.3, 1]))
        case.init = _distinct_candidates(b, m, hq, wq, case.fk.shape[2] * case.fk.shape[3], seed, hole_rate)
    case.max_radius = draw(st.integers(0, 3)) if radius is None else radius(case)
    return case


def _run_patch_match(case, backend):
    return co.patch_match(case.fq, case.fk, k=case.k, iters=case.iters, init=case.init,
                          patch_size=case.patch_size, jump=case.jump, random_search=case.random_search,
                          seed=case.seed, max_radius=case.max_radius, backend=backend)


def _unbounded(case):
    return SimpleNamespace(**{**vars(case), "max_radius": None})


def _key_map_side(case):
    """A radius no two key pixels are farther apart than: the bound then allows everything."""
    return max(case.fk.shape[2:])


# ----------------------------------------------------------------------------- checks


def check_topk(nnf, scores, fq, fk, k, patch_size):
    """The invariants every search op's output must satisfy."""
    b, _, hq, wq = fq.shape
    key_pixels = fk.shape[2] * fk.shape[3]
    assert nnf.dtype == torch.int32 and nnf.shape == (b, k, hq, wq)
    assert scores.shape == (b, k, hq, wq)
    assert int(nnf.min()) >= 0 and int(nnf.max()) < key_pixels, "index outside the key map"
    expected = ref.patch_scores(fq.double(), fk.double(), nnf.contiguous(), patch_size)
    torch.testing.assert_close(scores.double(), expected, rtol=1e-5, atol=1e-5)
    assert (scores[:, :-1] >= scores[:, 1:]).all(), "top-K not sorted best first"
    ties = scores[:, :-1] == scores[:, 1:]
    assert (nnf[:, :-1][ties] < nnf[:, 1:][ties]).all(), "equal scores not ordered by index"
    ordered = nnf.sort(1).values
    assert (ordered[:, 1:] != ordered[:, :-1]).all(), "an index appears twice in one pixel"


def _brute_force_logits(fq, fk):
    """(B, Hq*Wq, Hk*Wk) inner products in float64 with explicit matmul."""
    return torch.bmm(fq.double().flatten(2).transpose(1, 2), fk.double().flatten(2))


# ----------------------------------------------------------------------------- patch_match


@SETTINGS
@given(case=search_cases())
def test_patch_match_invariants(case, backend):
    nnf, scores = _run_patch_match(case, backend)
    check_topk(nnf, scores, case.fq, case.fk, case.k, case.patch_size)
    if case.patch_size == 1:
        # The j-th best of any k distinct candidates is at most the true j-th best.
        best = _brute_force_logits(case.fq, case.fk).sort(2, descending=True).values[..., : case.k]
        best = best.transpose(1, 2).reshape(scores.shape)
        assert (scores.double() <= best + 1e-5).all()


@SETTINGS
@given(case=search_cases())
def test_patch_match_does_not_depend_on_batch_position(case, backend):
    """Each sample's random numbers come from (seed, pixel), not from its batch slot: the batch
    reversed gives the reversed results bitwise, and one sample alone its own slice."""
    forward = _run_patch_match(case, backend)
    flipped = SimpleNamespace(**vars(case))
    flipped.fq, flipped.fk = case.fq.flip(0), case.fk.flip(0)
    flipped.init = None if case.init is None else case.init.flip(0)
    backward = _run_patch_match(flipped, backend)
    alone = SimpleNamespace(**vars(case))
    alone.fq, alone.fk = case.fq[-1:], case.fk[-1:]
    alone.init = None if case.init is None else case.init[-1:]
    last = _run_patch_match(alone, backend)
    for got, flipped_got, last_got in zip(forward, backward, last, strict=True):
        assert torch.equal(got, flipped_got.flip(0))
        assert torch.equal(got[-1:], last_got)


def _at_thread_counts(run):
    """``run()`` with 1 and with 2 intra-op threads."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(2)
        two = run()
    finally:
        torch.set_num_threads(threads)
    return one, two


@FEW
@given(case=search_cases(max_side=16))
def test_search_ops_do_not_depend_on_thread_count(case, backend, same_matches):
    """patch_match: counter-based random numbers, double buffering and the project's own
    fixed-order sums, so bitwise the same. exact_knn's scores come from a vendor matmul whose
    summation order depends on the processor and the thread count: bitwise only on
    integer-valued features (exact in any order), else scores within 1e-5 and indices equal
    unless tied within that."""
    one, two = _at_thread_counts(lambda: (
        _run_patch_match(case, backend), co.exact_knn(case.fq, case.fk, case.k, backend=backend)))
    (pm1, knn1), (pm2, knn2) = one, two
    assert torch.equal(pm1[0], pm2[0]) and torch.equal(pm1[1], pm2[1])
    if case.fq.round().equal(case.fq):
        assert torch.equal(knn1[0], knn2[0]) and torch.equal(knn1[1], knn2[1])
    else:
        torch.testing.assert_close(knn1[1], knn2[1], rtol=1e-5, atol=1e-5)
        same_matches(knn1[0], knn2[0], case.fq, case.fk)


@needs_cpu
@SETTINGS
@given(case=search_cases(integer=True))
def test_patch_match_cpu_equals_reference_on_integer_features(case):
    """Exact scores leave no room for rounding: the compiled search must pick the same indices."""
    cpu = _run_patch_match(case, "cpu")
    torch_ = _run_patch_match(case, "torch")
    assert torch.equal(cpu[0], torch_[0])
    torch.testing.assert_close(cpu[1], torch_[1])


# ----------------------------------------------------------------------------- patch_match, max_radius


@SETTINGS
@given(case=bounded_search_cases())
def test_bounded_patch_match_stays_near_its_init(case, backend):
    nnf, scores = _run_patch_match(case, backend)
    check_topk(nnf, scores, case.fq, case.fk, case.k, case.patch_size)
    check_within_bound(nnf, case.init, case.fk.shape[3], case.max_radius, case.k)


@SETTINGS
@given(case=bounded_search_cases(radius=lambda case: _key_map_side(case) + 1))
def test_a_radius_past_the_key_map_is_the_unbounded_search(case, backend):
    """Every key pixel is then near every init candidate and the random-search radii start where
    they do unbounded: bitwise the search without max_radius."""
    bounded, unbounded = _run_patch_match(case, backend), _run_patch_match(_unbounded(case), backend)
    assert torch.equal(bounded[0], unbounded[0]) and torch.equal(bounded[1], unbounded[1])


@SETTINGS
@given(case=search_cases())
def test_max_radius_none_is_the_search_without_it(case, backend):
    """None is the default: passing it changes nothing, bitwise."""
    without = co.patch_match(case.fq, case.fk, k=case.k, iters=case.iters, init=case.init,
                             patch_size=case.patch_size, jump=case.jump, random_search=case.random_search,
                             seed=case.seed, backend=backend)
    explicit = _run_patch_match(case, backend)
    assert torch.equal(without[0], explicit[0]) and torch.equal(without[1], explicit[1])


@SETTINGS
@given(case=bounded_search_cases(radius=lambda case: 0))
def test_max_radius_0_is_the_top_k_of_the_init(case, backend):
    """Only the init candidates themselves are allowed, so the iterations change nothing for a
    pixel with a valid one: its result is the start's, the top-k of its init topped up."""
    start = _run_patch_match(SimpleNamespace(**{**vars(case), "iters": 0}), backend)
    nnf, scores = _run_patch_match(case, backend)
    has_init = (case.init >= 0).any(1, keepdim=True).expand_as(nnf)
    assert torch.equal(nnf[has_init], start[0][has_init])
    assert torch.equal(scores[has_init], start[1][has_init])


@needs_cpu
@SETTINGS
@given(case=bounded_search_cases(integer=True))
def test_bounded_patch_match_cpu_equals_reference_on_integer_features(case):
    cpu = _run_patch_match(case, "cpu")
    torch_ = _run_patch_match(case, "torch")
    assert torch.equal(cpu[0], torch_[0])
    torch.testing.assert_close(cpu[1], torch_[1])


@FEW
@given(case=bounded_search_cases(max_side=16))
def test_bounded_patch_match_does_not_depend_on_thread_count_or_batch_position(case, backend):
    one, two = _at_thread_counts(lambda: _run_patch_match(case, backend))
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])
    alone = SimpleNamespace(**{**vars(case), "fq": case.fq[-1:], "fk": case.fk[-1:], "init": case.init[-1:]})
    last = _run_patch_match(alone, backend)
    assert torch.equal(one[0][-1:], last[0]) and torch.equal(one[1][-1:], last[1])


def test_a_pixel_without_init_is_unbounded_and_fills_in_from_its_neighbours(backend):
    """Query = key with distinct features: every pixel's best match is itself. The init is that
    identity except for a hole; max_radius=0 keeps every other pixel on its init, and the hole,
    unbounded, takes its upper neighbour's match shifted back down: itself."""
    fq = _features(1, 8, 6, 7, 3, False)
    init = torch.arange(42, dtype=torch.int32).view(1, 1, 6, 7).clone()
    init[0, 0, 3, 4] = -1
    nnf, _ = co.patch_match(fq, fq, k=1, iters=1, init=init, jump=[1], random_search=False, max_radius=0,
                            backend=backend)
    assert torch.equal(nnf, torch.arange(42, dtype=torch.int32).view(1, 1, 6, 7))


def test_different_seeds_explore_differently(backend):
    """The seed reaches the random init and search (else it would be a useless argument)."""
    fq, fk = _features(1, 4, 8, 8, 0, False), _features(1, 4, 8, 8, 1, False)
    runs = {seed: co.patch_match(fq, fk, k=4, iters=0, seed=seed, backend=backend)[0] for seed in (0, 1, 2)}
    assert not torch.equal(runs[0], runs[1]) or not torch.equal(runs[0], runs[2])


# ----------------------------------------------------------------------------- evaluate_candidates


@st.composite
def candidate_cases(draw):
    b = draw(st.integers(1, 2))
    c = draw(st.integers(1, 6))
    hq, wq, hk, wk = (draw(st.integers(1, 8)) for _ in range(4))
    key_pixels = hk * wk
    seed = draw(st.integers(0, 2**16))
    integer = draw(st.booleans())
    m = draw(st.integers(0, 12))
    gen = torch.Generator().manual_seed(seed + 2)
    low = draw(st.sampled_from([-1, -(2**31), 0]))  # any negative means "no candidate"
    cand = torch.randint(0, key_pixels, (b, m, hq, wq), generator=gen)
    holes = torch.rand(cand.shape, generator=gen) < draw(st.sampled_from([0, 0.3]))
    cand = torch.where(holes, torch.full_like(cand, low), cand).int()
    return SimpleNamespace(
        fq=_features(b, c, hq, wq, seed, integer),
        fk=_features(b, c, hk, wk, seed + 1, integer),
        cand=cand,
        k=draw(st.integers(1, min(8, key_pixels))),
        patch_size=draw(st.sampled_from([1, 3])),
    )


def _per_pixel(t):
    """(B, M, H, W) as a pixel-major list of per-pixel lists (M may be 0)."""
    b, m, h, w = t.shape
    return t.permute(0, 2, 3, 1).reshape(b * h * w, m).tolist()


def _distinct_valid(cand):
    """Per pixel, the set of valid candidate indices."""
    return [{c for c in row if c >= 0} for row in _per_pixel(cand)]


@SETTINGS
@given(case=candidate_cases())
def test_evaluate_candidates_invariants(case, backend):
    nnf, scores = co.evaluate_candidates(case.fq, case.fk, case.cand, case.k, patch_size=case.patch_size,
                                         backend=backend)
    check_topk(nnf, scores, case.fq, case.fk, case.k, case.patch_size)
    # Against the candidates themselves: pixels with >= k distinct valid candidates keep the
    # k best of them; pixels with fewer keep all of them (and are topped up).
    cand_scores = ref.patch_scores(case.fq.double(), case.fk.double(), case.cand.clamp(min=0),
                                   case.patch_size)
    chosen, got_scores, flat_cand, cand_scores = (
        _per_pixel(t) for t in (nnf, scores, case.cand, cand_scores))
    for valid, picked, picked_scores, row, row_scores in zip(
        _distinct_valid(case.cand), chosen, got_scores, flat_cand, cand_scores, strict=True
    ):
        if len(valid) >= case.k:
            assert set(picked) <= valid, "an index that was not a candidate"
            left_out = [s for c, s in zip(row, row_scores, strict=True) if c >= 0 and c not in picked]
            assert not left_out or min(picked_scores) >= max(left_out) - 1e-5, "a better candidate dropped"
        else:
            assert valid <= set(picked), "a candidate dropped although fewer than k were given"


@needs_cpu
@SETTINGS
@given(case=candidate_cases())
def test_evaluate_candidates_cpu_equals_reference(case):
    args = (case.fq, case.fk, case.cand, case.k)
    cpu = co.evaluate_candidates(*args, patch_size=case.patch_size, backend="cpu")
    torch_ = co.evaluate_candidates(*args, patch_size=case.patch_size, backend="torch")
    if case.fq.round().equal(case.fq):  # integer features: exact, so bitwise the same indices
        assert torch.equal(cpu[0], torch_[0])
    torch.testing.assert_close(cpu[1], torch_[1])


@pytest.mark.parametrize("op", ["evaluate_candidates", "patch_match"])
def test_short_pixels_are_topped_up_without_duplicates(op, backend):
    """A pixel given the same candidate three times but k=3 must still get 3 distinct indices
    (a tiny key map under nnf_upsample's clamping gives such input)."""
    fq, fk = _features(1, 3, 1, 2, 0, False), _features(1, 3, 4, 4, 1, False)
    cand = torch.full((1, 3, 1, 2), 5, dtype=torch.int32)
    if op == "evaluate_candidates":
        nnf, scores = co.evaluate_candidates(fq, fk, cand, 3, backend=backend)
    else:  # no propagation partner and no random search: only the init and the top-up
        nnf, scores = co.patch_match(fq[..., :1], fk, k=3, iters=1, init=cand[..., :1], random_search=False,
                                     backend=backend)
    check_topk(nnf, scores, fq[..., : nnf.shape[-1]], fk, 3, 1)
    assert (nnf == 5).any(1).all(), "the given candidate was dropped"


# ----------------------------------------------------------------------------- exact_knn


@SETTINGS
@given(case=search_cases())
def test_exact_knn_is_the_brute_force_top_k(case, backend):
    nnf, scores = co.exact_knn(case.fq, case.fk, case.k, backend=backend)
    check_topk(nnf, scores, case.fq, case.fk, case.k, 1)
    logits = _brute_force_logits(case.fq, case.fk)
    best, order = torch.sort(logits, dim=2, descending=True, stable=True)
    shape = scores.shape
    torch.testing.assert_close(scores.double(), best[..., : case.k].transpose(1, 2).reshape(shape),
                               rtol=1e-5, atol=1e-5)
    if case.fq.round().equal(case.fq):  # exact logits: the very same indices, ties to the lower one
        assert torch.equal(nnf.long(), order[..., : case.k].transpose(1, 2).reshape(shape))


@needs_cpu
@SETTINGS
@given(case=search_cases(integer=True))
def test_exact_knn_cpu_equals_reference_on_integer_features(case):
    cpu = co.exact_knn(case.fq, case.fk, case.k, backend="cpu")
    torch_ = co.exact_knn(case.fq, case.fk, case.k, backend="torch")
    assert torch.equal(cpu[0], torch_[0])
    torch.testing.assert_close(cpu[1], torch_[1])


def test_larger_maps_do_not_depend_on_thread_count(backend, same_matches):
    """Maps big enough that every kernel really splits its pixels across threads. The ops that
    sum in an order the project fixes are bitwise the same; exact_knn and dense_warp go through
    a vendor matmul / attention kernel, whose rounding depends on the thread count: within a
    tolerance."""
    fq, fk = _features(2, 8, 24, 20, 0, False), _features(2, 8, 18, 26, 1, False)
    v = torch.rand(2, 3, 18, 26, generator=torch.Generator().manual_seed(2))
    coords = torch.rand(2, 4, 24, 20, 2, generator=torch.Generator().manual_seed(3)) * 17

    def run():
        nnf, scores = co.patch_match(fq, fk, k=4, iters=3, patch_size=3, seed=11, backend=backend)
        fixed_order = [
            nnf, scores,
            *co.evaluate_candidates(fq, fk, torch.cat([nnf, nnf.flip(-1)], 1), 3, backend=backend),
            co.weighted_gather(fq, fk, v, nnf, 0.05, backend=backend),
            co.bilinear_weighted_gather(fq, fk, v, coords, 0.05, backend=backend),
        ]
        knn = co.exact_knn(fq, fk, 4, backend=backend)
        return fixed_order, knn, co.dense_warp(fq, fk, v, 0.05, backend=backend)

    (fixed1, knn1, warp1), (fixed2, knn2, warp2) = _at_thread_counts(run)
    for a, b in zip(fixed1, fixed2, strict=True):
        assert torch.equal(a, b)
    torch.testing.assert_close(knn1[1], knn2[1], rtol=1e-5, atol=1e-5)
    same_matches(knn1[0], knn2[0], fq, fk)
    torch.testing.assert_close(warp1, warp2, rtol=1e-5, atol=1e-6)


def test_gradients_do_not_depend_on_thread_count(backend):
    """The gathers' backward scatters into the key and value gradients in a fixed order (a
    counting sort by key pixel, no atomics): bitwise the same at 1 and 2 threads, with every key
    pixel hit several times. dense_warp's backward is the vendor's attention kernel, whose
    summation order depends on the thread count: within a tolerance."""
    gen = torch.Generator().manual_seed(5)
    fq, fk = _features(2, 8, 24, 20, 0, False), _features(2, 8, 12, 10, 1, False)
    v = torch.rand(2, 3, 12, 10, generator=gen)
    nnf = torch.randint(0, 120, (2, 6, 24, 20), generator=gen, dtype=torch.int32)
    coords = torch.rand(2, 6, 24, 20, 2, generator=gen) * 11 - 1
    grad_out = torch.rand(2, 3, 24, 20, generator=gen)

    def gradients(op, *inputs, **kwargs):
        inputs = [t.clone().requires_grad_() for t in inputs]
        return torch.autograd.grad(op(*inputs, temperature=0.05, backend=backend, **kwargs), inputs, grad_out)

    def run():
        fixed_order = [
            *gradients(lambda q, k, val, **kw: co.weighted_gather(q, k, val, nnf, **kw), fq, fk, v),
            *gradients(co.bilinear_weighted_gather, fq, fk, v, coords),
        ]
        return fixed_order, gradients(co.dense_warp, fq, fk, v)

    (fixed1, dense1), (fixed2, dense2) = _at_thread_counts(run)
    for a, b in zip(fixed1, fixed2, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(dense1, dense2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_a_samples_search_does_not_depend_on_its_place_in_the_batch(backend):
    """Random draws are numbered by the pixel's place in its own map, so a sample searched alone,
    or at another place in another batch, gets bitwise the same matches (real-valued features:
    nothing here may depend on rounding either)."""
    gen = torch.Generator().manual_seed(6)
    fq, fk = _features(3, 5, 9, 8, 0, False), _features(3, 5, 7, 11, 1, False)
    init = torch.randint(-20, 77, (3, 6, 9, 8), generator=gen, dtype=torch.int32)  # holes: top-ups

    def search(order):
        q, k, i = fq[order], fk[order], init[order]
        return [*co.patch_match(q, k, k=5, iters=3, init=i, patch_size=3, seed=9, backend=backend),
                *co.evaluate_candidates(q, k, i, 5, backend=backend)]

    batched = search([0, 1, 2])
    for order in ([2, 0, 1], [1]):
        other = search(order)
        for whole, part in zip(batched, other, strict=True):
            assert torch.equal(whole[order], part)
