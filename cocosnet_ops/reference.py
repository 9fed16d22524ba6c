"""Pure-PyTorch implementations of every op: the oracle the compiled kernels are tested against.

Everything here is written for clarity, not speed: it materialises the candidate sets and the
gathered features that the kernels never store. The definitions below are the contract; the
per-pixel code in ``csrc/patch_match.h`` implements exactly the same arithmetic.

Conventions (the README's API section states them for users):

* query features ``fq`` (B, C, Hq, Wq), key features ``fk`` (B, C, Hk, Wk), values ``v``
  (B, Cv, Hk, Wk);
* an NNF is int32 (B, K, Hq, Wq) of flat key indices ``row * Wk + col`` with scores of the
  features' dtype, sorted best first, each index at most once per pixel;
* candidates are ranked by score descending, ties by index ascending; a NaN score ranks as -inf.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

MASK32 = 0xFFFFFFFF

# Random streams: the purpose sits in the high 16 bits, the iteration in the low 16.
STREAM_FILL = 1 << 16
STREAM_SEARCH_Y = 2 << 16
STREAM_SEARCH_X = 3 << 16
# Random-search draws are numbered anchor * MAX_RADII + radius level.
MAX_RADII = 32
SEARCH_ANCHORS = 4
# Logits exact_knn holds at once: 16 MiB in float32 (its sort keeps as many values and indices).
KNN_CHUNK_ENTRIES = 1 << 22


# ----------------------------------------------------------------------------- random numbers


def pcg_hash(x: Tensor) -> Tensor:
    """PCG-RXS-M-XS 32-bit hash (Jarzynski and Olano, 2020) on int64 tensors holding uint32."""
    state = (x * 747796405 + 2891336453) & MASK32
    word = (((state >> ((state >> 28) + 4)) ^ state) * 277803737) & MASK32
    return ((word >> 22) ^ word) & MASK32


def counter_random(seed: int, stream: int, pixel: Tensor, counter: int | Tensor) -> Tensor:
    """uint32 random number of (seed, stream, pixel, counter): no state, so no thread order."""
    h = pcg_hash(torch.full_like(pixel, seed & MASK32))
    h = pcg_hash(h ^ (stream & MASK32))
    h = pcg_hash(h ^ (pixel & MASK32))
    return pcg_hash(h ^ (torch.as_tensor(counter, device=pixel.device) & MASK32))


def _pixel_ids(batch: int, height: int, width: int, device: torch.device) -> Tensor:
    """Pixel number y * W + x as (B, 1, H, W) int64: the same for every batch item, so a
    sample's search does not depend on its place in the batch."""
    return torch.arange(height * width, device=device).view(1, 1, height, width).expand(batch, 1, -1, -1)


# ----------------------------------------------------------------------------- helpers


def scale_shift(d: Tensor | int, key_extent: int, query_extent: int) -> Tensor | int:
    """A query-map displacement ``d`` expressed in key-map pixels, rounded half away from 0."""
    if isinstance(d, int):
        mag = (2 * abs(d) * key_extent + query_extent) // (2 * query_extent)
        return mag if d >= 0 else -mag
    mag = (2 * d.abs() * key_extent + query_extent) // (2 * query_extent)
    return torch.where(d >= 0, mag, -mag)


def default_jumps(query_height: int, query_width: int, iters: int) -> list[int]:
    """Jump-flood step per iteration: halving from up to 8 (scaled to the map), ending at 1."""
    if iters <= 0:
        return []
    # The largest power of two <= clamp(longest side // 8, 1, 8), by comparisons only, so that
    # torch.compile with dynamic shapes guards on a range of sizes instead of one size.
    longest = max(query_height, query_width)
    start = next((s for s in (8, 4, 2) if longest >= 8 * s), 1)
    steps = [max(1, start >> t) for t in range(iters)]
    steps[-1] = 1
    return steps


def search_radii(key_height: int, key_width: int, max_radius: int | None = None) -> list[int]:
    """Random-search radii: half the key map's larger side (or ``max_radius`` when smaller),
    halving down to 1."""
    radius = max(key_height, key_width) // 2
    if max_radius is not None:
        radius = min(radius, max_radius)
    radii = []
    while radius >= 1 and len(radii) < MAX_RADII:
        radii.append(radius)
        radius //= 2
    return radii


