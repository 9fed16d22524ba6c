"""Held-out measures of the correspondence: warp L1 and, where the truth is known, end-point error.

The synthetic dataset knows, for every target pixel, the exemplar pixel showing the same surface
point (``exemplar_coords``, with ``valid`` where it is visible in both), so the matches can be
scored directly and not only through the warped colours.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

import cocosnet_ops
from cocosnet_ops.nnf import nnf_to_coords
from models import CoCosNet, Translation
from models.losses import level_truth


@dataclass
class HeldOutScores:
    """Means over the held-out pixels: ``warp_l1`` of the finest warp against the target photo (all
    pixels, colours in [-1, 1]); ``epe_softmax``/``epe_best``: distance in pixels from the true
    exemplar coordinate to the softmax-weighted mean of the K matched coordinates / to the best
    one, over the valid pixels (visible in both images; NaN without ``exemplar_coords``).

    Per level, coarsest first, over the same pixels at every level (every valid one), in
    full-resolution pixels, each pixel placed by its block's match at that level plus its offset
    inside the block (how ``nnf_upsample`` carries a match to the next level):
    ``epe_levels``, the error of the best match, so that a level that refines the coarser one
    has a lower error; ``oracle_levels``, the error of the best candidate the level's search
    started from (the window ``nnf_upsample`` built from the coarser level's matches; NaN at the
    densely warped levels), so that what the window allows and what the features pick are told
    apart; ``window_share_levels``, the share of the final K candidates that are window candidates
    (1: the search kept to the window); ``contrast_levels``, the best minus the worst of the K
    candidates' scores (cosine similarities), near 0 when the features no longer tell the
    candidates apart, so that the warp is their plain average (over all pixels without the truth).
    ``epe_block_levels``: the best match's error over only the blocks of each level whose pixels
    are all valid, against the block's mean true point (coarse levels are then scored on the
    interiors of the figures only, so the levels are not compared on the same pixels).
    ``epe_identity``: the error of matching every pixel to the same position in the exemplar, the
    figure a correspondence has to beat."""

    warp_l1: float
    epe_softmax: float
    epe_best: float
    samples: int
    epe_levels: tuple[float, ...] = ()
    epe_identity: float = float("nan")
    contrast_levels: tuple[float, ...] = ()
    oracle_levels: tuple[float, ...] = ()
    window_share_levels: tuple[float, ...] = ()
    epe_block_levels: tuple[float, ...] = ()


def candidate_scores(translation: Translation, level: int = -1) -> tuple[Tensor, Tensor]:
    """The K candidates' (x, y) exemplar coordinates (B, K, H, W, 2) at ``level`` (GRU-moved where
    the GRU ran, else the NNF's pixels) and their scores (B, K, H, W) from one ``bilinear_scores``."""
    query, key = translation.features.query[level], translation.features.key[level]
    coords = translation.coords[level]
    if coords is None:
        coords = nnf_to_coords(translation.nnfs[level], tuple(key.shape[-2:]))
    coords = coords.detach().float()
    return coords, cocosnet_ops.bilinear_scores(query.detach(), key.detach(), coords)


def matched_coordinates(
    translation: Translation, temperature: float, level: int = -1
) -> tuple[Tensor, Tensor]:
    """(softmax-weighted, best) matched exemplar coordinates (B, 2, H, W) at ``level``.

    The K candidates of :func:`candidate_scores`, weighted by the softmax of their scores over
    ``temperature``, the weights the warp gives them.
    """
    return _weighted_and_best(*candidate_scores(translation, level), temperature)


