"""The reference (the oracle the kernels are tested against) checked against independent,
deliberately naive computations: plain Python loops over pixels on tiny maps, in float64."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import cocosnet_ops as co
from cocosnet_ops import reference as ref

MASK = 0xFFFFFFFF


def _feats(shape, seed):
    gen = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=gen, dtype=torch.float64), dim=1)


def _dot(a, b):
    return sum(float(x) * float(y) for x, y in zip(a.tolist(), b.tolist(), strict=True))


def _softmax(xs):
    top = max(xs)
    e = [math.exp(x - top) for x in xs]
    return [x / sum(e) for x in e]


# ----------------------------------------------------------------------------- patch_scores


def _brute_patch_score(fq, fk, b, y, x, index, patch_size):
    """Mean over the window of <fq[y+dy, x+dx], fk[ky+dy, kx+dx]>, zero outside either map."""
    _, _, hq, wq = fq.shape
    _, _, hk, wk = fk.shape
    ky, kx = divmod(index, wk)
    r = patch_size // 2
    total = 0.0
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            qy, qx, sy, sx = y + dy, x + dx, ky + dy, kx + dx
            if 0 <= qy < hq and 0 <= qx < wq and 0 <= sy < hk and 0 <= sx < wk:
                total += _dot(fq[b, :, qy, qx], fk[b, :, sy, sx])
    return total / (patch_size * patch_size)


@pytest.mark.parametrize("patch_size", [1, 3, 5])
def test_patch_scores_against_loops(patch_size):
    fq, fk = _feats((2, 3, 4, 5), 0), _feats((2, 3, 3, 6), 1)
    cand = torch.randint(0, 18, (2, 4, 4, 5), generator=torch.Generator().manual_seed(2))
    got = ref.patch_scores(fq, fk, cand, patch_size)
    for b in range(2):
        for m in range(4):
            for y in range(4):
                for x in range(5):
                    expected = _brute_patch_score(fq, fk, b, y, x, int(cand[b, m, y, x]), patch_size)
                    assert got[b, m, y, x].item() == pytest.approx(expected, abs=1e-12)


def test_patch_scores_zero_padding_and_mean_over_nine():
    """All-ones features: a 3x3 score counts the window cells inside both maps, divided by 9."""
    fq, fk = torch.ones(1, 2, 3, 3, dtype=torch.float64), torch.ones(1, 2, 3, 3, dtype=torch.float64)
    corner, centre = 0, 4
    cand = torch.tensor([corner, centre]).view(1, 2, 1, 1).expand(1, 2, 3, 3).contiguous()
    got = ref.patch_scores(fq, fk, cand, 3)
    # Query centre vs key corner: 4 shared cells, 2 channels -> 8 / 9; centre vs centre: 18 / 9.
    assert got[0, 0, 1, 1].item() == pytest.approx(8 / 9)
    assert got[0, 1, 1, 1].item() == pytest.approx(18 / 9)
    # Query corner (0, 0) vs key corner: 4 cells; vs key centre: also 4 cells (query side cut).
    assert got[0, 0, 0, 0].item() == pytest.approx(8 / 9)
    assert got[0, 1, 0, 0].item() == pytest.approx(8 / 9)


# ----------------------------------------------------------------------------- select_topk


def _as_map(values, dtype):
    return torch.tensor(values, dtype=dtype).view(1, -1, 1, 1)


def test_select_topk_orders_by_score_then_index_and_dedupes():
    cand = _as_map([3, 1, 2, 1, 0, 7], torch.long)
    score = _as_map([0.5, 0.9, 0.5, 0.9, 0.1, 0.5], torch.float64)
    nnf, top = ref.select_topk(cand, score, 4)
    assert nnf.flatten().tolist() == [1, 2, 3, 7]
    assert top.flatten().tolist() == [0.9, 0.5, 0.5, 0.5]


def test_select_topk_nan_ranks_last():
    cand = _as_map([4, 5, 6], torch.long)
    score = _as_map([math.nan, -1.0, -math.inf], torch.float64)
    nnf, top = ref.select_topk(cand, score, 3)
    assert nnf.flatten().tolist() == [5, 4, 6]  # NaN counts as -inf, ties to the lower index
    assert top.flatten().tolist() == [-1.0, -math.inf, -math.inf]


def test_select_topk_against_python_sort():
    """Random candidates with repeats (a repeat has the same score) and tied scores."""
    gen = torch.Generator().manual_seed(3)
    table = torch.randint(0, 4, (30,), generator=gen).double()  # few levels: many ties
    cand = torch.randint(0, 30, (2, 12, 3, 4), generator=gen)
    cand[:, :5] = torch.arange(5).view(1, 5, 1, 1) * 6  # at least 5 distinct per pixel
    score = table[cand]
    nnf, top = ref.select_topk(cand, score, 5)
    for b in range(2):
        for y in range(3):
            for x in range(4):
                distinct = set(cand[b, :, y, x].tolist())
                expected = sorted(distinct, key=lambda i: (-table[i].item(), i))[:5]
                assert nnf[b, :, y, x].tolist() == expected
                assert top[b, :, y, x].tolist() == [table[i].item() for i in expected]


# ----------------------------------------------------------------------------- top-up


def _naive_top_up(given, k, key_pixels, seed, pixel):
    """The kernels' fill, pixel by pixel: 2k draws, then the key indices from a random start,
    each taken when new, until k are listed."""
    listed = list(dict.fromkeys(given))

    def draw(counter):
        return int(ref.counter_random(seed, ref.STREAM_FILL, torch.tensor([pixel]), counter)) % key_pixels

    for j in range(2 * k):
        if len(listed) < k and draw(j) not in listed:
            listed.append(draw(j))
    start, t = draw(2 * k), 0
    while len(listed) < k:
        if (start + t) % key_pixels not in listed:
            listed.append((start + t) % key_pixels)
        t += 1
    return listed


@pytest.mark.parametrize(("key_size", "k"), [((2, 3), 6), ((3, 3), 7), ((4, 5), 12), ((6, 7), 20)])
def test_top_up_against_loop(key_size, k):
    """Pixels given fewer than k distinct candidates are filled like the kernels fill them, also
    where the draws repeat so much that the scan must finish the job."""
    gen = torch.Generator().manual_seed(k)
    key_pixels = key_size[0] * key_size[1]
    fq, fk = _feats((1, 3, 3, 4), 0), _feats((1, 3, *key_size), 1)
    cand = torch.randint(-key_pixels, key_pixels, (1, k // 2, 3, 4), generator=gen).int()
    nnf, _ = ref.evaluate_candidates(fq, fk, cand, k)
    for y in range(3):
        for x in range(4):
            given = [c for c in cand[0, :, y, x].tolist() if c >= 0]
            expected = _naive_top_up(given, k, key_pixels, 0, y * 4 + x)
            assert sorted(nnf[0, :, y, x].tolist()) == sorted(expected)


# ----------------------------------------------------------------------------- nnf_upsample


def test_nnf_upsample_2x_against_formula():
    """Coarse 2x3 query / 3x2 key to fine 4x6 query / 6x4 key, window 4, dilation 2."""
    coarse = torch.randint(0, 6, (2, 2, 2, 3), generator=torch.Generator().manual_seed(4)).int()
    got = ref.nnf_upsample(coarse, (6, 4), (4, 6), window=4, dilation=2)
    assert got.dtype == torch.int32 and got.shape == (2, 2 * 16, 4, 6)
    for b in range(2):
        for y in range(4):
            for x in range(6):
                for m in range(2):
                    my, mx = divmod(int(coarse[b, m, y // 2, x // 2]), 2)
                    base_y, base_x = 2 * my + y % 2, 2 * mx + x % 2  # cell origin + offset in cell
                    for i in range(4):
                        for j in range(4):
                            gy = min(max(base_y + (i - 1) * 2, 0), 5)
                            gx = min(max(base_x + (j - 1) * 2, 0), 3)
                            assert int(got[b, m * 16 + i * 4 + j, y, x]) == gy * 4 + gx


def test_nnf_upsample_identity_window():
    """window 1 at equal sizes is the identity; at 2x it keeps the coarse cell's relative pixel."""
    coarse = torch.randint(0, 20, (1, 3, 4, 5), generator=torch.Generator().manual_seed(5)).int()
    assert torch.equal(ref.nnf_upsample(coarse, (4, 5), (4, 5), window=1), coarse)
    fine = ref.nnf_upsample(coarse, (8, 10), (8, 10), window=1)
    ky, kx = coarse // 5, coarse % 5
    expected_origin = (2 * ky) * 10 + 2 * kx
    assert torch.equal(fine[..., ::2, ::2], expected_origin.int())
    assert torch.equal(fine[..., 1::2, 1::2], (expected_origin + 11).int())  # one row and one column on


