"""Training losses of CoCosNet v2: GAN, feature matching, perceptual, contextual, correspondence.

Discriminator outputs are what :class:`models.discriminator.MultiscaleDiscriminator` returns:
one list of layer outputs per scale, the last of each being the prediction. VGG features are
lists in the order of :data:`models.vgg.LOSS_LAYERS` (relu1_2 ... relu5_2).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .normalization import l2_normalize

GAN_MODES = ("hinge", "ls", "bce")
VGG_LAYER_WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
PERCEPTUAL_LAYER = 3  # relu4_2


def gan_loss(
    predictions: Sequence[Sequence[Tensor]],
    target_is_real: bool,
    for_discriminator: bool,
    mode: str = "hinge",
) -> Tensor:
    """GAN loss averaged over the discriminator's scales.

    ``hinge``: the discriminator minimises ``relu(1 - D(real))`` and ``relu(1 + D(fake))``, the
    generator ``-D(fake)``. ``ls``: squared error to 1 (real) or 0 (fake). ``bce``: binary cross
    entropy on logits.
    """
    if mode not in GAN_MODES:
        raise ValueError(f"mode: expected one of {GAN_MODES}, got {mode!r}")
    if mode == "hinge" and not for_discriminator and not target_is_real:
        raise ValueError("target_is_real: the generator's hinge loss always aims for real")
    total = 0.0
    for outputs in predictions:
        pred = outputs[-1].float()
        if mode == "hinge":
            if not for_discriminator:
                total = total - pred.mean()
            else:
                total = total + F.relu(1 - pred if target_is_real else 1 + pred).mean()
        else:
            target = torch.full_like(pred, 1.0 if target_is_real else 0.0)
            if mode == "ls":
                total = total + F.mse_loss(pred, target)
            else:
                total = total + F.binary_cross_entropy_with_logits(pred, target)
    return total / len(predictions)


def split_fake_real(
    outputs: Sequence[Sequence[Tensor]],
) -> tuple[list[list[Tensor]], list[list[Tensor]]]:
    """Discriminator outputs of ``cat([fake, real])`` split into those of fake and of real."""
    fake = [[t[: t.shape[0] // 2] for t in scale] for scale in outputs]
    real = [[t[t.shape[0] // 2 :] for t in scale] for scale in outputs]
    return fake, real


def discriminator_feature_matching(
    fake_outputs: Sequence[Sequence[Tensor]], real_outputs: Sequence[Sequence[Tensor]]
) -> Tensor:
    """pix2pixHD's feature matching: L1 between the discriminator's intermediate features of the fake
    and (detached) real images, summed over layers, averaged over scales."""
    total = 0.0
    for fake, real in zip(fake_outputs, real_outputs, strict=True):
        for f, r in zip(fake[:-1], real[:-1], strict=True):
            total = total + F.l1_loss(f.float(), r.detach().float())
    return total / len(fake_outputs)


def _weighted_l1(input: Tensor, target: Tensor, sample_weights: Tensor | None) -> Tensor:
    """Mean absolute error; with ``sample_weights`` (B,), the weighted mean of the per-sample means."""
    error = (input.float() - target.float()).abs()
    if sample_weights is None:
        return error.mean()
    per_sample = error.flatten(1).mean(1)
    weights = sample_weights.to(per_sample.dtype)
    return (per_sample * weights).sum() / weights.sum().clamp_min(1e-5)


def vgg_feature_matching(
    fake_features: Sequence[Tensor],
    real_features: Sequence[Tensor],
    layer_weights: Sequence[float] = VGG_LAYER_WEIGHTS,
) -> Tensor:
    """Weighted L1 between the VGG features (relu1_2 ... relu5_2, weights 1/32 ... 1) of the fake and
    the (detached) real image."""
    total = 0.0
    for weight, fake, real in zip(layer_weights, fake_features, real_features, strict=True):
        total = total + weight * F.l1_loss(fake.float(), real.detach().float())
    return total


def perceptual_loss(fake_features: Sequence[Tensor], real_features: Sequence[Tensor]) -> Tensor:
    """Mean squared error between the relu4_2 features of the fake and the (detached) real image."""
    fake, real = fake_features[PERCEPTUAL_LAYER], real_features[PERCEPTUAL_LAYER]
    return F.mse_loss(fake.float(), real.detach().float())


def contextual_loss(x: Tensor, y: Tensor, h: float = 0.1) -> Tensor:
    """CoCosNet's forward contextual loss (Mechrez et al., 2018) of feature maps x and y, batch mean.

    Both maps are centred by y's mean feature and L2-normalised per position; with cosine
    distances ``d_ij`` between x's position i and y's position j, ``d~_ij = d_ij / (min_j d_ij +
    1e-3)``, ``A_ij = softmax_j((1 - d~_ij) / h)``, and the loss is ``-log(mean_i max_j A_ij)``.
    x and y may differ in size.
    """
    # Float32 even under autocast: distances divided by a near-zero minimum and by h amplify
    # half-precision rounding.
    with torch.autocast(x.device.type, enabled=False):
        x, y = x.float(), y.float()
        mean = y.flatten(2).mean(dim=2)[:, :, None, None]
        x = l2_normalize(x - mean).flatten(2)
        y = l2_normalize(y - mean).flatten(2)
        distance = 1 - torch.bmm(x.transpose(1, 2), y)
        relative = distance / (distance.min(dim=2, keepdim=True).values + 1e-3)
        affinity = torch.softmax((1 - relative) / h, dim=2)
        contextual_similarity = affinity.max(dim=2).values.mean(dim=1)
        return -torch.log(contextual_similarity).mean()


def exemplar_contextual_loss(fake_features: Sequence[Tensor], exemplar_features: Sequence[Tensor]) -> Tensor:
    """CoCosNet's appearance loss: contextual loss to the exemplar at relu5_2 (x8), relu4_2 (x4) and
    relu3_2 average-pooled by 2 (x2)."""
    exemplar_features = [f.detach() for f in exemplar_features]
    return (
        8 * contextual_loss(fake_features[4], exemplar_features[4])
        + 4 * contextual_loss(fake_features[3], exemplar_features[3])
        + 2 * contextual_loss(F.avg_pool2d(fake_features[2], 2), F.avg_pool2d(exemplar_features[2], 2))
    )


def alignment_loss(label_features: Sequence[Tensor], image_features: Sequence[Tensor]) -> Tensor:
    """Domain alignment: L1 between the label branch's and the image branch's features of the same
    (label, image) pair, summed over levels."""
    total = 0.0
    for a, b in zip(label_features, image_features, strict=True):
        total = total + F.l1_loss(a.float(), b.float())
    return total


def _pool_to(image: Tensor, size: Sequence[int]) -> Tensor:
    """``image`` average-pooled down to ``size`` (an integer factor of its size)."""
    factor = image.shape[-1] // size[-1]
    if image.shape[-2] != size[-2] * factor or image.shape[-1] != size[-1] * factor:
        raise ValueError(f"cannot pool {tuple(image.shape[-2:])} to {tuple(size)} by an integer factor")
    return F.avg_pool2d(image, factor) if factor > 1 else image


def warp_loss(warps: Sequence[Tensor], target: Tensor, sample_weights: Tensor | None = None) -> Tensor:
    """L1 of every level's warp against the ground truth average-pooled to that level, summed.

    ``sample_weights`` (B,) selects (1) the samples whose exemplar really shows the target (a
    pose pair of the same person), where the warps should reproduce the ground truth.
    """
    total = 0.0
    for warp in warps:
        total = total + _weighted_l1(warp, _pool_to(target, warp.shape[-2:]), sample_weights)
    return total


def cycle_loss(cycle_warp: Tensor, exemplar: Tensor) -> Tensor:
    """L1 of the cycle warp (exemplar -> label -> exemplar at 1/8) against the pooled exemplar."""
    return _weighted_l1(cycle_warp, _pool_to(exemplar, cycle_warp.shape[-2:]), None)


def level_truth(
    exemplar_coords: Tensor, valid: Tensor, query_size: Sequence[int], key_size: Sequence[int],
    exemplar_size: Sequence[int],
) -> tuple[Tensor, Tensor]:
    """The true correspondence at one level: per block of target pixels (one query pixel of the
    level), the mean true exemplar point in that level's key pixels (B, 2, h, w), and whether every
    pixel of the block is valid (B, h, w) as 0/1. ``exemplar_coords`` (B, 2, H, W), ``valid`` (B,
    1, H, W) as in :func:`correspondence_loss`."""
    factor = exemplar_coords.shape[-1] // query_size[1]
    mean = F.avg_pool2d(exemplar_coords.float(), factor)
    scale = torch.tensor([key_size[1] / exemplar_size[1], key_size[0] / exemplar_size[0]])
    block_truth = (mean + 0.5) * scale.to(mean.device).view(1, 2, 1, 1) - 0.5
    block_valid = (F.avg_pool2d(valid.float(), factor)[:, 0] == 1).float()
    return block_truth, block_valid


def _draw_valid_pixels(block_valid: Tensor, samples: int) -> tuple[Tensor, Tensor]:
    """``samples`` flat query pixels per sample (B, samples) drawn among the valid blocks (with
    replacement, so every sample gets as many whatever its valid count), and which samples have
    any valid block (B,)."""
    flat = block_valid.flatten(1) > 0
    has_valid = flat.any(1)
    return torch.multinomial(flat.float() + ~has_valid[:, None], samples, replacement=True), has_valid


def correspondence_loss(
    query_levels: Sequence[Tensor],
    key_levels: Sequence[Tensor],
    exemplar_coords: Tensor,
    valid: Tensor,
    exemplar_size: Sequence[int],
    temperature: float,
    samples: int,
) -> Tensor:
    """Cross-entropy of every level's matching toward the true correspondence, summed over levels.

    ``exemplar_coords`` (B, 2, H, W): for every target pixel the (x, y) exemplar pixel showing the
    same point (pixel centres at integers), ``valid`` (B, 1, H, W) where it is visible in both,
    ``exemplar_size`` (He, We). At each level, ``samples`` query pixels per sample, drawn among
    the blocks of valid pixels, are scored against every key pixel (inner products over
    ``temperature``, as the warps weigh them); the target distribution puts the bilinear weights
    of the block's mean true point on its four nearest key pixels. Samples without a valid block
    add nothing."""
    total = 0.0
    for query, key in zip(query_levels, key_levels, strict=True):
        channels = query.shape[1]
        hk, wk = key.shape[-2:]
        truth, block_valid = level_truth(exemplar_coords, valid, query.shape[-2:], (hk, wk), exemplar_size)
        picked, has_valid = _draw_valid_pixels(block_valid, samples)
        q = torch.gather(query.flatten(2), 2, picked[:, None].expand(-1, channels, -1))  # (B, C, n)
        logits = torch.bmm(q.transpose(1, 2).float(), key.flatten(2).float()) / temperature
        xy = torch.gather(truth.flatten(2), 2, picked[:, None].expand(-1, 2, -1))  # key pixels (B, 2, n)
        kx, ky = xy[:, 0].clamp(0, wk - 1), xy[:, 1].clamp(0, hk - 1)
        target = torch.zeros_like(logits)
        # The top-left of the four pixels, at most one before the last so that its neighbours exist.
        x0 = kx.floor().clamp(max=wk - 2).clamp(min=0)
        y0 = ky.floor().clamp(max=hk - 2).clamp(min=0)
        fx, fy = kx - x0, ky - y0
        x0, y0 = x0.long(), y0.long()
        for dx, dy, weight in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                               (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):  # fmt: skip
            index = ((y0 + dy).clamp(max=hk - 1) * wk + (x0 + dx).clamp(max=wk - 1))[..., None]
            target.scatter_add_(2, index, weight[..., None])
        per_pixel = -(target * torch.log_softmax(logits, dim=2)).sum(2).mean(1)  # (B,)
        total = total + (per_pixel * has_valid).sum() / has_valid.sum().clamp_min(1)
    return total
