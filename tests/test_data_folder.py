"""Paired label/photo folders: ADE20K layouts, one-hot labels, instance maps, exemplars, bad files,
exemplars that are known warps of the target."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import SHARED_DATA
from PIL import Image
from torch.utils.data import default_collate

from data import build_dataset
from data.common import BadSampleError, self_reference_pair
from data.folder import PairedFolderDataset

SAMPLES = SHARED_DATA / "ade20k_samples"
LABEL_NC = 6
COLOURS = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255]])


def _write_pair(images: Path, labels: Path, instances: Path | None, name: str, rng, shape=(48, 80)):
    """A label map of class blocks, and a photo that paints each class in its own colour."""
    ids = rng.integers(0, LABEL_NC, (shape[0] // 8, shape[1] // 8)).repeat(8, 0).repeat(8, 1).astype(np.uint8)
    for folder in (images, labels) + ((instances,) if instances else ()):
        folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(COLOURS[ids].astype(np.uint8)).save(images / f"{name}.png")
    Image.fromarray(ids).save(labels / f"{name}.png")
    if instances is not None:
        blocks = np.arange(ids.size // 64).reshape(shape[0] // 8, shape[1] // 8).repeat(8, 0).repeat(8, 1)
        # 16-bit ids, as Cityscapes' instance maps
        Image.fromarray((blocks * 3 + 1000).astype(np.uint16)).save(instances / f"{name}.png")


@pytest.fixture
def tree(tmp_path):
    """ADEChallengeData2016's layout, with instance maps and an exemplar list for the test split."""
    rng = np.random.default_rng(0)
    for split, prefix, count in (("training", "train", 3), ("validation", "val", 2)):
        for index in range(count):
            _write_pair(tmp_path / "images" / split, tmp_path / "annotations" / split,
                        tmp_path / "instances" / split, f"ADE_{prefix}_{index:08d}", rng)
    (tmp_path / "ade20k_ref_test.txt").write_text("ADE_val_00000001.png,ADE_train_00000002.png\n")
    return tmp_path


def _check_alignment(item):
    """The photo's colour at each pixel is the colour of the class its one-hot label holds."""
    classes = item["label"].argmax(dim=0)
    colours = torch.from_numpy(COLOURS).float()[classes].permute(2, 0, 1) / 127.5 - 1
    assert (item["label"].sum(dim=0) == 1).all()
    assert ((item["image"] - colours).abs().amax(dim=0) < 0.1).float().mean() > 0.99


def _affine_of(coords: torch.Tensor) -> torch.Tensor:
    """The affine (2, 3) that takes the pixel grid to ``coords``, read off three pixels."""
    origin = coords[:, 0, 0].double()
    return torch.stack([coords[:, 0, 1].double() - origin, coords[:, 1, 0].double() - origin, origin], dim=1)


def _check_known_warp(item: dict) -> torch.Tensor:
    """The item's exemplar is its own photo and label warped by the affine its coords describe; that
    affine is returned."""
    assert item["self_ref"].item() == 1.0
    size = item["image"].shape[1:]
    assert item["exemplar_coords"].shape == (2, *size) and item["valid"].shape == (1, *size)
    assert item["exemplar_coords"].dtype == item["valid"].dtype == torch.float32
    matrix = _affine_of(item["exemplar_coords"])
    pair = self_reference_pair(item["image"], item["label"], matrix)
    # the coords are an affine map of the grid, up to float32 rounding
    torch.testing.assert_close(item["exemplar_coords"], pair.exemplar_coords, rtol=0, atol=1e-3)
    torch.testing.assert_close(item["exemplar"], pair.exemplar, rtol=0, atol=1e-2)
    # a pixel on a rounding tie may go either way
    assert (item["exemplar_label"] != pair.exemplar_label).any(dim=0).float().mean() < 0.01
    assert (item["valid"] != pair.valid).float().mean() < 0.01 and item["valid"].mean() > 0.5
    # one-hot stays one-hot (these labels have no don't-care pixel)
    assert set(item["exemplar_label"].unique().tolist()) == {0, 1}
    assert (item["exemplar_label"].sum(dim=0) == 1).all()
    return matrix


def test_test_split_layout_and_exemplar_list(tree):
    dataset = build_dataset("folder", "test", root=tree, label_nc=LABEL_NC, size=(48, 80))
    assert isinstance(dataset, PairedFolderDataset)
    assert len(dataset) == 2 and dataset.label_nc == LABEL_NC and dataset.image_size == (48, 80)
    first, second = dataset[0], dataset[1]
    assert first["name"] == "ADE_val_00000000" and first["label"].shape == (LABEL_NC, 48, 80)
    # no resizing in the test split here: the label is exactly the one-hot of the label map
    ids = torch.from_numpy(np.array(Image.open(tree / "annotations/validation/ADE_val_00000000.png")))
    torch.testing.assert_close(first["label"].argmax(dim=0), ids.long())
    torch.testing.assert_close(first["exemplar"], first["image"])  # in no list: itself
    assert first["self_ref"].item() == 1.0
    # listed: the exemplar comes from the training folder
    exemplar = np.asarray(Image.open(tree / "images/training/ADE_train_00000002.png"), np.float32)
    torch.testing.assert_close(second["exemplar"], torch.from_numpy(exemplar.transpose(2, 0, 1) / 127.5 - 1))
    assert second["self_ref"].item() == 0.0
    assert "instance" not in first


