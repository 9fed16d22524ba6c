"""Normalisation layers: SPADE with a selectable parameter-free norm, and spectral-norm helpers."""

from __future__ import annotations

import torch
import torch.distributed.nn.functional as distributed_functional
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

PARAM_FREE_NORMS = ("instance", "batch", "pono")


def l2_normalize(x: Tensor, eps: float = 1e-10) -> Tensor:
    """``x`` divided by its L2 norm over the channels (dim 1) of each pixel."""
    return x / (torch.linalg.vector_norm(x, dim=1, keepdim=True) + eps)


def positional_norm(x: Tensor, eps: float = 1e-8) -> Tensor:
    """Positional normalisation (PONO): zero mean, unit variance over the channels of each pixel.

    The unbiased variance and ``eps`` are the public CoCosNet v2's, so its weights load unchanged.
    """
    mean = x.mean(dim=1, keepdim=True)
    var = x.var(dim=1, keepdim=True)
    return (x - mean) / (var + eps).sqrt()


class PositionalNorm2d(nn.Module):
    """:func:`positional_norm` as a module."""

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return positional_norm(x, self.eps)


class ReflectionPad2d(nn.Module):
    """Reflection padding that falls back to replicating the border on maps too small to reflect
    (a 1-pixel side at the coarsest level of a small image)."""

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        mode = "reflect" if min(x.shape[-2:]) > self.pad else "replicate"
        return F.pad(x, (self.pad,) * 4, mode=mode)


class SynchronizedBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose batch statistics are those of the whole batch over every process of
    the default process group (the public CoCosNet's synchronized batch norm), on any device:
    ``nn.SyncBatchNorm`` takes only CUDA tensors. The sums go through the differentiable
    ``all_reduce``, so each rank's gradient also reaches the other ranks' samples through the
    statistics. Where it uses running statistics (evaluation) it is ``nn.BatchNorm2d``.
    """

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        if not self.training and self.running_mean is not None:
            return super().forward(input)
        # At least float32, as the batch-norm kernels accumulate.
        x = input.to(torch.promote_types(input.dtype, torch.float32))
        dims = (0, 2, 3)
        local_count = x.new_full((1,), input.numel() // input.shape[1])
        sum_and_count = distributed_functional.all_reduce(torch.cat([x.sum(dims), local_count]))
        count = sum_and_count[-1]
        mean = sum_and_count[:-1] / count
        centered = x - mean.view(1, -1, 1, 1)
        # Two passes (mean, then the centred squares): no cancellation where the mean is large.
        var = distributed_functional.all_reduce(centered.square().sum(dims)) / count
        out = centered * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            out = out * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        if self.training and self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), count)
        return out.to(input.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, count: Tensor) -> None:
        self.num_batches_tracked.add_(1)
        # nn.BatchNorm2d's rule (momentum None: the cumulative average) and unbiased variance; a
        # single value per channel keeps a finite running variance.
        factor = 1.0 / self.num_batches_tracked.double() if self.momentum is None else self.momentum
        unbiased = var * count / (count - 1).clamp_min(1)
        for running, batch in ((self.running_mean, mean), (self.running_var, unbiased)):
            running.mul_(1 - factor).add_(factor * batch.to(running.dtype))


def synchronize_batch_norms(module: nn.Module) -> nn.Module:
    """``module`` with every ``nn.BatchNorm2d`` in it replaced by a :class:`SynchronizedBatchNorm2d`
    holding the same parameters, running statistics and mode (the replacement of ``module``
    itself when it is one; its submodules are replaced in place)."""
    if type(module) is nn.BatchNorm2d:
        state = module.state_dict()
        like = next((t for t in state.values() if t.is_floating_point()), None)
        placement = {} if like is None else {"device": like.device, "dtype": like.dtype}
        synchronized = SynchronizedBatchNorm2d(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats,
            **placement,
        )
        synchronized.load_state_dict(state)
        return synchronized.train(module.training)
    for name, child in module.named_children():
        module.add_module(name, synchronize_batch_norms(child))
    return module


def param_free_norm(kind: str, channels: int) -> nn.Module:
    """A normalisation layer without learned affine parameters: ``instance``, ``batch`` or ``pono``."""
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False)
    if kind == "batch":
        return nn.BatchNorm2d(channels, affine=False)
    if kind == "pono":
        return PositionalNorm2d()
    raise ValueError(f"norm: expected one of {PARAM_FREE_NORMS}, got {kind!r}")


def spectral_norm(module: nn.Module, enabled: bool = True) -> nn.Module:
    """``module`` with spectral normalisation of its weight when ``enabled``, else unchanged."""
    return _spectral_norm(module) if enabled else module


def conv_norm_layer(conv: nn.Conv2d, norm: str = "spectralinstance") -> nn.Module:
    """A convolution followed by the norm named like SPADE's ``norm_E``/``norm_D`` strings.

    ``norm`` is ``[spectral]{instance,batch,none}``: the optional ``spectral`` prefix applies
    spectral normalisation to the convolution; a following norm layer makes the convolution's
    bias redundant, so it is dropped.
    """
    spectral = norm.startswith("spectral")
    kind = norm[len("spectral") :] if spectral else norm
    if kind not in ("instance", "batch", "none", ""):
        raise ValueError(f"norm: expected [spectral]{{instance,batch,none}}, got {norm!r}")
    if kind in ("instance", "batch") and conv.bias is not None:
        conv.bias = None
    conv = spectral_norm(conv, spectral)
    if kind == "instance":
        return nn.Sequential(conv, nn.InstanceNorm2d(conv.out_channels, affine=False))
    if kind == "batch":
        return nn.Sequential(conv, nn.BatchNorm2d(conv.out_channels, affine=True))
    return conv


class SPADE(nn.Module):
    """Spatially-adaptive denormalisation (Park et al., 2019).

    ``x`` is normalised without parameters, then scaled and shifted per pixel by ``1 + gamma``
    and ``beta`` predicted from the conditioning map (resized to ``x`` by nearest neighbour).
    """

    def __init__(
        self, norm_nc: int, cond_nc: int, norm: str = "pono", hidden_nc: int = 128, kernel_size: int = 3
    ) -> None:
        super().__init__()
        self.param_free_norm = param_free_norm(norm, norm_nc)
        pad = kernel_size // 2
        self.mlp_shared = nn.Sequential(
            ReflectionPad2d(pad), nn.Conv2d(cond_nc, hidden_nc, kernel_size), nn.ReLU()
        )
        self.pad = ReflectionPad2d(pad)
        self.mlp_gamma = nn.Conv2d(hidden_nc, norm_nc, kernel_size)
        self.mlp_beta = nn.Conv2d(hidden_nc, norm_nc, kernel_size)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        normalized = self.param_free_norm(x)
        cond = F.interpolate(cond, size=x.shape[2:], mode="nearest")
        actv = self.pad(self.mlp_shared(cond))
        return normalized * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)
