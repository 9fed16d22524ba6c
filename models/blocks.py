"""Residual blocks: plain (encoders, pix2pixHD) and SPADE-conditioned (decoders, generator)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .normalization import SPADE, ReflectionPad2d, spectral_norm


class ResidualBlock(nn.Module):
    """Two reflection-padded 3x3 convolutions with instance norm, PReLU after the sum.

    The block of CoCosNet v2's domain-alignment encoders.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.act = nn.PReLU()
        self.body = nn.Sequential(
            ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels),
            self.act,
            ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.act(x + self.body(x))


class ResnetBlock(nn.Module):
    """pix2pixHD's residual block: x + (pad, conv, norm, ReLU, pad, conv, norm)."""

    def __init__(self, channels: int, norm: type[nn.Module] = nn.InstanceNorm2d) -> None:
        super().__init__()
        self.body = nn.Sequential(
            ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            norm(channels),
            nn.ReLU(),
            ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            norm(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class SPADEResBlock(nn.Module):
    """SPADE residual block (Park et al., 2019): two SPADE-norm, LeakyReLU, 3x3-conv stages and a
    shortcut that is learned (SPADE then 1x1 conv) when the width changes. ``spade_nc`` is the
    hidden width of the SPADE layers' modulation networks."""

    def __init__(
        self,
        in_nc: int,
        out_nc: int,
        cond_nc: int,
        norm: str = "pono",
        spectral: bool = True,
        spade_nc: int = 128,
    ) -> None:
        super().__init__()
        mid_nc = min(in_nc, out_nc)
        self.learned_shortcut = in_nc != out_nc
        self.pad = ReflectionPad2d(1)
        self.conv_0 = spectral_norm(nn.Conv2d(in_nc, mid_nc, 3), spectral)
        self.conv_1 = spectral_norm(nn.Conv2d(mid_nc, out_nc, 3), spectral)
        self.norm_0 = SPADE(in_nc, cond_nc, norm, spade_nc)
        self.norm_1 = SPADE(mid_nc, cond_nc, norm, spade_nc)
        if self.learned_shortcut:
            self.conv_s = spectral_norm(nn.Conv2d(in_nc, out_nc, 1, bias=False), spectral)
            self.norm_s = SPADE(in_nc, cond_nc, norm, spade_nc)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        shortcut = self.conv_s(self.norm_s(x, cond)) if self.learned_shortcut else x
        dx = self.conv_0(self.pad(F.leaky_relu(self.norm_0(x, cond), 0.2)))
        dx = self.conv_1(self.pad(F.leaky_relu(self.norm_1(dx, cond), 0.2)))
        return shortcut + dx
