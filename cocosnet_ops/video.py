"""The NNF carried from frame to frame of a video: ``track``, ``Tracker`` and ``carry``.

Matching every frame of a query video anew against one key map (an exemplar) repeats the whole
search and lets the matches jump from frame to frame. Consecutive frames differ little, so frame
t's search starts from frame t-1's matches instead, moved by the query's own motion:

1. motion: ``patch_match`` of frame t's features against frame t-1's (``motion_iters``
   iterations from the identity and from frame t-1's motion, i.e. constant velocity), its best
   ``MOTION_MATCHES`` matches per pixel: where in frame t-1 each pixel of frame t was; no
   optical-flow network;
2. candidates: the K matches of those frame t-1 pixels (``nnf.neighbour_matches``), and ``fresh``
   global ones: exact kNN at a coarse level (at most ``FRESH_KEY_PIXELS`` key pixels), upsampled,
   so new or disoccluded regions find their place again;
3. ``patch_match`` from those candidates (``iters`` iterations) and ``rounds`` rounds of
   ``share_matches`` among the query pixels that list the same key pixels, as ``match`` ends.

``Tracker`` runs the full search (``match``) on the first frame and on a scene cut: a batch item
whose carried best matches (each pixel's frame t-1 best match, moved) score on average below
``cut_ratio`` times what the best matches of frame t-1 scored there.
``carry`` is the carried step alone, a function of tensors that ``torch.compile(fullgraph=True)``
traces; ``track`` runs a ``Tracker`` over a whole clip.

``hysteresis`` (off by default) is a temporal term: the exact best match of every frame jumps
wherever the features' nearest neighbour jumps, even when a match almost as good is the one the
pixel had in frame t-1. With a margin m > 0 the carried best (frame t-1's best, moved by the
motion) stays the top-1 unless the best match found scores more than m above it (scores are
cosines, in [-1, 1]), at the cost of top-1s up to m below the exact best.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import ops, reference
from .match import Search, match, share_rounds
from .nnf import neighbour_matches
from .ops import _check_features, _check_index_map, _check_int, _check_pair, _check_patch_size, _type_name

__all__ = ["Tracker", "carry", "moved_matches", "track"]

# The fresh candidates come from exact kNN at the finest level (halving the sides) whose key map
# has at most this many pixels: a few milliseconds, and a coarse place for every query pixel.
FRESH_KEY_PIXELS = 1024
# Motion matches per pixel: the frame t-1 pixels whose matches a frame t pixel inherits (two find
# more of the best matches than one, for a little more time: benchmarks/bench_video.py).
MOTION_MATCHES = 2


def _identity(query: Tensor) -> Tensor:
    """int32 (B, 1, H, W): every pixel's own flat index, the zero motion."""
    B, _, H, W = query.shape
    pixels = torch.arange(H * W, dtype=torch.int32, device=query.device)
    return pixels.view(1, 1, H, W).expand(B, 1, H, W)


def _still(query: Tensor) -> Tensor:
    """The motion of a frame searched in full: zero (the identity in every motion slot)."""
    B, _, H, W = query.shape
    return _identity(query).expand(B, MOTION_MATCHES, H, W).contiguous()


