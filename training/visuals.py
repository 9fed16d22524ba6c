"""Image grids of training batches: label | exemplar | warp per level | output | target (CoCosNet),
label | instance edges | outputs | target (pix2pixHD)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

LABEL_KINDS = ("pose", "segmentation")


def segmentation_palette(classes: int) -> Tensor:
    """A fixed colour per class (3, classes) in [0, 1]; class 0 (unlabelled) is black."""
    generator = torch.Generator().manual_seed(0)
    palette = torch.rand(3, classes, generator=generator) * 0.8 + 0.2
    palette[:, 0] = 0
    return palette


def label_to_rgb(label: Tensor, kind: str) -> Tensor:
    """(B, C, H, W) labels as (B, 3, H, W) pictures in [0, 1].

    ``pose``: the first three channels are the RGB skeleton (in [0, 1]). ``segmentation``: the
    one-hot class channels, coloured by :func:`segmentation_palette`.
    """
    if kind == "pose":
        return label[:, :3].float().clamp(0, 1)
    if kind == "segmentation":
        classes = label.float().argmax(dim=1)  # (B, H, W)
        palette = segmentation_palette(label.shape[1]).to(label.device)
        return palette[:, classes].permute(1, 0, 2, 3)
    raise ValueError(f"kind: expected one of {LABEL_KINDS}, got {kind!r}")


def image_to_unit(image: Tensor) -> Tensor:
    """Images in [-1, 1] to [0, 1]."""
    return ((image.float() + 1) / 2).clamp(0, 1)


def training_grid(
    label: Tensor,
    exemplar: Tensor,
    warps: Sequence[Tensor],
    output: Tensor,
    target: Tensor,
    label_kind: str,
    samples: int = 4,
) -> Tensor:
    """(3, rows * H, columns * W) in [0, 1]: one row per sample, columns label, exemplar, the
    warp of each level (coarsest first, enlarged without smoothing), output, target."""
    n = min(samples, label.shape[0])
    size = tuple(target.shape[-2:])

    def fit(x: Tensor) -> Tensor:
        return x if tuple(x.shape[-2:]) == size else F.interpolate(x, size=size, mode="nearest")

    columns = [label_to_rgb(label[:n], label_kind), image_to_unit(fit(exemplar[:n]))]
    columns += [image_to_unit(fit(w[:n].detach())) for w in warps]
    columns += [image_to_unit(output[:n].detach()), image_to_unit(target[:n])]
    rows = torch.cat([c.cpu() for c in columns], dim=3)  # (n, 3, H, columns * W)
    return torch.cat(list(rows), dim=1)


def label_map_grid(
    label: Tensor, edges: Tensor | None, outputs: Sequence[Tensor], target: Tensor, samples: int = 4
) -> Tensor:
    """(3, rows * H, columns * W) in [0, 1]: one row per sample, columns the segmentation label,
    the instance edge map (B, 1, H, W) when given, each output (smaller ones enlarged without
    smoothing), the target."""
    n = min(samples, label.shape[0])
    size = tuple(target.shape[-2:])

    def fit(x: Tensor) -> Tensor:
        return x if tuple(x.shape[-2:]) == size else F.interpolate(x, size=size, mode="nearest")

    columns = [label_to_rgb(label[:n], "segmentation")]
    if edges is not None:
        columns.append(edges[:n].float().expand(-1, 3, -1, -1))
    columns += [image_to_unit(fit(o[:n].detach().float())) for o in outputs]
    columns.append(image_to_unit(target[:n]))
    rows = torch.cat([c.cpu() for c in columns], dim=3)
    return torch.cat(list(rows), dim=1)


def save_png(grid: Tensor, path: str | os.PathLike) -> None:
    """A (3, H, W) picture in [0, 1] as an 8-bit PNG."""
    pixels = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(pixels).save(path)
