"""An embedded procedural dataset of posed, textured figures whose true correspondence is known.

Each item is one identity (body proportions, a texture per body part, a background) rendered in two
random poses: the exemplar and the target. Every body part is a capsule attached to a bone of the
COCO-18 skeleton, textured through coordinates (u along the bone, v across it) that are the same on
the same identity in any pose, so the exemplar pixel showing the surface point of each target pixel
follows exactly from the two poses: ``exemplar_coords``, with ``valid`` where that point is visible in
both. The poses go through the OpenPose txt layout and :mod:`data.pose`, as a dataset read from disk
does, to give the 20-channel labels. Items are a pure function of (seed, split, index).
"""

from __future__ import annotations

import math
import os
import zlib
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from data import pose as openpose

SPLITS = ("train", "test")

# Body parts: (name, start keypoint, end keypoint, half-width as a fraction of the torso length).
# The torso runs from the neck to the middle of the hips; the head is placed from the neck and nose.
TORSO, HEAD = 0, 1
PARTS = (
    ("torso", 1, None, 0.42),
    ("head", 1, 0, 0.26),
    ("right_thigh", 8, 9, 0.22),
    ("right_shin", 9, 10, 0.18),
    ("left_thigh", 11, 12, 0.22),
    ("left_shin", 12, 13, 0.18),
    ("right_upper_arm", 2, 3, 0.17),
    ("right_forearm", 3, 4, 0.15),
    ("left_upper_arm", 5, 6, 0.17),
    ("left_forearm", 6, 7, 0.15),
)
ARM_PARTS = (6, 7, 8, 9)
TEXTURE_SIZE = (16, 32)  # texels across (v) and along (u) a part


def _rng(seed: int, split: str, index: int, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(split.encode()), index, stream])


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Colours (..., 3) in [0, 1] from hue, saturation and value in [0, 1]."""
    k = (np.array([5.0, 3.0, 1.0]) + h[..., None] * 6.0) % 6.0
    return v[..., None] - v[..., None] * s[..., None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


class Identity:
    """What stays the same across poses: bone lengths, part widths and textures, background."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.shoulder = rng.uniform(0.30, 0.38)
        self.hip = rng.uniform(0.18, 0.25)
        self.neck_to_nose = rng.uniform(0.34, 0.40)
        self.upper_arm = rng.uniform(0.52, 0.62)
        self.forearm = rng.uniform(0.48, 0.58)
        self.thigh = rng.uniform(0.72, 0.84)
        self.shin = rng.uniform(0.68, 0.80)
        self.half_widths = np.array([p[3] for p in PARTS]) * rng.uniform(0.9, 1.15, len(PARTS))
        self.textures = self._textures(rng).astype(np.float32)
        self.background_colour = _hsv_to_rgb(
            np.array(rng.uniform()), np.array(rng.uniform(0.0, 0.5)), np.array(rng.uniform(0.2, 0.95)))
        self.noisy_background = bool(rng.uniform() < 0.5)

    @staticmethod
    def _textures(rng: np.random.Generator) -> np.ndarray:
        """Per part: coloured stripes, blobs and a ramp along it, features that say where on the part."""
        parts, (rows, cols) = len(PARTS), TEXTURE_SIZE
        v, u = np.meshgrid(np.linspace(0, 1, rows), np.linspace(0, 1, cols), indexing="ij")
        offsets = np.column_stack([np.zeros(parts), rng.uniform(0.25, 0.75, parts),
                                   rng.uniform(0.1, 0.9, parts)])
        hues = (rng.uniform(size=(parts, 1)) + offsets) % 1.0
        colours = _hsv_to_rgb(hues, rng.uniform(0.5, 1.0, (parts, 3)), rng.uniform(0.45, 1.0, (parts, 3)))
        angle = rng.uniform(-0.5, 0.5, parts)
        angle[TORSO] = rng.uniform(0, math.pi)
        frequency, phase = rng.uniform(1.5, 4.0, parts), rng.uniform(0, 2 * math.pi, parts)
        wave = (u * np.cos(angle)[:, None, None] + 0.5 * v * np.sin(angle)[:, None, None])
        stripes = (0.5 + 0.5 * np.tanh(3.0 * np.sin(2 * math.pi * frequency[:, None, None] * wave
                                                      + phase[:, None, None])))[..., None]
        texture = colours[:, None, None, 0] * (1 - stripes) + colours[:, None, None, 1] * stripes
        blobs = 3
        centre_u = rng.uniform(0.1, 0.9, (blobs, parts, 1, 1))
        centre_v = rng.uniform(0.2, 0.8, (blobs, parts, 1, 1))
        radius = rng.uniform(0.08, 0.18, (blobs, parts, 1, 1))
        radius[rng.uniform(size=(blobs, parts)) < 0.35] = 1e-3  # some parts have fewer blobs
        for blob in np.exp(-((u - centre_u) ** 2 + (0.5 * (v - centre_v)) ** 2) / (2 * radius ** 2)):
            texture = texture * (1 - blob[..., None]) + colours[:, None, None, 2] * blob[..., None]
        ramp = 1.0 + rng.choice([-1.0, 1.0], (parts, 1, 1)) * 0.25 * (u - 0.5)
        return np.clip(texture * ramp[..., None], 0.0, 1.0)


