"""Triton kernels of the search ops: patch_match (initial top-K, then propagation and random
search), evaluate_candidates and bilinear_scores.

They follow the per-pixel code of ``csrc/patch_match.h`` and the reference
(``cocosnet_ops/reference.py``): the same counter-based random numbers (PCG hash of seed,
stream | iteration, pixel and draw, in uint32), the same candidates offered in the same order,
the same ranking (higher score, ties to the lower index, NaN as -inf). One program handles
BLOCK query pixels, numbered over the whole batch; the channels run along the second axis of
each tile, so a key row is one gathered (BLOCK, CB) load and an inner product one row
reduction.

Each pixel's top-K list lives in registers as a (BLOCK, KB) pair of tiles. Its slots are kept
unordered, with the worst entry tracked: inserting then costs one compare and reduction over
the slots (a sorted insert would have to shift entries between slots, which a tile cannot do
without a gather), and the list is sorted once, when it is stored. The result is the same:
an offer keeps a candidate exactly when it is not listed and ranks before the worst entry, so
the final list is the top-K of the distinct candidates offered, whatever their order. Unfilled
slots hold the sentinel (-inf, INT32_MAX), which every real candidate ranks before; slots past
k hold (+inf, -1), which is never the worst and never matches a candidate.

Feature maps come as: query (B, C, Hq, Wq), read pixel-contiguously per channel; key
channels-last (B, Hk, Wk, C), so a candidate's row is contiguous. Index maps are
(B, K, Hq, Wq), so loading entry i of every pixel of a block is one contiguous run.
"""

import triton
import triton.language as tl

from .. import reference
from .gather import bilinear, blend, dot_rows

# Kernels may read module globals only when they are constexpr.
NONE_INDEX = tl.constexpr(2**31 - 1)  # the index of an unfilled slot: every real candidate ranks before it
STREAM_FILL = tl.constexpr(reference.STREAM_FILL)
MAX_RADII = tl.constexpr(reference.MAX_RADII)


# ----------------------------------------------------------------------------- random numbers


@triton.jit
def _pcg_hash(x):
    """PCG-RXS-M-XS 32-bit hash on uint32 (wraps like the C++ and the reference)."""
    state = x * 747796405 + 2891336453
    word = ((state >> ((state >> 28) + 4)) ^ state) * 277803737
    return (word >> 22) ^ word


@triton.jit
def _random_stream(seed, stream, pixel):
    """The part of counter_random that does not depend on the draw, for uint32 ``pixel``."""
    return _pcg_hash(_pcg_hash(_pcg_hash(seed.to(tl.uint32)) ^ stream) ^ pixel)


# ----------------------------------------------------------------------------- scores


@triton.jit
def _exact_divide(x, n: tl.constexpr):
    """x / n rounded to nearest: the GPU's default float32 division is approximate, which would
    break exact patch scores."""
    if x.dtype == tl.float32:
        return tl.math.div_rn(x, n * 1.0)
    else:
        return x / n


@triton.jit
def _rankable(score):
    return tl.where(score != score, float("-inf"), score)


