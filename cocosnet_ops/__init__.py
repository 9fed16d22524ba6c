"""Differentiable PatchMatch kernels behind torch.library ops.

>>> import torch, cocosnet_ops
>>> fq = torch.nn.functional.normalize(torch.randn(1, 16, 32, 32), dim=1)
>>> fk = torch.nn.functional.normalize(torch.randn(1, 16, 40, 24), dim=1)
>>> nnf, scores = cocosnet_ops.patch_match(fq, fk, k=8)
>>> warp = cocosnet_ops.weighted_gather(fq, fk, torch.rand(1, 3, 40, 24), nnf, temperature=0.01)
"""

from . import nnf, video
from .match import match
from .ops import (
    BACKENDS,
    HAS_COMPILED,
    HAS_CUDA_KERNELS,
    bilinear_scores,
    bilinear_weighted_gather,
    dense_warp,
    evaluate_candidates,
    exact_knn,
    nnf_upsample,
    patch_match,
    share_matches,
    weighted_gather,
)

__all__ = [
    "BACKENDS",
    "HAS_COMPILED",
    "HAS_CUDA_KERNELS",
    "bilinear_scores",
    "bilinear_weighted_gather",
    "dense_warp",
    "evaluate_candidates",
    "exact_knn",
    "match",
    "nnf",
    "nnf_upsample",
    "patch_match",
    "share_matches",
    "video",
    "weighted_gather",
]
__version__ = "0.1.0"