class Figure:
    """One identity in one pose, placed in a (size, size) frame: keypoints and the parts' frames."""

    def __init__(self, identity: Identity, rng: np.random.Generator, size: int) -> None:
        keypoints = self._skeleton(identity, rng)
        # Part frames (start point, unit axis, length) in torso-length units, then fit into the frame.
        starts, ends = self._part_ends(keypoints)
        widths = identity.half_widths
        extent = np.concatenate([starts - widths[:, None], starts + widths[:, None],
                                 ends - widths[:, None], ends + widths[:, None], keypoints])
        low, high = extent.min(axis=0), extent.max(axis=0)
        span = np.maximum(high - low, 1e-6)
        scale = min(rng.uniform(0.72, 0.92) * size / span[1], 0.94 * size / span[0])
        margin = size - span * scale
        offset = np.array([rng.uniform(0.2, 0.8), rng.uniform(0.3, 0.7)]) * margin - low * scale
        self._place(identity, keypoints, scale, offset)
        self.draw_order = _draw_order(rng)

    @classmethod
    def posed(cls, identity: Identity, keypoints: np.ndarray, scale: float, offset: np.ndarray,
              draw_order: list[int]) -> Figure:
        """The figure of ``keypoints`` (torso-length units) seen by a camera: pixel = unit * scale
        + offset; the parts drawn in ``draw_order`` (first drawn, furthest back)."""
        figure = cls.__new__(cls)
        figure._place(identity, keypoints, scale, offset)
        figure.draw_order = draw_order
        return figure

    def _place(self, identity: Identity, keypoints: np.ndarray, scale: float, offset: np.ndarray) -> None:
        starts, ends = self._part_ends(keypoints)
        self.keypoints = keypoints * scale + offset
        self.starts = starts * scale + offset
        axes = (ends - starts) * scale
        self.lengths = np.maximum(np.linalg.norm(axes, axis=1), 1e-6)
        self.axes = axes / self.lengths[:, None]
        self.half_widths = identity.half_widths * scale

    @staticmethod
    def _skeleton(identity: Identity, rng: np.random.Generator) -> np.ndarray:
        """COCO-18 keypoints in torso-length units, image axes (y down), facing the viewer."""
        def direction(angle: float) -> np.ndarray:  # angle from straight down, towards +x when positive
            return np.array([math.sin(angle), math.cos(angle)])

        tilt = rng.normal(0.0, math.radians(8))
        down, right = direction(tilt), np.array([math.cos(tilt), -math.sin(tilt)])
        k = np.zeros((openpose.NUM_KEYPOINTS, 2))
        neck = k[1]
        hips = neck + down
        k[2], k[5] = neck - identity.shoulder * right, neck + identity.shoulder * right
        k[8], k[11] = hips - identity.hip * right, hips + identity.hip * right
        head_angle = tilt + math.pi + rng.normal(0.0, math.radians(12))
        up, head_right = direction(head_angle), -direction(head_angle + math.pi / 2)
        k[0] = neck + identity.neck_to_nose * up
        head = identity.neck_to_nose
        for eye, ear, side in ((14, 16, -1.0), (15, 17, 1.0)):
            k[eye] = k[0] + head * (0.28 * side * head_right + 0.25 * up)
            k[ear] = k[0] + head * (0.55 * side * head_right + 0.05 * up)
        for shoulder, elbow, wrist, side in ((2, 3, 4, -1.0), (5, 6, 7, 1.0)):
            upper = tilt + side * rng.uniform(math.radians(-20), math.radians(165))
            lower = upper + side * rng.choice([-1.0, 1.0]) * rng.uniform(0, math.radians(130))
            k[elbow] = k[shoulder] + identity.upper_arm * direction(upper)
            k[wrist] = k[elbow] + identity.forearm * direction(lower)
        for hip, knee, ankle, side in ((8, 9, 10, -1.0), (11, 12, 13, 1.0)):
            thigh = tilt + side * rng.uniform(math.radians(-12), math.radians(40))
            shin = thigh + rng.choice([-1.0, 1.0]) * rng.uniform(0, math.radians(80))
            k[knee] = k[hip] + identity.thigh * direction(thigh)
            k[ankle] = k[knee] + identity.shin * direction(shin)
        return k

    @staticmethod
    def _part_ends(k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        starts, ends = np.zeros((len(PARTS), 2)), np.zeros((len(PARTS), 2))
        for part, (_, start, end, _) in enumerate(PARTS):
            if part == TORSO:
                starts[part], ends[part] = k[1], (k[8] + k[11]) / 2
            elif part == HEAD:
                neck_to_nose = k[0] - k[1]
                starts[part], ends[part] = k[1] + 0.35 * neck_to_nose, k[0] + 0.75 * neck_to_nose
            else:
                starts[part], ends[part] = k[start], k[end]
        return starts, ends

    def part_coordinates(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For pixels at (xs, ys): the visible part (-1: background) and its (u, v) coordinates.

        u runs from 0 at the bone's start to 1 at its end, v from -1 to 1 across; each part is the
        capsule of points within its half-width of the bone (the same shape in (u, v) in any pose).
        """
        height, width = xs.shape
        part_map = np.full(xs.shape, -1, dtype=np.int64)
        u_map = np.zeros(xs.shape)
        v_map = np.zeros(xs.shape)
        for part in self.draw_order:
            start, axis = self.starts[part], self.axes[part]
            half_width, length = self.half_widths[part], self.lengths[part]
            end = start + length * axis
            low = np.floor(np.minimum(start, end) - half_width).astype(int)
            high = np.ceil(np.maximum(start, end) + half_width).astype(int) + 1
            box = (slice(max(low[1], 0), min(high[1], height)), slice(max(low[0], 0), min(high[0], width)))
            dx, dy = xs[box] - start[0], ys[box] - start[1]
            along = dx * axis[0] + dy * axis[1]
            across = dy * axis[0] - dx * axis[1]
            beyond = np.maximum(np.maximum(-along, along - length), 0.0)
            inside = beyond ** 2 + across ** 2 <= half_width ** 2
            part_map[box][inside] = part
            u_map[box][inside] = along[inside] / length
            v_map[box][inside] = across[inside] / half_width
        return part_map, u_map, v_map

    def surface_to_pixels(self, parts: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Pixel (x, y) of the surface points (part, u, v) in this pose, shape (..., 2)."""
        starts, axes = self.starts[parts], self.axes[parts]
        normals = np.stack([-axes[..., 1], axes[..., 0]], axis=-1)
        return (starts + (u * self.lengths[parts])[..., None] * axes
                + (v * self.half_widths[parts])[..., None] * normals)


def _draw_order(rng: np.random.Generator) -> list[int]:
    """Parts in drawing order: some arms behind the torso."""
    arms_behind = rng.uniform(size=len(ARM_PARTS)) < 0.25
    behind = [part for part, back in zip(ARM_PARTS, arms_behind, strict=True) if back]
    return behind + [p for p in range(len(PARTS)) if p not in behind]


def _sample_textures(identity: Identity, figure: Figure, parts: np.ndarray, u: np.ndarray,
                     v: np.ndarray) -> np.ndarray:
    """Bilinear texture lookup for the surface points (part, u, v): colours (N, 3)."""
    rows, cols = TEXTURE_SIZE
    cap = figure.half_widths[parts] / figure.lengths[parts]  # the rounded ends span u in [-cap, 1 + cap]
    tx = np.clip((u + cap) / (1 + 2 * cap), 0.0, 1.0) * (cols - 1)
    ty = np.clip((v + 1) / 2, 0.0, 1.0) * (rows - 1)
    x0 = np.minimum(tx.astype(np.int64), cols - 2)
    y0 = np.minimum(ty.astype(np.int64), rows - 2)
    fx, fy = (tx - x0)[:, None], (ty - y0)[:, None]
    tex = identity.textures
    return ((tex[parts, y0, x0] * (1 - fx) + tex[parts, y0, x0 + 1] * fx) * (1 - fy)
            + (tex[parts, y0 + 1, x0] * (1 - fx) + tex[parts, y0 + 1, x0 + 1] * fx) * fy)


def _background(identity: Identity, rng: np.random.Generator, size: int) -> np.ndarray:
    image = np.empty((size, size, 3), dtype=np.float32)
    image[...] = identity.background_colour
    if identity.noisy_background:
        coarse = rng.normal(0.0, 0.08, (5, 5, 3)).astype(np.float32)
        image += cv2.resize(coarse, (size, size), interpolation=cv2.INTER_LINEAR)
        image += rng.standard_normal((size, size, 3), dtype=np.float32) * 0.04
    return np.clip(image, 0.0, 1.0)


def render(identity: Identity, figure: Figure, rng: np.random.Generator, size: int) -> tuple[np.ndarray, ...]:
    """The photo (size, size, 3) in [0, 1], and the part, u and v maps of its pixel centres."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    parts, u, v = figure.part_coordinates(xs, ys)
    image = _background(identity, rng, size)
    on = parts >= 0
    image[on] = _sample_textures(identity, figure, parts[on], u[on], v[on])
    return image, parts, u, v


def _detect(keypoints: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The keypoints as a pose file holds them, read back from the OpenPose txt layout; an ear may be
    undetected (NaN), as OpenPose misses ears."""
    detected = keypoints.copy()
    for ear in (16, 17):
        if rng.uniform() < 0.15:
            detected[ear] = np.nan
    return openpose.openpose_round_trip(detected)


def _visible(coords: np.ndarray, parts: np.ndarray, other_parts: np.ndarray) -> np.ndarray:
    """Where the point of each pixel (its part in ``parts``, -1 for the background) lies at
    ``coords`` (H, W, 2) inside the other image, which shows the same part (``other_parts``) at
    all four pixels its bilinear sample reads."""
    height, width = other_parts.shape
    visible = np.zeros(parts.shape, dtype=bool)
    inside = (coords[..., 0] >= 0) & (coords[..., 0] <= width - 1) \
        & (coords[..., 1] >= 0) & (coords[..., 1] <= height - 1)
    x0, y0 = np.floor(coords[inside, 0]).astype(np.int64), np.floor(coords[inside, 1]).astype(np.int64)
    x1, y1 = np.minimum(x0 + 1, width - 1), np.minimum(y0 + 1, height - 1)
    part = parts[inside]
    visible[inside] = ((other_parts[y0, x0] == part) & (other_parts[y0, x1] == part)
                       & (other_parts[y1, x0] == part) & (other_parts[y1, x1] == part))
    return visible


def make_pair(seed: int, split: str, index: int, size: int) -> dict[str, np.ndarray]:
    """One item as numpy arrays (HWC images in [0, 1]); see :class:`SyntheticPoseDataset`."""
    rng = _rng(seed, split, index)
    identity = Identity(rng)
    exemplar_figure, target_figure = Figure(identity, rng, size), Figure(identity, rng, size)
    exemplar, exemplar_parts, _, _ = render(identity, exemplar_figure, rng, size)
    target, parts, u, v = render(identity, target_figure, rng, size)

    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    coords = np.stack([xs, ys], axis=-1)
    on = parts >= 0
    coords[on] = exemplar_figure.surface_to_pixels(parts[on], u[on], v[on])
    # Valid: the exemplar shows the same part at all four pixels its bilinear sample reads.
    valid = _visible(coords, parts, exemplar_parts) & on
    keypoints = _detect(target_figure.keypoints, rng)
    exemplar_keypoints = _detect(exemplar_figure.keypoints, rng)
    return {
        "image": target,
        "exemplar": exemplar,
        "label": openpose.draw_pose_label(keypoints, (size, size)),
        "exemplar_label": openpose.draw_pose_label(exemplar_keypoints, (size, size)),
        "exemplar_coords": coords,
        "valid": valid,
        "keypoints": keypoints,
        "exemplar_keypoints": exemplar_keypoints,
    }


# Video: keyframe poses the figure moves through, and how far the camera zooms and pans (a
# fraction of the frame side) over the clip.
VIDEO_KEYFRAMES = 3
VIDEO_ZOOM = (-0.12, 0.12)
VIDEO_PAN = 0.12


def _smoothstep(x: np.ndarray) -> np.ndarray:
    return x * x * (3 - 2 * x)


def _video_background(identity: Identity, rng: np.random.Generator, low: np.ndarray, high: np.ndarray,
                      pixels_per_unit: float) -> tuple[np.ndarray, np.ndarray, float]:
    """The world behind the figure, (h, w, 3), covering the world box [low, high] (torso-length
    units) at ``pixels_per_unit``: as ``_background`` draws a frame, so that a camera moving over
    it shows a background that moves with the camera. Also its origin and resolution."""
    width, height = np.ceil((high - low) * pixels_per_unit).astype(int) + 2
    canvas = np.empty((height, width, 3), dtype=np.float32)
    canvas[...] = identity.background_colour
    if identity.noisy_background:
        coarse = rng.normal(0.0, 0.08, (5, 5, 3)).astype(np.float32)
        canvas += cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)
        canvas += rng.standard_normal((height, width, 3), dtype=np.float32) * 0.04
    return np.clip(canvas, 0.0, 1.0), low, pixels_per_unit


def make_video(seed: int, index: int, size: int, frames: int) -> dict[str, np.ndarray]:
    """A clip of ``frames`` frames: one identity moving through interpolated poses while the
    camera zooms and pans over a fixed background, one exemplar photo of it in another pose,
    and the true correspondence of every frame to the exemplar and to the frame before.

    Returns numpy arrays (HWC images in [0, 1]): "frames" (T, S, S, 3) and their "labels"
    (T, S, S, 20); "exemplar" (S, S, 3) and "exemplar_label"; "exemplar_coords" (T, S, S, 2),
    the exemplar pixel (x, y) of the surface point of every frame pixel (background pixels:
    their own position), and "exemplar_valid" (T, S, S), where that point is on the figure in
    both and visible in the exemplar; "previous_coords" (T, S, S, 2), the pixel of frame t-1
    showing the same point (figure or background; frame 0: its own position), and
    "previous_valid" (T, S, S), where frame t-1 shows it (False: occluded or disoccluded between
    the frames, or out of frame; all True at frame 0); "keypoints" (T, 18, 2) and
    "exemplar_keypoints". A pure function of (seed, index, size, frames).
    """
    if not isinstance(frames, int) or frames < 1:
        raise ValueError(f"frames: expected a positive int, got {frames!r}")
    rng = _rng(seed, "video", index)
    identity = Identity(rng)
    exemplar_figure = Figure(identity, rng, size)
    exemplar, exemplar_parts, _, _ = render(identity, exemplar_figure, rng, size)
    keyframes = np.stack([Figure._skeleton(identity, rng) for _ in range(VIDEO_KEYFRAMES)])
    # Poses: keyframe to keyframe, eased; the camera: zoom and pan from 0 at the first frame.
    time = np.linspace(0.0, VIDEO_KEYFRAMES - 1, frames)
    segment = np.minimum(time.astype(int), VIDEO_KEYFRAMES - 2)
    ease = _smoothstep(time - segment)[:, None, None]
    poses = keyframes[segment] * (1 - ease) + keyframes[segment + 1] * ease
    progress = np.linspace(0.0, 1.0, frames)
    zoom = 1.0 + rng.uniform(*VIDEO_ZOOM) * progress
    pan = rng.uniform(-VIDEO_PAN, VIDEO_PAN, 2)[None] * size * progress[:, None]
    draw_order = _draw_order(rng)
    extents = []
    for pose in poses:
        starts, ends = Figure._part_ends(pose)
        widths = identity.half_widths[:, None]
        extents.append(np.concatenate([starts - widths, starts + widths, ends - widths, ends + widths, pose]))
    extent = np.concatenate(extents)
    low, high = extent.min(axis=0), extent.max(axis=0)
    span = np.maximum(high - low, 1e-6)
    base_scale = 0.7 * size / max(span[1], span[0] * 0.8)
    centre = (low + high) / 2
    scales = base_scale * zoom
    offsets = size / 2 + pan - centre[None] * scales[:, None]
    figures = [Figure.posed(identity, pose, scale, offset, draw_order)
               for pose, scale, offset in zip(poses, scales, offsets, strict=True)]
    # The world box every frame sees, and the background over it.
    corners = np.array([[0.0, 0.0], [size - 1.0, size - 1.0]])
    seen = np.concatenate([(corners - offset) / scale for scale, offset in zip(scales, offsets, strict=True)])
    canvas, origin, resolution = _video_background(identity, rng, seen.min(axis=0) - 1, seen.max(axis=0) + 1,
                                                   float(scales.max()))
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    pixels = np.stack([xs, ys], axis=-1)
    out: dict[str, list] = {name: [] for name in (
        "frames", "labels", "exemplar_coords", "exemplar_valid", "previous_coords", "previous_valid",
        "keypoints")}
    previous_parts = None
    for t, figure in enumerate(figures):
        world = (pixels - offsets[t]) / scales[t]
        canvas_xy = ((world - origin) * resolution).astype(np.float32)
        image = cv2.remap(canvas, canvas_xy[..., 0], canvas_xy[..., 1], cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT_101)
        parts, u, v = figure.part_coordinates(xs, ys)
        on = parts >= 0
        image[on] = _sample_textures(identity, figure, parts[on], u[on], v[on])
        coords = pixels.copy()
        coords[on] = exemplar_figure.surface_to_pixels(parts[on], u[on], v[on])
        previous = pixels.copy()
        if t:
            previous = world * scales[t - 1] + offsets[t - 1]
            previous[on] = figures[t - 1].surface_to_pixels(parts[on], u[on], v[on])
            previous_valid = _visible(previous, parts, previous_parts)
        else:
            previous_valid = np.ones((size, size), dtype=bool)
        keypoints = openpose.openpose_round_trip(figure.keypoints)
        out["frames"].append(image)
        out["labels"].append(openpose.draw_pose_label(keypoints, (size, size)))
        out["exemplar_coords"].append(coords)
        out["exemplar_valid"].append(_visible(coords, parts, exemplar_parts) & on)
        out["previous_coords"].append(previous)
        out["previous_valid"].append(previous_valid)
        out["keypoints"].append(keypoints)
        previous_parts = parts
    exemplar_keypoints = openpose.openpose_round_trip(exemplar_figure.keypoints)
    return {
        **{name: np.stack(values) for name, values in out.items()},
        "exemplar": exemplar,
        "exemplar_label": openpose.draw_pose_label(exemplar_keypoints, (size, size)),
        "exemplar_keypoints": exemplar_keypoints,
    }


def _chw(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32))