# ----------------------------------------------------------------------------- gathers


def test_weighted_gather_against_loop():
    fq, fk, v = _feats((2, 3, 3, 4), 0), _feats((2, 3, 4, 2), 1), _feats((2, 2, 4, 2), 2)
    nnf = torch.randint(0, 8, (2, 3, 3, 4), generator=torch.Generator().manual_seed(3)).int()
    t = 0.2
    got = ref.weighted_gather(fq, fk, v, nnf, t)
    assert got.shape == (2, 2, 3, 4)
    for b in range(2):
        for y in range(3):
            for x in range(4):
                idx = [divmod(int(i), 2) for i in nnf[b, :, y, x]]
                w = _softmax([_dot(fq[b, :, y, x], fk[b, :, ky, kx]) / t for ky, kx in idx])
                for c in range(2):
                    expected = sum(wk * float(v[b, c, ky, kx]) for wk, (ky, kx) in zip(w, idx, strict=True))
                    assert got[b, c, y, x].item() == pytest.approx(expected, abs=1e-12)


def test_bilinear_at_integer_coords_equals_weighted_gather(backend):
    fq, fk, v = _feats((2, 4, 3, 5), 0), _feats((2, 4, 6, 3), 1), _feats((2, 3, 6, 3), 2)
    nnf = torch.randint(0, 18, (2, 4, 3, 5), generator=torch.Generator().manual_seed(3)).int()
    coords = torch.stack([nnf % 3, nnf // 3], dim=-1).double()  # (x, y) = (column, row)
    expected = ref.weighted_gather(fq, fk, v, nnf, 0.1)
    torch.testing.assert_close(ref.bilinear_weighted_gather(fq, fk, v, coords, 0.1), expected)
    torch.testing.assert_close(co.bilinear_weighted_gather(fq, fk, v, coords, 0.1, backend=backend), expected)


def test_bilinear_sample_between_pixels():
    """Half way between pixels is the mean of them; a quarter is the 3:1 mix; x is the column."""
    t = torch.arange(12, dtype=torch.float64).view(1, 1, 3, 4)  # t[y, x] = 4y + x
    coords = torch.tensor([[0.5, 0.0], [0.0, 0.5], [1.25, 1.75], [3.0, 2.0]], dtype=torch.float64)
    got = ref.bilinear_sample(t, coords.view(1, 4, 1, 1, 2)).flatten().tolist()
    assert got == pytest.approx([0.5, 2.0, 4 * 1.75 + 1.25, 11.0])


# ----------------------------------------------------------------------------- dense_warp


def _brute_attention(fq, fk, v, t):
    """out[p] = sum_q softmax_q(<fq[p], fk[q]> / t) v[q], pixel by pixel."""
    b_, _, hq, wq = fq.shape
    _, _, hk, wk = fk.shape
    out = torch.zeros(b_, v.shape[1], hq, wq, dtype=torch.float64)
    keys = [(ky, kx) for ky in range(hk) for kx in range(wk)]
    for b in range(b_):
        for y in range(hq):
            for x in range(wq):
                w = _softmax([_dot(fq[b, :, y, x], fk[b, :, ky, kx]) / t for ky, kx in keys])
                for c in range(v.shape[1]):
                    pairs = zip(w, keys, strict=True)
                    out[b, c, y, x] = sum(wq_ * float(v[b, c, ky, kx]) for wq_, (ky, kx) in pairs)
    return out


def test_dense_warp_against_explicit_softmax():
    fq, fk, v = _feats((2, 3, 2, 3), 0), _feats((2, 3, 3, 2), 1), _feats((2, 2, 3, 2), 2)
    got = ref.dense_warp(fq, fk, v, 0.3)
    torch.testing.assert_close(got, _brute_attention(fq, fk, v, 0.3), rtol=1e-10, atol=1e-12)


def test_dense_warp_cycle():
    """The cycle output warps the warp back onto the key map: shape of the key, values by loop."""
    fq, fk, v = _feats((1, 3, 2, 3), 3), _feats((1, 3, 4, 2), 4), _feats((1, 2, 4, 2), 5)
    warp, back = ref.dense_warp(fq, fk, v, 0.5, cycle=True)
    assert warp.shape == (1, 2, 2, 3) and back.shape == (1, 2, 4, 2)
    torch.testing.assert_close(warp, _brute_attention(fq, fk, v, 0.5), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(back, _brute_attention(fk, fq, warp, 0.5), rtol=1e-10, atol=1e-12)
    assert torch.equal(ref.dense_warp(fq, fk, v, 0.5), warp)


def test_dense_warp_equals_weighted_gather_over_all_pixels():
    """With every key pixel as a candidate, the PatchMatch warp is the dense warp."""
    fq, fk, v = _feats((1, 4, 3, 3), 6), _feats((1, 4, 2, 3), 7), _feats((1, 3, 2, 3), 8)
    every = torch.arange(6, dtype=torch.int32).view(1, 6, 1, 1).expand(1, 6, 3, 3)
    torch.testing.assert_close(ref.weighted_gather(fq, fk, v, every, 0.1), ref.dense_warp(fq, fk, v, 0.1))


# ----------------------------------------------------------------------------- exact_knn


def test_exact_knn_against_loop():
    fq, fk = _feats((2, 3, 3, 2), 0), _feats((2, 3, 2, 4), 1)
    nnf, scores = ref.exact_knn(fq, fk, 3)
    for b in range(2):
        for y in range(3):
            for x in range(2):
                dots = [(_dot(fq[b, :, y, x], fk[b, :, i // 4, i % 4]), i) for i in range(8)]
                best = sorted(dots, key=lambda d: (-d[0], d[1]))[:3]
                assert nnf[b, :, y, x].tolist() == [i for _, i in best]
                assert scores[b, :, y, x].tolist() == pytest.approx([d for d, _ in best], abs=1e-12)


def test_exact_knn_in_chunks_of_query_pixels(monkeypatch):
    """Memory-bounded chunks (here of 2, then of 1 query pixel per batch item, the last one
    short) give the whole-map result, ties to the lower index included."""
    gen = torch.Generator().manual_seed(5)
    fq = torch.randint(-2, 3, (2, 3, 3, 5), generator=gen).double()
    fk = torch.randint(-2, 3, (2, 3, 4, 4), generator=gen).double()
    whole = ref.exact_knn(fq, fk, 6)
    for entries in (2 * 2 * 16, 1):
        monkeypatch.setattr(ref, "KNN_CHUNK_ENTRIES", entries)
        chunked = ref.exact_knn(fq, fk, 6)
        assert torch.equal(chunked[0], whole[0]) and torch.equal(chunked[1], whole[1])


def test_exact_knn_ties_go_to_the_lower_index(backend):
    fq = torch.ones(1, 2, 2, 2)
    fk = torch.zeros(1, 2, 3, 3)
    fk[..., 2, 1] = 1.0  # index 7
    fk[..., 0, 2] = 1.0  # index 2, same score as 7
    nnf, scores = co.exact_knn(fq, fk, 4, backend=backend)
    assert (nnf[0, :, 0, 0].tolist(), scores[0, :, 0, 0].tolist()) == ([2, 7, 0, 1], [2.0, 2.0, 0.0, 0.0])
    assert (nnf == nnf[..., :1, :1]).all()
    same, _ = co.exact_knn(fq, torch.ones(1, 2, 3, 3), 9, backend=backend)
    assert same[0, :, 1, 1].tolist() == list(range(9))


# ----------------------------------------------------------------------------- patch_match


def test_patch_match_recall_on_translated_map(backend):
    """Key = query shifted by (2, -2) pixels: with enough iterations propagation spreads the
    shift, so the top-1 agrees with exact_knn wherever the true match lies inside the key map."""
    h = 16
    big = _feats((1, 8, h + 6, h + 6), 0).float()
    fq, fk = big[..., 3 : 3 + h, 3 : 3 + h].contiguous(), big[..., 1 : 1 + h, 5 : 5 + h].contiguous()
    y, x = torch.meshgrid(torch.arange(h), torch.arange(h), indexing="ij")
    inside = (y + 2 < h) & (x - 2 >= 0)
    knn, _ = ref.exact_knn(fq, fk, 1)
    assert torch.equal(knn[0, 0][inside], ((y + 2) * h + x - 2)[inside].int())  # the shift is the answer
    cold, _ = co.patch_match(fq, fk, k=4, iters=0, backend=backend)
    nnf, _ = co.patch_match(fq, fk, k=4, iters=8, backend=backend)
    hit = nnf[0, 0] == knn[0, 0]
    assert hit[inside].float().mean() >= 0.95
    assert hit.float().mean() >= 0.75  # border pixels have no true match but still improve
    assert hit.float().mean() > 5 * (cold[0, 0] == knn[0, 0]).float().mean()


@pytest.mark.parametrize(("max_radius", "reaches"), [(1, False), (2, True)])
def test_max_radius_bounds_what_the_search_can_find(max_radius, reaches, backend):
    """The translated map again, now with the identity as init: every true match lies at
    Chebyshev distance 2 from it. Bounded to 1 the search never reaches one, bounded to 2 it
    finds them. (k=1: with more, random top-ups outside the bound could hit one by chance.)"""
    h = 16
    big = _feats((1, 8, h + 6, h + 6), 0).float()
    fq, fk = big[..., 3 : 3 + h, 3 : 3 + h].contiguous(), big[..., 1 : 1 + h, 5 : 5 + h].contiguous()
    y, x = torch.meshgrid(torch.arange(h), torch.arange(h), indexing="ij")
    inside = (y + 2 < h) & (x - 2 >= 0)
    truth = ((y + 2) * h + x - 2).int()
    identity = torch.arange(h * h, dtype=torch.int32).view(1, 1, h, h)
    nnf, _ = co.patch_match(fq, fk, k=1, iters=8, init=identity, max_radius=max_radius, backend=backend)
    found = (nnf[0, 0] == truth)[inside].float().mean()
    assert found >= 0.95 if reaches else found == 0


def test_patch_match_iters0_is_init_plus_random_fill():
    """Without iterations the result is the init's top-k (all of it here, as k = M)."""
    fq, fk = _feats((1, 3, 3, 3), 0), _feats((1, 3, 4, 4), 1)
    init = torch.stack([torch.randperm(16, generator=torch.Generator().manual_seed(i))[:3] for i in range(9)])
    init = init.t().reshape(1, 3, 3, 3).int().contiguous()
    nnf, scores = ref.patch_match(fq, fk, k=3, iters=0, init=init)
    assert torch.equal(nnf.sort(1).values, init.sort(1).values)
    torch.testing.assert_close(scores, ref.patch_scores(fq, fk, nnf))


# ----------------------------------------------------------------------------- schedules


@pytest.mark.parametrize(
    ("size", "iters", "expected"),
    [
        ((64, 64), 5, [8, 4, 2, 1, 1]),
        ((64, 200), 3, [8, 4, 1]),  # capped at 8, the last step is always 1
        ((16, 16), 3, [2, 1, 1]),
        ((40, 10), 6, [4, 2, 1, 1, 1, 1]),  # 40 // 8 = 5 -> power of two below: 4
        ((5, 7), 4, [1, 1, 1, 1]),
        ((64, 64), 1, [1]),
        ((64, 64), 0, []),
    ],
)
def test_default_jumps(size, iters, expected):
    assert ref.default_jumps(*size, iters) == expected


@pytest.mark.parametrize(
    ("size", "expected"),
    [((16, 16), [8, 4, 2, 1]), ((3, 10), [5, 2, 1]), ((2, 1), [1]), ((1, 1), []), ((7, 5), [3, 1])],
)
def test_search_radii(size, expected):
    assert ref.search_radii(*size) == expected


@pytest.mark.parametrize(
    ("max_radius", "expected"), [(0, []), (1, [1]), (3, [3, 1]), (8, [8, 4, 2, 1]), (2**30, [8, 4, 2, 1])]
)
def test_search_radii_start_at_max_radius(max_radius, expected):
    assert ref.search_radii(16, 16, max_radius) == expected


def test_search_radii_are_capped():
    radii = ref.search_radii(1, 2**40)
    assert len(radii) == ref.MAX_RADII and radii[0] == 2**39 and radii == sorted(radii, reverse=True)


@pytest.mark.parametrize(
    ("d", "key", "query", "expected"),
    [(3, 10, 5, 6), (-3, 10, 5, -6), (1, 3, 2, 2), (-1, 3, 2, -2), (1, 1, 4, 0), (2, 1, 4, 1),
     (-2, 1, 4, -1)],
)
def test_scale_shift_rounds_half_away_from_zero(d, key, query, expected):
    assert ref.scale_shift(d, key, query) == expected
    assert int(ref.scale_shift(torch.tensor([d]), key, query)) == expected


# ----------------------------------------------------------------------------- random numbers

# pcg_hash (PCG-RXS-M-XS 32, Jarzynski and Olano, "Hash Functions for GPU Rendering", JCGT 9(3),
# 2020) and counter_random, computed once outside this project: by the paper's C code compiled
# with gcc (uint32_t arithmetic) and by numpy uint32 arithmetic, which agree. A wrong constant,
# shift or composition changes them.
PCG_HASH_VECTORS = {
    0: 129708002,
    1: 2831084092,
    2: 2055130248,
    12345: 4099845390,
    0xFFFFFFFF: 3861530882,
    0x80000000: 566699590,
    0xDEADBEEF: 1730779506,
}
# (seed, stream, pixel, counter) -> pcg(pcg(pcg(pcg(seed) ^ stream) ^ pixel) ^ counter)
COUNTER_RANDOM_VECTORS = {
    (0, 1 << 16, 0, 0): 2705236602,
    (7, 1 << 16, 3, 3): 1357722721,
    (7, (3 << 16) | 4, 49, 65): 675085571,
    (0xFFFFFFFF, (2 << 16) | 65535, 1048575, 127): 1525265379,
}


def test_pcg_hash_known_values():
    xs = list(PCG_HASH_VECTORS)
    assert ref.pcg_hash(torch.tensor(xs)).tolist() == [PCG_HASH_VECTORS[x] for x in xs]


@pytest.mark.parametrize(("args", "expected"), list(COUNTER_RANDOM_VECTORS.items()))
def test_counter_random_known_values(args, expected):
    seed, stream, pixel, counter = args
    assert ref.counter_random(seed, stream, torch.tensor([pixel]), counter).tolist() == [expected]


def test_counter_random_is_a_pure_function():
    pixel = torch.arange(50).view(2, 1, 5, 5)
    a = ref.counter_random(7, ref.STREAM_FILL, pixel, 3)
    b = ref.counter_random(7, ref.STREAM_FILL, pixel.clone(), torch.tensor(3))
    assert torch.equal(a, b)
    assert int(a.min()) >= 0 and int(a.max()) <= MASK
    assert int(a.flatten()[3]) == COUNTER_RANDOM_VECTORS[(7, 1 << 16, 3, 3)]
    # Every argument matters: changing any one changes (nearly) every draw.
    for other in (
        ref.counter_random(8, ref.STREAM_FILL, pixel, 3),
        ref.counter_random(7, ref.STREAM_SEARCH_X, pixel, 3),
        ref.counter_random(7, ref.STREAM_FILL, pixel + 50, 3),
        ref.counter_random(7, ref.STREAM_FILL, pixel, 4),
    ):
        assert (other != a).float().mean() > 0.9
    # Pixel-wise: a pixel's draw does not depend on which other pixels are drawn with it.
    assert torch.equal(ref.counter_random(7, ref.STREAM_FILL, pixel[:, :, 2:4, 1:], 3), a[:, :, 2:4, 1:])
