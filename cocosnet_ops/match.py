"""``match``: the K best key pixels of every query pixel in one call, coarse to fine.

The search: both feature maps are average-pooled level by level (each level halves the sides,
rounding up) and renormalised; at the coarse level, the finest one where exact search is still
cheap, ``exact_knn`` finds the true top K; every finer level starts from the coarser level's
matches (``nnf_upsample``) and refines them with ``patch_match``; at full resolution, rounds of
``share_matches`` let each query pixel score the matches of other query pixels that look like
it. That last step finds what spatial propagation cannot: where many key pixels score alike
(flat or noisy areas of low-dimensional features) the best one is wherever the noise happens to
agree, and only query pixels with similar features know it. Per second it finds more there than
further ``patch_match`` iterations do, so full resolution runs fewer of those
(``finest_iters``).

Its neighbours, by default ("shared"), are the query pixels that list the same key pixels: in
each round every key pixel is claimed by one query pixel that has it among its first
``CLAIM_RANKS`` matches (the highest-numbered such pixel in even rounds, the lowest in odd
ones), and a pixel scores the matches of the claimant of each of its own. They cost one scatter
per round. ``"self"`` finds them by searching the query map against itself instead (the same
coarse-to-fine search, ``SELF_NEIGHBOURS`` matches per pixel, its own first match dropped),
which costs a second search and finds less (benchmarks/bench_recall.py). A round leaves out the
pixels whose matches changed in neither of the two rounds before it: once a pixel and the
pixels it hears from have settled, another round brings it little (on smooth features most
settle after one round).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from . import ops, reference
from .ops import _check_int, _check_pair, _check_patch_size, _check_seed_tensor, _type_name

__all__ = ["match"]

# The coarse level is the finest at which exact kNN scores at most this many (query, key) pairs
# per full-resolution query pixel: there its cost stays a fraction of what the finer levels'
# search costs per pixel (benchmarks/bench_match.py).
COARSE_PAIRS_PER_PIXEL = 4096
# nnf_upsample window of the finer levels: each coarse match gives a fine pixel the 2 x 2 key
# pixels at its place; patch_match's propagation reaches the rest.
UPSAMPLE_WINDOW = 2
# "shared" neighbours: a key pixel is claimed among its first CLAIM_RANKS listings.
CLAIM_RANKS = 4
# "self" neighbours: how many query pixels the self-search finds per pixel.
SELF_NEIGHBOURS = 8
NEIGHBOURS = ("shared", "self")


def match(
    query: Tensor,
    key: Tensor,
    k: int = 16,
    *,
    iters: int = 5,
    finest_iters: int = 2,
    coarse: int | str | None = "auto",
    neighbours: str | None = "shared",
    rounds: int = 5,
    patch_size: int = 1,
    seed: int | Tensor = 0,
    exact: bool = True,
    backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """The ``k`` best matches of every query pixel among the key pixels, as ``(nnf, scores)``.

    ``query`` (B, C, Hq, Wq) and ``key`` (B, C, Hk, Wk) may differ in size; scores are inner
    products averaged over a ``patch_size`` window (cosine on L2-normalised features). Returns
    int32 (B, k, Hq, Wq) flat key indices ``row * Wk + col`` and their scores, best first, no
    index twice per pixel, as the other search ops do. Not differentiable.

    * ``coarse``: the level 1 / 2**coarse at which exact kNN starts the search. ``"auto"``
      takes the finest level at which exact search scores at most ``COARSE_PAIRS_PER_PIXEL``
      pairs per query pixel (sides 128 and 256: 1/2, 512 and 1024: 1/4); None starts
      ``patch_match`` from random candidates at full resolution instead; 0 is exact search.
    * ``iters``: ``patch_match`` iterations at every level between the coarse one and full
      resolution (and at full resolution from random candidates); ``finest_iters`` at full
      resolution after a coarser level. Without neighbour rounds, raise it to ``iters``.
    * ``neighbours``: how the ``rounds`` rounds of ``share_matches`` at full resolution find
      each query pixel's neighbours: ``"shared"`` (the query pixels that list the same key
      pixels), ``"self"`` (the query map searched against itself) or None (no rounds).
    * ``exact``: where ``"auto"`` finds exact search at full resolution cheap enough (small
      maps), return that (``exact_knn`` of the pixels' patches); False searches anyway (from
      level 1, or from random candidates where level 1 has fewer than ``k`` key pixels).
    * ``seed``: ``patch_match``'s seed (an int or a one-element integer tensor): the result
      depends only on the inputs and the seed, not on the thread count (within the rounding of
      the vendor matmul that ``exact_knn`` uses at the coarse level).
    * ``backend``: None chooses by device for every op; one of ``cocosnet_ops.BACKENDS`` forces
      it for every op that has it (``"triton"`` has ``patch_match`` only: the other ops then
      choose by device), or raises ValueError where it cannot run.
    """
    _check_pair(query, key)
    key_pixels = key.shape[2] * key.shape[3]
    _check_int("k", k, 1, key_pixels)
    iters = _check_int("iters", iters, 0, ops.MAX_ITERS)
    finest_iters = _check_int("finest_iters", finest_iters, 0, ops.MAX_ITERS)
    rounds = _check_int("rounds", rounds, 0)
    patch_size = _check_patch_size(patch_size)
    if isinstance(seed, Tensor):
        _check_seed_tensor(seed)
    else:
        seed = _check_int("seed", seed, 0, ops.MAX_SEED)
    if not isinstance(exact, bool):
        raise TypeError(f"exact: expected a bool, got {_type_name(exact)}")
    if neighbours is not None and neighbours not in NEIGHBOURS:
        raise ValueError(f"neighbours: expected one of {NEIGHBOURS} or None, got {neighbours!r}")
    level = _coarse_level(coarse, query.shape[2:], key.shape[2:], k, exact)
    # backend="triton" has patch_match only: the other ops then choose by device.
    other_backend = None if backend == "triton" else backend
    search = Search(
        iters,
        finest_iters,
        patch_size,
        seed,
        ops._choose_backend(backend, query.device, "patch_match"),
        ops._choose_backend(other_backend, query.device, "share_matches"),
        other_backend,
    )
    ops._check_cuda_k(k, search.search)
    # Channels-last: the kernels read each pixel's features in one run, and take these as they are.
    query, key = (
        ops._as_float(t.detach()).contiguous(memory_format=torch.channels_last) for t in (query, key)
    )
    if level == 0:
        return search.exact(query, key, k)
    nnf, scores = search.coarse_to_fine(query, key, k, level)
    if neighbours is None or rounds == 0:
        return nnf, scores
    pixels = None  # "shared": each round's claimants
    if neighbours == "self":
        count = min(SELF_NEIGHBOURS + 1, query.shape[2] * query.shape[3])
        self_level = _coarse_level("auto", query.shape[2:], query.shape[2:], count, True)
        if self_level == 0:
            pixels = search.exact(query, query, count)[0][:, 1:]
        else:
            pixels = search.coarse_to_fine(query, query, count, self_level)[0][:, 1:]
    return share_rounds(search, query, key, nnf, scores, rounds, pixels)


def share_rounds(
    search: Search,
    query: Tensor,
    key: Tensor,
    nnf: Tensor,
    scores: Tensor,
    rounds: int,
    pixels: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """``rounds`` rounds of ``share_matches`` with the query neighbours ``pixels`` (flat query
    indices), or with each round's claimants where None ("shared")."""
    key_pixels = key.shape[2] * key.shape[3]
    B, k, Hq, Wq = nnf.shape
    changed = recently_changed = torch.ones(B, 1, Hq, Wq, dtype=torch.bool, device=nnf.device)
    for round_index in range(rounds):
        neighbours = pixels
        if neighbours is None:
            neighbours = _claimants(nnf, key_pixels, min(CLAIM_RANKS, k), highest=round_index % 2 == 0)
        # A pixel whose matches changed in neither of the last two rounds hears from no one.
        settled = ~(changed | recently_changed)
        shared = search.share(query, key, nnf, scores, neighbours.masked_fill(settled, -1))
        recently_changed, changed = changed, (shared[0] != nnf).any(1, keepdim=True)
        nnf, scores = shared
    return nnf, scores


