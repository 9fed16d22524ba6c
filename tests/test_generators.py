"""SPADE generator and pix2pixHD global generator + local enhancer."""

from __future__ import annotations

import pytest
import torch

from models import Pix2PixHDGenerator, SPADEGenerator, generator_input


def assert_trains(model: torch.nn.Module, out: torch.Tensor) -> None:
    out.square().mean().backward()
    without = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not without


@pytest.mark.parametrize("size", [(64, 64), (128, 96), (72, 40)])
def test_spade_generator_any_size(size):
    torch.manual_seed(0)
    generator = SPADEGenerator(cond_nc=7, ngf=4, spade_nc=8)
    out = generator(torch.rand(2, 7, *size))
    assert out.shape == (2, 3, *size)
    assert out.abs().max() < 1
    assert_trains(generator, out)


def test_spade_generator_is_spectrally_normalised():
    generator = SPADEGenerator(cond_nc=7, ngf=4, spade_nc=8)
    names = {n for n, _ in generator.named_parameters()}
    assert "head_0.conv_0.parametrizations.weight.original" in names
    assert "up_1.conv_s.parametrizations.weight.original" in names
    plain = SPADEGenerator(cond_nc=7, ngf=4, spade_nc=8, spectral=False)
    assert "head_0.conv_0.weight" in {n for n, _ in plain.named_parameters()}


def test_generator_input_upsamples_the_warps_to_the_label():
    label = torch.rand(1, 2, 16, 8)
    warps = [torch.rand(1, 3, 16 // s, 8 // s) for s in (8, 4, 2, 1)]
    cond = generator_input(label, warps)
    assert cond.shape == (1, 14, 16, 8)
    torch.testing.assert_close(cond[:, 0:3, :8, :4], warps[0][:, :, :1, :1].expand(1, 3, 8, 4))
    torch.testing.assert_close(cond[:, 9:12], warps[3])
    torch.testing.assert_close(cond[:, 12:], label)


@pytest.mark.parametrize("size", [(64, 64), (128, 128)])
@pytest.mark.parametrize("n_local_enhancers", [0, 1])
def test_pix2pixhd_generator(size, n_local_enhancers):
    torch.manual_seed(0)
    generator = Pix2PixHDGenerator(
        in_nc=6,
        ngf=4,
        n_downsample_global=3,
        n_blocks_global=2,
        n_local_enhancers=n_local_enhancers,
        n_blocks_local=1,
    )
    out = generator(torch.rand(2, 6, *size))
    assert out.shape == (2, 3, *size)
    assert out.abs().max() < 1
    assert_trains(generator, out)


def test_pix2pixhd_local_enhancer_widths_and_global_resolution():
    generator = Pix2PixHDGenerator(in_nc=6, ngf=4, n_blocks_global=1, n_local_enhancers=1, n_blocks_local=1)
    # The global generator is twice as wide as the enhancer and sees the input at half size.
    assert generator.global_generator[1].out_channels == 8
    assert generator.enhancers_down[0][1].out_channels == 4
    seen = []
    generator.global_generator.register_forward_hook(lambda m, i, o: seen.append((i[0].shape, o.shape)))
    generator(torch.rand(1, 6, 64, 32))
    assert seen == [(torch.Size([1, 6, 32, 16]), torch.Size([1, 8, 32, 16]))]
    with pytest.raises(ValueError, match="divisible by 16"):
        generator(torch.rand(1, 6, 40, 32))
