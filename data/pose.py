"""OpenPose COCO-18 keypoints: the txt layout of the DeepFashionHD pose release, and the 20-channel label.

File layout (what ``pytorch-openpose`` writes and CoCosNet v2's pose release holds), per photo:

- ``<name>_candidate.txt``: one row per detected keypoint: ``x y score id`` (pixels of the pose frame);
- ``<name>_subset.txt``: one row of 20 per person: for each of the 18 COCO keypoints the row of the
  candidate file that holds it, or -1 when it was not found, then the total score and the part count.

The label (as CoCosNet v2 draws it): channels 0-2 an RGB skeleton (a filled circle per joint, a filled
ellipse per limb, blended 0.4/0.6 over what is beneath, in the 18 OpenPose colours), channels 3-19 the
L1 distance to each of the first 17 limbs, in pixels of a 1024-pixel pose frame divided by 3 and
saturated at 255, all scaled to [0, 1]. A missing joint draws nothing; a limb with a missing end draws
nothing, and its distance channel is 1 everywhere (no limb anywhere: the distance is saturated), which
is what the public implementation feeds its network for it.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from pathlib import Path
from typing import IO

import cv2
import numpy as np

NUM_KEYPOINTS = 18
NUM_LIMB_CHANNELS = 17
LABEL_NC = 3 + NUM_LIMB_CHANNELS

KEYPOINT_NAMES = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
    "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
    "right_eye", "left_eye", "right_ear", "left_ear",
)

# Limbs as pairs of keypoint indices (0-based), in OpenPose's order; the first 17 are drawn.
LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12),
    (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17), (2, 16), (5, 17),
)

# OpenPose's colours, one per joint (and limb i takes colour i). OpenPose and CoCosNet v2 draw them into
# an OpenCV (BGR) canvas and convert it to RGB, so colour (r, g, b) lands in the label as (b, g, r).
OPENPOSE_COLOURS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
    (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)

# Sizes of the public drawing, in pixels of its 1024x1024 pose frame; scaled with the frame here.
REFERENCE_FRAME = 1024
REFERENCE_STICK_WIDTH = 20
REFERENCE_JOINT_RADIUS = 20
DISTANCE_DIVISOR = 3.0

PathOrFile = str | os.PathLike | IO[str]


def joint_label_rgb(joint: int) -> np.ndarray:
    """The label's channels 0-2 (in [0, 1]) where joint ``joint`` is drawn and nothing covers it."""
    return np.asarray(OPENPOSE_COLOURS[joint][::-1], dtype=np.float32) / 255.0


def _describe(source: PathOrFile) -> str:
    return str(source) if isinstance(source, str | os.PathLike) else getattr(source, "name", "<stream>")