class SyntheticPoseDataset(Dataset):
    """Posed textured figures, the target and the exemplar the same identity; needs no download.

    Items (see data/__init__.py) also hold "exemplar_coords" (2, H, W): for each target pixel the
    (x, y) exemplar pixel of the same surface point (a background pixel holds its own position), and
    "valid" (1, H, W): 1 where that point is on the figure in both images and visible in the exemplar.
    """

    label_nc = openpose.LABEL_NC

    def __init__(self, split: str = "train", size: int = 128, length: int = 1000, seed: int = 0) -> None:
        if split not in SPLITS:
            raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
        if not isinstance(size, int) or size < 16:
            raise ValueError(f"size: expected an int >= 16, got {size!r}")
        if not isinstance(length, int) or length < 1:
            raise ValueError(f"length: expected a positive int, got {length!r}")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed: expected a non-negative int, got {seed!r}")
        self.split, self.size, self.length, self.seed = split, size, length, seed
        self.image_size = (size, size)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of {self.length} items")
        index %= self.length
        pair = make_pair(self.seed, self.split, index, self.size)
        return {
            "label": _chw(pair["label"]),
            "image": _chw(pair["image"] * 2 - 1),
            "exemplar": _chw(pair["exemplar"] * 2 - 1),
            "exemplar_label": _chw(pair["exemplar_label"]),
            "self_ref": torch.tensor(1.0),
            "name": f"synthetic_{self.split}_{index:06d}",
            "exemplar_coords": _chw(pair["exemplar_coords"]),
            "valid": torch.from_numpy(pair["valid"][None].astype(np.float32)),
        }


