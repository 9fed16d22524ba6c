"""pix2pixHD's instance feature encoder, and the instance-wise average pooling it ends with."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .generator import conv_block, output_block, up_block


def instance_mean(features: Tensor, instance: Tensor) -> Tensor:
    """Every pixel's feature replaced by the mean feature of its instance.

    ``features`` (B, C, H, W); ``instance`` (B, 1, H, W) instance ids (integers, in any integer
    or floating dtype); an instance is a (sample, id) pair. One fused scatter-mean
    (``torch.scatter_reduce``, differentiable, on every device torch has) and one gather.
    """
    if features.dim() != 4:
        raise ValueError(f"features: expected (B, C, H, W), got shape {tuple(features.shape)}")
    batch, channels, height, width = features.shape
    if instance.shape != (batch, 1, height, width):
        raise ValueError(
            f"instance: expected shape {(batch, 1, height, width)} to match features, "
            f"got {tuple(instance.shape)}"
        )
    if instance.is_floating_point() and not torch.equal(instance, instance.round()):
        raise ValueError("instance: expected integer instance ids")
    ids = instance.long().flatten(1)
    ids = ids - ids.min()
    # One segment per (sample, id): ids offset by the sample's index times the id range.
    keys = ids + torch.arange(batch, device=ids.device)[:, None] * (ids.max() + 1)
    _, segment = torch.unique(keys.flatten(), return_inverse=True)
    flat = features.transpose(0, 1).reshape(channels, -1)
    index = segment[None].expand(channels, -1)
    means = flat.new_zeros(channels, int(segment.max()) + 1).scatter_reduce(
        1, index, flat, reduce="mean", include_self=False
    )
    return means.gather(1, index).reshape(channels, batch, height, width).transpose(0, 1)


class FeatureEncoder(nn.Module):
    """pix2pixHD's encoder E: an encoder-decoder (7x7 conv, ``n_downsample`` stride-2 convs, as
    many transposed convs, 7x7 conv to ``out_nc`` channels, tanh) whose output is averaged within
    each instance, so that one low-dimensional feature describes each object's appearance. Sides
    must be divisible by ``2**n_downsample``."""

    def __init__(self, in_nc: int = 3, out_nc: int = 3, nef: int = 16, n_downsample: int = 4) -> None:
        super().__init__()
        self.factor = 2**n_downsample
        layers = conv_block(in_nc, nef, 7)
        for i in range(n_downsample):
            layers += conv_block(nef * 2**i, nef * 2 ** (i + 1), 3, stride=2)
        for i in range(n_downsample, 0, -1):
            layers += up_block(nef * 2**i, nef * 2 ** (i - 1))
        layers += output_block(nef, out_nc)
        self.model = nn.Sequential(*layers)

    def forward(self, image: Tensor, instance: Tensor) -> Tensor:
        if image.shape[-2] % self.factor or image.shape[-1] % self.factor:
            raise ValueError(
                f"image: expected sides divisible by {self.factor}, got {tuple(image.shape[-2:])}"
            )
        return instance_mean(self.model(image), instance)
