"""NNF utilities: flat indices <-> coordinates and offsets, flow images, reconstruction.

An NNF is int32 (B, K, Hq, Wq) of flat indices ``row * Wk + col`` into a key map of size
``key_size = (Hk, Wk)``; coordinates are ``(x, y)`` = (column, row) in key pixels, in the last
dimension of a (B, K, Hq, Wq, 2) tensor, the layout ``bilinear_weighted_gather`` takes.

Offsets are relative to the query pixel's *anchor* in the key map. When both maps have the
same size the anchor of query pixel (x, y) is (x, y) itself; otherwise it is
``(x * Wk // Wq, y * Hk // Hq)``, the key pixel whose cell holds the query pixel's top-left
corner when both maps span the same image (the convention of ``nnf_upsample``). Offsets are
in key pixels.

>>> import torch
>>> nnf = torch.tensor([[[[5, 0], [3, 2]]]], dtype=torch.int32)  # (1, 1, 2, 2), key map 2x3
>>> index_to_xy(nnf, (2, 3))[0, 0, 0, 0].tolist()
[2, 1]
>>> nnf_to_offsets(nnf, (2, 3))[0, 0, 0, 0].tolist()
[2, 1]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from . import reference
from .ops import _inspectable

__all__ = [
    "coords_to_nnf",
    "flow_to_color",
    "index_to_xy",
    "neighbour_matches",
    "nnf_to_coords",
    "nnf_to_flow_image",
    "nnf_to_offsets",
    "offsets_to_nnf",
    "reconstruct",
    "xy_to_index",
]


def _key_size(key_size: Sequence[int]) -> tuple[int, int]:
    if isinstance(key_size, torch.Size):
        key_size = tuple(key_size)
    if (
        not isinstance(key_size, (tuple, list))
        or len(key_size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in key_size)
    ):
        raise ValueError(f"key_size: expected a pair of ints (Hk, Wk) >= 1, got {key_size!r}")
    return key_size[0], key_size[1]


def _check_flat_indices(name: str, t: object, count: str) -> Tensor:
    """An int32 or int64 (B, count, Hq, Wq) tensor of flat indices (values not read)."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{name}: expected an int32 or int64 tensor of flat indices, got {t.dtype}")
    if t.dim() != 4:
        raise ValueError(f"{name}: expected a 4-D tensor (B, {count}, Hq, Wq), got shape {tuple(t.shape)}")
    return t


def _check_in_range(name: str, t: Tensor, pixels: int, map_name: str) -> None:
    """Every entry of ``t`` is a flat index into a map of ``pixels`` pixels."""
    # Reading the values back is a host sync: not while tracing (torch.compile) nor on meta tensors.
    if t.numel() and _inspectable(t):
        low, high = torch.aminmax(t)
        if int(low) < 0 or int(high) >= pixels:
            raise ValueError(
                f"{name}: entries must be flat {map_name} indices in [0, {pixels}), got values in "
                f"[{int(low)}, {int(high)}]"
            )


def _check_nnf(nnf: object, key_pixels: int) -> Tensor:
    nnf = _check_flat_indices("nnf", nnf, "K")
    _check_in_range("nnf", nnf, key_pixels, "key")
    return nnf