def test_train_split_crops_and_flips_label_photo_and_instances_together(tree):
    torch.manual_seed(0)
    assert build_dataset("folder", "train", root=tree, label_nc=LABEL_NC, size=32).load_size == (36, 36)
    # loaded at the photos' size, so that crops and flips move whole class blocks: exact alignment
    dataset = build_dataset("folder", "train", root=tree, label_nc=LABEL_NC, size=32, load_size=(48, 80),
                            instance_dir=tree / "instances" / "training")
    flips, crops = set(), set()
    for index in range(3):
        for _ in range(2):
            item = dataset[index]
            assert item["image"].shape == (3, 32, 32) and item["instance"].shape == (1, 32, 32)
            _check_alignment(item)
            instance = item["instance"][0]
            assert instance.min() >= 1000
            # each instance lies in one class
            classes = item["label"].argmax(dim=0)
            for value in instance.unique():
                assert classes[instance == value].unique().numel() == 1
            # block ids grow to the right, so a flip shows as ids falling along a row
            flips.add(bool(instance[0, 0] > instance[0, -1]))
            crops.add(int(instance.min()))
    assert flips == {True, False} and len(crops) > 1


def test_known_warp_exemplars_are_the_target_warped(tree):
    torch.manual_seed(0)
    options = {"root": tree, "label_nc": LABEL_NC, "size": 32, "load_size": (48, 80)}
    dataset = build_dataset("folder", "train", instance_dir=tree / "instances" / "training", known_warp=1.0,
                            **options)
    mirrored = set()
    for index in range(12):
        item = dataset[index % 3]
        matrix = _check_known_warp(item)
        mirrored.add(bool(torch.linalg.det(matrix[:, :2]) < 0))
        # the instance map is the target's, with the target's label
        classes = item["label"].argmax(dim=0)
        for value in item["instance"].unique():
            assert classes[item["instance"][0] == value].unique().numel() == 1
    assert mirrored == {True, False}  # flip (default in training) mirrors half of the warps
    for dataset in (build_dataset("folder", "train", flip=False, known_warp=1.0, **options),
                    build_dataset("folder", "test", known_warp=1.0, **options)):
        for index in range(len(dataset)):
            assert torch.linalg.det(_check_known_warp(dataset[index])[:, :2]) > 0


def test_known_warp_mixes_with_the_usual_exemplars_in_a_batch(tree):
    dataset = build_dataset("folder", "train", root=tree, label_nc=LABEL_NC, size=32, known_warp=0.5,
                            instance_dir=tree / "instances" / "training")
    torch.manual_seed(0)
    items = [dataset[index % 3] for index in range(12)]
    warped = [bool(item["valid"].any()) for item in items]
    assert 0 < sum(warped) < len(items)
    for item, known in zip(items, warped, strict=True):
        if known:
            _check_known_warp(item)
        else:
            assert not item["exemplar_coords"].any() and not item["valid"].any()
    batch = default_collate(items)  # as a DataLoader batches them
    assert batch["exemplar_coords"].shape == (12, 2, 32, 32) and batch["instance"].shape == (12, 1, 32, 32)
    assert torch.equal(batch["valid"].flatten(1).any(dim=1), torch.tensor(warped))


def test_known_warp_zero_changes_nothing(tree):
    """No new keys, and no draw of its own: the crops and flips are those of a dataset without the option."""
    items = {}
    for known_warp in (None, 0):
        options = {} if known_warp is None else {"known_warp": known_warp}
        dataset = build_dataset("folder", "train", root=tree, label_nc=LABEL_NC, size=32, **options)
        torch.manual_seed(2)
        items[known_warp] = [dataset[index] for index in range(3)]
    for item, usual_item in zip(items[0], items[None], strict=True):
        assert item.keys() == usual_item.keys() and "valid" not in item
        for key in ("label", "image", "exemplar", "exemplar_label", "self_ref"):
            assert torch.equal(item[key], usual_item[key]), key


def test_one_folder_layout_and_dont_care(tmp_path):
    rng = np.random.default_rng(1)
    _write_pair(tmp_path / "train", tmp_path / "train", None, "a", rng)
    # the one-folder layout takes the JPEGs as photos, so store the photo as JPEG
    Image.open(tmp_path / "train" / "a.png").convert("RGB").save(tmp_path / "train" / "a.jpg", quality=100)
    ids = np.asarray(Image.open(tmp_path / "train" / "a.png")).copy()
    ids[:8, :8] = 255
    Image.fromarray(ids).save(tmp_path / "train" / "a.png")
    dataset = build_dataset("folder", "train", root=tmp_path, label_nc=LABEL_NC, size=(48, 80),
                            load_size=(48, 80), flip=False)
    assert len(dataset) == 1
    label = dataset[0]["label"]
    assert (label[:, :8, :8] == 0).all() and (label[:, 8:, :].sum(dim=0) == 1).all()


