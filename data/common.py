"""What the file-backed datasets share: reading photos, naming bad files, skipping bad samples, and
self-reference pairs with a known warp (an exemplar made from the target, with the true correspondence)."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset


class BadSampleError(ValueError):
    """A file of a sample is missing or cannot be decoded; the message names the file."""


def read_photo(path: str | os.PathLike) -> Image.Image:
    """An RGB photo, fully decoded here, so that a truncated or corrupt file fails with its name."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise BadSampleError(f"cannot read image {path}: {error}") from error


def read_label_map(path: str | os.PathLike) -> np.ndarray:
    """A label or instance map (one id per pixel), as an int64 (H, W) array."""
    try:
        with Image.open(path) as image:
            if image.mode in ("RGB", "RGBA"):
                raise ValueError(f"expected one id per pixel (mode L, P, I or I;16), got mode {image.mode}")
            return np.asarray(image, dtype=np.int64)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise BadSampleError(f"cannot read label map {path}: {error}") from error


def photo_to_tensor(image: Image.Image) -> torch.Tensor:
    """(3, H, W) float32 in [-1, 1]."""
    array = np.asarray(image, dtype=np.float32)
    return torch.from_numpy(array.transpose(2, 0, 1) / 127.5 - 1.0)


def random_crop_origin(size: tuple[int, int], crop: tuple[int, int]) -> tuple[int, int]:
    """Top-left corner (y, x) of a random crop, from torch's generator (seeded per DataLoader worker)."""
    y = int(torch.randint(0, size[0] - crop[0] + 1, ()).item())
    x = int(torch.randint(0, size[1] - crop[1] + 1, ()).item())
    return y, x


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_probability(value: Any, name: str) -> float:
    """A probability (an int or float in [0, 1]), as a float."""
    if not _is_number(value) or not 0 <= value <= 1:
        raise ValueError(f"{name}: expected a probability, a number in [0, 1], got {value!r}")
    return float(value)


def check_size(size: Any, name: str = "size") -> tuple[int, int]:
    """An int side or an (H, W) pair, as (H, W)."""
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if (not isinstance(size, tuple | list) or len(size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 16 for s in size)):
        raise ValueError(f"{name}: expected an int >= 16 or an (H, W) pair of them, got {size!r}")
    return int(size[0]), int(size[1])


class SkippingLoader:
    """Loads samples by index; with ``skip`` a bad sample is replaced by the next good one.

    The first bad sample gives one warning naming its file; later ones are skipped silently (a
    DataLoader worker process warns once for itself).
    """

    def __init__(self, load: Callable[[int], dict], length: int, skip: bool) -> None:
        self.load, self.length, self.skip = load, length, skip
        self.bad: set[int] = set()
        self.warned = False

    def __call__(self, index: int) -> dict:
        if not self.skip:
            return self.load(index)
        for step in range(self.length):
            candidate = (index + step) % self.length
            if candidate in self.bad:
                continue
            try:
                return self.load(candidate)
            except BadSampleError as error:
                self.bad.add(candidate)
                if not self.warned:
                    self.warned = True
                    warnings.warn(f"skipping bad samples (skip_bad_samples=True), first: {error}",
                                  RuntimeWarning, stacklevel=3)
        raise BadSampleError("skip_bad_samples=True, but every sample of the dataset is bad")


class PhotoListDataset(Dataset):
    """A dataset of one item per entry of ``self.photos``, loaded through ``self._load`` (a
    :class:`SkippingLoader`); negative indices count from the end."""

    photos: list
    _load: SkippingLoader

    def __len__(self) -> int:
        return len(self.photos)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} items")
        return self._load(index % len(self))


def read_list(path: Path) -> list[str]:
    """Non-empty stripped lines of a list file, with Windows backslashes turned into slashes."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as error:
        raise ValueError(f"cannot read list file {path}: {error}") from error
    return [line.strip().replace("\\", "/") for line in text.splitlines() if line.strip()]


def safe_name(relative_path: str) -> str:
    """A file-name-safe id from a relative path: folders joined by '_', no extension."""
    stem = os.path.splitext(relative_path.replace("\\", "/"))[0]
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem.replace("/", "_")).strip("_")


class SelfReferencePair(NamedTuple):
    """An exemplar made from the target by a known warp, and the correspondence that warp gives."""

    exemplar: torch.Tensor  # (3, H, W) the warped photo
    exemplar_label: torch.Tensor  # (C, H, W) the warped label
    exemplar_coords: torch.Tensor  # (2, H, W) the (x, y) exemplar pixel of each target pixel
    valid: torch.Tensor  # (1, H, W) 1 where that pixel lies inside the exemplar's frame


def random_affine(size: tuple[int, int], max_rotation: float = 15.0,
                  scale_range: Sequence[float] = (0.8, 1.2), max_shift: float = 0.1,
                  flip_probability: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random similarity transform of an (H, W) frame, float64 (2, 3): a target pixel (x, y, 1) to the
    exemplar pixel showing the same point, pixel centres at integers.

    About the frame's centre: a horizontal mirror with probability ``flip_probability``, a rotation
    uniform in +-``max_rotation`` degrees, a scale log-uniform in ``scale_range`` (zooming in as likely as
    out), then a shift uniform in +-``max_shift`` of each side. Five draws from ``generator`` (torch's
    global one by default, which the trainer seeds per item), whatever the bounds.
    """
    if not _is_number(max_rotation) or not 0 <= max_rotation <= 180:
        raise ValueError(f"max_rotation: expected degrees in [0, 180], got {max_rotation!r}")
    if (not isinstance(scale_range, Sequence) or len(scale_range) != 2
            or not all(_is_number(s) and s > 0 for s in scale_range) or scale_range[0] > scale_range[1]):
        raise ValueError(f"scale_range: expected positive (low, high), low <= high, got {scale_range!r}")
    if not _is_number(max_shift) or max_shift < 0:
        raise ValueError(f"max_shift: expected a fraction of the side >= 0, got {max_shift!r}")
    flip_probability = check_probability(flip_probability, "flip_probability")
    mirror_draw, rotation_draw, scale_draw, shift_x_draw, shift_y_draw = torch.rand(
        5, generator=generator, dtype=torch.float64).tolist()
    mirror = -1.0 if mirror_draw < flip_probability else 1.0
    angle = math.radians((2 * rotation_draw - 1) * max_rotation)
    low, high = math.log(scale_range[0]), math.log(scale_range[1])
    scale = math.exp(low + scale_draw * (high - low))
    height, width = size
    shift_x = (2 * shift_x_draw - 1) * max_shift * width
    shift_y = (2 * shift_y_draw - 1) * max_shift * height
    # exemplar = scale * rotation @ mirror @ (target - centre) + centre + shift
    cos, sin = scale * math.cos(angle), scale * math.sin(angle)
    linear = ((mirror * cos, -sin), (mirror * sin, cos))
    centre_x, centre_y = (width - 1) / 2, (height - 1) / 2
    return torch.tensor([
        [linear[0][0], linear[0][1], centre_x + shift_x - linear[0][0] * centre_x - linear[0][1] * centre_y],
        [linear[1][0], linear[1][1], centre_y + shift_y - linear[1][0] * centre_x - linear[1][1] * centre_y],
    ], dtype=torch.float64)


