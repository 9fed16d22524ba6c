"""pix2pixHD's multiscale PatchGAN discriminator, returning every layer's features."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .normalization import conv_norm_layer


def instance_edges(instance: Tensor) -> Tensor:
    """Boundary map (B, 1, H, W) of an instance-id map (B, 1, H, W): 1 where a 4-neighbour
    belongs to another instance (pix2pixHD's edge map), else 0."""
    edge = torch.zeros_like(instance, dtype=torch.bool)
    horizontal = instance[..., :, 1:] != instance[..., :, :-1]
    vertical = instance[..., 1:, :] != instance[..., :-1, :]
    edge[..., :, 1:] |= horizontal
    edge[..., :, :-1] |= horizontal
    edge[..., 1:, :] |= vertical
    edge[..., :-1, :] |= vertical
    return edge.float()


class NLayerDiscriminator(nn.Module):
    """PatchGAN: a 4x4 stride-2 conv, ``n_layers - 1`` more stride-2 convs doubling the width (at most
    512), one stride-1 conv, and a 4x4 conv to one logit per patch. Returns the output of every
    layer; the last is the prediction.

    ``n_layers`` counts the stride-2 convolutions, as pix2pixHD's ``n_layers_D`` does (3 there
    equals 4 in SPADE's and CoCosNet's counting, which includes the stride-1 layer).
    """

    def __init__(self, in_nc: int, ndf: int = 64, n_layers: int = 3, norm: str = "spectralinstance") -> None:
        super().__init__()
        kernel, pad = 4, 2
        layers = [nn.Sequential(nn.Conv2d(in_nc, ndf, kernel, 2, pad), nn.LeakyReLU(0.2))]
        width = ndf
        for n in range(1, n_layers + 1):
            prev, width = width, min(width * 2, 512)
            stride = 2 if n < n_layers else 1
            layers.append(
                nn.Sequential(
                    conv_norm_layer(nn.Conv2d(prev, width, kernel, stride, pad), norm), nn.LeakyReLU(0.2)
                )
            )
        layers.append(nn.Conv2d(width, 1, kernel, 1, pad))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> list[Tensor]:
        features = []
        for layer in self.layers:
            x = layer(x)
            features.append(x)
        return features


class MultiscaleDiscriminator(nn.Module):
    """``num_D`` PatchGANs on the input downsampled 1, 2, 4, ... times (3x3 average pooling, stride 2).

    Input: the label (plus an instance edge map channel when ``instance_edges``) and the image,
    concatenated. Returns one list of layer outputs per scale, finest first.
    """

    def __init__(
        self, in_nc: int, ndf: int = 64, n_layers: int = 3, num_D: int = 2, norm: str = "spectralinstance"
    ) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList(
            NLayerDiscriminator(in_nc, ndf, n_layers, norm) for _ in range(num_D)
        )

    def forward(self, x: Tensor) -> list[list[Tensor]]:
        results = []
        for i, discriminator in enumerate(self.discriminators):
            if i > 0:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            results.append(discriminator(x))
        return results
