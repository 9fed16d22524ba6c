"""test.py --video and models.video: a label sequence with one exemplar into frames and a video."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest
import torch
import yaml
from test_inference import TINY

import test as inference
import train
from data.synthetic import export_video
from models.video import VideoTranslator
from training import checkpoint

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")
FRAMES = 4


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_intra_op_thread) -> Path:
    folder = tmp_path_factory.mktemp("run")
    config = folder / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    return train.main(["--config", str(config), "--out", str(folder / "out"), "--max_steps", "1"])


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> dict[str, Path]:
    return export_video(tmp_path_factory.mktemp("clip"), size=32, frames=FRAMES)


def video_args(trained: Path, clip: dict[str, Path], out: Path) -> list[str]:
    return ["--checkpoint", str(trained), "--out", str(out), "--video", str(clip["labels"]),
            "--exemplar", str(clip["exemplar"]), "--exemplar_label", str(clip["exemplar_label"])]


@pytest.mark.parametrize("per_frame", [False, True])
def test_a_pose_sequence_becomes_frames_and_a_playable_video(trained, clip, tmp_path, per_frame):
    out = tmp_path / "out"
    grids = inference.main(video_args(trained, clip, out) + (["--per_frame"] if per_frame else []))
    assert [g.name for g in grids] == [f"frame_{t:04d}_grid.png" for t in range(FRAMES)]
    assert all((out / f"frame_{t:04d}.png").is_file() for t in range(FRAMES))
    capture = cv2.VideoCapture(str(out / "video.mp4"))
    read = 0
    while capture.read()[0]:
        read += 1
    capture.release()
    assert read == FRAMES
    assert (out / "video.gif").is_file() and (out / "video_strip.png").is_file()


def test_the_carried_search_starts_from_the_previous_matches(trained, clip):
    model = checkpoint.load_model(trained).eval()
    label = torch.zeros(1, 20, 32, 32)
    label[:, :3, 8:24, 12:20] = 1
    exemplar = torch.rand(1, 3, 32, 32) * 2 - 1
    calls = []
    carried = VideoTranslator(model, exemplar, label)
    first = carried(label)
    original = carried._carried

    def spy(previous):
        hook = original(previous)

        def counted(level, query):
            candidates = hook(level, query)
            calls.append((level, tuple(candidates.shape)))
            return candidates

        return counted

    carried._carried = spy
    carried(label)
    searched = range(model.correspondence.dense_levels, 4)
    assert [c[0] for c in calls] == list(searched)
    for (level, shape), nnf in zip(calls, first.nnfs[model.correspondence.dense_levels :], strict=True):
        assert shape == (1, 2 * nnf.shape[1], *nnf.shape[2:]), level
    per_frame = VideoTranslator(model, exemplar, label, per_frame=True)
    per_frame(label)
    per_frame._carried = spy
    calls.clear()
    per_frame(label)
    assert calls == []


def test_video_mistakes_are_named(trained, clip, tmp_path):
    args = video_args(trained, clip, tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(inference.cli.UsageError, match="--per_frame goes with --video"):
        inference.main(args[:4] + ["--per_frame"])
    with pytest.raises(inference.cli.UsageError, match="--video: no folder at"):
        inference.main(args[:5] + [str(tmp_path / "nowhere")] + args[6:])
    with pytest.raises(inference.cli.UsageError, match="--video: no label frames"):
        inference.main(args[:5] + [str(empty)] + args[6:])
    with pytest.raises(inference.cli.UsageError, match="--label and --video"):
        inference.main(args + ["--label", str(clip["exemplar_label"])])
    with pytest.raises(inference.cli.UsageError, match="--video needs --exemplar"):
        inference.main(args[:6])
