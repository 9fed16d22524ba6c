"""Held-out measures of the correspondence: warp L1 and, where the truth is known, end-point error.

The synthetic dataset knows, for every target pixel, the exemplar pixel showing the same surface
point (``exemplar_coords``, with ``valid`` where it is visible in both), so the matches can be
scored directly and not only through the warped colours.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

import cocosnet_ops
from cocosnet_ops.nnf import nnf_to_coords
from models import CoCosNet, Translation


@dataclass
class HeldOutScores:
    """Means over the held-out pixels: ``warp_l1`` of the finest warp against the target photo (all
    pixels, colours in [-1, 1]); ``epe_softmax``/``epe_best``: distance in pixels from the true
    exemplar coordinate to the softmax-weighted mean of the K matched coordinates / to the best
    one, over the valid pixels (NaN without ``exemplar_coords``)."""

    warp_l1: float
    epe_softmax: float
    epe_best: float
    samples: int


def matched_coordinates(
    translation: Translation, temperature: float, level: int = -1
) -> tuple[Tensor, Tensor]:
    """(softmax-weighted, best) matched exemplar coordinates (B, 2, H, W) at ``level``.

    The K candidates are the GRU-moved coordinates where the GRU ran, else the NNF's pixels; their
    weights are the softmax of their scores (one ``bilinear_scores`` call) over ``temperature``,
    the weights the warp gives them.
    """
    query, key = translation.features.query[level], translation.features.key[level]
    coords = translation.coords[level]
    if coords is None:
        coords = nnf_to_coords(translation.nnfs[level], tuple(key.shape[-2:]))
    coords = coords.detach().float()
    scores = cocosnet_ops.bilinear_scores(query.detach(), key.detach(), coords)
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
    l1_sum = epe_soft_sum = epe_best_sum = valid_sum = 0.0
    pixels = samples = 0
    try:
        for batch in batches:
            inputs = (batch[k].to(device) for k in ("label", "exemplar", "exemplar_label"))
            translation = model.correspondence(*inputs)
            warp = translation.warps[-1]
            l1_sum += float((warp - batch["image"].to(device)).abs().mean(1).sum())
            pixels += warp.shape[0] * warp.shape[-2] * warp.shape[-1]
            samples += warp.shape[0]
            if "exemplar_coords" in batch:
                truth = batch["exemplar_coords"].to(device)
                valid = batch["valid"].to(device)[:, 0]
                weighted, best = matched_coordinates(translation, model.correspondence.temperature)
                epe_soft_sum += float(((weighted - truth).norm(dim=1) * valid).sum())
                epe_best_sum += float(((best - truth).norm(dim=1) * valid).sum())
                valid_sum += float(valid.sum())
    finally:
        model.train(was_training)
    nan = float("nan")
    return HeldOutScores(
        warp_l1=l1_sum / max(pixels, 1),
        epe_softmax=epe_soft_sum / valid_sum if valid_sum else nan,
        epe_best=epe_best_sum / valid_sum if valid_sum else nan,
        samples=samples,
    )