def _fresh_level(key_size: Sequence[int]) -> int:
    """How many halvings bring the key map to at most ``FRESH_KEY_PIXELS`` pixels."""
    level, (height, width) = 0, key_size
    while height * width > FRESH_KEY_PIXELS:
        height, width, level = -(-height // 2), -(-width // 2), level + 1
    return level


def _check_frames(query: Tensor, previous_query: Tensor) -> None:
    """Two consecutive frames' features: the same shape, dtype and device."""
    _check_pair(query, previous_query, ("query", "previous_query"))
    if previous_query.shape != query.shape:
        raise ValueError(
            f"previous_query: expected shape {tuple(query.shape)} like query, "
            f"got {tuple(previous_query.shape)}"
        )


def _check_options(
    key: Tensor,
    k: int,
    iters: int,
    rounds: int,
    motion_iters: int,
    motion_radius: int | None,
    fresh: int,
    hysteresis: float,
    patch_size: int,
    seed: int,
) -> None:
    _check_int("k", k, 1, key.shape[2] * key.shape[3])
    _check_int("iters", iters, 0, ops.MAX_ITERS)
    _check_int("rounds", rounds, 0)
    _check_int("motion_iters", motion_iters, 0, ops.MAX_ITERS)
    if motion_radius is not None:
        _check_int("motion_radius", motion_radius, 0, ops.MAX_STEP)
    level = _fresh_level(key.shape[2:])
    coarse_pixels = math.ceil(key.shape[2] / 2**level) * math.ceil(key.shape[3] / 2**level)
    _check_int("fresh", fresh, 0, coarse_pixels)
    if isinstance(hysteresis, bool) or not isinstance(hysteresis, (int, float)):
        raise TypeError(f"hysteresis: expected a float, got {_type_name(hysteresis)}")
    if not 0.0 <= hysteresis < math.inf:
        raise ValueError(f"hysteresis: expected a finite number >= 0, got {hysteresis}")
    _check_patch_size(patch_size)
    _check_int("seed", seed, 0, ops.MAX_SEED)


def _search(patch_size: int, seed: int, backend: str | None, device: torch.device) -> Search:
    """The backends of the ops the carried step runs, as ``match`` chooses them."""
    others = None if backend == "triton" else backend
    return Search(
        0,
        0,
        patch_size,
        seed,
        ops._choose_backend(backend, device, "patch_match"),
        ops._choose_backend(others, device, "share_matches"),
        others,
    )


def _pooled(features: Tensor, level: int) -> Tensor:
    """The map averaged over 2**level x 2**level cells (sides rounded up), L2-normalised: one
    pooling instead of ``level`` halvings, for candidates only."""
    size = (-(-features.shape[2] // 2**level), -(-features.shape[3] // 2**level))
    return F.normalize(F.adaptive_avg_pool2d(features, size), dim=1)


def _scores(search: Search, query: Tensor, key: Tensor, index: Tensor) -> Tensor:
    """The (patch) scores (B, Hq, Wq) of one key index per query pixel, by the search's backend."""
    args = (query, key, index.contiguous(), 1, search.patch_size)
    if search.search == "torch":
        return reference.evaluate_candidates(*args)[1][:, 0]
    return ops._kernels(search.search).evaluate_candidates(*args)[1][:, 0]


def _channels_last(t: Tensor) -> Tensor:
    return ops._as_float(t.detach()).contiguous(memory_format=torch.channels_last)


def carry(
    query: Tensor,
    previous_query: Tensor,
    key: Tensor,
    previous_nnf: Tensor,
    previous_motion: Tensor | None = None,
    *,
    iters: int = 1,
    rounds: int = 2,
    motion_iters: int = 2,
    motion_radius: int | None = None,
    fresh: int = 4,
    hysteresis: float = 0.0,
    patch_size: int = 1,
    seed: int = 0,
    backend: str | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Frame t's matches from frame t-1's, as ``(nnf, scores, motion)``.

    ``query`` and ``previous_query`` (B, C, Hq, Wq): frames t and t-1's features; ``key``
    (B, C, Hk, Wk); ``previous_nnf`` int32 (B, K, Hq, Wq): frame t-1's matches in ``key``;
    ``previous_motion`` int32 (B, M, Hq, Wq) or None: frame t-1's ``motion`` (flat indices into
    frame t-2), tried as constant velocity. Returns ``nnf`` and ``scores`` (B, K, Hq, Wq) with
    the search ops' contract (distinct indices, best first) and ``motion`` int32 (B, 2, Hq, Wq):
    for every pixel of frame t the flat indices of the two frame t-1 pixels most like it, best
    first (where it was). Not differentiable.

    * ``motion_iters``: ``patch_match`` iterations of the motion search; ``motion_radius`` bounds
      it to that many pixels around the zero and the constant-velocity motion (None: no bound).
    * ``fresh``: global candidates per pixel from exact kNN at a coarse level (0: none).
    * ``iters``, ``rounds``: ``patch_match`` iterations from the candidates, then rounds of
      ``share_matches`` as ``match`` runs them.
    * ``hysteresis``: a margin m >= 0 on the top-1 only (the match a warp uses): where the
      carried best (``previous_nnf[:, 0]`` moved by ``motion[:, 0]``) scores at most m below the
      best match found, it is entry 0, and entries 1 .. K-1 are the rest of the list best first
      (without it). Every score stays the true score of its index, so entry 0 may score up to m
      below entry 1. 0 (the default): the list of the search, best first.
    * ``patch_size``, ``seed``, ``backend``: as for ``match`` (every search uses them).
    """
    _check_pair(query, key)
    _check_frames(query, previous_query)
    _check_index_map("previous_nnf", previous_nnf, query, key.shape[2] * key.shape[3])
    if previous_motion is not None:
        _check_index_map("previous_motion", previous_motion, query, query.shape[2] * query.shape[3])
    k = previous_nnf.shape[1]
    _check_options(key, k, iters, rounds, motion_iters, motion_radius, fresh, hysteresis, patch_size, seed)
    search = _search(patch_size, seed, backend, query.device)
    ops._check_cuda_k(k, search.search)
    query, previous_query, key = (_channels_last(t) for t in (query, previous_query, key))
    return _carry(
        search, query, previous_query, key, previous_nnf, previous_motion,
        iters, rounds, motion_iters, motion_radius, fresh, float(hysteresis),
    )[:3]  # fmt: skip


def _carry(
    search: Search,
    query: Tensor,
    previous_query: Tensor,
    key: Tensor,
    previous_nnf: Tensor,
    previous_motion: Tensor | None,
    iters: int,
    rounds: int,
    motion_iters: int,
    motion_radius: int | None,
    fresh: int,
    hysteresis: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``carry`` past its checks, on channels-last float features; also the score of every
    pixel's carried best match (B, Hq, Wq), before any search: what a scene cut collapses."""
    k = previous_nnf.shape[1]
    moved, motion = _moved(
        search, query, previous_query, previous_nnf, previous_motion, motion_iters, motion_radius
    )
    candidates = [moved]
    carried_best = _scores(search, query, key, candidates[0][:, :1])
    if fresh:
        level = _fresh_level(key.shape[2:])
        coarse_query, coarse_key = (_pooled(t, level) for t in (query, key))
        coarse, _ = ops.exact_knn(coarse_query, coarse_key, fresh, backend=search.others)
        candidates.append(
            ops.nnf_upsample(
                coarse, key.shape[2:], query.shape[2:], window=1, dilation=1,
                coarse_key_size=coarse_key.shape[2:], backend=search.others,
            )  # fmt: skip
        )
    init = torch.cat(candidates, 1).contiguous()
    nnf, scores = search.patch_match(query, key, k, iters, init, search.patch_size)
    nnf, scores = share_rounds(search, query, key, nnf, scores, rounds, None)
    if hysteresis:
        nnf, scores = _hold(nnf, scores, candidates[0][:, :1], carried_best, hysteresis)
    return nnf, scores, motion, carried_best


def _hold(
    nnf: Tensor, scores: Tensor, carried: Tensor, carried_score: Tensor, margin: float
) -> tuple[Tensor, Tensor]:
    """The list (B, K, H, W) with the carried best ``carried`` (B, 1, H, W) as entry 0 where it
    scores at most ``margin`` below the best; the rest keep their order, without it (or without
    the last entry where the list lacks it). Entry by entry: reductions across the K planes of a
    (B, K, H, W) map are several times slower on CPU than these elementwise steps."""
    k = nnf.shape[1]
    carried_score = carried_score[:, None].to(scores.dtype)
    # above[j]: whether the carried match is among entries 0 .. j-1; where it is listed, the
    # score the search gave it (the same number as its entry, not a recomputed one).
    seen, above = torch.zeros_like(carried, dtype=torch.bool), []
    for j in range(k):
        above.append(seen)
        here = nnf[:, j : j + 1] == carried
        carried_score = torch.where(here, scores[:, j : j + 1], carried_score)
        seen = seen | here
    hold = (scores[:, :1] - carried_score <= margin) & (nnf[:, :1] != carried)
    nnf_planes = [torch.where(hold, carried, nnf[:, :1])]
    score_planes = [torch.where(hold, carried_score, scores[:, :1])]
    for j in range(1, k):  # held: entries before the carried match's own move down one
        down = hold & ~above[j]
        nnf_planes.append(torch.where(down, nnf[:, j - 1 : j], nnf[:, j : j + 1]))
        score_planes.append(torch.where(down, scores[:, j - 1 : j], scores[:, j : j + 1]))
    return torch.cat(nnf_planes, 1), torch.cat(score_planes, 1)


def moved_matches(
    query: Tensor,
    previous_query: Tensor,
    previous_nnf: Tensor,
    previous_motion: Tensor | None = None,
    *,
    motion_iters: int = 2,
    motion_radius: int | None = None,
    patch_size: int = 1,
    seed: int = 0,
    backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """Frame t-1's matches moved to frame t, as candidates for frame t's search: ``(candidates,
    motion)``, int32 (B, 2 * K, Hq, Wq) (the K matches of each of the two frame t-1 pixels most
    like each pixel of frame t) and the ``motion`` ``carry`` returns. ``previous_nnf`` (B, K, Hq,
    Wq) may index any key map (its values are only moved). A model that searches its own way
    (``models.video``) starts from these; ``carry`` is this, then the search."""
    _check_frames(query, previous_query)
    _check_index_map("previous_nnf", previous_nnf, query, ops.MAX_STEP)
    if previous_motion is not None:
        _check_index_map("previous_motion", previous_motion, query, query.shape[2] * query.shape[3])
    _check_int("motion_iters", motion_iters, 0, ops.MAX_ITERS)
    if motion_radius is not None:
        _check_int("motion_radius", motion_radius, 0, ops.MAX_STEP)
    _check_patch_size(patch_size)
    _check_int("seed", seed, 0, ops.MAX_SEED)
    search = _search(patch_size, seed, backend, query.device)
    query, previous_query = (_channels_last(t) for t in (query, previous_query))
    return _moved(search, query, previous_query, previous_nnf, previous_motion, motion_iters, motion_radius)


def _moved(
    search: Search,
    query: Tensor,
    previous_query: Tensor,
    previous_nnf: Tensor,
    previous_motion: Tensor | None,
    motion_iters: int,
    motion_radius: int | None,
) -> tuple[Tensor, Tensor]:
    """``moved_matches`` past its checks."""
    motion_init = _identity(query)
    if previous_motion is not None:
        motion_init = torch.cat([motion_init, previous_motion], 1)
    motion, _ = search.patch_match(
        query, previous_query, MOTION_MATCHES, motion_iters, motion_init.contiguous(),
        search.patch_size, motion_radius,
    )  # fmt: skip
    return neighbour_matches(previous_nnf, motion), motion


class Tracker:
    """Matches of a query video against one key map, fed one frame at a time.

    >>> import torch, cocosnet_ops
    >>> key = torch.nn.functional.normalize(torch.randn(1, 8, 24, 24), dim=1)
    >>> tracker = cocosnet_ops.video.Tracker(key, k=4)
    >>> frames = torch.nn.functional.normalize(torch.randn(3, 1, 8, 16, 16), dim=2)
    >>> [tuple(tracker.step(frame)[0].shape) for frame in frames]
    [(1, 4, 16, 16), (1, 4, 16, 16), (1, 4, 16, 16)]

    ``key`` (B, C, Hk, Wk): a batch of B independent videos, each matched against its own key
    map. ``step(query)`` takes frame t's features (B, C, Hq, Wq), the same size every frame,
    and returns its ``(nnf, scores)`` (B, k, Hq, Wq), the contract of the search ops. The first
    frame, and every batch item whose carried best matches score on average below ``cut_ratio``
    times its previous frame's best matches (a scene cut), get the full search ``match(query,
    key, k, patch_size=, seed=, backend=)``; every other item ``carry`` (see it for ``iters``,
    ``rounds``, ``motion_iters``, ``motion_radius`` and ``fresh``). ``cuts`` holds which items
    the last step searched in full (bool (B,)). ``hysteresis``: ``carry``'s temporal margin on
    the top-1 (0: off). ``reset()`` starts a new video.
    """

    def __init__(
        self,
        key: Tensor,
        k: int = 16,
        *,
        iters: int = 1,
        rounds: int = 2,
        motion_iters: int = 2,
        motion_radius: int | None = None,
        fresh: int = 4,
        cut_ratio: float = 0.7,
        hysteresis: float = 0.0,
        patch_size: int = 1,
        seed: int = 0,
        backend: str | None = None,
    ) -> None:
        _check_features("key", key)
        _check_options(
            key, k, iters, rounds, motion_iters, motion_radius, fresh, hysteresis, patch_size, seed
        )
        if isinstance(cut_ratio, bool) or not isinstance(cut_ratio, (int, float)):
            raise TypeError(f"cut_ratio: expected a float, got {_type_name(cut_ratio)}")
        if not 0.0 <= cut_ratio <= 1.0:
            raise ValueError(f"cut_ratio: expected a number in [0, 1], got {cut_ratio}")
        self.search = _search(patch_size, seed, backend, key.device)
        ops._check_cuda_k(k, self.search.search)
        self.key, self.k, self.backend = key, k, backend
        self.iters, self.rounds, self.fresh = iters, rounds, fresh
        self.motion_iters, self.motion_radius = motion_iters, motion_radius
        self.cut_ratio, self.patch_size, self.seed = float(cut_ratio), patch_size, seed
        self.hysteresis = float(hysteresis)
        self._key = _channels_last(key)
        self.reset()

    def reset(self) -> None:
        """Forget the frames seen: the next ``step`` searches in full."""
        self.previous_query: Tensor | None = None
        self.nnf: Tensor | None = None
        self.scores: Tensor | None = None
        self.motion: Tensor | None = None
        self.cuts: Tensor | None = None

    def step(self, query: Tensor) -> tuple[Tensor, Tensor]:
        """Frame t's ``(nnf, scores)``; see the class."""
        _check_pair(query, self.key)
        if self.previous_query is not None and query.shape != self.previous_query.shape:
            raise ValueError(
                f"query: expected shape {tuple(self.previous_query.shape)} like the previous frame, "
                f"got {tuple(query.shape)} (reset() starts a new video)"
            )
        query = _channels_last(query)
        if self.previous_query is None:
            nnf, scores = self._full_search(query, self._key)
            cuts = torch.ones(query.shape[0], dtype=torch.bool, device=query.device)
            motion = _still(query)
        else:
            nnf, scores, motion, carried_best = _carry(
                self.search, query, self.previous_query, self._key, self.nnf, self.motion,
                self.iters, self.rounds, self.motion_iters, self.motion_radius, self.fresh,
                self.hysteresis,
            )  # fmt: skip
            # A scene cut: the carried matches score far below what they scored in frame t-1.
            cuts = carried_best.mean((1, 2)) < self.cut_ratio * self.scores[:, 0].mean((1, 2))
            if cuts.any():
                items = cuts.nonzero()[:, 0]
                full_nnf, full_scores = self._full_search(query[items], self._key[items])
                nnf, scores = nnf.index_copy(0, items, full_nnf), scores.index_copy(0, items, full_scores)
                motion = motion.index_copy(0, items, _still(query[items]))
        self.previous_query, self.nnf, self.scores, self.motion, self.cuts = query, nnf, scores, motion, cuts
        return nnf, scores

    def _full_search(self, query: Tensor, key: Tensor) -> tuple[Tensor, Tensor]:
        return match(query, key, self.k, patch_size=self.patch_size, seed=self.seed, backend=self.backend)


def track(
    query_frames: Tensor | Sequence[Tensor], key: Tensor, k: int = 16, **options: object
) -> tuple[Tensor, Tensor, Tensor]:
    """A whole clip through a ``Tracker``: ``(nnf, scores, cuts)``.

    ``query_frames``: (T, B, C, Hq, Wq) features, or a sequence of T (B, C, Hq, Wq) frames;
    ``key`` (B, C, Hk, Wk); ``options``: ``Tracker``'s. Returns ``nnf`` int32 and ``scores``
    (T, B, k, Hq, Wq), and ``cuts`` bool (T, B): where the full search ran (the first frame and
    scene cuts)."""
    if isinstance(query_frames, Tensor):
        if query_frames.dim() != 5:
            raise ValueError(
                f"query_frames: expected a 5-D tensor (T, B, C, H, W) or a sequence of 4-D frames, "
                f"got shape {tuple(query_frames.shape)}"
            )
        frames = list(query_frames.unbind(0))
    elif isinstance(query_frames, Sequence) and not isinstance(query_frames, (str, bytes)):
        frames = list(query_frames)
    else:
        raise TypeError(
            f"query_frames: expected a tensor or a sequence of tensors, got {_type_name(query_frames)}"
        )
    if not frames:
        raise ValueError("query_frames: expected at least one frame, got none")
    tracker = Tracker(key, k, **options)
    results = [(*tracker.step(frame), tracker.cuts) for frame in frames]
    return tuple(torch.stack(parts) for parts in zip(*results, strict=True))
