"""OpenPose txt files to the 20-channel pose label."""

import math
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA

from data import pose

SAMPLES = SHARED_DATA / "deepfashion_samples"
CANVAS = 256  # a 256-pixel frame: stick width and joint radius 20 * 256 / 1024 = 5

# A hand-made person: nose, neck, right shoulder, right elbow, right hip and the left ear found;
# everything else missing (-1 in the subset file). Rows of the candidate file are out of joint order.
JOINTS = {0: (128.0, 40.0), 1: (128.0, 80.0), 2: (100.0, 80.0), 3: (90.0, 130.0), 8: (110.0, 170.0),
          17: (210.0, 220.0)}


def _write_hand_made(directory: Path) -> tuple[Path, Path]:
    order = [17, 3, 0, 8, 1, 2]
    candidate = directory / "person_candidate.txt"
    subset = directory / "person_subset.txt"
    candidate.write_text("".join(f"{JOINTS[j][0]:.1f} {JOINTS[j][1]:.1f} 0.9 {row}\n"
                                 for row, j in enumerate(order)))
    rows = [order.index(j) if j in JOINTS else -1 for j in range(18)]
    subset.write_text(" ".join(f"{r:.18e}" for r in rows + [5.4, len(JOINTS)]) + "\n")
    return candidate, subset


def test_read_hand_made_file(tmp_path):
    keypoints = pose.read_openpose(*_write_hand_made(tmp_path))
    assert keypoints.shape == (18, 2)
    for joint in range(18):
        if joint in JOINTS:
            assert tuple(keypoints[joint]) == JOINTS[joint]
        else:
            assert np.isnan(keypoints[joint]).all()


def test_label_channels_of_hand_made_file(tmp_path):
    label = pose.draw_pose_label(pose.read_openpose(*_write_hand_made(tmp_path)), (CANVAS, CANVAS))
    assert label.shape == (CANVAS, CANVAS, 20) and label.dtype == np.float32
    # a joint no drawn limb touches has its colour at its pixel; channels 0-2 are RGB of a BGR drawing
    x, y = (int(c) for c in JOINTS[17])
    np.testing.assert_array_equal(label[y, x, :3], pose.joint_label_rgb(17))
    np.testing.assert_allclose(pose.joint_label_rgb(17), [85 / 255, 0.0, 1.0])
    # the elbow: just past the joint, away from the shoulder, its circle shows and the limb does not
    (x2, y2), (x3, y3) = JOINTS[2], JOINTS[3]
    along = np.array([x3 - x2, y3 - y2]) / math.hypot(x3 - x2, y3 - y2)
    px, py = (np.array([x3, y3]) + 4 * along).astype(int)
    np.testing.assert_array_equal(label[py, px, :3], pose.joint_label_rgb(3))
    # the middle of limb 2 (shoulder-elbow) is the limb colour blended at 0.6 over the empty canvas
    mx, my = int((x2 + x3) / 2), int((y2 + y3) / 2)
    blended = np.round(0.6 * pose.joint_label_rgb(2) * 255) / 255
    np.testing.assert_allclose(label[my, mx, :3], blended, atol=1e-6)
    # far from the person nothing is drawn
    assert (label[5, 250, :3] == 0).all()
    # distance channels: drawn limbs (both ends found) are 0 on the limb and grow away from it
    drawn = {i for i, (a, b) in enumerate(pose.LIMBS[:17]) if a in JOINTS and b in JOINTS}
    assert drawn == {0, 2, 6, 12}
    for limb in range(17):
        channel = label[:, :, 3 + limb]
        if limb in drawn:
            a, b = pose.LIMBS[limb]
            cx, cy = (int((JOINTS[a][i] + JOINTS[b][i]) / 2) for i in range(2))
            assert channel[cy, cx] == 0
            assert 0 < channel[cy, (cx + 40) % CANVAS] < channel[cy, (cx + 80) % CANVAS] or \
                0 < channel[(cy + 40) % CANVAS, cx]
            assert 0.1 < channel.max() <= 1
        else:  # missing limb: no limb anywhere, the distance is saturated
            assert (channel == 1).all(), limb
    # L1 distance in 1024-frame pixels / 3 / 255: 20 pixels here are 80 there
    cx, cy = int((JOINTS[0][0] + JOINTS[1][0]) / 2), int((JOINTS[0][1] + JOINTS[1][1]) / 2)
    assert abs(label[cy, cx + 25, 3 + 12] - int((25 - 5) * 4 / 3) / 255) <= 2 / 255


