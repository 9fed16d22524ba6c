"""DeepFashionHD with OpenPose poses, in the layout of the CoCosNet v2 release.

::

    root/
      img/MEN/.../id_00000080/01_1_front.jpg         photos (750x1101 in DeepFashionHD)
      pose/MEN/.../id_00000080/01_1_front_candidate.txt, ..._subset.txt   OpenPose, see data.pose
      train.txt, val.txt                              one photo per line: img\\MEN\\...\\01_1_front.jpg
      deepfashion_self_pair.txt                       photo,other photo of the same person[,...]
      deepfashion_ref.txt, deepfashion_ref_test.txt   photo,reference photo[,...] (train, test)

List paths are relative to ``root`` and may use Windows backslashes. Photos are padded to a square
with the value 232 (as the release's preprocessing does: 750x1101 -> 1101x1101, 175 columns left and
176 right). The release's pose files hold coordinates in a 1024x1024 frame of that padded square
(``pose_frame``; by default 1024 for photos that are not square, the photo's own pixels for square
ones). With ``pose_canvas="frame"`` the label is drawn in that frame and resized with the photo, as the
release does (bit for bit); the default ``"load"`` draws the same figure, sizes scaled, directly at the
resized photo's size: about 15x faster at 256 pixels, and different only in rasterisation (about 1% of
the skeleton's pixels, 0.002 mean on the distance channels). Training resizes to ``load_size``
(default size * 550 / 512, as the release's 550 for 512) and crops a random ``size`` square; the test
split resizes to ``size`` (and crops the centre if ``load_size`` is larger).

The exemplar, as the release chooses it: for training another photo of the same person from the
self-pair list (one of them at random), else the last photo of the ``deepfashion_ref.txt`` line; for
test the first reference of the ``deepfashion_ref_test.txt`` line, else the first self pair. A photo in
no list is its own exemplar. Lists other than the split's are optional.

``known_warp`` (default 0): the probability that an item's exemplar is instead a random affine warp of its
own photo and label (see ``data.common.random_affine``: rotation, scale and shift, no mirror, since a
mirrored figure would keep its limbs' left/right colours in the label), a self-reference pair whose
correspondence is known exactly. With ``known_warp`` > 0 every item holds "exemplar_coords" and "valid"
(zeros where the usual exemplar was kept), so that any mix of items collates; with 0 items are as without
the option. It applies to whichever split is given.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from data import pose as openpose
from data.common import (
    BadSampleError,
    PhotoListDataset,
    SkippingLoader,
    check_probability,
    check_size,
    correspondence_fields,
    photo_to_tensor,
    random_affine,
    random_crop_origin,
    read_list,
    read_photo,
    safe_name,
    self_reference_pair,
)

PAD_VALUE = 232
RELEASE_POSE_FRAME = 1024
RELEASE_LOAD_RATIO = 550 / 512
SPLIT_LISTS = {"train": "train.txt", "test": "val.txt"}
REFERENCE_LISTS = {"train": "deepfashion_ref.txt", "test": "deepfashion_ref_test.txt"}
SELF_PAIR_LIST = "deepfashion_self_pair.txt"


def pad_to_square(image: Image.Image, value: int = PAD_VALUE) -> Image.Image:
    """Pad the shorter side on both sides (the extra column or row on the right or bottom)."""
    width, height = image.size
    side = max(width, height)
    if width == height:
        return image
    square = Image.new("RGB", (side, side), (value, value, value))
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


def pose_paths(root: Path, photo: str) -> tuple[Path, Path]:
    """The candidate and subset files of a photo path relative to the root (img/... -> pose/...)."""
    parts = photo.split("/")
    if parts[0] == "img":
        parts[0] = "pose"
    stem = os.path.splitext("/".join(parts))[0]
    return root / f"{stem}_candidate.txt", root / f"{stem}_subset.txt"


def _read_pairs(path: Path) -> dict[str, list[str]]:
    pairs = {}
    for line in read_list(path):
        items = [item.strip() for item in line.split(",") if item.strip()]
        if len(items) >= 2:
            pairs[items[0]] = items[1:]
    return pairs


class DeepFashionHDDataset(PhotoListDataset):
    """DeepFashionHD photos with their 20-channel pose labels and an exemplar (see the module doc);
    ``known_warp`` > 0 makes that share of exemplars warps of the target with the true correspondence."""

    label_nc = openpose.LABEL_NC

    def __init__(self, root: str | os.PathLike, split: str = "train", size: int | tuple[int, int] = 256,
                 skip_bad_samples: bool = False, load_size: int | None = None, pose_frame: int | None = None,
                 list_dir: str | os.PathLike | None = None, pose_canvas: str = "load",
                 known_warp: float = 0.0) -> None:
        if split not in SPLIT_LISTS:
            raise ValueError(f"split: expected one of {tuple(SPLIT_LISTS)}, got {split!r}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"root: DeepFashionHD folder {self.root} does not exist")
        self.split = split
        self.image_size = check_size(size)
        if self.image_size[0] != self.image_size[1]:
            raise ValueError(f"size: DeepFashionHD photos are padded to squares, got {size!r}")
        side = self.image_size[0]
        default_load = round(side * RELEASE_LOAD_RATIO) if split == "train" else side
        self.load_size = default_load if load_size is None else load_size
        if not isinstance(self.load_size, int) or self.load_size < side:
            raise ValueError(f"load_size: expected an int >= size ({side}), got {load_size!r}")
        if pose_frame is not None and (not isinstance(pose_frame, int) or pose_frame < 1):
            raise ValueError(f"pose_frame: expected a positive int or None, got {pose_frame!r}")
        self.pose_frame = pose_frame
        if pose_canvas not in ("load", "frame"):
            raise ValueError(f"pose_canvas: expected 'load' or 'frame', got {pose_canvas!r}")
        self.pose_canvas = pose_canvas
        self.known_warp = check_probability(known_warp, "known_warp")
        lists = Path(list_dir) if list_dir is not None else self.root
        split_list = lists / SPLIT_LISTS[split]
        if not split_list.is_file():
            raise ValueError(f"root: the {split} list {split_list} does not exist")
        self.photos = read_list(split_list)
        if not self.photos:
            raise ValueError(f"root: the {split} list {split_list} is empty")
        self_pair_list, reference_list = lists / SELF_PAIR_LIST, lists / REFERENCE_LISTS[split]
        self.self_pairs = _read_pairs(self_pair_list) if self_pair_list.is_file() else {}
        self.references = _read_pairs(reference_list) if reference_list.is_file() else {}
        self._load = SkippingLoader(self._load_item, len(self.photos), skip_bad_samples)

    def exemplar_of(self, photo: str) -> tuple[str, bool]:
        """The exemplar photo of ``photo`` and whether it shows the same person."""
        if self.split == "train":
            if photo in self.self_pairs:
                choices = self.self_pairs[photo]
                return choices[int(torch.randint(0, len(choices), ()).item())], True
            if photo in self.references:
                return self.references[photo][-1], False
        else:
            if photo in self.references:
                return self.references[photo][0], False
            if photo in self.self_pairs:
                return self.self_pairs[photo][0], True
        return photo, True

    def _load_item(self, index: int) -> dict[str, torch.Tensor | str]:
        photo = self.photos[index]
        # Drawn only when asked for, so that known_warp=0 leaves every other draw as it was.
        warped = self.known_warp > 0 and bool(torch.rand(()) < self.known_warp)
        exemplar, same_person = (photo, True) if warped else self.exemplar_of(photo)
        image, label = self._load_pair(photo)
        pair = None
        if warped:
            pair = self_reference_pair(image, label, random_affine(self.image_size))
            exemplar_image, exemplar_label = pair.exemplar, pair.exemplar_label
        else:
            exemplar_image, exemplar_label = self._load_pair(exemplar)
        item = {
            "label": label,
            "image": image,
            "exemplar": exemplar_image,
            "exemplar_label": exemplar_label,
            "self_ref": torch.tensor(1.0 if same_person else 0.0),
            "name": safe_name(photo.removeprefix("img/")),
        }
        if self.known_warp > 0:
            item.update(correspondence_fields(pair, self.image_size))
        return item

    def _load_pair(self, photo: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The photo and its pose label, padded, resized and (for training) randomly cropped together."""
        path = self.root / photo
        image = read_photo(path)
        square = image.size[0] == image.size[1]
        image = pad_to_square(image)
        candidate, subset = pose_paths(self.root, photo)
        try:
            keypoints = openpose.read_openpose(candidate, subset)
        except ValueError as error:
            raise BadSampleError(f"pose of {path}: {error}") from error
        frame = self.pose_frame or (image.size[0] if square else RELEASE_POSE_FRAME)
        load = self.load_size
        if self.pose_canvas == "frame":
            label = openpose.resize_label(openpose.draw_pose_label(keypoints, (frame, frame)), (load, load))
        else:
            label = openpose.draw_pose_label(keypoints * (load / frame), (load, load))
        if image.size != (load, load):
            image = image.resize((load, load), Image.BICUBIC)
        image_tensor = photo_to_tensor(image)
        label_tensor = torch.from_numpy(np.ascontiguousarray(label.transpose(2, 0, 1)))
        side = self.image_size[0]
        if load > side:
            if self.split == "train":
                top, left = random_crop_origin((load, load), (side, side))
            else:
                top = left = (load - side) // 2
            image_tensor = image_tensor[:, top:top + side, left:left + side].contiguous()
            label_tensor = label_tensor[:, top:top + side, left:left + side].contiguous()
        return image_tensor, label_tensor
