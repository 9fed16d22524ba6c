"""Hierarchical correspondence: a dense warp at 1/8, then GRU-assisted PatchMatch up to full size.

Level 0 (1/8 of the image) warps the exemplar with the exact softmax over every pair
(``dense_warp``), plus the cycle warp back onto the exemplar for its loss, and takes its top-K
matches with ``exact_knn``. Each finer level (1/4, 1/2, 1/1) spreads the coarser level's best
matches over a window (``nnf_upsample``), improves them with ``patch_match``, and lets a ConvGRU
(one module for all levels) move the K candidates by sub-pixel amounts; the exemplar is then
warped with ``bilinear_weighted_gather`` at the moved coordinates, so the GRU is trained by the
warp losses. Query (label) and key (exemplar) maps may differ in size.

Two orders of search and refinement (``gru_mode``): ``"interleaved"``, the paper's, runs the GRU
inside the PatchMatch loop: each of the last ``gru_iters`` PatchMatch iterations is one
``patch_match`` step from the current matches followed by one GRU step, and the next step starts
from the moved matches rounded to the nearest key pixels. ``"after"`` runs all PatchMatch
iterations first, then the ``gru_iters`` GRU steps on its result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import cocosnet_ops
from cocosnet_ops import reference
from cocosnet_ops.nnf import coords_to_nnf, nnf_to_coords

from .alignment import NUM_LEVELS, AlignedFeatures, DomainAlignment
from .gru import UpdateBlock

GRU_MODES = ("interleaved", "after")

# The public implementation's PatchMatch is pure PyTorch; its mode runs the "torch" backend.
REFERENCE_BACKEND = "torch"


def query_positions_in_key(
    query_size: tuple[int, int], key_size: tuple[int, int], device: torch.device
) -> tuple[Tensor, Tensor]:
    """The key-map coordinates (x (1, 1, 1, Wq), y (1, 1, Hq, 1)) of the query pixel centres when
    the two maps cover the same image extent: the zero-offset position of every query pixel."""
    (hq, wq), (hk, wk) = query_size, key_size
    x = (torch.arange(wq, device=device, dtype=torch.float32) + 0.5) * (wk / wq) - 0.5
    y = (torch.arange(hq, device=device, dtype=torch.float32) + 0.5) * (hk / hq) - 0.5
    return x.view(1, 1, 1, wq), y.view(1, 1, hq, 1)


@dataclass
class CorrespondenceOutput:
    """Everything the correspondence computes for one batch, coarsest level first.

    ``warps``: the exemplar warped to the label at 1/8, 1/4, 1/2, 1/1 (B, 3, H/s, W/s).
    ``cycle_warp``: the level-0 warp warped back onto the exemplar (B, 3, He/8, We/8), or None
    when not requested. ``nnfs``: int32 (B, K, H/s, W/s) flat exemplar indices per level
    (``exact_knn`` at the densely warped levels, ``patch_match`` above). ``coords``: the
    GRU-refined (x, y) coordinates (B, K, H/s, W/s, 2) per level, None at the dense levels and
    without the GRU. ``inits``: per level the candidates the search started from (the windows
    ``nnf_upsample`` built around the coarser level's matches), None at the dense levels.
    """

    warps: list[Tensor]
    cycle_warp: Tensor | None
    nnfs: list[Tensor]
    coords: list[Tensor | None]
    features: AlignedFeatures
    inits: list[Tensor | None]


class Correspondence(nn.Module):
    """Domain alignment plus the hierarchical GRU-assisted PatchMatch of CoCosNet v2.

    ``reference_mode`` reproduces what the public implementation does, for comparison: the
    pure-PyTorch backend, propagation without random search, only the best coarse match
    upsampled, and no GRU (the public GRU's output never reaches the warp), so the warps come
    from ``weighted_gather`` on the integer matches.

    ``gru_mode``: ``"interleaved"`` (the paper's order, needs ``gru_iters <= iters``) or
    ``"after"`` (search, then refine); see the module docstring.

    ``window`` x ``window`` candidates ``dilation`` apart around each of the coarser level's
    best ``upsample_matches`` matches start each finer level's search (``nnf_upsample``);
    ``search_radius`` (None: unbounded) keeps the search within that many key pixels of them
    (``patch_match``'s ``max_radius``), so a finer level refines the coarser one instead of
    searching the whole map again. ``dense_levels``: see the property.
    """

    def __init__(
        self,
        label_nc: int,
        nef: int = 32,
        match_nc: int = 32,
        norm: str = "pono",
        spade_nc: int = 128,
        k: int = 16,
        iters: int = 5,
        patch_size: int = 1,
        temperature: float = 0.01,
        upsample_matches: int = 4,
        window: int = 4,
        dilation: int = 2,
        gru_iters: int = 3,
        gru_hidden_nc: int = 32,
        gru_input_nc: int = 64,
        max_delta: float = 1.0,
        reference_mode: bool = False,
        gru_mode: str = "interleaved",
        search_radius: int | None = None,
        dense_levels: int = 1,
        matching_levels: str = "own",
    ) -> None:
        super().__init__()
        if not 1 <= upsample_matches <= k:
            raise ValueError(f"upsample_matches: expected an int in [1, k={k}], got {upsample_matches}")
        if gru_mode not in GRU_MODES:
            raise ValueError(f"gru_mode: expected one of {GRU_MODES}, got {gru_mode!r}")
        if gru_mode == "interleaved" and not reference_mode and gru_iters > iters:
            raise ValueError(
                f"gru_iters: the interleaved GRU follows PatchMatch iterations, so expected at most "
                f"iters={iters}, got {gru_iters}"
            )
        if search_radius is not None and search_radius < 0:
            raise ValueError(f"search_radius: expected None or an int >= 0, got {search_radius}")
        self.alignment = DomainAlignment(
            label_nc, nef, match_nc, norm, spade_nc, matching_levels=matching_levels
        )
        self.search_radius = search_radius
        self.dense_levels = dense_levels  # checked by the setter
        self.k = k
        self.iters = iters
        self.patch_size = patch_size
        self.temperature = temperature
        self.window = window
        self.dilation = dilation
        self.reference_mode = reference_mode
        self.upsample_matches = 1 if reference_mode else upsample_matches
        self.random_search = not reference_mode
        self.backend = REFERENCE_BACKEND if reference_mode else None
        self.gru_iters = 0 if reference_mode else gru_iters
        self.gru_mode = gru_mode
        # Without GRU steps the update block would hold parameters that never get a gradient.
        self.update = (
            UpdateBlock(k, match_nc, gru_hidden_nc, gru_input_nc, max_delta=max_delta)
            if self.gru_iters > 0
            else None
        )

    @property
    def dense_levels(self) -> int:
        """How many of the coarsest levels warp by the exact softmax over every pair (``dense_warp``,
        top-K by ``exact_knn``): 1, the paper's (only 1/8), up to all of them (a dense warm-up)."""
        return self._dense_levels

    @dense_levels.setter
    def dense_levels(self, levels: int) -> None:
        if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= NUM_LEVELS:
            raise ValueError(f"dense_levels: expected an int in [1, {NUM_LEVELS}], got {levels!r}")
        self._dense_levels = levels

    def _seed(self, level: int) -> int | Tensor:
        """PatchMatch's random-search seed: fresh draws while training (from torch's generator, so
        seeded runs repeat), fixed per level in evaluation so inference is deterministic. The draw
        stays a tensor that ``patch_match`` reads when it runs: under torch.compile it is part of
        the graph (converting it to an int here would break the graph)."""
        if self.training:
            return torch.randint(0, 2**31 - 1, ())
        return level

    def forward(
        self,
        label: Tensor,
        exemplar: Tensor,
        exemplar_label: Tensor,
        cycle: bool | None = None,
        carried: Callable[[int, Tensor], Tensor] | None = None,
    ) -> CorrespondenceOutput:
        """Warps of ``exemplar`` (B, 3, He, We) onto ``label`` (B, label_nc, H, W), sides divisible by 8.

        ``cycle`` (default: in training mode) also returns the level-0 cycle warp. ``carried``
        (video): called with each searched level and its query features, returns more candidates
        (int32 (B, M, Hq, Wq) flat key indices) for that level's search, beside the upsampled ones
        (e.g. the previous frame's matches moved: ``models.video``).
        """
        features = self.alignment(label, exemplar, exemplar_label)
        with_cycle = self.training if cycle is None else cycle
        query, key = features.query[0], features.key[0]
        value = F.avg_pool2d(exemplar, 2 ** (NUM_LEVELS - 1)).to(key.dtype)
        cycle_warp = None
        if with_cycle:
            warp, cycle_warp = cocosnet_ops.dense_warp(
                query, key, value, self.temperature, cycle=True, backend=self.backend
            )
        else:
            warp = cocosnet_ops.dense_warp(query, key, value, self.temperature, backend=self.backend)
        nnf, _ = cocosnet_ops.exact_knn(query.detach(), key.detach(), self.k, backend=self.backend)
        warps, nnfs, all_coords, inits = [warp], [nnf], [None], [None]
        matches = nnf
        for level in range(1, NUM_LEVELS):
            coarse_key_size = tuple(key.shape[-2:])
            query, key = features.query[level], features.key[level]
            scale = 2 ** (NUM_LEVELS - 1 - level)
            value = (F.avg_pool2d(exemplar, scale) if scale > 1 else exemplar).to(key.dtype)
            if level < self.dense_levels:
                warp = cocosnet_ops.dense_warp(query, key, value, self.temperature, backend=self.backend)
                nnf, _ = cocosnet_ops.exact_knn(query.detach(), key.detach(), self.k, backend=self.backend)
                warps.append(warp)
                nnfs.append(nnf)
                all_coords.append(None)
                inits.append(None)
                matches = nnf
                continue
            init = cocosnet_ops.nnf_upsample(
                matches[:, : self.upsample_matches].contiguous(),
                tuple(key.shape[-2:]),
                tuple(query.shape[-2:]),
                window=self.window,
                dilation=self.dilation,
                coarse_key_size=coarse_key_size,
                backend=self.backend,
            )
            if carried is not None:
                init = torch.cat([init, carried(level, query)], 1)
            if self.update is None:
                nnf, _ = self._search(query, key, init, self.iters, None, self._seed(level))
                warp = cocosnet_ops.weighted_gather(
                    query, key, value, nnf, self.temperature, backend=self.backend
                )
                coords, matches = None, nnf
            else:
                if self.gru_mode == "interleaved":
                    nnf, coords = self._search_interleaved(query, key, init, self._seed(level))
                else:
                    nnf, scores = self._search(query, key, init, self.iters, None, self._seed(level))
                    coords = self._refine(query, key, nnf, scores)
                warp = cocosnet_ops.bilinear_weighted_gather(query, key, value, coords, self.temperature)
                matches = coords_to_nnf(coords.detach(), key_size=tuple(key.shape[-2:]))
            warps.append(warp)
            nnfs.append(nnf)
            all_coords.append(coords)
            inits.append(init)
        return CorrespondenceOutput(warps, cycle_warp, nnfs, all_coords, features, inits)

    def _search(
        self, query: Tensor, key: Tensor, init: Tensor, iters: int, jump: list[int] | None, seed: int
    ) -> tuple[Tensor, Tensor]:
        bound = {} if self.search_radius is None else {"max_radius": self.search_radius}
        return cocosnet_ops.patch_match(
            query.detach(),
            key.detach(),
            k=self.k,
            iters=iters,
            init=init,
            patch_size=self.patch_size,
            jump=jump,
            random_search=self.random_search,
            seed=seed,
            backend=self.backend,
            **bound,
        )

    def _search_interleaved(
        self, query: Tensor, key: Tensor, init: Tensor, seed: int
    ) -> tuple[Tensor, Tensor]:
        """PatchMatch with a GRU step after each of its last ``gru_iters`` iterations; returns the
        last step's matches (B, K, Hq, Wq) and the GRU-moved coordinates (B, K, Hq, Wq, 2)."""
        assert self.update is not None
        key_size = tuple(key.shape[-2:])
        hk, wk = key_size
        base_x, base_y = query_positions_in_key(tuple(query.shape[-2:]), key_size, query.device)
        # The jump-flood schedule of one ``iters``-iteration search, spread over the steps.
        jumps = reference.default_jumps(query.shape[-2], query.shape[-1], self.iters)
        plain = self.iters - self.gru_iters
        matches = init
        if plain > 0:
            matches, _ = self._search(query, key, init, plain, jumps[:plain], seed)
        hidden = None
        for step in range(self.gru_iters):
            # Each single-iteration call draws its own random-search offsets.
            step_seed = (seed + plain + step) % 2**32
            nnf, scores = self._search(query, key, matches, 1, [jumps[plain + step]], step_seed)
            if hidden is None:
                matched = cocosnet_ops.weighted_gather(query, key, key, nnf, self.temperature)
                hidden = self.update.initial_state(query, matched)
            coords = nnf_to_coords(nnf, key_size)
            offsets = torch.cat([(coords[..., 0] - base_x) / wk, (coords[..., 1] - base_y) / hk], dim=1)
            hidden, delta = self.update(hidden, scores.float().to(hidden.dtype), offsets.to(hidden.dtype))
            coords = coords + delta.float()
            matches = coords_to_nnf(coords.detach(), key_size)
        return nnf, coords

    def _refine(self, query: Tensor, key: Tensor, nnf: Tensor, scores: Tensor) -> Tensor:
        """GRU iterations moving the K candidates of every pixel; returns (B, K, Hq, Wq, 2) coordinates."""
        assert self.update is not None
        key_size = tuple(key.shape[-2:])
        hk, wk = key_size
        base_x, base_y = query_positions_in_key(tuple(query.shape[-2:]), key_size, query.device)
        matched = cocosnet_ops.weighted_gather(query, key, key, nnf, self.temperature)
        hidden = self.update.initial_state(query, matched)
        coords = nnf_to_coords(nnf, key_size)
        scores = scores.float()
        for step in range(self.gru_iters):
            # Offsets in units of the key map's extent, so the one GRU serves every level.
            offsets = torch.cat([(coords[..., 0] - base_x) / wk, (coords[..., 1] - base_y) / hk], dim=1)
            hidden, delta = self.update(hidden, scores.to(hidden.dtype), offsets.to(hidden.dtype))
            coords = coords + delta.float()
            if step + 1 < self.gru_iters:
                # The same patch scores patch_match gave at the integer matches, now where the GRU moved them.
                scores = cocosnet_ops.bilinear_scores(query, key, coords, self.patch_size)
        return coords
