"""Domain alignment: two U-Nets map the label and the exemplar into a shared feature space."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import ResidualBlock, SPADEResBlock
from .normalization import conv_norm_layer, l2_normalize

NUM_LEVELS = 4
MATCHING_LEVELS = ("own", "residual")


def matching_features(x: Tensor) -> Tensor:
    """Features ready for matching: mean over channels subtracted, then L2-normalised, so that
    inner products are cosine similarities of centred features."""
    return l2_normalize(x - x.mean(dim=1, keepdim=True))


class AlignmentUNet(nn.Module):
    """CoCosNet v2's domain-alignment U-Net.

    An encoder of residual blocks (full, 1/2, 1/4, 1/8 resolution) and a decoder of SPADE
    residual blocks, conditioned on the input itself, with additive skips. Returns four levels
    at 1/8, 1/4, 1/2 and 1/1 of the input with ``4 nef, 4 nef, 2 nef, nef`` channels.
    """

    def __init__(
        self,
        in_nc: int,
        nef: int = 32,
        norm: str = "pono",
        spade_nc: int = 128,
        encoder_norm: str = "spectralinstance",
    ) -> None:
        super().__init__()
        self.out_channels = (4 * nef, 4 * nef, 2 * nef, nef)
        self.layer1 = conv_norm_layer(nn.Conv2d(in_nc, nef, 3, padding=1), encoder_norm)
        self.layer2 = nn.Sequential(
            conv_norm_layer(nn.Conv2d(nef, 2 * nef, 3, padding=1), encoder_norm), ResidualBlock(2 * nef)
        )
        self.layer3 = nn.Sequential(
            conv_norm_layer(nn.Conv2d(2 * nef, 4 * nef, 3, stride=2, padding=1), encoder_norm),
            ResidualBlock(4 * nef),
        )
        self.layer4 = nn.Sequential(
            conv_norm_layer(nn.Conv2d(4 * nef, 4 * nef, 3, stride=2, padding=1), encoder_norm),
            ResidualBlock(4 * nef),
        )
        self.layer5 = nn.Sequential(
            conv_norm_layer(nn.Conv2d(4 * nef, 4 * nef, 3, stride=2, padding=1), encoder_norm),
            ResidualBlock(4 * nef),
        )
        self.head_0 = SPADEResBlock(4 * nef, 4 * nef, in_nc, norm, spade_nc=spade_nc)
        self.up_0 = SPADEResBlock(4 * nef, 4 * nef, in_nc, norm, spade_nc=spade_nc)
        self.up_1 = SPADEResBlock(4 * nef, 2 * nef, in_nc, norm, spade_nc=spade_nc)
        self.up_2 = SPADEResBlock(2 * nef, nef, in_nc, norm, spade_nc=spade_nc)

    def forward(self, x: Tensor) -> list[Tensor]:
        if x.shape[-2] % 8 or x.shape[-1] % 8:
            raise ValueError(f"input: expected height and width divisible by 8, got {tuple(x.shape[-2:])}")
        x1 = self.layer1(x)
        x2 = self.layer2(_act(x1))
        x3 = self.layer3(_act(x2))
        x4 = self.layer4(_act(x3))
        x5 = self.layer5(_act(x4))
        y0 = self.head_0(x5, x)
        y1 = self.up_0(_upsample(y0) + x4, x)
        y2 = self.up_1(_upsample(y1) + x3, x)
        y3 = self.up_2(_upsample(y2) + x2, x)
        return [y0, y1, y2, y3]


def _act(x: Tensor) -> Tensor:
    return F.leaky_relu(x, 0.2)


def _upsample(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


@dataclass
class AlignedFeatures:
    """Features of one (label, exemplar) pair, coarsest level first (1/8, 1/4, 1/2, 1/1).

    ``query``/``key``: projected matching features of the label / exemplar (``match_nc``
    channels, centred and L2-normalised). ``label_features``: the label U-Net's L2-normalised
    outputs, compared with the image U-Net's by the alignment loss.
    """

    query: list[Tensor]
    key: list[Tensor]
    label_features: list[Tensor]


class DomainAlignment(nn.Module):
    """The label branch (``label_nc`` inputs) and the image branch (``3 + label_nc`` inputs), each
    followed by 1x1 projections to ``match_nc`` channels per level.

    ``matching_levels``: how a finer level's matching features involve the coarser levels'.
    ``"own"``: not at all (the paper's). ``"residual"``: its projection plus the coarser level's
    matching features upsampled (bilinear), so that its scores start from the coarser level's,
    interpolated, and its own features add detail."""

    def __init__(
        self,
        label_nc: int,
        nef: int = 32,
        match_nc: int = 32,
        norm: str = "pono",
        spade_nc: int = 128,
        image_nc: int = 3,
        matching_levels: str = "own",
    ) -> None:
        super().__init__()
        if matching_levels not in MATCHING_LEVELS:
            raise ValueError(f"matching_levels: expected one of {MATCHING_LEVELS}, got {matching_levels!r}")
        self.matching_levels = matching_levels
        self.label_unet = AlignmentUNet(label_nc, nef, norm, spade_nc)
        self.image_unet = AlignmentUNet(image_nc + label_nc, nef, norm, spade_nc)
        widths = self.label_unet.out_channels
        self.query_proj = nn.ModuleList(nn.Conv2d(c, match_nc, 1) for c in widths)
        self.key_proj = nn.ModuleList(nn.Conv2d(c, match_nc, 1) for c in widths)

    def label_features(self, label: Tensor) -> list[Tensor]:
        return [l2_normalize(f) for f in self.label_unet(label)]

    def image_features(self, image: Tensor, label: Tensor) -> list[Tensor]:
        return [l2_normalize(f) for f in self.image_unet(torch.cat([image, label], dim=1))]

    def forward(self, label: Tensor, exemplar: Tensor, exemplar_label: Tensor) -> AlignedFeatures:
        label_features = self.label_features(label)
        exemplar_features = self.image_features(exemplar, exemplar_label)
        query = self._matching(self.query_proj, label_features)
        key = self._matching(self.key_proj, exemplar_features)
        return AlignedFeatures(query, key, label_features)

    def _matching(self, projections: nn.ModuleList, features: list[Tensor]) -> list[Tensor]:
        levels: list[Tensor] = []
        for projection, level in zip(projections, features, strict=True):
            projected = projection(level)
            if levels and self.matching_levels == "residual":
                projected = projected + F.interpolate(levels[-1], size=projected.shape[-2:], mode="bilinear")
            levels.append(matching_features(projected))
        return levels