def export_deepfashion_layout(root: str | os.PathLike, split: str = "test", length: int = 8, size: int = 128,
                              seed: int = 0) -> list[str]:
    """Write synthetic pairs as files in the DeepFashionHD layout that data.deepfashion reads.

    Photos ``img/SYNTHETIC/id_<index>/{target,exemplar}.png`` with their OpenPose files under ``pose/``,
    the split's list (``train.txt`` or ``val.txt``: the targets) and ``deepfashion_self_pair.txt``
    (target,exemplar). Gives the list's photo paths. For trying test.py's single-pair mode or the
    DeepFashionHD loader on data with a known answer.
    """
    root = Path(root)
    photos, pairs = [], []
    for index in range(length):
        pair = make_pair(seed, split, index, size)
        folder = f"SYNTHETIC/id_{index:06d}"
        for role, image_key, pose_key in (("target", "image", "keypoints"),
                                          ("exemplar", "exemplar", "exemplar_keypoints")):
            (root / "img" / folder).mkdir(parents=True, exist_ok=True)
            pixels = np.round(pair[image_key] * 255).astype(np.uint8)
            cv2.imwrite(str(root / "img" / folder / f"{role}.png"), cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))
            openpose.write_openpose(root / "pose" / folder / f"{role}_candidate.txt",
                                    root / "pose" / folder / f"{role}_subset.txt", pair[pose_key])
        photos.append(f"img/{folder}/target.png")
        pairs.append(f"img/{folder}/target.png,img/{folder}/exemplar.png")
    (root / ("train.txt" if split == "train" else "val.txt")).write_text("\n".join(photos) + "\n")
    (root / "deepfashion_self_pair.txt").write_text("\n".join(pairs) + "\n")
    return photos