@triton.jit
def _scores(query, key, q_tile, q_batch, k_batch, qy, qx, cand, valid, C, Hq, Wq, Hk, Wk, chan, chan_ok,
            RADIUS: tl.constexpr, BLOCK: tl.constexpr):
    """patch_score of key pixels ``cand`` (BLOCK,) for query pixels (qy, qx), -inf for NaN.

    ``q_batch``/``k_batch``: where each pixel's batch item starts in the query map (elements)
    and in the key map (pixels); ``q_tile``: the query pixels' features (BLOCK, CB), used when
    RADIUS is 0. Entries where ``valid`` is false read nothing.
    """
    if RADIUS == 0:
        mask = valid[:, None] & chan_ok[None, :]
        rows = tl.load(key + ((k_batch + cand) * C)[:, None] + chan[None, :], mask=mask, other=0.0)
        score = tl.sum(q_tile * rows, axis=1)
    else:
        SIDE: tl.constexpr = 2 * RADIUS + 1
        ky = cand // Wk
        kx = cand - ky * Wk
        chan_stride = chan.to(tl.int64)[None, :] * (Hq * Wq)
        total = tl.zeros([BLOCK], dtype=q_tile.dtype)
        for t in range(SIDE * SIDE):
            dy = t // SIDE - RADIUS
            dx = t % SIDE - RADIUS
            sy = qy + dy
            sx = qx + dx
            ty = ky + dy
            tx = kx + dx
            inside = valid & (sy >= 0) & (sy < Hq) & (sx >= 0) & (sx < Wq)
            inside = inside & (ty >= 0) & (ty < Hk) & (tx >= 0) & (tx < Wk)
            mask = inside[:, None] & chan_ok[None, :]
            q_rows = tl.load(query + (q_batch + sy * Wq + sx)[:, None] + chan_stride, mask=mask, other=0.0)
            k_offsets = ((k_batch + ty * Wk + tx) * C)[:, None] + chan[None, :]
            k_rows = tl.load(key + k_offsets, mask=mask, other=0.0)
            total += tl.where(inside, tl.sum(q_rows * k_rows, axis=1), 0.0)
        score = _exact_divide(total, SIDE * SIDE)
    return _rankable(score)


# ----------------------------------------------------------------------------- top-K list


@triton.jit
def _ranks_before(score_a, index_a, score_b, index_b):
    return (score_a > score_b) | ((score_a == score_b) & (index_a < index_b))


@triton.jit
def _worst(top_index, top_score, slots, KB: tl.constexpr):
    """The entry every other ranks before (the lowest score, of those the highest index) and
    its slot."""
    worst_score = tl.min(top_score, axis=1)
    at_worst = top_score == worst_score[:, None]
    worst_index = tl.max(tl.where(at_worst, top_index, -1), axis=1)
    at_worst = at_worst & (top_index == worst_index[:, None])
    worst_slot = tl.min(tl.where(at_worst, slots[None, :], KB), axis=1)
    return worst_index, worst_score, worst_slot


@triton.jit
def _offer(top_index, top_score, worst_index, worst_score, worst_slot, slots, cand, score, offered,
           KB: tl.constexpr):
    """Offer ``cand`` with ``score`` where ``offered``: it replaces the worst entry when it is not
    listed and ranks before it. Returns the list, its worst entry and where it was taken."""
    listed = tl.max((top_index == cand[:, None]).to(tl.int32), axis=1)
    taken = offered & (listed == 0) & _ranks_before(score, cand, worst_score, worst_index)
    # After the first iterations most offers are rejected by the whole block: skip the update.
    if tl.max(taken.to(tl.int32), axis=0) > 0:
        replace = taken[:, None] & (slots[None, :] == worst_slot[:, None])
        top_index = tl.where(replace, cand[:, None], top_index)
        top_score = tl.where(replace, score[:, None], top_score)
        worst_index, worst_score, worst_slot = _worst(top_index, top_score, slots, KB)
    return top_index, top_score, worst_index, worst_score, worst_slot, taken


@triton.jit
def _store_sorted(out_index, out_score, top_index, top_score, slots, list_start, pixel_ok, k, P):
    """Store the k entries of every pixel best first into (B, K, Hq, Wq) maps, entry 0 of each
    pixel at ``list_start``: each entry goes to its rank, the number of entries that rank
    before it."""
    rank = tl.zeros_like(top_index)
    for i in range(k):
        pick = slots[None, :] == i
        score_i = tl.max(tl.where(pick, top_score, float("-inf")), axis=1)
        index_i = tl.max(tl.where(pick, top_index, -1), axis=1)
        rank += _ranks_before(score_i[:, None], index_i[:, None], top_score, top_index).to(tl.int32)
    mask = pixel_ok[:, None] & (slots[None, :] < k)
    offsets = list_start[:, None] + rank.to(tl.int64) * P
    tl.store(out_index + offsets, top_index, mask=mask)
    tl.store(out_score + offsets, top_score, mask=mask)