def _check_pairs(name: str, t: object, floating: bool) -> Tensor:
    """A (B, K, Hq, Wq, 2) tensor of (x, y) pairs."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if floating and not t.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {t.dtype}")
    if not floating and (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool):
        raise TypeError(f"{name}: expected an integer tensor, got {t.dtype}")
    if t.dim() != 5 or t.shape[-1] != 2:
        raise ValueError(f"{name}: expected shape (B, K, Hq, Wq, 2), got {tuple(t.shape)}")
    return t


def _anchors(query_size: Sequence[int], key_size: tuple[int, int], device: torch.device) -> Tensor:
    """Anchor (x, y) in the key map of every query pixel, (Hq, Wq, 2) int64."""
    Hq, Wq = query_size
    Hk, Wk = key_size
    ax = torch.arange(Wq, device=device) * Wk // Wq
    ay = torch.arange(Hq, device=device) * Hk // Hq
    return torch.stack(torch.broadcast_tensors(ax.view(1, Wq), ay.view(Hq, 1)), dim=-1)


# ----------------------------------------------------------------------------- indices <-> coordinates


def index_to_xy(nnf: Tensor, key_size: Sequence[int]) -> Tensor:
    """Integer key coordinates (B, K, Hq, Wq, 2) int64, ``(x, y) = (i % Wk, i // Wk)``."""
    Hk, Wk = _key_size(key_size)
    index = _check_nnf(nnf, Hk * Wk).long()
    return torch.stack((index % Wk, index // Wk), dim=-1)


def xy_to_index(xy: Tensor, key_size: Sequence[int]) -> Tensor:
    """Flat int32 indices (B, K, Hq, Wq) ``y * Wk + x`` of integer coordinates (B, K, Hq, Wq, 2),
    clamped to the key map."""
    Hk, Wk = _key_size(key_size)
    xy = _check_pairs("xy", xy, floating=False).long()
    x = xy[..., 0].clamp(0, Wk - 1)
    y = xy[..., 1].clamp(0, Hk - 1)
    return (y * Wk + x).int()


def nnf_to_coords(nnf: Tensor, key_size: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
    """Key coordinates as floating (x, y) (B, K, Hq, Wq, 2), ready for ``bilinear_weighted_gather``:
    sampling there returns exactly the key pixels the NNF names."""
    if not dtype.is_floating_point:
        raise TypeError(f"dtype: expected a floating-point dtype, got {dtype}")
    return index_to_xy(nnf, key_size).to(dtype)


def coords_to_nnf(coords: Tensor, key_size: Sequence[int]) -> Tensor:
    """Nearest key pixel of floating (x, y) coordinates (B, K, Hq, Wq, 2) as int32 flat indices.

    Rounds half up (``floor(c + 0.5)``) and clamps to the key map, as ``bilinear_weighted_gather``
    clamps; a NaN coordinate maps to 0. Indices may repeat within a pixel after rounding.
    """
    Hk, Wk = _key_size(key_size)
    coords = _check_pairs("coords", coords, floating=True)
    nearest = torch.floor(torch.nan_to_num(coords.detach().double(), nan=0.0) + 0.5)
    x = nearest[..., 0].clamp(0, Wk - 1).long()
    y = nearest[..., 1].clamp(0, Hk - 1).long()
    return (y * Wk + x).int()


def nnf_to_offsets(nnf: Tensor, key_size: Sequence[int]) -> Tensor:
    """Offsets (dx, dy) (B, K, Hq, Wq, 2) int64 in key pixels from each query pixel's anchor
    (see the module docstring) to its matches."""
    xy = index_to_xy(nnf, key_size)
    return xy - _anchors(nnf.shape[2:], _key_size(key_size), nnf.device)


def offsets_to_nnf(offsets: Tensor, key_size: Sequence[int]) -> Tensor:
    """Inverse of ``nnf_to_offsets``: int32 flat indices of anchor + offset, clamped to the key map."""
    key_size = _key_size(key_size)
    offsets = _check_pairs("offsets", offsets, floating=False)
    return xy_to_index(offsets.long() + _anchors(offsets.shape[2:4], key_size, offsets.device), key_size)


# ----------------------------------------------------------------------------- neighbours' matches


def neighbour_matches(nnf: Tensor, neighbours: Tensor, top: int | None = None) -> Tensor:
    """The matches of each query pixel's neighbours, as candidates for ``evaluate_candidates``.

    ``nnf``: int32 (B, K, Hq, Wq) matches of every query pixel, best first. ``neighbours``:
    integer (B, M, Hq, Wq) flat query indices ``row * Wq + col`` of M query pixels near each one
    in feature space (the query map's own kNN field, e.g. ``patch_match(query, query, M + 1)[0]``
    without its first entry, the pixel itself). Returns int32 (B, M * top, Hq, Wq): the first
    ``top`` (default all K) matches of neighbour 0, then of neighbour 1, and so on.

    Query pixels with similar features share their best matches; where many key pixels score
    alike (flat or noisy areas) the best one is found by a few query pixels and spreads to the
    others through this step, which the spatial propagation of ``patch_match`` cannot do.
    ``evaluate_candidates(query, key, torch.cat([nnf, neighbour_matches(nnf, neighbours)], 1), K)``
    keeps the best K; repeating it follows the neighbours' neighbours."""
    nnf = _check_flat_indices("nnf", nnf, "K")
    neighbours = _check_flat_indices("neighbours", neighbours, "M")
    B, K, Hq, Wq = nnf.shape
    if neighbours.shape[0] != B or neighbours.shape[2:] != nnf.shape[2:]:
        raise ValueError(
            f"neighbours: expected shape ({B}, M, {Hq}, {Wq}) to match nnf, got {tuple(neighbours.shape)}"
        )
    if neighbours.device != nnf.device:
        raise ValueError(f"neighbours: on {neighbours.device}, nnf on {nnf.device}")
    if top is None:
        top = K
    if not isinstance(top, int) or isinstance(top, bool) or not 1 <= top <= K:
        raise ValueError(f"top: expected an int in [1, {K}] (the matches per pixel in nnf), got {top!r}")
    _check_in_range("neighbours", neighbours, Hq * Wq, "query")
    M = neighbours.shape[1]
    matches = nnf[:, :top].reshape(B, 1, top, Hq * Wq).expand(B, M, top, Hq * Wq)
    index = neighbours.reshape(B, M, 1, Hq * Wq).long().expand(B, M, top, Hq * Wq)
    return torch.gather(matches, 3, index).reshape(B, M * top, Hq, Wq).int()


# ----------------------------------------------------------------------------- flow images


def _opencv():
    """OpenCV, an optional extra that only the flow colouring needs."""
    try:
        import cv2
    except ImportError as error:
        raise ImportError(
            "flow_to_color needs OpenCV, an optional dependency of cocosnet_ops: "
            "pip install opencv-python-headless"
        ) from error
    return cv2


def flow_to_color(flow: Tensor | np.ndarray, max_magnitude: float | None = None) -> np.ndarray:
    """Colour-code a flow field (..., 2) of (dx, dy) as uint8 RGB (..., 3).

    HSV coding through OpenCV: hue is the direction (0 degrees, red, points along +x; angles
    grow towards +y), saturation the magnitude divided by ``max_magnitude`` (default: the
    largest magnitude in ``flow``), value 1. Zero flow is white, as in the Middlebury coding.
    """
    array = flow.detach().cpu().numpy() if isinstance(flow, Tensor) else np.asarray(flow)
    if array.ndim < 1 or array.shape[-1] != 2:
        raise ValueError(f"flow: expected shape (..., 2) of (dx, dy), got {array.shape}")
    if max_magnitude is not None and not (np.isfinite(max_magnitude) and max_magnitude > 0):
        raise ValueError(f"max_magnitude: expected a finite value > 0 or None, got {max_magnitude}")
    cv2 = _opencv()
    pairs = np.nan_to_num(array.astype(np.float32).reshape(-1, 1, 2))
    magnitude, angle = cv2.cartToPolar(pairs[..., 0], pairs[..., 1], angleInDegrees=True)
    scale = max_magnitude if max_magnitude is not None else float(magnitude.max(initial=0.0))
    saturation = np.clip(magnitude / scale, 0.0, 1.0) if scale > 0 else np.zeros_like(magnitude)
    hsv = np.concatenate([angle, saturation, np.ones_like(magnitude)], axis=-1).reshape(-1, 1, 3)
    rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return np.rint(rgb * 255.0).astype(np.uint8).reshape(*array.shape[:-1], 3)


def nnf_to_flow_image(
    nnf: Tensor, key_size: Sequence[int], rank: int = 0, max_magnitude: float | None = None
) -> np.ndarray:
    """uint8 RGB images (B, Hq, Wq, 3) of the offsets of the ``rank``-th match (0: the best),
    coloured by ``flow_to_color``. The colour scale is shared by the whole batch."""
    if not isinstance(nnf, Tensor) or nnf.dim() != 4:
        shape = tuple(nnf.shape) if isinstance(nnf, Tensor) else type(nnf).__name__
        raise ValueError(f"nnf: expected a 4-D tensor (B, K, Hq, Wq), got {shape}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < nnf.shape[1]:
        raise ValueError(f"rank: expected an int in [0, {nnf.shape[1]}), got {rank!r}")
    offsets = nnf_to_offsets(nnf[:, rank : rank + 1], key_size)[:, 0]
    return flow_to_color(offsets.float(), max_magnitude)


# ----------------------------------------------------------------------------- reconstruction


def reconstruct(
    value: Tensor, nnf: Tensor, scores: Tensor | None = None, temperature: float = 0.01
) -> Tensor:
    """An image (B, Cv, Hq, Wq) rebuilt from the key-side ``value`` (B, Cv, Hk, Wk) and an NNF.

    Without ``scores``: each query pixel copies the value at its best match (``nnf[:, 0]``).
    With ``scores`` (B, K, Hq, Wq), e.g. from ``patch_match``: the softmax over the K matches
    of ``scores / temperature`` weights their values. For ``patch_size=1`` scores this is what
    ``cocosnet_ops.weighted_gather(query, key, value, nnf, temperature)`` computes from the
    features; here the features are not needed. Differentiable in ``value`` and ``scores``.
    """
    if not isinstance(value, Tensor) or value.dim() != 4:
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"value: expected a 4-D tensor (B, Cv, Hk, Wk), got {shape}")
    B, _, Hk, Wk = value.shape
    nnf = _check_nnf(nnf, Hk * Wk)
    if nnf.shape[0] != B:
        raise ValueError(f"nnf: batch {nnf.shape[0]} does not match value batch {B}")
    if scores is None:
        return reference.gather_pixels(value, nnf[:, :1])[:, :, 0]
    if not isinstance(scores, Tensor) or scores.shape != nnf.shape:
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"scores: expected shape {tuple(nnf.shape)} like nnf, got {shape}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature: expected a float, got {type(temperature).__name__}")
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature: expected a finite value > 0, got {temperature}")
    return reference.softmax_gather(scores, reference.gather_pixels(value, nnf), temperature)