def _weighted_and_best(coords: Tensor, scores: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    weights = torch.softmax(scores.float() / temperature, dim=1)  # (B, K, H, W)
    weighted = (weights.unsqueeze(-1) * coords).sum(1)  # (B, H, W, 2)
    best_index = scores.argmax(1, keepdim=True)[..., None].expand(-1, 1, -1, -1, 2)
    best = torch.gather(coords, 1, best_index)[:, 0]
    return weighted.permute(0, 3, 1, 2), best.permute(0, 3, 1, 2)


@torch.no_grad()
def evaluate(
    model: CoCosNet, batches: Iterable[Mapping[str, Tensor]], device: torch.device | str = "cpu"
) -> HeldOutScores:
    """Scores of ``model`` (evaluation mode, restored afterwards) on ``batches`` of held-out items."""
    was_training = model.training
    model.eval()
    temperature = model.correspondence.temperature
    sums: dict[str, float] = {}

    def add(name: str, value: float) -> None:
        sums[name] = sums.get(name, 0.0) + value

    levels = 0
    try:
        for batch in batches:
            inputs = (batch[k].to(device) for k in ("label", "exemplar", "exemplar_label"))
            translation = model.correspondence(*inputs)
            levels = len(translation.nnfs)
            warp = translation.warps[-1]
            add("l1", float((warp - batch["image"].to(device)).abs().mean(1).sum()))
            add("pixels", warp.shape[0] * warp.shape[-2] * warp.shape[-1])
            add("samples", warp.shape[0])
            truth = batch["exemplar_coords"].to(device) if "exemplar_coords" in batch else None
            valid = batch["valid"].to(device)[:, 0] if truth is not None else None
            exemplar_size = tuple(batch["exemplar"].shape[-2:])
            if truth is not None:
                weighted, best = matched_coordinates(translation, temperature)
                add("epe_softmax", float(((weighted - truth).norm(dim=1) * valid).sum()))
                add("epe_best", float(((best - truth).norm(dim=1) * valid).sum()))
                add("valid", float(valid.sum()))
                height, width = truth.shape[-2:]
                identity = torch.stack(torch.meshgrid(
                    torch.arange(width, device=device), torch.arange(height, device=device), indexing="xy"))
                add("identity", float(((identity - truth).norm(dim=1) * valid).sum()))
            for level in range(levels):
                coords, scores = candidate_scores(translation, level)
                contrast = scores.float().amax(1) - scores.float().amin(1)  # (B, h, w)
                if truth is None:
                    add(f"contrast{level}", float(contrast.mean(dim=(1, 2)).sum()))
                    add(f"contrast_count{level}", contrast.shape[0])
                    continue
                key_size = tuple(translation.features.key[level].shape[-2:])
                _, best = _weighted_and_best(coords, scores, temperature)  # (B, 2, h, w)
                placed = place_pixels(best[:, None], key_size, exemplar_size, truth.shape[-2:])[:, 0]
                add(f"epe{level}", float(((placed - truth).norm(dim=1) * valid).sum()))
                per_pixel = F.interpolate(contrast[:, None], size=truth.shape[-2:], mode="nearest")[:, 0]
                add(f"contrast{level}", float((per_pixel * valid).sum()))
                add(f"contrast_count{level}", float(valid.sum()))
                block_truth, block_valid = level_truth(
                    truth, valid[:, None], tuple(contrast.shape[-2:]), key_size, exemplar_size
                )
                px = exemplar_size[1] / key_size[1]  # full-resolution pixels per key pixel
                block_error = (best - block_truth).norm(dim=1) * block_valid
                add(f"block_epe{level}", float(block_error.sum()) * px)
                add(f"blocks{level}", float(block_valid.sum()))
                init = translation.inits[level]
                if init is None:
                    continue
                start = nnf_to_coords(init.clamp_min(0), key_size).permute(0, 1, 4, 2, 3)  # (B, M, 2, h, w)
                placed_starts = place_pixels(start, key_size, exemplar_size, truth.shape[-2:])
                distance = (placed_starts - truth[:, None]).norm(dim=2)
                absent = F.interpolate((init < 0).float(), size=truth.shape[-2:], mode="nearest") > 0
                oracle = distance.masked_fill(absent, float("inf")).amin(1)
                add(f"oracle{level}", float((oracle * valid).sum()))
                nnf = translation.nnfs[level]
                in_window = (nnf[:, :, None] == init[:, None]).any(2).float().mean(1, keepdim=True)
                share = F.interpolate(in_window, size=truth.shape[-2:], mode="nearest")[:, 0]
                add(f"share{level}", float((share * valid).sum()))
    finally:
        model.train(was_training)

    def mean(name: str, count: str) -> float:
        """NaN where nothing was measured (no truth, or no window at a dense level)."""
        return sums[name] / sums[count] if name in sums and sums.get(count) else float("nan")

    return HeldOutScores(
        warp_l1=mean("l1", "pixels"),
        epe_softmax=mean("epe_softmax", "valid"),
        epe_best=mean("epe_best", "valid"),
        samples=int(sums.get("samples", 0)),
        epe_levels=tuple(mean(f"epe{level}", "valid") for level in range(levels)),
        epe_identity=mean("identity", "valid"),
        contrast_levels=tuple(mean(f"contrast{level}", f"contrast_count{level}") for level in range(levels)),
        oracle_levels=tuple(mean(f"oracle{level}", "valid") for level in range(levels)),
        window_share_levels=tuple(mean(f"share{level}", "valid") for level in range(levels)),
        epe_block_levels=tuple(mean(f"block_epe{level}", f"blocks{level}") for level in range(levels)),
    )


def place_pixels(
    points: Tensor, key_size: tuple[int, int], exemplar_size: tuple[int, int], image_size: tuple[int, int]
) -> Tensor:
    """Where a level's matches put every full-resolution target pixel: ``points`` (B, M, 2, h, w)
    in the level's key pixels, one per block of target pixels, as exemplar pixels (B, M, 2, H, W),
    each pixel shifted from its block's point by its own offset from the block's centre (scaled
    to the exemplar), as ``nnf_upsample`` carries a match to the next level."""
    batch, count, _, h, w = points.shape
    height, width = image_size
    device = points.device
    scale = torch.tensor([exemplar_size[1] / key_size[1], exemplar_size[0] / key_size[0]], device=device)
    full = (points + 0.5) * scale.view(1, 1, 2, 1, 1) - 0.5
    full = F.interpolate(full.flatten(1, 2), size=(height, width), mode="nearest")
    full = full.view(batch, count, 2, height, width)
    y = torch.arange(height, device=device, dtype=torch.float32)
    x = torch.arange(width, device=device, dtype=torch.float32)
    centre_y = (torch.div(y, height // h, rounding_mode="floor") + 0.5) * (height // h) - 0.5
    centre_x = (torch.div(x, width // w, rounding_mode="floor") + 0.5) * (width // w) - 0.5
    ratio = torch.tensor([exemplar_size[1] / width, exemplar_size[0] / height], device=device)
    offset_x = (x - centre_x).view(1, -1).expand(height, -1)
    offset_y = (y - centre_y).view(-1, 1).expand(-1, width)
    offset = torch.stack([offset_x, offset_y])
    return full + (offset * ratio.view(2, 1, 1))[None, None]