def _apply_affine(matrix: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``matrix`` (2, 3) applied to every pixel (x, y) of an (H, W) grid: float64 (2, H, W)."""
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64),
                            torch.arange(width, dtype=torch.float64), indexing="ij")
    return torch.einsum("ij,jhw->ihw", matrix[:, :2], torch.stack([xs, ys])) + matrix[:, 2, None, None]


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Integer pixel indices reflected into [0, size - 1] about the border pixels (BORDER_REFLECT_101)."""
    period = 2 * (size - 1)
    index = index.remainder(period)
    return torch.where(index >= size, period - index, index)


def self_reference_pair(image: torch.Tensor, label: torch.Tensor, matrix: torch.Tensor) -> SelfReferencePair:
    """The exemplar that the affine ``matrix`` (2, 3) (see :func:`random_affine`) makes of a target
    ``image`` (3, H, W) and its ``label`` (C, H, W), with the correspondence from target to exemplar.

    The photo is warped bilinearly, the label (one-hot classes, pose channels, instance ids: any per-pixel
    map) by nearest neighbour, so that a one-hot label stays one-hot. Beyond the target's frame both are
    reflected about the border pixels (OpenCV's BORDER_REFLECT_101), not filled with a constant: every
    exemplar pixel is photo content with its label, with no fill colour to learn or to match against, and
    no fill value to choose per label kind (a pose label's distance channels are 1 where its RGB ones are
    0). ``exemplar_coords`` is the forward transform of the target's pixel grid, also where it leaves the
    exemplar's frame; ``valid`` is 1 where it lies inside [0, W - 1] x [0, H - 1], where a bilinear sample
    of the exemplar reads the target's own point. Everything comes back in the image's dtype.
    """
    if image.dim() != 3 or image.shape[0] != 3 or label.dim() != 3 or label.shape[1:] != image.shape[1:]:
        raise ValueError(f"image, label: expected (3, H, W) and (C, H, W), got {tuple(image.shape)} "
                         f"and {tuple(label.shape)}")
    if matrix.shape != (2, 3):
        raise ValueError(f"matrix: expected an affine (2, 3), got {tuple(matrix.shape)}")
    height, width = image.shape[1:]
    matrix = matrix.to(torch.float64)
    coords = _apply_affine(matrix, height, width)
    inverse = torch.linalg.inv(torch.cat([matrix, matrix.new_tensor([[0.0, 0.0, 1.0]])]))[:2]
    source = _apply_affine(inverse, height, width)  # the target point each exemplar pixel shows
    # grid_sample's reflection about the border pixel centres (align_corners) is BORDER_REFLECT_101.
    grid = torch.stack([source[0] / (width - 1), source[1] / (height - 1)], dim=-1) * 2 - 1
    exemplar = F.grid_sample(image[None], grid[None].to(image.dtype), mode="bilinear",
                             padding_mode="reflection", align_corners=True)[0]
    nearest_x = _reflect(torch.floor(source[0] + 0.5).long(), width)
    nearest_y = _reflect(torch.floor(source[1] + 0.5).long(), height)
    nearest = (nearest_y * width + nearest_x).flatten()
    exemplar_label = label.flatten(1).index_select(1, nearest).view_as(label)
    inside = (coords[0] >= 0) & (coords[0] <= width - 1) & (coords[1] >= 0) & (coords[1] <= height - 1)
    return SelfReferencePair(exemplar, exemplar_label, coords.to(image.dtype), inside[None].to(image.dtype))


def correspondence_fields(pair: SelfReferencePair | None, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """An item's "exemplar_coords" and "valid": the pair's, or zeros (no known correspondence) without one,
    so that items with and without a known warp collate into one batch."""
    if pair is None:
        return {"exemplar_coords": torch.zeros(2, *size), "valid": torch.zeros(1, *size)}
    return {"exemplar_coords": pair.exemplar_coords, "valid": pair.valid}
