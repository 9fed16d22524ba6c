"""An embedded procedural dataset of label maps with instances: pix2pixHD's input with no download.

Each item is a scene of several objects (discs, boxes, triangles: one class each) on a textured
ground, later objects in front of earlier ones, with its semantic label map, its instance map
and the photo. Every object is drawn in one of :data:`STYLES_PER_CLASS` appearances of its class
(a colour and a texture: plain, stripes or checks) that the label map does not tell: only the
instance features of pix2pixHD's encoder can carry it, so the per-class k-means centres of those
features differ, and choosing another centre draws the object in another style. Items are a
pure function of (seed, split, index).
"""

from __future__ import annotations

import zlib

import numpy as np
import torch
from torch.utils.data import Dataset

from data.common import check_size

SPLITS = ("train", "test")
CLASSES = ("ground", "disc", "box", "triangle")
GROUND = 0
STYLES_PER_CLASS = 3
# Instance ids as Cityscapes writes them for objects: class * 1000 + the object's number; the
# ground (stuff) is its class id, one instance for the whole ground.
INSTANCE_STRIDE = 1000
# The appearance of each style of each object class: (RGB colour in [0, 1], texture).
TEXTURES = ("plain", "stripes", "checks")
STYLE_COLOURS = np.array([
    [[0.90, 0.20, 0.15], [0.15, 0.75, 0.25], [0.20, 0.30, 0.95]],  # disc
    [[0.95, 0.85, 0.10], [0.10, 0.80, 0.85], [0.80, 0.15, 0.80]],  # box
    [[0.95, 0.55, 0.10], [0.55, 0.95, 0.55], [0.45, 0.25, 0.10]],  # triangle
])


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(split.encode()), index])


def _texture(kind: str, ys: np.ndarray, xs: np.ndarray, angle: float, period: float) -> np.ndarray:
    """Brightness factors of a texture at pixels (ys, xs): 1 (plain), or alternating 1 and 0.45."""
    if kind == "plain":
        return np.ones_like(xs)
    along = xs * np.cos(angle) + ys * np.sin(angle)
    if kind == "stripes":
        return np.where(np.floor(along / period) % 2 == 0, 1.0, 0.45)
    across = -xs * np.sin(angle) + ys * np.cos(angle)
    return np.where((np.floor(along / period) + np.floor(across / period)) % 2 == 0, 1.0, 0.45)


def _object_mask(shape_class: int, ys: np.ndarray, xs: np.ndarray, centre: np.ndarray, radius: float,
                 angle: float) -> np.ndarray:
    dy, dx = ys - centre[0], xs - centre[1]
    if CLASSES[shape_class] == "disc":
        return dx ** 2 + dy ** 2 <= radius ** 2
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    if CLASSES[shape_class] == "box":
        return (np.abs(u) <= radius) & (np.abs(v) <= 0.7 * radius)
    # A triangle: inside three half-planes at 120 degrees.
    inside = np.ones_like(xs, dtype=bool)
    for k in range(3):
        a = angle + 2 * np.pi * k / 3
        inside &= dx * np.cos(a) + dy * np.sin(a) <= 0.5 * radius
    return inside


def make_scene(seed: int, split: str, index: int, size: tuple[int, int], objects: tuple[int, int] = (3, 6)
               ) -> dict[str, np.ndarray]:
    """One scene: "image" (H, W, 3) in [0, 1], "label" (H, W) class ids, "instance" (H, W) instance
    ids and "styles" (H, W) the style of each pixel's object (-1 on the ground)."""
    rng = _rng(seed, split, index)
    height, width = size
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    ground = 0.35 + 0.25 * rng.uniform(size=3)
    shade = 0.85 + 0.15 * (ys / height) + rng.normal(0.0, 0.03, (height, width))
    image = ground * shade[..., None]
    label = np.full((height, width), GROUND, dtype=np.int64)
    instance = np.full((height, width), GROUND, dtype=np.int64)
    styles = np.full((height, width), -1, dtype=np.int64)
    side = min(height, width)
    for number in range(1, int(rng.integers(objects[0], objects[1] + 1)) + 1):
        shape_class = int(rng.integers(1, len(CLASSES)))
        style = int(rng.integers(STYLES_PER_CLASS))
        radius = rng.uniform(0.12, 0.22) * side
        centre = rng.uniform([0.1 * height, 0.1 * width], [0.9 * height, 0.9 * width])
        angle = rng.uniform(0, np.pi)
        mask = _object_mask(shape_class, ys, xs, centre, radius, angle)
        texture = _texture(TEXTURES[style], ys[mask], xs[mask], rng.uniform(0, np.pi), max(2.0, side / 16))
        colour = STYLE_COLOURS[shape_class - 1, style] * rng.uniform(0.9, 1.0)
        image[mask] = colour * texture[:, None]
        label[mask] = shape_class
        instance[mask] = shape_class * INSTANCE_STRIDE + number
        styles[mask] = style
    return {"image": np.clip(image, 0.0, 1.0), "label": label, "instance": instance, "styles": styles}


class SyntheticScenesDataset(Dataset):
    """Scenes of textured objects with label and instance maps (see the module docstring).

    Items: "label" float32 (4, H, W) one-hot classes (:data:`CLASSES`), "instance" float32 (1, H, W)
    instance ids, "image" float32 (3, H, W) in [-1, 1], "name". The pix2pixHD model's dataset; it
    has no exemplars, so CoCosNet does not train on it.
    """

    label_nc = len(CLASSES)

    def __init__(self, split: str = "train", size: int | tuple[int, int] = 64, length: int = 1000,
                 seed: int = 0) -> None:
        if split not in SPLITS:
            raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
        self.image_size = check_size(size)
        if not isinstance(length, int) or isinstance(length, bool) or length < 1:
            raise ValueError(f"length: expected a positive int, got {length!r}")
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed: expected a non-negative int, got {seed!r}")
        self.split, self.length, self.seed = split, length, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of {self.length} items")
        index %= self.length
        scene = make_scene(self.seed, self.split, index, self.image_size)
        label = torch.from_numpy(scene["label"])
        return {
            "label": torch.nn.functional.one_hot(label, self.label_nc).permute(2, 0, 1).float(),
            "instance": torch.from_numpy(scene["instance"][None].astype(np.float32)),
            "image": torch.from_numpy(scene["image"].transpose(2, 0, 1).astype(np.float32) * 2 - 1),
            "name": f"scene_{self.split}_{index:06d}",
        }