def _load_rows(source: PathOrFile, columns: int) -> np.ndarray:
    try:
        with warnings.catch_warnings():  # an empty file (nobody detected) is valid: no warning for it
            warnings.simplefilter("ignore", UserWarning)
            rows = np.loadtxt(source, dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read OpenPose file {_describe(source)}: {error}") from error
    if rows.size == 0:
        return np.zeros((0, columns))
    if rows.shape[1] < columns:
        raise ValueError(
            f"OpenPose file {_describe(source)}: expected at least {columns} columns, got {rows.shape[1]}"
        )
    return rows


def read_openpose(candidate: PathOrFile, subset: PathOrFile) -> np.ndarray:
    """Keypoints of the best-scoring person: float64 (18, 2) of (x, y), NaN where a keypoint is missing.

    ``candidate``/``subset`` are the two files (paths or open text streams). A file that cannot be read
    or parsed raises ValueError naming it; an empty subset means nobody was found (all NaN).
    """
    candidates = _load_rows(candidate, 2)
    people = _load_rows(subset, NUM_KEYPOINTS)
    keypoints = np.full((NUM_KEYPOINTS, 2), np.nan)
    if len(people) == 0:
        return keypoints
    scores = people[:, NUM_KEYPOINTS] if people.shape[1] > NUM_KEYPOINTS else np.zeros(len(people))
    person = people[int(np.argmax(scores))]
    for joint in range(NUM_KEYPOINTS):
        row = int(person[joint])
        if row < 0:
            continue
        if row >= len(candidates):
            raise ValueError(
                f"OpenPose file {_describe(subset)}: keypoint {joint} refers to candidate row {row}, but "
                f"{_describe(candidate)} has {len(candidates)} rows"
            )
        keypoints[joint] = candidates[row, :2]
    return keypoints


def write_openpose(candidate: PathOrFile, subset: PathOrFile, keypoints: np.ndarray,
                   scores: np.ndarray | None = None) -> None:
    """Write one person's (18, 2) keypoints (NaN = missing) in the candidate/subset layout."""
    keypoints = np.asarray(keypoints, dtype=np.float64)
    if keypoints.shape != (NUM_KEYPOINTS, 2):
        raise ValueError(f"keypoints: expected shape ({NUM_KEYPOINTS}, 2), got {keypoints.shape}")
    present = ~np.isnan(keypoints).any(axis=1)
    if scores is None:
        scores = np.ones(NUM_KEYPOINTS)
    rows = np.flatnonzero(present)
    candidates = np.column_stack([keypoints[rows], scores[rows], np.arange(len(rows))])
    person = np.full(NUM_KEYPOINTS + 2, -1.0)
    person[rows] = np.arange(len(rows))
    person[NUM_KEYPOINTS] = float(scores[rows].sum())
    person[NUM_KEYPOINTS + 1] = float(len(rows))
    for target, table in ((candidate, candidates.reshape(-1, 4)), (subset, person[None])):
        if isinstance(target, str | os.PathLike):
            Path(target).parent.mkdir(parents=True, exist_ok=True)
        np.savetxt(target, table)


def openpose_round_trip(keypoints: np.ndarray) -> np.ndarray:
    """Write keypoints in the txt layout to memory and read them back (what a dataset on disk does)."""
    candidate, subset = io.StringIO(), io.StringIO()
    write_openpose(candidate, subset, keypoints)
    candidate.seek(0)
    subset.seek(0)
    return read_openpose(candidate, subset)


def draw_pose_label(keypoints: np.ndarray, canvas_size: tuple[int, int],
                    frame_side: float | None = None) -> np.ndarray:
    """The 20-channel label of (18, 2) keypoints (NaN = missing), float32 (H, W, 20) in [0, 1].

    Drawn at ``canvas_size`` = (H, W), the pose frame's pixels. ``frame_side`` is the side of the square
    frame the drawing sizes refer to (stick width and joint radius 20, distances divided by 3 in a
    1024-pixel frame); default max(H, W), so a frame of any size looks like the public drawing resized.
    """
    keypoints = np.asarray(keypoints, dtype=np.float64)
    if keypoints.shape != (NUM_KEYPOINTS, 2):
        raise ValueError(f"keypoints: expected shape ({NUM_KEYPOINTS}, 2), got {keypoints.shape}")
    height, width = (int(s) for s in canvas_size)
    if height < 1 or width < 1:
        raise ValueError(f"canvas_size: expected positive (H, W), got {canvas_size}")
    scale = (frame_side or max(height, width)) / REFERENCE_FRAME
    stick_width = max(1, round(REFERENCE_STICK_WIDTH * scale))
    radius = max(1, round(REFERENCE_JOINT_RADIUS * scale))
    present = ~np.isnan(keypoints).any(axis=1)

    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    for joint in np.flatnonzero(present):
        x, y = keypoints[joint]
        cv2.circle(canvas, (int(x), int(y)), radius, OPENPOSE_COLOURS[joint], thickness=-1)

    # Channel-first while drawing (contiguous planes), returned as an (H, W, C) view.
    label = np.empty((LABEL_NC, height, width), dtype=np.float32)
    limb_mask = np.empty((height, width), dtype=np.uint8)
    distance_scale = 1.0 / (scale * DISTANCE_DIVISOR)
    for limb, (start, end) in enumerate(LIMBS[:NUM_LIMB_CHANNELS]):
        if not (present[start] and present[end]):
            label[3 + limb] = 1.0
            continue
        (x0, y0), (x1, y1) = keypoints[start], keypoints[end]
        length = math.hypot(x0 - x1, y0 - y1)
        angle = math.degrees(math.atan2(y0 - y1, x0 - x1))
        centre = (int((x0 + x1) / 2), int((y0 + y1) / 2))
        polygon = cv2.ellipse2Poly(centre, (int(length / 2), stick_width), int(angle), 0, 360, 1)
        # Blending only changes the limb's pixels, so blend inside its bounding box alone.
        left, top = np.maximum(polygon.min(axis=0), 0)
        right, bottom = np.minimum(polygon.max(axis=0) + 1, (width, height))
        if right > left and bottom > top:
            region = canvas[top:bottom, left:right]
            limb_layer = region.copy()
            cv2.fillConvexPoly(limb_layer, polygon - (left, top), OPENPOSE_COLOURS[limb])
            region[...] = cv2.addWeighted(region, 0.4, limb_layer, 0.6, 0)
        limb_mask.fill(255)
        cv2.fillConvexPoly(limb_mask, polygon, 0)
        distance = cv2.distanceTransform(limb_mask, cv2.DIST_L1, 3)
        np.multiply(distance, distance_scale, out=distance)
        np.minimum(distance, 255.0, out=distance)
        np.floor(distance, out=distance)
        np.multiply(distance, 1.0 / 255.0, out=label[3 + limb])
    label[:3] = canvas.transpose(2, 0, 1)[::-1]
    label[:3] *= 1.0 / 255.0
    return label.transpose(1, 2, 0)


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W, 20) pose label to ``size`` = (H, W): skeleton nearest, distances bilinear."""
    height, width = size
    if label.shape[:2] == (height, width):
        return label
    # Plane by plane: the labels drawn here are (H, W, C) views of contiguous (C, H, W) planes.
    planes = label.transpose(2, 0, 1)
    resized = np.empty((planes.shape[0], height, width), dtype=np.float32)
    for channel, plane in enumerate(planes):
        interpolation = cv2.INTER_NEAREST if channel < 3 else cv2.INTER_LINEAR
        resized[channel] = cv2.resize(np.ascontiguousarray(plane), (width, height),
                                      interpolation=interpolation)
    return resized.transpose(1, 2, 0)