def test_bad_files(tree):
    (tree / "images/training/ADE_train_00000001.png").write_bytes(b"\x89PNG broken")
    dataset = build_dataset("folder", "train", root=tree, label_nc=LABEL_NC, size=32)
    with pytest.raises(BadSampleError, match="ADE_train_00000001.png"):
        dataset[1]
    (tree / "annotations/training/ADE_train_00000000.png").unlink()
    with pytest.raises(BadSampleError, match="annotations/training/ADE_train_00000000.png"):
        dataset[0]
    skipping = build_dataset("folder", "train", root=tree, label_nc=LABEL_NC, size=32, skip_bad_samples=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = [skipping[i]["name"] for i in range(3)]
    assert names == ["ADE_train_00000002"] * 3 and len(caught) == 1
    # a class id beyond label_nc is a configuration error, never skipped
    too_few = build_dataset("folder", "train", root=tree, label_nc=2, size=32, skip_bad_samples=True)
    with pytest.raises(ValueError, match="label_nc is 2"):
        too_few[2]


def test_bad_arguments(tree, tmp_path):
    with pytest.raises(ValueError, match="label_nc"):
        build_dataset("folder", "train", root=tree, label_nc=0)
    with pytest.raises(ValueError, match="root"):
        build_dataset("folder", "train", root=tmp_path / "absent", label_nc=3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no test folder"):
        build_dataset("folder", "test", root=tmp_path / "empty", label_nc=3)
    with pytest.raises(ValueError, match="instance_dir"):
        build_dataset("folder", "train", root=tree, label_nc=3, instance_dir=tmp_path / "absent")
    with pytest.raises(ValueError, match="exemplar_list"):
        build_dataset("folder", "train", root=tree, label_nc=3, exemplar_list=tmp_path / "absent.txt")
    for known_warp in (-0.1, 1.5, float("nan"), "0.5", True):
        with pytest.raises(ValueError, match="known_warp"):
            build_dataset("folder", "train", root=tree, label_nc=3, known_warp=known_warp)


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="sample data (../shared/data) not present")
def test_ade20k_samples():
    torch.manual_seed(0)
    dataset = build_dataset("folder", "train", root=SAMPLES, label_nc=151, size=64)
    assert len(dataset) == 6 and [p.suffix for p in dataset.photos] == [".jpg"] * 6
    for index in range(len(dataset)):
        item = dataset[index]
        assert item["label"].shape == (151, 64, 64) and item["image"].shape == (3, 64, 64)
        assert (item["label"].sum(dim=0) == 1).all()  # ADE20K has no don't-care id: 0 is "unlabelled"
        ids = np.unique(np.asarray(Image.open(dataset.photos[index].with_suffix(".png"))))
        present = item["label"].sum(dim=(1, 2)).nonzero().flatten().numpy()
        assert set(present) <= set(ids) and len(present) >= 2
    # the held-out split resizes without cropping: a 256x256 map comes back unchanged at size 256
    held_out = build_dataset("folder", "test", root=SAMPLES, label_nc=151, size=256,
                             image_dir=SAMPLES / "training", label_dir=SAMPLES / "training")
    index = [photo.stem for photo in held_out.photos].index("ADE_train_00007860")
    item = held_out[index]
    assert item["name"] == "ADE_train_00007860"
    ids = np.array(Image.open(held_out.photos[index].with_suffix(".png")))
    assert ids.shape == (256, 256)
    torch.testing.assert_close(item["label"].argmax(dim=0), torch.from_numpy(ids).long(), rtol=0, atol=0)


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="sample data (../shared/data) not present")
def test_ade20k_samples_with_known_warps():
    torch.manual_seed(0)
    dataset = build_dataset("folder", "train", root=SAMPLES, label_nc=151, size=64, known_warp=1.0)
    for index in range(len(dataset)):
        item = dataset[index]
        _check_known_warp(item)
        # a bilinear sample of the exemplar at the coords is the target photo, up to interpolating twice
        coords, valid = item["exemplar_coords"].double(), item["valid"][0] > 0
        grid = torch.stack([coords[0] / 63, coords[1] / 63], dim=-1) * 2 - 1
        resampled = F.grid_sample(item["exemplar"][None].double(), grid[None], align_corners=True)[0]
        image = item["image"].double()
        error = (resampled - image).abs().amax(dim=0)[valid].mean()
        # the same check without the warp: far off, so the one above can fail
        baseline = (item["exemplar"].double() - image).abs().amax(dim=0)[valid].mean()
        assert error < 0.1 and baseline > 3 * error, (index, error, baseline)