def export_video(root: str | os.PathLike, seed: int = 0, index: int = 0, size: int = 128,
                 frames: int = 24) -> dict[str, Path]:
    """Write a ``make_video`` clip as files test.py --video reads: the frames' poses as OpenPose
    files ``labels/frame_<t>_{candidate,subset}.txt``, the exemplar ``exemplar.png`` with its pose
    ``exemplar_candidate.txt``, and the frames themselves under ``frames/`` (the ground truth).
    Gives the paths of the labels folder, the exemplar and its pose file."""
    root = Path(root)
    clip = make_video(seed, index, size, frames)
    for folder in ("labels", "frames"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for t, (image, keypoints) in enumerate(zip(clip["frames"], clip["keypoints"], strict=True)):
        openpose.write_openpose(root / "labels" / f"frame_{t:04d}_candidate.txt",
                                root / "labels" / f"frame_{t:04d}_subset.txt", keypoints)
        pixels = np.round(image * 255).astype(np.uint8)
        cv2.imwrite(str(root / "frames" / f"frame_{t:04d}.png"), cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))
    pixels = np.round(clip["exemplar"] * 255).astype(np.uint8)
    cv2.imwrite(str(root / "exemplar.png"), cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))
    openpose.write_openpose(root / "exemplar_candidate.txt", root / "exemplar_subset.txt",
                            clip["exemplar_keypoints"])
    return {"labels": root / "labels", "exemplar": root / "exemplar.png",
            "exemplar_label": root / "exemplar_candidate.txt"}
