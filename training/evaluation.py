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


@dataclass
class HeldOutScores:
    """Means over the held-out pixels: ``warp_l1`` of the finest warp against the target photo (all
    pixels, colours in [-1, 1]); ``epe_softmax``/``epe_best``: distance in pixels from the true
    exemplar coordinate to the softmax-weighted mean of the K matched coordinates / to the best
    one, over the valid pixels (NaN without ``exemplar_coords``). ``epe_levels``: the best match's
    error at every level, coarsest first, in full-resolution pixels, over the blocks of valid pixels
    (where a level loses what a coarser one found). ``epe_identity``: the error of matching every
    pixel to the same position in the exemplar, the figure a correspondence has to beat.
    ``contrast_levels``: per level, the mean over all pixels of the best minus the worst of the K
    candidates' scores (cosine similarities); near 0 when the features no longer tell the candidates
    apart, so that the warp is their plain average."""

    warp_l1: float
    epe_softmax: float
    epe_best: float
    samples: int
    epe_levels: tuple[float, ...] = ()
    epe_identity: float = float("nan")
    contrast_levels: tuple[float, ...] = ()


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
    coords, scores = candidate_scores(translation, level)
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
    l1_sum = epe_soft_sum = epe_best_sum = valid_sum = identity_sum = 0.0
    pixels = samples = 0
    level_sums: list[list[float]] = []
    contrast_sums: list[float] = []
    try:
        for batch in batches:
            inputs = (batch[k].to(device) for k in ("label", "exemplar", "exemplar_label"))
            translation = model.correspondence(*inputs)
            warp = translation.warps[-1]
            l1_sum += float((warp - batch["image"].to(device)).abs().mean(1).sum())
            pixels += warp.shape[0] * warp.shape[-2] * warp.shape[-1]
            samples += warp.shape[0]
            for level in range(len(translation.nnfs)):
                scores = candidate_scores(translation, level)[1].float()
                contrast = float((scores.amax(1) - scores.amin(1)).mean()) * warp.shape[0]
                if len(contrast_sums) <= level:
                    contrast_sums.append(0.0)
                contrast_sums[level] += contrast
            if "exemplar_coords" in batch:
                truth = batch["exemplar_coords"].to(device)
                valid = batch["valid"].to(device)[:, 0]
                weighted, best = matched_coordinates(translation, model.correspondence.temperature)
                epe_soft_sum += float(((weighted - truth).norm(dim=1) * valid).sum())
                epe_best_sum += float(((best - truth).norm(dim=1) * valid).sum())
                valid_sum += float(valid.sum())
                height, width = truth.shape[-2:]
                identity = torch.stack(torch.meshgrid(
                    torch.arange(width, device=device), torch.arange(height, device=device), indexing="xy"))
                identity_sum += float(((identity - truth).norm(dim=1) * valid).sum())
                temperature = model.correspondence.temperature
                for level in range(len(translation.nnfs)):
                    if len(level_sums) <= level:
                        level_sums.append([0.0, 0.0])
                    error, count = _level_error(translation, temperature, level, truth, valid)
                    level_sums[level][0] += error
                    level_sums[level][1] += count
    finally:
        model.train(was_training)
    nan = float("nan")
    return HeldOutScores(
        warp_l1=l1_sum / max(pixels, 1),
        epe_softmax=epe_soft_sum / valid_sum if valid_sum else nan,
        epe_best=epe_best_sum / valid_sum if valid_sum else nan,
        samples=samples,
        epe_levels=tuple(error / count if count else nan for error, count in level_sums),
        epe_identity=identity_sum / valid_sum if valid_sum else nan,
        contrast_levels=tuple(total / max(samples, 1) for total in contrast_sums),
    )


def _level_error(
    translation: Translation, temperature: float, level: int, truth: Tensor, valid: Tensor
) -> tuple[float, float]:
    """Summed full-resolution end-point error of ``level``'s best match over the blocks whose pixels
    are all valid (the truth averaged over the block, in that level's pixels), and their count."""
    _, best = matched_coordinates(translation, temperature, level)
    scale = truth.shape[-1] // best.shape[-1]
    block_truth = (F.avg_pool2d(truth, scale) + 0.5) / scale - 0.5
    block_valid = (F.avg_pool2d(valid[:, None], scale)[:, 0] == 1).float()
    error = (best - block_truth).norm(dim=1) * scale
    return float((error * block_valid).sum()), float(block_valid.sum())
