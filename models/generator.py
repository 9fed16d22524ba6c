"""Generators: CoCosNet v2's SPADE generator and pix2pixHD's global generator + local enhancer.

Both take the conditioning map built by :func:`generator_input`: the four warps of the exemplar
upsampled to the label's size, then the label.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import ResnetBlock, SPADEResBlock
from .normalization import ReflectionPad2d


def generator_input(label: Tensor, warps: Sequence[Tensor]) -> Tensor:
    """The warps (coarsest first) resized to the label by nearest neighbour, then the label."""
    size = label.shape[-2:]
    resized = [w if w.shape[-2:] == size else F.interpolate(w, size=size, mode="nearest") for w in warps]
    return torch.cat([*resized, label.to(resized[0].dtype)], dim=1)


class SPADEGenerator(nn.Module):
    """SPADE generator: from the conditioning map resized to 1/32 of the output, seven SPADE
    residual blocks and five 2x upsamplings (each to the exact size of the next scale, so any
    output size works), then a 3x3 convolution and tanh. Every block is conditioned on the full
    conditioning map; convolutions in the blocks are spectrally normalised."""

    NUM_UPSAMPLINGS = 5

    def __init__(
        self,
        cond_nc: int,
        ngf: int = 64,
        norm: str = "pono",
        spectral: bool = True,
        spade_nc: int = 128,
        out_nc: int = 3,
    ) -> None:
        super().__init__()
        self.fc = nn.Conv2d(cond_nc, 8 * ngf, 3, padding=1)
        self.head_0 = SPADEResBlock(8 * ngf, 8 * ngf, cond_nc, norm, spectral, spade_nc)
        self.middle_0 = SPADEResBlock(8 * ngf, 8 * ngf, cond_nc, norm, spectral, spade_nc)
        self.middle_1 = SPADEResBlock(8 * ngf, 8 * ngf, cond_nc, norm, spectral, spade_nc)
        self.up_0 = SPADEResBlock(8 * ngf, 8 * ngf, cond_nc, norm, spectral, spade_nc)
        self.up_1 = SPADEResBlock(8 * ngf, 4 * ngf, cond_nc, norm, spectral, spade_nc)
        self.up_2 = SPADEResBlock(4 * ngf, 2 * ngf, cond_nc, norm, spectral, spade_nc)
        self.up_3 = SPADEResBlock(2 * ngf, 1 * ngf, cond_nc, norm, spectral, spade_nc)
        self.conv_img = nn.Conv2d(ngf, out_nc, 3, padding=1)

    def forward(self, cond: Tensor) -> Tensor:
        height, width = cond.shape[-2:]
        sizes = [
            (math.ceil(height / 2**s), math.ceil(width / 2**s)) for s in range(self.NUM_UPSAMPLINGS, -1, -1)
        ]
        x = self.fc(F.interpolate(cond, size=sizes[0], mode="nearest"))
        x = self.head_0(x, cond)
        x = F.interpolate(x, size=sizes[1], mode="nearest")
        x = self.middle_0(x, cond)
        x = self.middle_1(x, cond)
        for block, size in zip((self.up_0, self.up_1, self.up_2, self.up_3), sizes[2:], strict=True):
            x = block(F.interpolate(x, size=size, mode="nearest"), cond)
        return torch.tanh(self.conv_img(F.leaky_relu(x, 0.2)))


def downsample(x: Tensor) -> Tensor:
    """Half the size, as pix2pixHD builds its input pyramid: 3x3 average pooling, stride 2."""
    return F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)


def conv_block(in_nc: int, out_nc: int, kernel_size: int, stride: int = 1) -> list[nn.Module]:
    pad = [ReflectionPad2d(kernel_size // 2)] if stride == 1 else []
    padding = 0 if stride == 1 else kernel_size // 2
    return [
        *pad,
        nn.Conv2d(in_nc, out_nc, kernel_size, stride, padding),
        nn.InstanceNorm2d(out_nc),
        nn.ReLU(),
    ]


def up_block(in_nc: int, out_nc: int) -> list[nn.Module]:
    return [
        nn.ConvTranspose2d(in_nc, out_nc, 3, stride=2, padding=1, output_padding=1),
        nn.InstanceNorm2d(out_nc),
        nn.ReLU(),
    ]


def output_block(in_nc: int, out_nc: int) -> list[nn.Module]:
    return [ReflectionPad2d(3), nn.Conv2d(in_nc, out_nc, 7), nn.Tanh()]


class Pix2PixHDGenerator(nn.Module):
    """pix2pixHD's coarse-to-fine generator (Wang et al., 2018).

    The global generator (7x7 conv, ``n_downsample_global`` stride-2 convs, ``n_blocks_global``
    residual blocks, as many transposed convs) runs at ``1 / 2**n_local_enhancers`` of the input;
    each local enhancer (``n_local_enhancers`` of them, 0 for the global generator alone) encodes
    the next finer input, adds the coarser branch's features, and decodes with
    ``n_blocks_local`` residual blocks. ``ngf`` is the finest enhancer's width; the global
    generator's is ``ngf * 2**n_local_enhancers``. Sides must be divisible by
    ``2**(n_downsample_global + n_local_enhancers)``.

    ``global_head``: with local enhancers, also an output block on the global generator
    (``global_output``), for :meth:`forward_global`: the coarse-to-fine recipe first trains the
    global generator alone, at the resolution its enhancers later give it.
    """

    def __init__(
        self,
        in_nc: int,
        out_nc: int = 3,
        ngf: int = 32,
        n_downsample_global: int = 3,
        n_blocks_global: int = 9,
        n_local_enhancers: int = 1,
        n_blocks_local: int = 3,
        global_head: bool = False,
    ) -> None:
        super().__init__()
        self.n_local_enhancers = n_local_enhancers
        self.global_factor = 2**n_downsample_global
        self.factor = 2 ** (n_downsample_global + n_local_enhancers)
        global_nc = ngf * 2**n_local_enhancers
        layers = conv_block(in_nc, global_nc, 7)
        for i in range(n_downsample_global):
            layers += conv_block(global_nc * 2**i, global_nc * 2 ** (i + 1), 3, stride=2)
        deepest = global_nc * 2**n_downsample_global
        layers += [ResnetBlock(deepest) for _ in range(n_blocks_global)]
        for i in range(n_downsample_global, 0, -1):
            layers += up_block(global_nc * 2**i, global_nc * 2 ** (i - 1))
        if n_local_enhancers == 0:
            layers += output_block(global_nc, out_nc)
        self.global_generator = nn.Sequential(*layers)
        if global_head and n_local_enhancers > 0:
            self.global_output = nn.Sequential(*output_block(global_nc, out_nc))
        self.enhancers_down = nn.ModuleList()
        self.enhancers_up = nn.ModuleList()
        for n in range(1, n_local_enhancers + 1):
            width = ngf * 2 ** (n_local_enhancers - n)
            self.enhancers_down.append(
                nn.Sequential(*conv_block(in_nc, width, 7), *conv_block(width, 2 * width, 3, stride=2))
            )
            up = [ResnetBlock(2 * width) for _ in range(n_blocks_local)] + up_block(2 * width, width)
            if n == n_local_enhancers:
                up += output_block(width, out_nc)
            self.enhancers_up.append(nn.Sequential(*up))

    def forward_global(self, cond: Tensor) -> Tensor:
        """The global generator alone, with its output block, on ``cond`` at its own resolution
        (sides divisible by ``2**n_downsample_global``)."""
        if cond.shape[-2] % self.global_factor or cond.shape[-1] % self.global_factor:
            raise ValueError(
                f"input: expected sides divisible by {self.global_factor}, got {tuple(cond.shape[-2:])}"
            )
        if self.n_local_enhancers == 0:
            return self.global_generator(cond)
        if not hasattr(self, "global_output"):
            raise ValueError(
                "global_head: this generator was built without the global generator's output block"
            )
        return self.global_output(self.global_generator(cond))

    def forward(self, cond: Tensor) -> Tensor:
        if cond.shape[-2] % self.factor or cond.shape[-1] % self.factor:
            raise ValueError(
                f"input: expected sides divisible by {self.factor}, got {tuple(cond.shape[-2:])}"
            )
        pyramid = [cond]
        for _ in range(self.n_local_enhancers):
            pyramid.append(downsample(pyramid[-1]))
        out = self.global_generator(pyramid[-1])
        for n, (down, up) in enumerate(zip(self.enhancers_down, self.enhancers_up, strict=True), start=1):
            out = up(down(pyramid[self.n_local_enhancers - n]) + out)
        return out