def patch_scores(fq: Tensor, fk: Tensor, cand: Tensor, patch_size: int = 1) -> Tensor:
    """Score of key index ``cand`` (B, M, Hq, Wq) for every query pixel.

    The score is the mean over a ``patch_size`` square window of the inner products of query
    and key features at the same displacement, features being zero outside both maps.
    ``cand`` entries must be valid indices.
    """
    B, C, Hq, Wq = fq.shape
    Hk, Wk = fk.shape[-2:]
    M = cand.shape[1]
    r = patch_size // 2
    cand = cand.long()
    ky, kx = cand // Wk, cand % Wk
    fq_pad = F.pad(fq, (r, r, r, r))
    fk_pad = F.pad(fk, (r, r, r, r)).flatten(2)
    padded_width = Wk + 2 * r
    total = torch.zeros(B, M, Hq, Wq, dtype=fq.dtype, device=fq.device)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            q = fq_pad[:, :, r + dy : r + dy + Hq, r + dx : r + dx + Wq]
            flat = ((ky + r + dy) * padded_width + (kx + r + dx)).view(B, 1, -1)
            k = fk_pad.gather(2, flat.expand(B, C, -1)).view(B, C, M, Hq, Wq)
            total = total + (q.unsqueeze(2) * k).sum(1)
    return total / (patch_size * patch_size)


