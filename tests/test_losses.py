"""Losses and VGG19, checked against direct re-computations on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models import losses as L
from models.vgg import VGG19, VGG19Features

# torchvision's vgg19: indices of the convolutions in ``features`` and their output widths.
TORCHVISION_CONVS = [
    (0, 64), (2, 64), (5, 128), (7, 128), (10, 256), (12, 256), (14, 256), (16, 256),
    (19, 512), (21, 512), (23, 512), (25, 512), (28, 512), (30, 512), (32, 512), (34, 512),
]  # fmt: skip
TORCHVISION_POOLS = (4, 9, 18, 27, 36)
TORCHVISION_CLASSIFIER = {0: (4096, 25088), 3: (4096, 4096), 6: (1000, 4096)}
RELU_AFTER = {"relu1_2": 2, "relu2_2": 7, "relu3_2": 12, "relu4_2": 21, "relu5_2": 30}  # conv index


def torchvision_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state_dict in torchvision's vgg19 format, written out by hand (not from models.vgg).

    The convolutions get He-scaled random weights; the classifier, which the losses never use,
    gets broadcast zeros so the file stays small.
    """
    gen = torch.Generator().manual_seed(seed)
    state, in_nc = {}, 3
    for index, out_nc in TORCHVISION_CONVS:
        std = math.sqrt(2.0 / (9 * in_nc))
        state[f"features.{index}.weight"] = torch.randn(out_nc, in_nc, 3, 3, generator=gen) * std
        state[f"features.{index}.bias"] = torch.randn(out_nc, generator=gen) * 0.01
        in_nc = out_nc
    for index, (out_f, in_f) in TORCHVISION_CLASSIFIER.items():
        state[f"classifier.{index}.weight"] = torch.zeros(1, 1).expand(out_f, in_f)
        state[f"classifier.{index}.bias"] = torch.zeros(1).expand(out_f)
    return state


