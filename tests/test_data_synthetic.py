"""The embedded synthetic dataset: item layout, determinism, disjoint splits, the true correspondence."""

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from data import build_dataset
from data.synthetic import SyntheticPoseDataset, export_deepfashion_layout

SIZE = 64


def _sample(exemplar: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear sample of (3, H, W) at pixel coordinates (2, H, W) (pixel centres at integers)."""
    height, width = exemplar.shape[-2:]
    grid = torch.stack([coords[0] / (width - 1), coords[1] / (height - 1)], dim=-1) * 2 - 1
    return F.grid_sample(exemplar[None], grid[None], align_corners=True)[0]


def test_item_layout_and_collate():
    dataset = build_dataset("synthetic", "train", size=SIZE, length=3)
    assert isinstance(dataset, SyntheticPoseDataset)
    assert dataset.label_nc == 20 and dataset.image_size == (SIZE, SIZE) and len(dataset) == 3
    item = dataset[0]
    shapes = {"label": (20, SIZE, SIZE), "exemplar_label": (20, SIZE, SIZE), "image": (3, SIZE, SIZE),
              "exemplar": (3, SIZE, SIZE), "exemplar_coords": (2, SIZE, SIZE), "valid": (1, SIZE, SIZE)}
    for key, shape in shapes.items():
        assert item[key].shape == shape and item[key].dtype == torch.float32, key
    assert item["image"].min() >= -1 and item["image"].max() <= 1
    assert item["label"].min() >= 0 and item["label"].max() <= 1
    assert item["self_ref"].item() == 1.0 and item["self_ref"].dim() == 0
    assert item["name"] == "synthetic_train_000000"
    assert set(item["valid"].unique().tolist()) == {0.0, 1.0}
    batch = next(iter(DataLoader(dataset, batch_size=2)))
    assert batch["label"].shape == (2, 20, SIZE, SIZE) and len(batch["name"]) == 2


def test_items_depend_only_on_seed_split_and_index_and_splits_are_disjoint():
    """An item is the same whatever was drawn from the global generators before, the order the
    items are read in and the thread count (as in a loader worker, or after a resume)."""
    first = build_dataset("synthetic", "train", size=SIZE, length=4, seed=3)
    items = [first[index] for index in range(4)]
    threads = torch.get_num_threads()
    torch.manual_seed(12345), np.random.seed(12345), random.seed(12345)
    torch.set_num_threads(1 if threads > 1 else 2)
    try:
        again = build_dataset("synthetic", "train", size=SIZE, length=4, seed=3)
        items_again = {index: again[index] for index in reversed(range(4))}
    finally:
        torch.set_num_threads(threads)
    for index in range(4):
        a, b = items[index], items_again[index]
        for key in ("label", "image", "exemplar", "exemplar_label", "exemplar_coords", "valid"):
            assert torch.equal(a[key], b[key]), key
    held_out = build_dataset("synthetic", "test", size=SIZE, length=4, seed=3)
    other_seed = build_dataset("synthetic", "train", size=SIZE, length=4, seed=4)
    train_images = [first[i]["image"] for i in range(4)]
    assert not torch.equal(train_images[0], train_images[1])
    for index in range(4):
        for other in (held_out[index]["image"], other_seed[index]["image"]):
            assert all((other - image).abs().mean() > 0.01 for image in train_images)
    assert held_out[0]["name"] != first[0]["name"]


@pytest.mark.parametrize("split", ["train", "test"])
def test_exemplar_coords_are_the_true_correspondence(split):
    dataset = build_dataset("synthetic", split, size=SIZE, length=6)
    for index in range(len(dataset)):
        item = dataset[index]
        valid = item["valid"][0] > 0
        assert valid.float().mean() > 0.04  # a large part of the frame is matched figure
        warped = _sample(item["exemplar"], item["exemplar_coords"])
        error = (warped - item["image"]).abs().mean(dim=0)[valid].mean()
        # the same check with the identity map instead: far off, so the check above can fail
        pixels = torch.arange(float(SIZE))
        identity = torch.stack(torch.meshgrid(pixels, pixels, indexing="xy"))
        baseline = (_sample(item["exemplar"], identity) - item["image"]).abs().mean(dim=0)[valid].mean()
        assert error < 0.07, (index, error)
        assert baseline > 5 * error, (index, baseline, error)


def test_pose_label_marks_the_figure():
    item = build_dataset("synthetic", "test", size=SIZE, length=1)[0]
    # the skeleton lies on the figure: skeleton pixels are mostly figure pixels with a correspondence
    skeleton = item["label"][:3].sum(dim=0) > 0
    figure = item["exemplar_coords"].new_zeros(SIZE, SIZE, dtype=torch.bool)
    figure |= item["valid"][0] > 0
    assert skeleton.sum() > 50
    assert (skeleton & figure).sum() > 0.5 * skeleton.sum()


@pytest.mark.parametrize("options", [{"size": 8}, {"length": 0}, {"seed": -1}, {"size": 64.0}])
def test_bad_options(options):
    with pytest.raises(ValueError, match=next(iter(options))):
        build_dataset("synthetic", "train", **options)


def test_bad_name_and_split():
    with pytest.raises(ValueError, match="name"):
        build_dataset("imagenet", "train")
    with pytest.raises(ValueError, match="split"):
        build_dataset("synthetic", "val")


def test_exported_files_read_back_through_the_deepfashion_loader(tmp_path):
    """Written as pose and photo files, the pairs load through DeepFashionHD's reader as they are made."""
    photos = export_deepfashion_layout(tmp_path, "test", length=2, size=SIZE)
    assert photos == ["img/SYNTHETIC/id_000000/target.png", "img/SYNTHETIC/id_000001/target.png"]
    from_files = build_dataset("deepfashionhd", "test", root=tmp_path, size=SIZE)
    made = build_dataset("synthetic", "test", size=SIZE, length=2)
    for index in range(2):
        read, expected = from_files[index], made[index]
        torch.testing.assert_close(read["label"], expected["label"])
        torch.testing.assert_close(read["exemplar_label"], expected["exemplar_label"])
        for key in ("image", "exemplar"):
            assert (read[key] - expected[key]).abs().max() <= 1.01 / 255
        assert read["self_ref"].item() == 1.0


def test_video_truth_warps_each_frame_onto_the_next_and_the_exemplar():
    from data.synthetic import make_video

    clip = make_video(0, 1, SIZE, 6)
    assert clip["frames"].shape == (6, SIZE, SIZE, 3) and clip["labels"].shape == (6, SIZE, SIZE, 20)
    assert clip["exemplar_coords"].shape == clip["previous_coords"].shape == (6, SIZE, SIZE, 2)
    assert clip["previous_valid"][0].all() and not clip["previous_valid"][1:].all()
    for t in range(1, 6):
        frame = torch.from_numpy(clip["frames"][t]).permute(2, 0, 1)
        for source, coords, valid in (
            (clip["frames"][t - 1], clip["previous_coords"][t], clip["previous_valid"][t]),
            (clip["exemplar"], clip["exemplar_coords"][t], clip["exemplar_valid"][t]),
        ):
            source, coords = (torch.from_numpy(a).float().permute(2, 0, 1) for a in (source, coords))
            warped = _sample(source, coords)
            error = (warped - frame).abs().mean(0)
            mask = torch.from_numpy(valid)
            assert mask.any() and error[mask].mean() < 0.03 < error[~mask].mean()
    again = make_video(0, 1, SIZE, 6)
    assert all(np.array_equal(clip[name], again[name]) for name in clip)
    with pytest.raises(ValueError, match="frames: expected a positive int"):
        make_video(0, 1, SIZE, 0)