# ----------------------------------------------------------------------------- search window


@triton.jit
def _first_at_least(init, init_first, M, P, value, asked, STEPS: tl.constexpr):
    """SearchWindow::first_at_least for each pixel where ``asked``: the position of the first of
    its M init candidates (sorted ascending, entry m at ``init_first + m * P``) that is >= value,
    M when none. STEPS bisection rounds, STEPS >= log2(M + 1)."""
    low = tl.zeros_like(value)
    high = low + M
    for _ in range(STEPS):
        middle = (low + high) // 2
        open = asked & (low < high)
        entry = tl.load(init + init_first + middle.to(tl.int64) * P, mask=open, other=0)
        right = open & (entry < value)
        low = tl.where(right, middle + 1, low)
        high = tl.where(open & (right == 0), middle, high)
    return low


@triton.jit
def _has_init(init, init_first, pixel_ok, M, P, key_pixels, STEPS: tl.constexpr):
    """Whether each pixel has a valid init candidate, one in [0, key_pixels)."""
    first = _first_at_least(init, init_first, M, P, tl.zeros_like(init_first).to(tl.int32), pixel_ok, STEPS)
    found = pixel_ok & (first < M)
    entry = tl.load(init + init_first + first.to(tl.int64) * P, mask=found, other=key_pixels)
    return found & (entry < key_pixels)