def test_scale_free_drawing():
    """The same pose in a frame twice as large gives the same label at half resolution, nearly."""
    keypoints = np.full((18, 2), np.nan)
    for joint, (x, y) in JOINTS.items():
        keypoints[joint] = (x, y)
    small = pose.draw_pose_label(keypoints, (CANVAS, CANVAS))
    large = pose.resize_label(pose.draw_pose_label(keypoints * 2, (2 * CANVAS, 2 * CANVAS)), (CANVAS, CANVAS))
    assert large.shape == small.shape
    assert np.abs(large[:, :, 3:] - small[:, :, 3:]).mean() < 0.01
    assert (np.abs(large[:, :, :3] - small[:, :, :3]).max(axis=2) > 0.1).mean() < 0.01


def test_empty_and_missing_everything(tmp_path):
    nobody = np.full((18, 2), np.nan)
    label = pose.draw_pose_label(nobody, (32, 48))
    assert label.shape == (32, 48, 20)
    assert (label[:, :, :3] == 0).all() and (label[:, :, 3:] == 1).all()
    (tmp_path / "a_candidate.txt").write_text("")
    (tmp_path / "a_subset.txt").write_text("")
    assert np.isnan(pose.read_openpose(tmp_path / "a_candidate.txt", tmp_path / "a_subset.txt")).all()


def test_write_read_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    keypoints = rng.uniform(0, 500, (18, 2))
    keypoints[[4, 9, 16]] = np.nan
    pose.write_openpose(tmp_path / "p" / "x_candidate.txt", tmp_path / "p" / "x_subset.txt", keypoints)
    back = pose.read_openpose(tmp_path / "p" / "x_candidate.txt", tmp_path / "p" / "x_subset.txt")
    np.testing.assert_array_equal(back, keypoints)
    np.testing.assert_array_equal(pose.openpose_round_trip(keypoints), keypoints)


def test_best_person_is_read(tmp_path):
    candidate, subset = _write_hand_made(tmp_path)
    rows = subset.read_text().split()
    other = ["-1"] * 18 + ["0.5", "1"]
    other[5] = "0"
    subset.write_text(" ".join(other) + "\n" + " ".join(rows) + "\n")
    keypoints = pose.read_openpose(candidate, subset)
    assert tuple(keypoints[0]) == JOINTS[0] and np.isnan(keypoints[5]).all()


def test_bad_files_name_the_file(tmp_path):
    candidate, subset = _write_hand_made(tmp_path)
    with pytest.raises(ValueError, match="missing_subset.txt"):
        pose.read_openpose(candidate, tmp_path / "missing_subset.txt")
    subset.write_text("0 1 2\n")
    with pytest.raises(ValueError, match="person_subset.txt"):
        pose.read_openpose(candidate, subset)
    subset.write_text(" ".join(["40"] * 20) + "\n")
    with pytest.raises(ValueError, match="candidate row 40"):
        pose.read_openpose(candidate, subset)
    candidate.write_text("not numbers at all\n")
    with pytest.raises(ValueError, match="person_candidate.txt"):
        pose.read_openpose(candidate, subset)
    with pytest.raises(ValueError, match="keypoints"):
        pose.draw_pose_label(np.zeros((17, 2)), (8, 8))
    with pytest.raises(ValueError, match="canvas_size"):
        pose.draw_pose_label(np.zeros((18, 2)), (0, 8))


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="sample data (../shared/data) not present")
def test_sample_pose_files():
    files = sorted((SAMPLES / "pose").rglob("*_candidate.txt"))
    assert len(files) == 4
    for candidate in files:
        keypoints = pose.read_openpose(candidate, str(candidate).replace("_candidate", "_subset"))
        found = ~np.isnan(keypoints).any(axis=1)
        assert found.sum() >= 10 and (keypoints[found] >= 0).all() and (keypoints[found] < 256).all()
        label = pose.draw_pose_label(keypoints, (256, 256))
        for joint in np.flatnonzero(found):
            x, y = keypoints[joint].astype(int)
            assert label[y, x, :3].max() > 0  # something is drawn at each joint