def direct_vgg(image: torch.Tensor, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """relu1_2 ... relu5_2 of VGG19 computed layer by layer with F.conv2d from the state_dict."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = ((image + 1) / 2 - mean) / std
    out = {}
    for index in range(31):
        if index in TORCHVISION_POOLS:
            x = F.max_pool2d(x, 2)
        elif f"features.{index}.weight" in state:
            x = F.relu(
                F.conv2d(x, state[f"features.{index}.weight"], state[f"features.{index}.bias"], padding=1)
            )
            for name, conv in RELU_AFTER.items():
                if conv == index:
                    out[name] = x
    return out


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("vgg") / "vgg19.pth"
    state = torchvision_state_dict()
    torch.save(state, path)
    return path, state


# ----------------------------------------------------------------------------- VGG19


def test_vgg19_has_torchvision_names():
    with torch.device("meta"):
        model = VGG19()
    result = model.load_state_dict(torchvision_state_dict(), strict=True, assign=True)
    assert result.missing_keys == [] and result.unexpected_keys == []


def test_vgg19_features_load_a_torchvision_file(vgg_file):
    path, state = vgg_file
    vgg = VGG19Features(path)
    for name, p in vgg.state_dict().items():
        assert torch.equal(p, state[name]), name
    assert not any(p.requires_grad for p in vgg.parameters())
    image = torch.rand(2, 3, 32, 32) * 2 - 1
    expected = direct_vgg(image, state)
    for name, feature in zip(
        ("relu1_2", "relu2_2", "relu3_2", "relu4_2", "relu5_2"), vgg(image), strict=True
    ):
        torch.testing.assert_close(feature, expected[name], rtol=1e-4, atol=1e-4)


def test_vgg19_file_with_wrong_keys_or_shapes_is_refused(tmp_path):
    state = torchvision_state_dict()
    extra = {**state, "features.37.weight": torch.zeros(1)}
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(KeyError, match="unexpected"):
        VGG19Features(tmp_path / "extra.pth")
    missing = {k: v for k, v in state.items() if k != "features.0.bias"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(KeyError, match="missing"):
        VGG19Features(tmp_path / "missing.pth")
    state["features.2.weight"] = torch.zeros(64, 64, 1, 1)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(ValueError, match="features.2.weight"):
        VGG19Features(tmp_path / "shape.pth")


def test_vgg_feature_matching_and_perceptual_against_direct(vgg_file):
    path, state = vgg_file
    vgg = VGG19Features(path)
    gen = torch.Generator().manual_seed(1)
    fake = (torch.rand(1, 3, 32, 32, generator=gen) * 2 - 1).requires_grad_()
    real = torch.rand(1, 3, 32, 32, generator=gen) * 2 - 1
    fm = L.vgg_feature_matching(vgg(fake), vgg(real))
    perceptual = L.perceptual_loss(vgg(fake), vgg(real))
    a, b = direct_vgg(fake.detach(), state), direct_vgg(real, state)
    weights = {"relu1_2": 1 / 32, "relu2_2": 1 / 16, "relu3_2": 1 / 8, "relu4_2": 1 / 4, "relu5_2": 1.0}
    expected_fm = sum(w * (a[n] - b[n]).abs().sum() / a[n].numel() for n, w in weights.items())
    expected_perceptual = ((a["relu4_2"] - b["relu4_2"]) ** 2).sum() / a["relu4_2"].numel()
    torch.testing.assert_close(fm, expected_fm, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(perceptual, expected_perceptual, rtol=1e-4, atol=1e-6)
    (fm + perceptual).backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert all(p.grad is None for p in vgg.parameters())


# ----------------------------------------------------------------------------- contextual loss


def direct_contextual(x: torch.Tensor, y: torch.Tensor, h: float = 0.1) -> float:
    """The CoCosNet forward contextual loss with explicit loops over positions."""
    total = 0.0
    for b in range(x.shape[0]):
        xs = x[b].flatten(1).double()
        ys = y[b].flatten(1).double()
        mu = ys.mean(1, keepdim=True)
        xs, ys = xs - mu, ys - mu
        xs = xs / (xs.norm(dim=0) + 1e-10)
        ys = ys / (ys.norm(dim=0) + 1e-10)
        cx = 0.0
        for i in range(xs.shape[1]):
            d = [1 - float(xs[:, i] @ ys[:, j]) for j in range(ys.shape[1])]
            d_min = min(d)
            w = [math.exp((1 - dj / (d_min + 1e-3)) / h) for dj in d]
            cx += max(w) / sum(w)
        total += -math.log(cx / xs.shape[1])
    return total / x.shape[0]


@pytest.mark.parametrize(("x_size", "y_size"), [((3, 4), (3, 4)), ((2, 3), (4, 2))])
def test_contextual_loss_against_direct(x_size, y_size):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 5, *x_size, generator=gen, requires_grad=True)
    y = torch.randn(2, 5, *y_size, generator=gen)
    loss = L.contextual_loss(x, y)
    assert loss.item() == pytest.approx(direct_contextual(x.detach(), y), rel=1e-5)
    loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_contextual_loss_is_zero_for_the_same_features():
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(1, 16, 6, 6, generator=gen)
    assert L.contextual_loss(x, x).item() == pytest.approx(0.0, abs=1e-3)
    assert L.contextual_loss(torch.randn(1, 16, 6, 6, generator=gen), x).item() > 0.1


def test_exemplar_contextual_loss_weights_three_layers():
    gen = torch.Generator().manual_seed(3)
    sizes = [(8, 8, 8), (8, 4, 4), (6, 4, 4), (6, 2, 2), (6, 2, 2)]
    fake = [torch.randn(1, *s, generator=gen) for s in sizes]
    exemplar = [torch.randn(1, c, h + 2, w, generator=gen) for c, h, w in sizes]
    expected = (
        8 * direct_contextual(fake[4], exemplar[4])
        + 4 * direct_contextual(fake[3], exemplar[3])
        + 2 * direct_contextual(F.avg_pool2d(fake[2], 2), F.avg_pool2d(exemplar[2], 2))
    )
    assert L.exemplar_contextual_loss(fake, exemplar).item() == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------------------- GAN losses


def predictions(seed: int) -> list[list[torch.Tensor]]:
    """Two scales of discriminator outputs: two feature maps, then the logits."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [[(4, 8, 8), (8, 4, 4), (1, 3, 3)], [(4, 4, 4), (8, 2, 2), (1, 2, 2)]]
    return [[torch.randn(2, *shape, generator=gen) for shape in scale] for scale in shapes]


def test_hinge_loss():
    pred = predictions(0)
    logits = [p[-1] for p in pred]
    d_real = sum(torch.clamp(1 - t, min=0).mean() for t in logits) / 2
    d_fake = sum(torch.clamp(1 + t, min=0).mean() for t in logits) / 2
    g = sum(-t.mean() for t in logits) / 2
    torch.testing.assert_close(L.gan_loss(pred, True, for_discriminator=True), d_real)
    torch.testing.assert_close(L.gan_loss(pred, False, for_discriminator=True), d_fake)
    torch.testing.assert_close(L.gan_loss(pred, True, for_discriminator=False), g)
    with pytest.raises(ValueError, match="real"):
        L.gan_loss(pred, False, for_discriminator=False)


def test_least_squares_and_bce_losses():
    pred = predictions(1)
    logits = [p[-1] for p in pred]
    ls_real = sum(((t - 1) ** 2).mean() for t in logits) / 2
    ls_fake = sum((t**2).mean() for t in logits) / 2
    bce_real = sum(-torch.log(torch.sigmoid(t)).mean() for t in logits) / 2
    bce_fake = sum(-torch.log(1 - torch.sigmoid(t)).mean() for t in logits) / 2
    for for_d in (True, False):
        torch.testing.assert_close(L.gan_loss(pred, True, for_d, mode="ls"), ls_real)
        torch.testing.assert_close(L.gan_loss(pred, True, for_d, mode="bce"), bce_real)
    torch.testing.assert_close(L.gan_loss(pred, False, True, mode="ls"), ls_fake)
    torch.testing.assert_close(L.gan_loss(pred, False, True, mode="bce"), bce_fake)
    with pytest.raises(ValueError, match="mode"):
        L.gan_loss(pred, True, True, mode="wgan")


def test_discriminator_feature_matching():
    fake, real = predictions(2), predictions(3)
    for scale in fake:
        for t in scale:
            t.requires_grad_()
    pairs = [(f, r) for fs, rs in zip(fake, real, strict=True) for f, r in zip(fs[:-1], rs[:-1], strict=True)]
    expected = sum((f - r).abs().mean() for f, r in pairs) / 2
    loss = L.discriminator_feature_matching(fake, real)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert fake[0][-1].grad is None and fake[0][0].grad.abs().sum() > 0


# ----------------------------------------------------------------------------- correspondence losses


def block_mean(image: torch.Tensor, factor: int) -> torch.Tensor:
    b, c, h, w = image.shape
    return image.view(b, c, h // factor, factor, w // factor, factor).mean(dim=(3, 5))


def test_warp_loss_against_pooled_ground_truth():
    gen = torch.Generator().manual_seed(4)
    target = torch.rand(2, 3, 16, 24, generator=gen)
    warps = [torch.rand(2, 3, 16 // s, 24 // s, generator=gen, requires_grad=True) for s in (8, 4, 2, 1)]
    per_sample = [
        sum((w[i] - block_mean(target, 16 // w.shape[-2])[i]).abs().mean() for w in warps) for i in range(2)
    ]
    torch.testing.assert_close(L.warp_loss(warps, target), (per_sample[0] + per_sample[1]) / 2)
    torch.testing.assert_close(L.warp_loss(warps, target, torch.tensor([0.0, 1.0])), per_sample[1])
    L.warp_loss(warps, target).backward()
    assert all(w.grad.abs().sum() > 0 for w in warps)
    with pytest.raises(ValueError, match="integer factor"):
        L.warp_loss([torch.rand(2, 3, 5, 5)], target)


def test_cycle_and_alignment_losses():
    gen = torch.Generator().manual_seed(5)
    exemplar = torch.rand(2, 3, 32, 16, generator=gen)
    cycle = torch.rand(2, 3, 4, 2, generator=gen, requires_grad=True)
    torch.testing.assert_close(L.cycle_loss(cycle, exemplar), (cycle - block_mean(exemplar, 8)).abs().mean())
    a = [torch.rand(2, 4, s, s, generator=gen, requires_grad=True) for s in (2, 4)]
    b = [torch.rand(2, 4, s, s, generator=gen, requires_grad=True) for s in (2, 4)]
    loss = L.alignment_loss(a, b)
    torch.testing.assert_close(loss, (a[0] - b[0]).abs().mean() + (a[1] - b[1]).abs().mean())
    (loss + L.cycle_loss(cycle, exemplar)).backward()
    assert all(t.grad.abs().sum() > 0 for t in [cycle, *a, *b])


def one_hot_pixels(height: int, width: int) -> torch.Tensor:
    """(1, H*W, H, W) features: pixel p is the p-th unit vector, so inner products are 1 for the
    same pixel and 0 otherwise."""
    return torch.eye(height * width, dtype=torch.float64).view(1, height * width, height, width)


def test_correspondence_loss_points_at_the_true_pixel_at_every_level():
    """Features that match exactly where the truth says (a unit vector per exemplar pixel, each
    query pixel carrying its true pixel's vector): the loss is ~0, and the truth moved by one
    pixel makes it large. At a coarser level the identity's truth, pooled over each block, must
    land on the block's own key pixel (the pixel-centre conventions)."""
    size = 4
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    coords = torch.stack([(x + 1) % size, y]).double()[None]  # any permutation of the pixels works
    valid = torch.ones(1, 1, size, size)
    key = one_hot_pixels(size, size)
    true_pixel = (coords[0, 1] * size + coords[0, 0]).long().flatten()
    query = key.flatten(2)[:, :, true_pixel].view_as(key)
    loss = L.correspondence_loss([query], [key], coords, valid, (size, size), 0.01, samples=8)
    assert float(loss) < 1e-6
    moved = L.correspondence_loss([query], [key], coords.roll(1, dims=-1), valid, (size, size), 0.01, 8)
    assert float(moved) > 50
    identity = torch.stack([x, y]).double()[None]
    coarse = one_hot_pixels(2, 2)
    pooled = L.correspondence_loss([coarse], [coarse], identity, valid, (size, size), 0.01, samples=8)
    assert float(pooled) < 1e-6


def test_correspondence_loss_gradients_and_samples_without_valid_pixels():
    torch.manual_seed(0)
    query = F.normalize(torch.randn(2, 4, 8, 8, dtype=torch.float64), dim=1).requires_grad_()
    key = F.normalize(torch.randn(2, 4, 8, 8, dtype=torch.float64), dim=1).requires_grad_()
    y, x = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    coords = torch.stack([x, y]).double()[None].expand(2, -1, -1, -1)
    valid = torch.ones(2, 1, 8, 8)
    loss = L.correspondence_loss([query], [key], coords, valid, (8, 8), 0.1, samples=16)
    query_grad, key_grad = torch.autograd.grad(loss, [query, key])
    assert query_grad.abs().sum() > 0 and key_grad.abs().sum() > 0
    nothing = L.correspondence_loss([query], [key], coords, torch.zeros_like(valid), (8, 8), 0.1, 16)
    assert float(nothing) == 0
    # A sample with no valid pixel adds nothing: its gradient is zero.
    valid[1] = 0
    loss = L.correspondence_loss([query], [key], coords, valid, (8, 8), 0.1, samples=16)
    (query_grad,) = torch.autograd.grad(loss, [query])
    assert query_grad[0].abs().sum() > 0 and query_grad[1].abs().sum() == 0
