"""What the file-backed datasets share: reading photos, naming bad files, skipping bad samples."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
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
