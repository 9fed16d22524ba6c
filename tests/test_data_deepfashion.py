"""DeepFashionHD: the release's layout (backslash lists), padding, pose alignment, exemplars, bad files,
exemplars that are known warps of the target."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import SHARED_DATA
from PIL import Image
from torch.utils.data import DataLoader, default_collate

from data import build_dataset, pose
from data.common import BadSampleError
from data.deepfashion import DeepFashionHDDataset, pad_to_square

SAMPLES = SHARED_DATA / "deepfashion_samples"
WIDTH, HEIGHT = 750, 1101  # DeepFashionHD photos
MARK = (300, 500, 40)  # a square marker (x, y, half side) in every photo, at the right wrist
PHOTOS = {  # relative path (backslashes, as in the release's lists) -> flat colour of the photo
    r"img\MEN\Denim\id_00000080\01_1_front.jpg": (200, 40, 40),
    r"img\MEN\Denim\id_00000080\01_2_side.jpg": (40, 200, 40),
    r"img\WOMEN\Dresses\id_00000203\03_1_front.jpg": (40, 40, 200),
    r"img\WOMEN\Dresses\id_00000203\03_4_full.jpg": (200, 200, 40),
    r"img\WOMEN\Skirts\id_00000999\02_1_front.jpg": (40, 200, 200),
}


def _frame(x: float, y: float) -> tuple[float, float]:
    """A photo pixel in the release's pose frame: 1024x1024 over the photo padded to 1101x1101."""
    return (x + (HEIGHT - WIDTH) // 2) * 1024 / HEIGHT, y * 1024 / HEIGHT


def _make_tree(root: Path) -> Path:
    for relative, colour in PHOTOS.items():
        path = root / relative.replace("\\", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        photo = np.empty((HEIGHT, WIDTH, 3), np.uint8)
        photo[...] = colour
        x, y, half = MARK
        photo[y - half:y + half, x - half:x + half] = (255, 255, 255)
        Image.fromarray(photo).save(path, quality=95)
        keypoints = np.full((18, 2), np.nan)
        keypoints[1], keypoints[2], keypoints[4] = _frame(375, 250), _frame(300, 260), _frame(x, y)
        stem = str(path.relative_to(root)).replace("img/", "pose/", 1)[:-4]
        pose.write_openpose(root / f"{stem}_candidate.txt", root / f"{stem}_subset.txt", keypoints)
    names = list(PHOTOS)
    (root / "train.txt").write_text("\r\n".join(names[:4]) + "\r\n")
    (root / "val.txt").write_text(names[4] + "\n" + names[0] + "\n")
    (root / "deepfashion_self_pair.txt").write_text(f"{names[0]},{names[1]}\n{names[2]},{names[3]}\n")
    (root / "deepfashion_ref.txt").write_text(f"{names[3]},{names[0]},{names[4]}\n")
    (root / "deepfashion_ref_test.txt").write_text(f"{names[4]},{names[2]},{names[1]}\n")
    return root


def _colour(image: torch.Tensor) -> np.ndarray:
    """The photo's flat colour (the median of the non-padding middle), 0-255."""
    middle = image[:, :, image.shape[2] // 2 - 4:image.shape[2] // 2 + 4]
    return ((middle.reshape(3, -1).median(dim=1).values + 1) * 127.5).numpy()


def _sample(image: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear sample of (C, H, W) at pixel coordinates (2, H, W) (pixel centres at integers)."""
    height, width = image.shape[-2:]
    grid = torch.stack([coords[0] / (width - 1), coords[1] / (height - 1)], dim=-1) * 2 - 1
    return F.grid_sample(image[None].double(), grid[None].double(), align_corners=True)[0]


def _check_known_warp(item: dict, baseline_ratio: float) -> None:
    """The item's exemplar is its own photo and label warped: sampled at the coords they come back."""
    assert item["self_ref"].item() == 1.0
    size = item["image"].shape[1:]
    assert item["exemplar_coords"].shape == (2, *size) and item["valid"].shape == (1, *size)
    assert item["exemplar_coords"].dtype == item["valid"].dtype == torch.float32
    valid = item["valid"][0] > 0
    assert valid.float().mean() > 0.5
    image = item["image"].double()
    error = (_sample(item["exemplar"], item["exemplar_coords"]) - image).abs().amax(dim=0)[valid].mean()
    # the same check without the warp: far off, so the one above can fail
    baseline = (item["exemplar"].double() - image).abs().amax(dim=0)[valid].mean()
    assert error < 0.05 and baseline > baseline_ratio * error, (error, baseline)
    x, y = item["exemplar_coords"].round().long()
    label_error = (item["exemplar_label"][:, y[valid], x[valid]] - item["label"][:, valid]).abs().amax(dim=0)
    assert (label_error > 0.1).float().mean() < 0.02


def _which(image: torch.Tensor) -> str:
    distances = {name: np.abs(_colour(image) - colour).sum() for name, colour in PHOTOS.items()}
    return min(distances, key=distances.get).replace("\\", "/")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return _make_tree(tmp_path_factory.mktemp("deepfashionHD"))


def test_pad_to_square_like_the_release():
    padded = np.asarray(pad_to_square(Image.new("RGB", (WIDTH, HEIGHT), (0, 0, 0))))
    assert padded.shape == (HEIGHT, HEIGHT, 3)
    columns = padded[0, :, 0]
    assert (columns[:175] == 232).all() and (columns[175:925] == 0).all() and (columns[925:] == 232).all()


def test_test_split_layout_padding_and_pose_alignment(tree):
    dataset = build_dataset("deepfashionhd", "test", root=tree, size=256)
    assert isinstance(dataset, DeepFashionHDDataset)
    assert len(dataset) == 2 and dataset.label_nc == 20 and dataset.image_size == (256, 256)
    item = dataset[1]
    assert item["name"] == "MEN_Denim_id_00000080_01_1_front"
    assert item["image"].shape == (3, 256, 256) and item["label"].shape == (20, 256, 256)
    # padding: 232 at the left and right edges, the photo's colour in the middle
    edge = (item["image"][:, 128, :30] + 1) * 127.5
    assert (edge - 232).abs().max() < 3
    np.testing.assert_allclose(_colour(item["image"]), PHOTOS[dataset.photos[1].replace("/", "\\")], atol=4)
    # the white marker in the photo sits under the right wrist's joint colour in the label
    x, y = (round(c * 256 / 1024) for c in _frame(MARK[0], MARK[1]))
    assert (item["image"][:, y, x] > 0.9).all()
    np.testing.assert_allclose(item["label"][:3, y, x].numpy(), pose.joint_label_rgb(4), atol=1e-6)
    # the shoulder-wrist limb is not in the label (no elbow): its distance channel is saturated
    assert (item["label"][3 + 3] == 1).all() and (item["label"][3 + 0] < 1).any()


def test_drawing_in_the_release_frame(tree):
    """pose_canvas="frame" draws at 1024 and resizes, as the release; "load" draws the same at 256."""
    exact = build_dataset("deepfashionhd", "test", root=tree, size=256, pose_canvas="frame")[1]["label"]
    fast = build_dataset("deepfashionhd", "test", root=tree, size=256)[1]["label"]
    keypoints = pose.read_openpose(tree / "pose/MEN/Denim/id_00000080/01_1_front_candidate.txt",
                                   tree / "pose/MEN/Denim/id_00000080/01_1_front_subset.txt")
    release = pose.resize_label(pose.draw_pose_label(keypoints, (1024, 1024)), (256, 256))
    torch.testing.assert_close(exact, torch.from_numpy(release.transpose(2, 0, 1).copy()))
    assert (fast - exact).abs()[3:].mean() < 0.01
    assert ((fast - exact).abs()[:3].amax(dim=0) > 0.1).float().mean() < 0.02


def test_exemplars_follow_the_lists(tree):
    held_out = build_dataset("deepfashionhd", "test", root=tree, size=64)
    first = held_out[0]  # listed in deepfashion_ref_test.txt: its first reference
    assert _which(first["exemplar"]) == "img/WOMEN/Dresses/id_00000203/03_1_front.jpg"
    assert first["self_ref"].item() == 0.0
    second = held_out[1]  # no reference: its self pair
    assert _which(second["exemplar"]) == "img/MEN/Denim/id_00000080/01_2_side.jpg"
    assert second["self_ref"].item() == 1.0
    torch.manual_seed(0)
    train = build_dataset("deepfashionhd", "train", root=tree, size=64)
    assert len(train) == 4 and train.load_size == 69
    items = [train[i] for i in range(4)]
    expected = ["01_2_side", None, "03_4_full", "02_1_front"]  # self pair, itself, self pair, last reference
    for item, exemplar, photo in zip(items, expected, train.photos, strict=True):
        assert item["image"].shape == (3, 64, 64) and item["exemplar_label"].shape == (20, 64, 64)
        assert _which(item["exemplar"]).endswith(f"{exemplar}.jpg") if exemplar else \
            _which(item["exemplar"]) == photo
    assert [item["self_ref"].item() for item in items] == [1.0, 1.0, 1.0, 0.0]
    batch = next(iter(DataLoader(train, batch_size=4)))
    assert batch["label"].shape == (4, 20, 64, 64)


def test_random_crop_is_seeded_by_torch(tree):
    train = build_dataset("deepfashionhd", "train", root=tree, size=64, load_size=96)
    torch.manual_seed(3)
    a = train[1]["image"]
    torch.manual_seed(3)
    assert torch.equal(a, train[1]["image"])
    crops = {tuple(train[1]["label"][3].flatten()[:: 97].tolist()) for _ in range(3)}
    assert len(crops) > 1


def test_known_warp_exemplars_carry_their_correspondence(tree):
    torch.manual_seed(0)
    dataset = build_dataset("deepfashionhd", "train", root=tree, size=64, known_warp=1.0)
    for index in range(len(dataset)):
        _check_known_warp(dataset[index], baseline_ratio=5)


def test_known_warp_mixes_with_the_usual_exemplars_in_a_batch(tree):
    dataset = build_dataset("deepfashionhd", "train", root=tree, size=64, known_warp=0.5)
    torch.manual_seed(0)
    items = [dataset[index % 4] for index in range(12)]
    warped = [bool(item["valid"].any()) for item in items]
    assert 0 < sum(warped) < len(items)
    for item, known in zip(items, warped, strict=True):
        if known:
            _check_known_warp(item, baseline_ratio=5)
        else:
            assert not item["exemplar_coords"].any() and not item["valid"].any()
    batch = default_collate(items)  # as a DataLoader batches them
    assert batch["exemplar_coords"].shape == (12, 2, 64, 64) and batch["valid"].shape == (12, 1, 64, 64)
    assert torch.equal(batch["valid"].flatten(1).any(dim=1), torch.tensor(warped))
    torch.manual_seed(0)  # the same draws again: the same items
    for index, item in enumerate(items[:4]):
        again = dataset[index]
        for key in ("image", "exemplar", "exemplar_label", "exemplar_coords", "valid"):
            assert torch.equal(again[key], item[key]), key


def test_known_warp_zero_changes_nothing(tree):
    """No new keys, and no draw of its own: the random crops are those of a dataset without the option."""
    items = {}
    for known_warp in (None, 0):
        options = {} if known_warp is None else {"known_warp": known_warp}
        dataset = build_dataset("deepfashionhd", "train", root=tree, size=64, **options)
        torch.manual_seed(2)
        items[known_warp] = [dataset[index] for index in range(4)]
    for item, usual_item in zip(items[0], items[None], strict=True):
        assert item.keys() == usual_item.keys() and "valid" not in item
        for key in ("label", "image", "exemplar", "exemplar_label", "self_ref"):
            assert torch.equal(item[key], usual_item[key]), key


def test_corrupt_or_missing_files_are_named(tree, tmp_path):
    root = _make_tree(tmp_path / "copy")
    bad_photo = root / "img/MEN/Denim/id_00000080/01_1_front.jpg"
    bad_photo.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (root / "pose/WOMEN/Dresses/id_00000203/03_4_full_subset.txt").unlink()
    dataset = build_dataset("deepfashionhd", "train", root=root, size=64)
    with pytest.raises(BadSampleError, match="01_1_front.jpg"):
        dataset[0]
    with pytest.raises(ValueError, match="03_4_full_subset.txt"):
        dataset[2]
    # truncated: a valid header whose data ends early
    good = (tree / "img/MEN/Denim/id_00000080/01_2_side.jpg").read_bytes()
    (root / "img/MEN/Denim/id_00000080/01_2_side.jpg").write_bytes(good[: len(good) // 3])
    with pytest.raises(BadSampleError, match="01_2_side.jpg"):
        dataset[1]


def test_skip_bad_samples_warns_once(tmp_path):
    root = _make_tree(tmp_path / "tree")
    (root / "img/MEN/Denim/id_00000080/01_1_front.jpg").write_bytes(b"broken")
    (root / "img/WOMEN/Dresses/id_00000203/03_1_front.jpg").write_bytes(b"")
    dataset = build_dataset("deepfashionhd", "train", root=root, size=64, skip_bad_samples=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = [dataset[i]["name"] for i in range(len(dataset))]
    assert len(caught) == 1 and "01_1_front.jpg" in str(caught[0].message)
    # photos 0 and 2 are bad: each is replaced by the next one (1 is its own exemplar, 3 takes photo 4)
    side, full = "MEN_Denim_id_00000080_01_2_side", "WOMEN_Dresses_id_00000203_03_4_full"
    assert names == [side, side, full, full]


def test_bad_arguments(tree, tmp_path):
    with pytest.raises(ValueError, match="root"):
        build_dataset("deepfashionhd", "train", root=tmp_path / "absent")
    with pytest.raises(ValueError, match="train list"):
        build_dataset("deepfashionhd", "train", root=tmp_path)
    with pytest.raises(ValueError, match="size"):
        build_dataset("deepfashionhd", "train", root=tree, size=(64, 32))
    with pytest.raises(ValueError, match="load_size"):
        build_dataset("deepfashionhd", "train", root=tree, size=64, load_size=32)
    for known_warp in (-0.1, 1.5, float("nan"), "0.5", True):
        with pytest.raises(ValueError, match="known_warp"):
            build_dataset("deepfashionhd", "train", root=tree, size=64, known_warp=known_warp)


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="sample data (../shared/data) not present")
def test_release_samples():
    dataset = build_dataset("deepfashionhd", "test", root=SAMPLES, size=128)
    assert len(dataset) == 4
    for index in range(len(dataset)):
        item = dataset[index]
        assert item["image"].shape == (3, 128, 128) and item["label"].shape == (20, 128, 128)
        assert item["self_ref"].item() == 1.0  # no pair lists: the photo is its own exemplar
        torch.testing.assert_close(item["exemplar"], item["image"])
        photo = dataset.photos[index]
        stem = photo.replace("img/", "pose/", 1)[:-4]
        keypoints = pose.read_openpose(SAMPLES / f"{stem}_candidate.txt", SAMPLES / f"{stem}_subset.txt")
        for x, y in keypoints[~np.isnan(keypoints).any(axis=1)] / 2:  # 256-pixel frame -> 128
            assert item["label"][:3, int(y), int(x)].max() > 0
        # the figure is darker or more colourful than the plain studio background around it
        assert item["image"].std() > 0.1


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="sample data (../shared/data) not present")
def test_release_samples_with_known_warps():
    assert "valid" not in build_dataset("deepfashionhd", "test", root=SAMPLES, size=128)[0]
    torch.manual_seed(0)
    dataset = build_dataset("deepfashionhd", "test", root=SAMPLES, size=128, known_warp=1.0)
    for index in range(len(dataset)):
        _check_known_warp(dataset[index], baseline_ratio=4)