def select_topk(cand: Tensor, score: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k best distinct candidates (score descending, index ascending) of (B, M, H, W).

    Every pixel must hold at least k distinct candidates. Invalid entries are marked by an
    index larger than any valid one and a score of -inf.
    """
    score = torch.where(torch.isnan(score), torch.full_like(score, float("-inf")), score)
    by_index = torch.argsort(cand, dim=1, stable=True)
    cand, score = cand.gather(1, by_index), score.gather(1, by_index)
    by_score = torch.argsort(score, dim=1, descending=True, stable=True)
    cand, score = cand.gather(1, by_score), score.gather(1, by_score)
    # A repeated index has the same score, so after both stable sorts it sits next to its twin.
    repeated = torch.zeros_like(cand, dtype=torch.bool)
    repeated[:, 1:] = cand[:, 1:] == cand[:, :-1]
    keep = torch.argsort(repeated.to(torch.uint8), dim=1, stable=True)[:, :k]
    return cand.gather(1, keep), score.gather(1, keep)


def fill_sequence(seed: int, k: int, key_pixels: int, pixel: Tensor, random_only: bool) -> Tensor:
    """The candidates that top up a pixel with fewer than k distinct candidates, in order.

    First 2k uniform draws, then the key indices in turn from a random start, so k distinct ones
    are always found. (B, L, H, W) int64. The kernels scan until the pixel is full; k indices of
    the scan always suffice (each one that is not new is one of the pixel's candidates or draws,
    already counted), so here it stops there: a batch where one pixel needs the scan costs O(k)
    per pixel, not O(key pixels). k <= key pixels.
    """
    draws = [counter_random(seed, STREAM_FILL, pixel, j) % key_pixels for j in range(2 * k)]
    if not random_only:
        start = counter_random(seed, STREAM_FILL, pixel, 2 * k) % key_pixels
        scan = torch.arange(k, device=pixel.device).view(1, -1, 1, 1)
        draws.append((start + scan) % key_pixels)
    return torch.cat(draws, dim=1)


def _first_new(sequence: Tensor, taken: Tensor) -> Tensor:
    """Mask of the entries of ``sequence`` that are neither in ``taken`` nor seen earlier in it."""
    order = torch.argsort(sequence, dim=1, stable=True)
    ordered = sequence.gather(1, order)
    later = torch.zeros_like(ordered, dtype=torch.bool)
    later[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    seen_before = torch.zeros_like(later).scatter(1, order, later)
    in_taken = (sequence.unsqueeze(2) == taken.unsqueeze(1)).any(2)
    return ~seen_before & ~in_taken


def _top_up(cand: Tensor, count: Tensor, k: int, key_pixels: int, seed: int, pixel: Tensor) -> Tensor:
    """Fill the slots count..k-1 of ``cand`` (B, k, H, W) from the fill sequence, in order."""
    for random_only in (True, False):
        sequence = fill_sequence(seed, k, key_pixels, pixel, random_only)
        new = _first_new(sequence, cand)
        rank = new.long().cumsum(1) - 1
        take = new & (rank < (k - count))
        if random_only and bool((take.sum(1, keepdim=True) < k - count).any()):
            continue
        slot = torch.where(take, count + rank, torch.full_like(rank, k))
        padded = torch.cat([cand, torch.zeros_like(cand[:, :1])], dim=1)
        return padded.scatter(1, slot, sequence)[:, :k]
    raise AssertionError("unreachable: the scan covers every key index")


def _initial_topk(
    fq: Tensor, fk: Tensor, cand: Tensor | None, k: int, patch_size: int, seed: int
) -> tuple[Tensor, Tensor]:
    """Top-k of the given candidates (entries < 0 are ignored), topped up to k by fill_sequence."""
    B, _, Hq, Wq = fq.shape
    Hk, Wk = fk.shape[-2:]
    key_pixels = Hk * Wk
    sentinel = key_pixels
    if cand is None or cand.shape[1] == 0:
        chosen = torch.full((B, k, Hq, Wq), sentinel, dtype=torch.long, device=fq.device)
    else:
        cand = cand.long()
        valid = cand >= 0
        safe = torch.where(valid, cand, torch.zeros_like(cand))
        score = patch_scores(fq, fk, safe, patch_size)
        score = torch.where(valid, score, torch.full_like(score, float("-inf")))
        cand = torch.where(valid, cand, torch.full_like(cand, sentinel))
        if cand.shape[1] < k:
            pad = torch.full((B, k - cand.shape[1], Hq, Wq), sentinel, device=fq.device)
            cand = torch.cat([cand, pad], 1)
            score = torch.cat(
                [score, torch.full(pad.shape, float("-inf"), dtype=score.dtype, device=fq.device)], 1
            )
        chosen, _ = select_topk(cand, score, k)
        # With fewer than k distinct candidates, select_topk pads with repeats: drop them.
        earlier = torch.ones(k, k, dtype=torch.bool, device=fq.device).tril(-1).view(1, k, k, 1, 1)
        repeat = ((chosen.unsqueeze(2) == chosen.unsqueeze(1)) & earlier).any(2)
        chosen = torch.where(repeat, torch.full_like(chosen, sentinel), chosen)
    count = (chosen < sentinel).sum(1, keepdim=True)
    if bool((count < k).any()):
        pixel = _pixel_ids(B, Hq, Wq, fq.device)
        chosen = _top_up(chosen, count, k, key_pixels, seed, pixel)
    return select_topk(chosen, patch_scores(fq, fk, chosen, patch_size), k)


class _SearchWindow:
    """What ``max_radius`` lets each pixel's search reach: key pixels within Chebyshev distance
    ``radius`` of at least one of its valid init candidates (B, M, Hq, Wq). A pixel without one
    is unbounded."""

    def __init__(self, init: Tensor, key_width: int, radius: int) -> None:
        init = init.long()
        self.valid = init >= 0
        self.init_y, self.init_x = init // key_width, init % key_width
        self.unbounded = ~self.valid.any(1, keepdim=True)
        self.radius = radius

    def allows(self, ky: Tensor, kx: Tensor) -> Tensor:
        """Whether each candidate at (ky, kx) (B, N, Hq, Wq) is within reach."""
        near = self.unbounded.expand_as(ky).clone()
        for m in range(self.valid.shape[1]):
            near |= (
                self.valid[:, m : m + 1]
                & ((ky - self.init_y[:, m : m + 1]).abs() <= self.radius)
                & ((kx - self.init_x[:, m : m + 1]).abs() <= self.radius)
            )
        return near


def _neighbour(t: Tensor, dy: int, dx: int, fill: int) -> Tensor:
    """t[..., y + dy, x + dx], ``fill`` where that falls outside the map."""
    H, W = t.shape[-2:]
    out = torch.full_like(t, fill)
    ys, ye = max(0, -dy), min(H, H - dy)
    xs, xe = max(0, -dx), min(W, W - dx)
    if ys < ye and xs < xe:
        out[..., ys:ye, xs:xe] = t[..., ys + dy : ye + dy, xs + dx : xe + dx]
    return out


# ----------------------------------------------------------------------------- search ops


def evaluate_candidates(
    fq: Tensor, fk: Tensor, cand: Tensor, k: int, patch_size: int = 1
) -> tuple[Tensor, Tensor]:
    """Top-k distinct of the candidates (B, M, Hq, Wq); entries < 0 mean 'no candidate'.

    A pixel with fewer than k distinct candidates is topped up by ``fill_sequence`` (seed 0).
    """
    nnf, scores = _initial_topk(fq, fk, cand, k, patch_size, seed=0)
    return nnf.int(), scores


def share_matches(
    fq: Tensor, fk: Tensor, nnf: Tensor, scores: Tensor, neighbours: Tensor, top: int, patch_size: int = 1
) -> tuple[Tensor, Tensor]:
    """Top-k distinct of each pixel's own matches ``nnf`` (B, k, Hq, Wq), kept with their
    ``scores`` (the first of a repeated entry counts), and the first ``top`` matches of every
    query pixel ``neighbours`` (B, M, Hq, Wq) names (entries outside the query map are none),
    scored afresh; a pixel with fewer than k distinct is topped up by ``fill_sequence`` (seed 0).
    """
    B, k, Hq, Wq = nnf.shape
    M, pixels = neighbours.shape[1], Hq * Wq
    own = nnf.long()
    earlier = torch.ones(k, k, dtype=torch.bool, device=fq.device).tril(-1).view(1, k, k, 1, 1)
    own = torch.where(((own.unsqueeze(2) == own.unsqueeze(1)) & earlier).any(2), -1, own)
    valid = (neighbours >= 0) & (neighbours < pixels)
    index = neighbours.long().clamp(0, pixels - 1).view(B, M, 1, pixels).expand(B, M, top, pixels)
    shared = nnf.long()[:, :top].reshape(B, 1, top, pixels).expand(B, M, top, pixels).gather(3, index)
    shared = torch.where(valid.view(B, M, 1, pixels), shared, -1).reshape(B, M * top, Hq, Wq)
    # A neighbour's copy of an own entry is that entry: it keeps the given score.
    shared = torch.where((shared.unsqueeze(2) == own.unsqueeze(1)).any(2), -1, shared)
    given = torch.where(own >= 0, torch.nan_to_num(scores, nan=float("-inf")), float("-inf"))
    fresh = torch.where(shared >= 0, patch_scores(fq, fk, shared.clamp(min=0), patch_size), float("-inf"))
    sentinel = fk.shape[2] * fk.shape[3]
    cand = torch.cat([own, shared], 1)
    chosen, _ = select_topk(torch.where(cand >= 0, cand, sentinel), torch.cat([given, fresh], 1), k)
    repeat = ((chosen.unsqueeze(2) == chosen.unsqueeze(1)) & earlier).any(2)
    chosen = torch.where(repeat, sentinel, chosen)
    count = (chosen < sentinel).sum(1, keepdim=True)
    if bool((count < k).any()):
        chosen = _top_up(chosen, count, k, sentinel, 0, _pixel_ids(B, Hq, Wq, fq.device))
    listed = chosen.unsqueeze(2) == own.unsqueeze(1)
    score = torch.where(
        listed.any(2),
        given.unsqueeze(1).expand_as(listed).masked_fill(~listed, float("-inf")).amax(2),
        patch_scores(fq, fk, chosen, patch_size),
    )
    nnf, scores = select_topk(chosen, score, k)
    return nnf.int(), scores


def patch_match(
    fq: Tensor,
    fk: Tensor,
    k: int = 16,
    iters: int = 5,
    init: Tensor | None = None,
    patch_size: int = 1,
    jump: Sequence[int] | None = None,
    random_search: bool = True,
    seed: int = 0,
    max_radius: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Approximate top-k key pixels by (patch) inner product for every query pixel.

    Start: the init candidates (or none), topped up with random ones. Each iteration, double
    buffered, ranks together for each pixel: its current k; the k matches of each of its four
    neighbours at distance ``jump[t]``, shifted back by that distance in key pixels; and, with
    random search, one uniform draw in a square of radius r around each of its best
    ``SEARCH_ANCHORS`` matches for every r in ``search_radii``.

    ``max_radius`` (needs ``init``) drops the neighbours' and random-search candidates that lie
    farther than it (Chebyshev, in key pixels) from every valid init candidate of the pixel, and
    caps the random-search radii at it; pixels without a valid init candidate are unbounded.
    """
    B, _, Hq, Wq = fq.shape
    Hk, Wk = fk.shape[-2:]
    key_pixels = Hk * Wk
    sentinel = key_pixels
    steps = list(jump) if jump is not None else default_jumps(Hq, Wq, iters)
    if max_radius is not None and init is None:
        raise ValueError("max_radius: bounds the search around the init candidates, so needs init")
    radii = search_radii(Hk, Wk, max_radius) if random_search else []
    window = _SearchWindow(init, Wk, max_radius) if max_radius is not None else None
    pixel = _pixel_ids(B, Hq, Wq, fq.device)
    nnf, _ = _initial_topk(fq, fk, init, k, patch_size, seed)
    for it in range(iters):
        ky, kx = nnf // Wk, nnf % Wk
        cands = [nnf]
        step = steps[min(it, len(steps) - 1)] if steps else 1
        for dy, dx in ((-step, 0), (step, 0), (0, -step), (0, step)):
            shift_y, shift_x = scale_shift(dy, Hk, Hq), scale_shift(dx, Wk, Wq)
            ny = _neighbour(ky, dy, dx, -(10**9)) - shift_y
            nx = _neighbour(kx, dy, dx, -(10**9)) - shift_x
            inside = (ny >= 0) & (ny < Hk) & (nx >= 0) & (nx < Wk)
            if window is not None:
                inside &= window.allows(ny, nx)
            cands.append(torch.where(inside, ny * Wk + nx, torch.full_like(ny, sentinel)))
        anchors = min(k, SEARCH_ANCHORS)
        for a in range(anchors):
            for level, r in enumerate(radii):
                draw = a * MAX_RADII + level
                oy = counter_random(seed, STREAM_SEARCH_Y | it, pixel, draw) % (2 * r + 1) - r
                ox = counter_random(seed, STREAM_SEARCH_X | it, pixel, draw) % (2 * r + 1) - r
                sy = (ky[:, a : a + 1] + oy).clamp(0, Hk - 1)
                sx = (kx[:, a : a + 1] + ox).clamp(0, Wk - 1)
                drawn = sy * Wk + sx
                if window is not None:
                    drawn = torch.where(window.allows(sy, sx), drawn, torch.full_like(drawn, sentinel))
                cands.append(drawn)
        cand = torch.cat(cands, 1)
        valid = cand < sentinel
        score = patch_scores(fq, fk, torch.where(valid, cand, torch.zeros_like(cand)), patch_size)
        score = torch.where(valid, score, torch.full_like(score, float("-inf")))
        nnf, _ = select_topk(cand, score, k)
    nnf, scores = select_topk(nnf, patch_scores(fq, fk, nnf, patch_size), k)
    return nnf.int(), scores


def coarse_key_size_for(
    coarse_query_size: Sequence[int], key_size: Sequence[int], query_size: Sequence[int]
) -> tuple[int, int]:
    """The coarse key map size implied by scaling the key map like the query map."""
    out = []
    for coarse_q, fine_k, fine_q in zip(coarse_query_size, key_size, query_size, strict=True):
        if (fine_k * coarse_q) % fine_q:
            raise ValueError(
                f"coarse_key_size: cannot infer it, key side {fine_k} scaled by {coarse_q}/{fine_q} "
                "is not an integer; pass coarse_key_size"
            )
        out.append(fine_k * coarse_q // fine_q)
    return out[0], out[1]


def nnf_upsample(
    nnf: Tensor,
    key_size: Sequence[int],
    query_size: Sequence[int],
    window: int = 4,
    dilation: int = 2,
    coarse_key_size: Sequence[int] | None = None,
) -> Tensor:
    """Candidates (B, K * window**2, Hq, Wq) for a finer level from a coarser NNF.

    Each fine query pixel takes the K matches of the coarse pixel it lies in, maps each to the
    fine key map (cell origin plus the pixel's offset inside its coarse cell) and spreads a
    ``window`` x ``window`` grid around it with offsets ``(i - (window - 1) // 2) * dilation``
    in fine key pixels, clamped to the map. Candidate ``m * window**2 + i * window + j`` is
    match m at grid row i, column j.
    """
    B, K, Hqc, Wqc = nnf.shape
    Hk, Wk = key_size
    Hq, Wq = query_size
    Hkc, Wkc = coarse_key_size or coarse_key_size_for((Hqc, Wqc), key_size, query_size)
    device = nnf.device
    y = torch.arange(Hq, device=device)
    x = torch.arange(Wq, device=device)
    cy, cx = y * Hqc // Hq, x * Wqc // Wq
    off_y = ((y - cy * Hq // Hqc) * Hk * Hqc) // (Hq * Hkc)
    off_x = ((x - cx * Wq // Wqc) * Wk * Wqc) // (Wq * Wkc)
    m = nnf.long()[:, :, cy][:, :, :, cx]
    base_y = (m // Wkc) * Hk // Hkc + off_y.view(1, 1, Hq, 1)
    base_x = (m % Wkc) * Wk // Wkc + off_x.view(1, 1, 1, Wq)
    grid = (torch.arange(window, device=device) - (window - 1) // 2) * dilation
    gy = (base_y.unsqueeze(2).unsqueeze(3) + grid.view(1, 1, window, 1, 1, 1)).clamp(0, Hk - 1)
    gx = (base_x.unsqueeze(2).unsqueeze(3) + grid.view(1, 1, 1, window, 1, 1)).clamp(0, Wk - 1)
    return (gy * Wk + gx).reshape(B, K * window * window, Hq, Wq).int()


def exact_knn(fq: Tensor, fk: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Exact top-k key pixels by inner product, ties to the lower index.

    In chunks of query pixels whose logits hold at most ``KNN_CHUNK_ENTRIES`` entries (at least
    one query pixel per batch item), so memory stays bounded whatever the map sizes.
    """
    B, C, Hq, Wq = fq.shape
    queries, keys = fq.flatten(2), fk.flatten(2)
    rows = max(1, KNN_CHUNK_ENTRIES // (B * keys.shape[2]))
    index, scores = [], []
    for start in range(0, Hq * Wq, rows):
        logits = torch.einsum("bcn,bcm->bnm", queries[:, :, start : start + rows], keys)
        logits = torch.where(torch.isnan(logits), torch.full_like(logits, float("-inf")), logits)
        chunk_scores, chunk_index = torch.sort(logits, dim=2, descending=True, stable=True)
        index.append(chunk_index[:, :, :k])
        scores.append(chunk_scores[:, :, :k])
    nnf = torch.cat(index, 1).transpose(1, 2).reshape(B, k, Hq, Wq).int().contiguous()
    return nnf, torch.cat(scores, 1).transpose(1, 2).reshape(B, k, Hq, Wq).contiguous()


# ----------------------------------------------------------------------------- warps


def gather_pixels(t: Tensor, index: Tensor) -> Tensor:
    """t (B, C, H, W) at flat indices (B, K, Hq, Wq) -> (B, C, K, Hq, Wq)."""
    B, C = t.shape[:2]
    flat = index.long().reshape(B, 1, -1).expand(B, C, -1)
    return t.flatten(2).gather(2, flat).view(B, C, *index.shape[1:])


def softmax_over_candidates(dots: Tensor, temperature: float) -> Tensor:
    """softmax_k(dots / T) over dim 1, shifted by the maximum before dividing, so that a tiny
    temperature gives the arg-max instead of inf - inf."""
    return torch.softmax((dots - dots.amax(1, keepdim=True).detach()) / temperature, dim=1)


def softmax_gather(dots: Tensor, values: Tensor, temperature: float) -> Tensor:
    """sum_k softmax_k(dots / T) values[:, :, k]: the warp every gather op computes, from the K
    candidates' logits (B, K, Hq, Wq) and values (B, Cv, K, Hq, Wq)."""
    weights = softmax_over_candidates(dots, temperature).to(values.dtype)
    return (weights.unsqueeze(1) * values).sum(2)


def weighted_gather(fq: Tensor, fk: Tensor, v: Tensor, nnf: Tensor, temperature: float) -> Tensor:
    """out[p] = sum_k softmax_k(<fq[p], fk[nnf[p, k]]> / T) v[nnf[p, k]]."""
    dots = (fq.unsqueeze(2) * gather_pixels(fk, nnf)).sum(1)
    return softmax_gather(dots, gather_pixels(v, nnf), temperature)


def bilinear_sample(t: Tensor, coords: Tensor) -> Tensor:
    """t (B, C, H, W) at continuous (x, y) pixel coordinates (B, K, Hq, Wq, 2) -> (B, C, K, Hq, Wq).

    Coordinates are clamped to the map (border padding); the gradient to a coordinate is zero
    where it was clamped.
    """
    H, W = t.shape[-2:]
    x = torch.where((coords[..., 0] < 0) | (coords[..., 0] > W - 1), coords[..., 0].detach(), coords[..., 0])
    y = torch.where((coords[..., 1] < 0) | (coords[..., 1] > H - 1), coords[..., 1].detach(), coords[..., 1])
    x, y = x.clamp(0, W - 1), y.clamp(0, H - 1)
    x0, y0 = x.detach().floor(), y.detach().floor()
    wx, wy = x - x0, y - y0
    x0, y0 = x0.long(), y0.long()
    x1, y1 = (x0 + 1).clamp(max=W - 1), (y0 + 1).clamp(max=H - 1)
    wx, wy = wx.unsqueeze(1), wy.unsqueeze(1)
    top = gather_pixels(t, y0 * W + x0) * (1 - wx) + gather_pixels(t, y0 * W + x1) * wx
    bottom = gather_pixels(t, y1 * W + x0) * (1 - wx) + gather_pixels(t, y1 * W + x1) * wx
    return top * (1 - wy) + bottom * wy


def bilinear_weighted_gather(fq: Tensor, fk: Tensor, v: Tensor, coords: Tensor, temperature: float) -> Tensor:
    """weighted_gather at continuous (x, y) key coordinates (B, K, Hq, Wq, 2), bilinearly sampled."""
    dots = (fq.unsqueeze(2) * bilinear_sample(fk, coords)).sum(1)
    return softmax_gather(dots, bilinear_sample(v, coords), temperature)


def bilinear_scores(fq: Tensor, fk: Tensor, coords: Tensor, patch_size: int = 1) -> Tensor:
    """Patch scores (B, K, Hq, Wq) at continuous (x, y) key coordinates (B, K, Hq, Wq, 2).

    The mean over the ``patch_size`` square window of <fq[p + d], fk sampled bilinearly at
    coords + d>, dividing by the whole window like ``patch_scores``. The centre term always
    counts, border-clamped like ``bilinear_weighted_gather`` (at patch size 1 this is the
    gather's logit); an off-centre term counts when p + d lies in the query map and coords + d
    in [0, Wk - 1] x [0, Hk - 1]. At integer coordinates inside the key map this is
    ``patch_scores``.
    """
    Hq, Wq = fq.shape[-2:]
    Hk, Wk = fk.shape[-2:]
    r = patch_size // 2
    fq_pad = F.pad(fq, (r, r, r, r))
    total = torch.zeros(coords.shape[:-1], dtype=fq.dtype, device=fq.device)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            q = fq_pad[:, :, r + dy : r + dy + Hq, r + dx : r + dx + Wq]  # zero outside the map
            shifted = coords + coords.new_tensor([dx, dy])
            term = (q.unsqueeze(2) * bilinear_sample(fk, shifted)).sum(1)
            if dx or dy:
                x, y = shifted[..., 0], shifted[..., 1]
                inside = (x >= 0) & (x <= Wk - 1) & (y >= 0) & (y <= Hk - 1)
                term = torch.where(inside, term, torch.zeros_like(term))
            total = total + term
    return total / (patch_size * patch_size)


def attention_warp(fq: Tensor, fk: Tensor, v: Tensor, temperature: float) -> Tensor:
    """out[p] = sum_q softmax_q(<fq[p], fk[q]> / T) v[q] over every key pixel q."""
    B, _, Hq, Wq = fq.shape
    logits = torch.einsum("bcn,bcm->bnm", fq.flatten(2), fk.flatten(2)) / temperature
    out = torch.einsum("bnm,bcm->bcn", torch.softmax(logits, dim=2), v.flatten(2))
    return out.view(B, v.shape[1], Hq, Wq)


def dense_warp(
    fq: Tensor,
    fk: Tensor,
    v: Tensor,
    temperature: float,
    cycle: bool = False,
    warp: Callable[[Tensor, Tensor, Tensor, float], Tensor] = attention_warp,
) -> Tensor | tuple[Tensor, Tensor]:
    """The exact softmax warp over all pairs (CoCosNet v1); with ``cycle`` also the warp of the
    result back onto the key map, ``warp(fk, fq, out)`` (B, Cv, Hk, Wk). ``warp`` computes one
    direction (the compiled kernels stand in for ``attention_warp`` there)."""
    out = warp(fq, fk, v, temperature)
    if not cycle:
        return out
    return out, warp(fk, fq, out, temperature)
