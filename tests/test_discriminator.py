"""pix2pixHD multiscale PatchGAN discriminator and instance edge maps."""

from __future__ import annotations

import pytest
import torch

from models import MultiscaleDiscriminator, NLayerDiscriminator, instance_edges


@pytest.mark.parametrize("size", [(64, 64), (128, 128)])
@pytest.mark.parametrize(("num_D", "n_layers"), [(2, 3), (3, 2)])
def test_multiscale_discriminator_forward_backward(size, num_D, n_layers):
    torch.manual_seed(0)
    discriminator = MultiscaleDiscriminator(in_nc=5, ndf=8, n_layers=n_layers, num_D=num_D)
    x = torch.rand(2, 5, *size, requires_grad=True)
    outputs = discriminator(x)
    assert len(outputs) == num_D
    for scale, features in enumerate(outputs):
        # n_layers stride-2 layers, one stride-1 layer, the prediction.
        assert len(features) == n_layers + 2
        assert features[-1].shape[:2] == (2, 1)
        assert features[0].shape[1] == 8 and features[1].shape[1] == 16
        # Each scale sees the input downsampled 2**scale times.
        assert features[0].shape[-1] == size[-1] // 2 ** (scale + 1) + 1
    loss = sum(f.mean() for features in outputs for f in features)
    loss.backward()
    assert x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in discriminator.parameters())


def test_discriminator_widths_cap_at_512_and_use_spectral_instance_norm():
    d = NLayerDiscriminator(in_nc=3, ndf=128, n_layers=4)
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [128, 256, 512, 512, 512, 1]
    assert [c.stride[0] for c in convs] == [2, 2, 2, 2, 1, 1]
    normed = convs[1:-1]
    assert all(c.bias is None and hasattr(c, "parametrizations") for c in normed)
    assert sum(isinstance(m, torch.nn.InstanceNorm2d) for m in d.modules()) == len(normed)


def test_instance_edges():
    instance = torch.tensor([[1, 1, 2], [1, 1, 2], [3, 3, 3]]).view(1, 1, 3, 3)
    expected = torch.tensor([[0, 1, 1], [1, 1, 1], [1, 1, 1]]).view(1, 1, 3, 3).float()
    assert torch.equal(instance_edges(instance), expected)
    assert instance_edges(torch.ones(1, 1, 4, 4)).sum() == 0
