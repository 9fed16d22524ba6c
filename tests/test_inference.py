"""test.py: a dataset split or one (label, exemplar) pair into PNGs; the held-out measures."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch.utils.data import DataLoader

import data
import test as inference
import train
from data import pose as openpose
from models import public_checkpoints
from training import checkpoint
from training.evaluation import candidate_scores, evaluate, matched_coordinates

TINY = {
    "data": {"name": "synthetic", "train": {"size": 32, "length": 4, "seed": 0}},
    "model": {
        "nef": 8, "match_nc": 8, "ngf": 8, "ndf": 8, "spade_nc": 16, "k": 4,
        "patch_match_iters": 2, "gru_iters": 2,
    },
    "train": {"batch_size": 2, "num_workers": 0, "vgg_weights": "none", "log_every": 1, "seed": 0},
}

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_intra_op_thread) -> Path:
    folder = tmp_path_factory.mktemp("run")
    config = folder / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    return train.main(["--config", str(config), "--out", str(folder / "out"), "--max_steps", "1"])


def test_dataset_split_to_pngs(trained, tmp_path):
    grids = inference.main(["--checkpoint", str(trained), "--out", str(tmp_path), "--limit", "3",
                            "--batch_size", "2"])
    assert len(grids) == 3
    names = [p.name.removesuffix("_grid.png") for p in grids]
    assert len(set(names)) == 3
    for name in names:
        assert np.asarray(Image.open(tmp_path / f"{name}.png")).shape == (32, 32, 3)
        for level in range(4):
            side = 32 // 2 ** (3 - level)
            assert np.asarray(Image.open(tmp_path / f"{name}_warp_{level}.png")).shape == (side, side, 3)
        flow = np.asarray(Image.open(tmp_path / f"{name}_flow.png"))
        assert flow.shape == (32, 32, 3) and flow.std() > 0
        # label | exemplar | 4 warps | output | target
        assert np.asarray(Image.open(tmp_path / f"{name}_grid.png")).shape == (32, 8 * 32, 3)


def write_pose_pair(folder: Path) -> tuple[Path, Path, Path]:
    """A pose, another pose and an exemplar photo from a held-out synthetic item, on disk."""
    item = data.build_dataset("synthetic", "test", size=32, length=1)[0]
    keypoints = np.full((openpose.NUM_KEYPOINTS, 2), np.nan)
    keypoints[[1, 2, 3, 5, 8, 11]] = [[16, 8], [12, 9], [10, 16], [20, 9], [14, 20], [18, 20]]
    openpose.write_openpose(folder / "a_candidate.txt", folder / "a_subset.txt", keypoints)
    openpose.write_openpose(folder / "b_candidate.txt", folder / "b_subset.txt", keypoints + 1)
    photo = ((item["exemplar"].permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
    Image.fromarray(photo).save(folder / "b.png")
    return folder / "a_candidate.txt", folder / "b.png", folder / "b_candidate.txt"


def test_one_pose_and_exemplar_to_pngs(trained, tmp_path):
    label, exemplar, exemplar_label = write_pose_pair(tmp_path)
    out = tmp_path / "out"
    grids = inference.main(["--checkpoint", str(trained), "--out", str(out), "--label", str(label),
                            "--exemplar", str(exemplar), "--exemplar_label", str(exemplar_label)])
    assert [p.name for p in grids] == ["a_grid.png"]
    assert np.asarray(Image.open(out / "a.png")).shape == (32, 32, 3)
    assert (out / "a_warp_3.png").is_file() and (out / "a_flow.png").is_file()
    # No target: label | exemplar | 4 warps | output
    assert np.asarray(Image.open(grids[0])).shape == (32, 7 * 32, 3)


def test_pose_label_is_drawn_in_the_given_frame(tmp_path):
    label, _, _ = write_pose_pair(tmp_path)
    drawn = inference.pose_label(label, 64, frame=32.0)
    assert drawn.shape == (openpose.LABEL_NC, 64, 64)
    # The neck, at (16, 8) in the 32-pixel frame, lands at (32, 16); nothing is drawn at (16, 8).
    assert drawn[:3, 16, 32].sum() > 0 and drawn[:3, 8, 16].sum() == 0
    wrist_limb = 3 + openpose.LIMBS.index((3, 4))  # the right wrist is missing
    assert torch.equal(drawn[wrist_limb], torch.ones(64, 64))


def test_label_image_mode(trained, tmp_path):
    ids = np.zeros((40, 40), dtype=np.uint8)
    ids[10:30, 5:20] = 3
    Image.fromarray(ids).save(tmp_path / "l.png")
    Image.fromarray(np.full((40, 40, 3), 200, dtype=np.uint8)).save(tmp_path / "e.jpg")
    label = inference.segmentation_label(tmp_path / "l.png", 32, 20)
    assert label.shape == (20, 32, 32) and torch.equal(label.sum(0), torch.ones(32, 32))
    assert label[3, 16, 8] == 1 and label[0, 0, 0] == 1
    out = tmp_path / "out"
    inference.main(["--checkpoint", str(trained), "--out", str(out), "--label", str(tmp_path / "l.png"),
                    "--exemplar", str(tmp_path / "e.jpg"), "--exemplar_label", str(tmp_path / "l.png")])
    assert (out / "l.png").is_file() and (out / "l_warp_0.png").is_file()
    ids[0, 0] = 25
    Image.fromarray(ids).save(tmp_path / "bad.png")
    with pytest.raises(ValueError, match="label_nc=20"):
        inference.segmentation_label(tmp_path / "bad.png", 32, 20)


def test_missing_files_are_named(trained, tmp_path):
    label, exemplar, exemplar_label = write_pose_pair(tmp_path)
    out = str(tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="--checkpoint: no file at .*nothing.pt"):
        inference.main(["--checkpoint", str(tmp_path / "nothing.pt"), "--out", out])
    with pytest.raises(FileNotFoundError, match="--exemplar: no file at .*missing.jpg"):
        inference.main(["--checkpoint", str(trained), "--out", out, "--label", str(label),
                        "--exemplar", str(tmp_path / "missing.jpg"), "--exemplar_label", str(exemplar_label)])
    (tmp_path / "a_subset.txt").unlink()
    with pytest.raises(FileNotFoundError, match="subset.*a_subset.txt"):
        inference.main(["--checkpoint", str(trained), "--out", out, "--label", str(label),
                        "--exemplar", str(exemplar), "--exemplar_label", str(exemplar_label)])
    with pytest.raises(ValueError, match="--exemplar_label"):
        inference.main(["--checkpoint", str(trained), "--out", out, "--label", str(exemplar_label),
                        "--exemplar", str(exemplar)])
    with pytest.raises(ValueError, match="label: expected"):
        inference.main(["--checkpoint", str(trained), "--out", out, "--label", str(tmp_path / "x.jpg"),
                        "--exemplar", str(exemplar), "--exemplar_label", str(exemplar_label)])


def test_held_out_scores_measure_the_true_correspondence(trained):
    model = checkpoint.load_model(trained)
    dataset = data.build_dataset("synthetic", "test", size=32, length=2)
    batches = list(DataLoader(dataset, batch_size=2))
    scores = evaluate(model, batches)
    assert scores.samples == 2 and scores.warp_l1 > 0
    assert math.isfinite(scores.epe_softmax) and math.isfinite(scores.epe_best)
    # One error per level, coarsest first (NaN where no block of a 32x32 figure is wholly valid); the
    # finest level's is the best match's over the valid pixels.
    assert len(scores.epe_levels) == 4 and all(math.isfinite(e) for e in scores.epe_levels[2:])
    assert scores.epe_levels[-1] == pytest.approx(scores.epe_best, rel=1e-6)
    assert len(scores.contrast_levels) == 4 and all(c >= 0 for c in scores.contrast_levels[2:])
    # Level 0 warps densely: no window. Above, the window's best candidate and the share of the
    # final candidates taken from the window.
    assert math.isnan(scores.oracle_levels[0]) and all(o >= 0 for o in scores.oracle_levels[2:])
    assert all(0 <= share <= 1 for share in scores.window_share_levels[2:])
    # A search that keeps to the window (no PatchMatch iteration, no GRU) keeps only window
    # candidates, so its best match is never nearer the truth than the window's best.
    model.correspondence.iters, model.correspondence.update = 0, None
    window_only = evaluate(model, batches)
    assert all(share == 1 for share in window_only.window_share_levels[2:])
    assert all(e >= o for e, o in zip(window_only.epe_levels[2:], window_only.oracle_levels[2:], strict=True))
    # The two poses differ: matching every pixel to its own position is off by some pixels.
    assert 0 < scores.epe_identity < 32
    # Matches at the true coordinates have zero end-point error.
    model = checkpoint.load_model(trained)
    with torch.no_grad():
        batch = batches[0]
        translation = model.correspondence(batch["label"], batch["exemplar"], batch["exemplar_label"])
    truth = batch["exemplar_coords"].permute(0, 2, 3, 1)[:, None].expand_as(translation.coords[-1])
    translation.coords[-1] = truth.contiguous()
    weighted, best = matched_coordinates(translation, 0.01)
    torch.testing.assert_close(weighted, batch["exemplar_coords"], rtol=0, atol=1e-4)
    torch.testing.assert_close(best, batch["exemplar_coords"], rtol=0, atol=0)
    # K copies of one coordinate score alike: no contrast between them.
    coords, scores = candidate_scores(translation)
    assert coords.shape[:4] == scores.shape
    torch.testing.assert_close(scores.amax(1) - scores.amin(1), torch.zeros_like(scores[:, 0]))


def test_demo_lowers_the_errors_and_writes_the_grids(tmp_path, capsys):
    """make demo's script, small: 64x64 items, 30 steps, two held-out pairs. The held-out warp L1
    and the finest level's best-match error drop, as the README says of the demo, and the line
    that says so is printed."""
    import demo

    small = ["data.train.size=64", "data.train.length=16", "model.nef=8", "model.match_nc=8"]
    before, after = demo.main(["--out", str(tmp_path), "--steps", "30", "--held_out", "2",
                               *[arg for s in small for arg in ("--set", s)]])
    lines = capsys.readouterr().out.splitlines()
    assert demo.result_line(before, after) in lines
    assert "every pixel to its own position" in demo.result_line(before, after)
    assert after.warp_l1 < 0.95 * before.warp_l1, (before.warp_l1, after.warp_l1)
    assert after.epe_levels[-1] < before.epe_levels[-1], (before.epe_levels, after.epe_levels)
    assert np.asarray(Image.open(tmp_path / "grid.png")).shape == (2 * 64, 8 * 64, 3)
    assert len(list((tmp_path / "translations").glob("*_flow.png"))) == 2


def test_public_weights_raw_or_converted_translate_one_pair(tmp_path):
    fixture = torch.load(Path(__file__).parent / "fixtures" / "public_cocosnet_v2_small.pt")
    corr, generator = tmp_path / "latest_net_Corr.pth", tmp_path / "latest_net_G.pth"
    torch.save(fixture["corr"], corr)
    torch.save(fixture["G"], generator)
    converted = tmp_path / "converted.pt"
    assert public_checkpoints.main(["--corr", str(corr), "--G", str(generator), "--out", str(converted)]) == 0
    # The fixture's networks take 3 label channels: a label image of class ids 0..2.
    ids = np.zeros((32, 32), dtype=np.uint8)
    ids[8:24, 4:16], ids[20:30, 18:28] = 1, 2
    Image.fromarray(ids).save(tmp_path / "l.png")
    Image.fromarray(np.full((32, 32, 3), 90, dtype=np.uint8)).save(tmp_path / "e.jpg")
    pair = ["--label", str(tmp_path / "l.png"), "--exemplar", str(tmp_path / "e.jpg"),
            "--exemplar_label", str(tmp_path / "l.png"), "--size", "32"]
    images = []
    sources = {"raw": [str(corr), "--public_G", str(generator)], "converted": [str(converted)]}
    for name, weights in sources.items():
        out = tmp_path / name
        grids = inference.main(["--checkpoint", *weights, "--out", str(out), *pair])
        assert [p.name for p in grids] == ["l_grid.png"]
        images.append(np.asarray(Image.open(out / "l.png")))
    assert images[0].shape == (32, 32, 3)
    np.testing.assert_array_equal(images[0], images[1])
    with pytest.raises(ValueError, match="--config"):
        inference.main(["--checkpoint", str(converted), "--out", str(tmp_path / "split")])