def _coarse_level(
    coarse: object, query_size: torch.Size, key_size: torch.Size, k: int, exact: bool
) -> int | None:
    """The level (0: full resolution) of the exact search, or None for a random start."""
    levels = 1 + max(math.ceil(math.log2(max(*query_size, *key_size))), 0)

    def key_pixels(level: int) -> int:
        return -(-key_size[0] // 2**level) * -(-key_size[1] // 2**level)

    if coarse is None:
        return None
    if coarse == "auto":
        for level in range(0 if exact else 1, levels):
            if key_pixels(level) < k:
                break
            if key_pixels(level) <= COARSE_PAIRS_PER_PIXEL * 4**level:
                return level
        return None
    if isinstance(coarse, str):
        raise ValueError(f"coarse: expected 'auto', None or an int level, got {coarse!r}")
    level = _check_int("coarse", coarse, 0, levels - 1)
    if key_pixels(level) < k:
        raise ValueError(
            f"coarse: level {level} leaves {key_pixels(level)} key pixels, fewer than k={k}; "
            "use a finer level"
        )
    return level


def _halve(features: Tensor) -> Tensor:
    """The next coarser level: 2 x 2 averages (sides rounded up), L2-normalised per pixel."""
    size = (-(-features.shape[2] // 2), -(-features.shape[3] // 2))
    return F.normalize(F.adaptive_avg_pool2d(features, size), dim=1)


def _patches(features: Tensor, patch_size: int) -> Tensor:
    """Every pixel's features followed by its neighbours' in the ``patch_size`` window, zero
    outside the map: inner products of these are patch_match's patch scores times the window."""
    if patch_size == 1:
        return features
    B, C, H, W = features.shape
    padded = F.pad(features, [patch_size // 2] * 4)
    return F.unfold(padded, patch_size).view(B, C * patch_size * patch_size, H, W)


class Search:
    """The searches of one ``match`` call: its settings and the backend of every op. It calls the
    ops past their public checks: ``match`` checked its arguments, and everything else it passes
    them is made here (channels-last features, which the public ops would copy back)."""

    def __init__(
        self,
        iters: int,
        finest_iters: int,
        patch_size: int,
        seed: int | Tensor,
        search: str,
        sharing: str,
        others: str | None,
    ) -> None:
        self.iters, self.finest_iters, self.patch_size, self.seed = iters, finest_iters, patch_size, seed
        self.search = search  # patch_match's backend
        self.sharing = sharing  # share_matches'
        self.others = others  # exact_knn's and nnf_upsample's (None: by device)

    def exact(self, query: Tensor, key: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """``exact_knn`` of the (patch) scores."""
        window = self.patch_size * self.patch_size
        fq, fk = _patches(query, self.patch_size) / window, _patches(key, self.patch_size)
        return ops.exact_knn(fq, fk, k, backend=self.others)

    def patch_match(
        self,
        query: Tensor,
        key: Tensor,
        k: int,
        iters: int,
        init: Tensor | None,
        patch_size: int,
        max_radius: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        jumps = reference.default_jumps(query.shape[2], query.shape[3], iters)
        args = (query, key, k, iters, init, patch_size, jumps, True, self.seed, self.search, max_radius)
        if isinstance(self.seed, Tensor):
            return ops._patch_match_tensor_seed(*args)
        return ops._patch_match_int_seed(*args)

    def share(
        self, query: Tensor, key: Tensor, nnf: Tensor, scores: Tensor, neighbours: Tensor
    ) -> tuple[Tensor, Tensor]:
        args = (query, key, nnf, scores, neighbours, nnf.shape[1], self.patch_size)
        if self.sharing == "torch":
            return reference.share_matches(*args)
        return ops._ops.share_matches(*args)

    def coarse_to_fine(self, query: Tensor, key: Tensor, k: int, level: int | None) -> tuple[Tensor, Tensor]:
        """Exact kNN at ``level`` (None: random candidates at full resolution), then
        nnf_upsample + patch_match at every finer level."""
        if level is None:
            return self.patch_match(query, key, k, self.iters, None, self.patch_size)
        queries, keys = [query], [key]
        for _ in range(level):
            queries.append(_halve(queries[-1]))
            keys.append(_halve(keys[-1]))
        nnf, _ = ops.exact_knn(queries[level], keys[level], k, backend=self.others)
        for finer in range(level - 1, -1, -1):
            fq, fk = queries[finer], keys[finer]
            init = ops.nnf_upsample(
                nnf,
                fk.shape[2:],
                fq.shape[2:],
                window=UPSAMPLE_WINDOW,
                dilation=1,
                coarse_key_size=keys[finer + 1].shape[2:],
                backend=self.others,
            )
            # Coarser levels compare single pixels: a patch of averages is mostly the same pixels.
            size, iters = (self.patch_size, self.finest_iters) if finer == 0 else (1, self.iters)
            nnf, scores = self.patch_match(fq, fk, k, iters, init, size)
        return nnf, scores


def _claimants(nnf: Tensor, key_pixels: int, ranks: int, highest: bool) -> Tensor:
    """For every match of every query pixel, the query pixel that claims that key pixel: the
    highest- (or lowest-) numbered one listing it among its first ``ranks`` matches. int32
    (B, K, Hq, Wq) flat query indices, -1 where no pixel lists it that high."""
    B, K, Hq, Wq = nnf.shape
    pixels = Hq * Wq
    listed = nnf[:, :ranks].reshape(B, ranks * pixels).long()
    numbers = torch.arange(pixels, device=nnf.device).repeat(ranks).expand(B, -1)
    if highest:
        claim = torch.full((B, key_pixels), -1, dtype=torch.long, device=nnf.device)
        claim.scatter_reduce_(1, listed, numbers, reduce="amax")
    else:
        claim = torch.full((B, key_pixels), pixels, dtype=torch.long, device=nnf.device)
        claim.scatter_reduce_(1, listed, numbers, reduce="amin")
        claim = torch.where(claim == pixels, -1, claim)
    return claim.gather(1, nnf.reshape(B, K * pixels).long()).view(B, K, Hq, Wq).int()