@triton.jit
def _in_window(init, init_first, bounded, asked, ky, kx, max_radius, M, P, Hk, Wk, STEPS: tl.constexpr):
    """SearchWindow::allows for the candidates (ky, kx) where ``asked``: those within Chebyshev
    distance ``max_radius`` of a valid init candidate of their pixel (sorted ascending), every
    one where the pixel is not ``bounded``. The entries from (y0, x0) to (y1, x1) of the square
    around the candidate are those in its rows: a run found by bisection, scanned for one in its
    columns."""
    x0 = tl.maximum(kx - max_radius, 0)
    x1 = tl.minimum(kx + max_radius, Wk - 1)
    y0 = tl.maximum(ky - max_radius, 0)
    y1 = tl.minimum(ky + max_radius, Hk - 1)
    last = y1 * Wk + x1
    searching = asked & bounded
    m = _first_at_least(init, init_first, M, P, y0 * Wk + x0, searching, STEPS)
    near = tl.zeros_like(ky) != 0
    open = searching & (m < M)
    while tl.max(open.to(tl.int32), axis=0) > 0:
        entry = tl.load(init + init_first + m.to(tl.int64) * P, mask=open, other=0)
        open = open & (entry <= last)
        column = entry - (entry // Wk) * Wk
        hit = open & (column >= x0) & (column <= x1)
        near = near | hit
        m += 1
        open = open & (hit == 0) & (m < M)
    return asked & ((bounded == 0) | near)


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _pixels(B, C, Hq, Wq, BLOCK: tl.constexpr, CB: tl.constexpr):
    """This program's BLOCK query pixels, numbered over the whole batch: whether each exists, its
    batch item, its position, and its channels' offsets in the query map."""
    P = Hq * Wq
    g = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    pixel_ok = g < B * P
    b = g // P
    p = (g - b * P).to(tl.int32)
    qy = p // Wq
    qx = p - qy * Wq
    chan = tl.arange(0, CB)
    chan_ok = chan < C
    q_batch = b * C * P
    q_offsets = (q_batch + p)[:, None] + chan.to(tl.int64)[None, :] * P
    return pixel_ok, b, p, qy, qx, chan, chan_ok, q_batch, q_offsets


@triton.jit(do_not_specialize=["Hk", "Wk", "seed"])
def initial_topk_kernel(
    query, key, cand, out_index, out_score, B, M, C, Hq, Wq, Hk, Wk, k, seed,
    RADIUS: tl.constexpr, BLOCK: tl.constexpr, CB: tl.constexpr, KB: tl.constexpr,
):
    """initial_topk: the M candidates (B, M, Hq, Wq) (entries outside [0, Hk * Wk) ignored),
    then while fewer than k distinct are listed, 2k random draws, then a scan of every key
    index from a random start. Writes the sorted top-k (B, k, Hq, Wq)."""
    pixel_ok, b, p, qy, qx, chan, chan_ok, q_batch, q_offsets = _pixels(B, C, Hq, Wq, BLOCK, CB)
    P = Hq * Wq
    key_pixels = Hk * Wk
    k_batch = b * key_pixels
    q_tile = tl.load(query + q_offsets, mask=pixel_ok[:, None] & chan_ok[None, :], other=0.0)
    slots = tl.arange(0, KB)
    top_index = tl.zeros([BLOCK, KB], dtype=tl.int32) + tl.where(slots < k, NONE_INDEX, -1)[None, :]
    unfilled = tl.where(slots < k, float("-inf"), float("inf"))
    top_score = tl.zeros([BLOCK, KB], dtype=q_tile.dtype) + unfilled[None, :]
    worst_index, worst_score, worst_slot = _worst(top_index, top_score, slots, KB)
    count = tl.zeros([BLOCK], dtype=tl.int32)

    cand += b * M * P + p
    for m in range(M):
        c = tl.load(cand + m * P, mask=pixel_ok, other=-1)
        ok = pixel_ok & (c >= 0) & (c < key_pixels)
        c = tl.where(ok, c, 0)
        s = _scores(query, key, q_tile, q_batch, k_batch, qy, qx, c, ok, C, Hq, Wq, Hk, Wk, chan, chan_ok,
                    RADIUS, BLOCK)
        top_index, top_score, worst_index, worst_score, worst_slot, taken = _offer(
            top_index, top_score, worst_index, worst_score, worst_slot, slots, c, s, ok, KB
        )
        count += taken.to(tl.int32)

    fill = _random_stream(seed, STREAM_FILL, p.to(tl.uint32))
    key_pixels_u32 = key_pixels.to(tl.uint32)  # the hash is uint32: so is its modulus
    j = tl.full([], 0, tl.int32)
    while (j < 2 * k) & (tl.max((pixel_ok & (count < k)).to(tl.int32), axis=0) > 0):
        active = pixel_ok & (count < k)
        c = (_pcg_hash(fill ^ j) % key_pixels_u32).to(tl.int32)
        s = _scores(query, key, q_tile, q_batch, k_batch, qy, qx, c, active, C, Hq, Wq, Hk, Wk, chan, chan_ok,
                    RADIUS, BLOCK)
        top_index, top_score, worst_index, worst_score, worst_slot, taken = _offer(
            top_index, top_score, worst_index, worst_score, worst_slot, slots, c, s, active, KB
        )
        count += taken.to(tl.int32)
        j += 1

    # Rare: fewer than k distinct among the candidates and the draws (k near the key pixel count).
    start = (_pcg_hash(fill ^ (2 * k)) % key_pixels_u32).to(tl.int32)
    t = tl.full([], 0, tl.int32)
    while (t < key_pixels) & (tl.max((pixel_ok & (count < k)).to(tl.int32), axis=0) > 0):
        active = pixel_ok & (count < k)
        c = (start + t) % key_pixels
        s = _scores(query, key, q_tile, q_batch, k_batch, qy, qx, c, active, C, Hq, Wq, Hk, Wk, chan, chan_ok,
                    RADIUS, BLOCK)
        top_index, top_score, worst_index, worst_score, worst_slot, taken = _offer(
            top_index, top_score, worst_index, worst_score, worst_slot, slots, c, s, active, KB
        )
        count += taken.to(tl.int32)
        t += 1

    _store_sorted(out_index, out_score, top_index, top_score, slots, b * k * P + p, pixel_ok, k, P)


@triton.jit(do_not_specialize=["seed", "radius0", "max_radius"])
def patch_match_step_kernel(
    query, key, prev_index, prev_score, out_index, out_score, init, M, max_radius, B, C, Hq, Wq, Hk, Wk, k,
    step, shift_y, shift_x, anchors, radius0, num_radii, seed, stream_y, stream_x,
    RADIUS: tl.constexpr, BLOCK: tl.constexpr, CB: tl.constexpr, KB: tl.constexpr,
    BOUNDED: tl.constexpr, STEPS: tl.constexpr,
):
    """One double-buffered PatchMatch iteration (patch_match_step): each pixel's previous k
    matches compete with its four neighbours' matches at distance ``step``, shifted back by
    (shift_y, shift_x) key pixels, and with one random draw per anchor (its best ``anchors``
    matches) and radius ``radius0 >> level``, clamped to the key map. BOUNDED (max_radius):
    candidates farther than ``max_radius`` from every valid entry of the pixel's M init
    candidates ``init`` (B, M, Hq, Wq), sorted ascending along M, are dropped, unless it has
    none. STEPS: bisection rounds over M entries."""
    pixel_ok, b, p, qy, qx, chan, chan_ok, q_batch, q_offsets = _pixels(B, C, Hq, Wq, BLOCK, CB)
    P = Hq * Wq
    k_batch = b * Hk * Wk
    if BOUNDED:
        init_first = b * M * P + p
        bounded = _has_init(init, init_first, pixel_ok, M, P, Hk * Wk, STEPS)
    q_tile = tl.load(query + q_offsets, mask=pixel_ok[:, None] & chan_ok[None, :], other=0.0)
    list_batch = b * k * P
    slots = tl.arange(0, KB)
    own = (list_batch + p)[:, None] + slots.to(tl.int64)[None, :] * P
    in_list = pixel_ok[:, None] & (slots[None, :] < k)
    top_index = tl.load(prev_index + own, mask=in_list, other=-1)
    top_score = tl.load(prev_score + own, mask=in_list, other=float("inf"))
    worst_index, worst_score, worst_slot = _worst(top_index, top_score, slots, KB)

    # Propagation: up, down, left, right neighbours, each of their k matches in order.
    for n in range(4):
        sign = (n % 2) * 2 - 1
        vertical = n < 2
        dy = tl.where(vertical, sign * step, 0)
        dx = tl.where(vertical, 0, sign * step)
        back_y = tl.where(vertical, sign * shift_y, 0)
        back_x = tl.where(vertical, 0, sign * shift_x)
        ny = qy + dy
        nx = qx + dx
        neighbour_ok = pixel_ok & (ny >= 0) & (ny < Hq) & (nx >= 0) & (nx < Wq)
        neighbour = list_batch + ny * Wq + nx
        for i in range(k):
            theirs = tl.load(prev_index + neighbour + i * P, mask=neighbour_ok, other=0)
            row = theirs // Wk
            ky = row - back_y
            kx = theirs - row * Wk - back_x
            ok = neighbour_ok & (ky >= 0) & (ky < Hk) & (kx >= 0) & (kx < Wk)
            if BOUNDED:
                ok = _in_window(init, init_first, bounded, ok, ky, kx, max_radius, M, P, Hk, Wk, STEPS)
            c = tl.where(ok, ky * Wk + kx, 0)
            s = _scores(query, key, q_tile, q_batch, k_batch, qy, qx, c, ok, C, Hq, Wq, Hk, Wk, chan, chan_ok,
                        RADIUS, BLOCK)
            top_index, top_score, worst_index, worst_score, worst_slot, taken = _offer(
                top_index, top_score, worst_index, worst_score, worst_slot, slots, c, s, ok, KB
            )

    # Random search around the best matches of the previous iteration.
    pixel = p.to(tl.uint32)
    random_y = _random_stream(seed, stream_y, pixel)
    random_x = _random_stream(seed, stream_x, pixel)
    for a in range(anchors):
        anchor = tl.load(prev_index + list_batch + p + a * P, mask=pixel_ok, other=0)
        ay = anchor // Wk
        ax = anchor - ay * Wk
        for level in range(num_radii):
            radius = radius0 >> level
            span = (2 * radius + 1).to(tl.uint32)
            draw = a * MAX_RADII + level
            oy = (_pcg_hash(random_y ^ draw) % span).to(tl.int32) - radius
            ox = (_pcg_hash(random_x ^ draw) % span).to(tl.int32) - radius
            cy = tl.minimum(tl.maximum(ay + oy, 0), Hk - 1)
            cx = tl.minimum(tl.maximum(ax + ox, 0), Wk - 1)
            c = cy * Wk + cx
            ok = pixel_ok
            if BOUNDED:
                ok = _in_window(init, init_first, bounded, ok, cy, cx, max_radius, M, P, Hk, Wk, STEPS)
            s = _scores(query, key, q_tile, q_batch, k_batch, qy, qx, c, ok, C, Hq, Wq, Hk, Wk, chan,
                        chan_ok, RADIUS, BLOCK)
            top_index, top_score, worst_index, worst_score, worst_slot, taken = _offer(
                top_index, top_score, worst_index, worst_score, worst_slot, slots, c, s, ok, KB
            )

    _store_sorted(out_index, out_score, top_index, top_score, slots, list_batch + p, pixel_ok, k, P)


@triton.jit
def bilinear_scores_kernel(
    query, key, coords, out, B, K, C, Hq, Wq, Hk, Wk,
    RADIUS: tl.constexpr, BLOCK: tl.constexpr, CB: tl.constexpr,
):
    """bilinear_patch_score of every pixel at its K (x, y) key positions (B, K, Hq, Wq, 2): the
    centre term border-clamped, off-centre terms where the query pixel is inside the query map
    and the position inside the key map. NaN features give NaN scores (not ranked)."""
    pixel_ok, b, p, qy, qx, chan, chan_ok, q_batch, q_offsets = _pixels(B, C, Hq, Wq, BLOCK, CB)
    P = Hq * Wq
    k_batch = b * Hk * Wk
    q_tile = tl.load(query + q_offsets, mask=pixel_ok[:, None] & chan_ok[None, :], other=0.0)
    chan_stride = chan.to(tl.int64)[None, :] * P
    first = b * K * P + p
    SIDE: tl.constexpr = 2 * RADIUS + 1
    for i in range(K):
        x = tl.load(coords + (first + i * P) * 2, mask=pixel_ok, other=0.0)
        y = tl.load(coords + (first + i * P) * 2 + 1, mask=pixel_ok, other=0.0)
        total = tl.zeros([BLOCK], dtype=q_tile.dtype)
        for t in range(SIDE * SIDE):
            dy = t // SIDE - RADIUS
            dx = t % SIDE - RADIUS
            sx = x + dx
            sy = y + dy
            sqy = qy + dy
            sqx = qx + dx
            inside = (sqy >= 0) & (sqy < Hq) & (sqx >= 0) & (sqx < Wq)
            inside = inside & (sx >= 0) & (sx <= Wk - 1) & (sy >= 0) & (sy <= Hk - 1)
            centre = (sqy == qy) & (sqx == qx)
            counts = pixel_ok & (inside | centre)
            if RADIUS == 0:
                q_rows = q_tile
            else:
                q_rows = tl.load(query + (q_batch + sqy * Wq + sqx)[:, None] + chan_stride,
                                 mask=counts[:, None] & chan_ok[None, :], other=0.0)
            c0, c1, c2, c3, wx, wy, moves_x, moves_y = bilinear(sx, sy, Hk, Wk)
            rows_ok = counts[:, None]
            term = blend(
                dot_rows(q_rows, key, k_batch + c0, C, chan, rows_ok),
                dot_rows(q_rows, key, k_batch + c1, C, chan, rows_ok),
                dot_rows(q_rows, key, k_batch + c2, C, chan, rows_ok),
                dot_rows(q_rows, key, k_batch + c3, C, chan, rows_ok),
                wx, wy,
            )
            total += tl.where(counts, term, 0.0)
        if RADIUS == 0:
            score = total
        else:
            score = _exact_divide(total, SIDE * SIDE)
        tl.store(out + first + i * P, score, mask=pixel_ok)
