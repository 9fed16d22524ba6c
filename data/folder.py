"""Paired folders of photos and label maps, for segmentation-to-image translation (ADE20K and the like).

Layouts found under ``root`` for a split (``training`` or ``train``; ``validation``, ``val`` or ``test``):

- ``root/<split>/NAME.jpg`` with ``root/<split>/NAME.png`` beside it (CoCosNet's ADE20K layout), or
- ``root/images/<split>/NAME.jpg`` with ``root/annotations/<split>/NAME.png`` (ADEChallengeData2016),

or the folders given as ``image_dir``/``label_dir``. A label map holds one class id per pixel; the label is
its one-hot encoding over ``label_nc`` channels (ADE20K: 0 unlabelled + 150 classes, label_nc=151); id 255
is "don't care" (no channel set). Optional ``instance_dir``: instance-id maps NAME.png, returned as
"instance" for the model's boundary channel (pix2pixHD).

Exemplars come from a list whose lines are ``NAME.jpg,EXEMPLAR.jpg[,...]`` (``exemplar_list``; by default
``root/exemplars_<split>.txt`` or CoCosNet's ``root/ade20k_ref.txt`` / ``ade20k_ref_test.txt``); an
exemplar is looked up in the split's folders, then in the other split's (ADE20K's test exemplars are
training photos). For training one of the listed exemplars at random, for test the first; a photo in no
list is its own exemplar. Training resizes to ``load_size`` (default size * 286 / 256, CoCosNet's 286 for
256), crops a random ``size`` square and flips half of the time; test resizes to ``size``.

``known_warp`` (default 0): the probability that an item's exemplar is instead a random affine warp of its
own photo and one-hot label (see ``data.common.random_affine``: rotation, scale, shift, and with ``flip``
a mirror half of the time), a self-reference pair whose correspondence is known exactly. With
``known_warp`` > 0 every item holds "exemplar_coords" and "valid" (zeros where the usual exemplar was
kept), so that any mix of items collates; with 0 items are as without the option. It applies to whichever
split is given.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

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
    read_label_map,
    read_list,
    read_photo,
    safe_name,
    self_reference_pair,
)

SPLIT_FOLDERS = {"train": ("training", "train"), "test": ("validation", "val", "test")}
PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DONT_CARE = 255
LOAD_RATIO = 286 / 256


def _split_folders(root: Path, split: str) -> tuple[Path, Path] | None:
    for name in SPLIT_FOLDERS[split]:
        if (root / "images" / name).is_dir() and (root / "annotations" / name).is_dir():
            return root / "images" / name, root / "annotations" / name
        if (root / name).is_dir():
            return root / name, root / name
    return None


def _photos_in(image_dir: Path, label_dir: Path) -> list[Path]:
    # Photos and labels in one folder: the PNGs there are the labels.
    extensions = (".jpg", ".jpeg") if image_dir.resolve() == label_dir.resolve() else PHOTO_EXTENSIONS
    return sorted(p for p in image_dir.rglob("*") if p.suffix.lower() in extensions and p.is_file())


class PairedFolderDataset(PhotoListDataset):
    """Photos with one-hot label maps and exemplars, from paired folders (see the module doc);
    ``known_warp`` > 0 makes that share of exemplars warps of the target with the true correspondence."""

    def __init__(self, root: str | os.PathLike, label_nc: int, split: str = "train",
                 size: int | tuple[int, int] = 256, image_dir: str | os.PathLike | None = None,
                 label_dir: str | os.PathLike | None = None, instance_dir: str | os.PathLike | None = None,
                 exemplar_list: str | os.PathLike | None = None,
                 load_size: int | tuple[int, int] | None = None, flip: bool = True,
                 skip_bad_samples: bool = False, known_warp: float = 0.0) -> None:
        if split not in SPLIT_FOLDERS:
            raise ValueError(f"split: expected one of {tuple(SPLIT_FOLDERS)}, got {split!r}")
        if not isinstance(label_nc, int) or isinstance(label_nc, bool) or label_nc < 1:
            raise ValueError(f"label_nc: expected a positive int, got {label_nc!r}")
        self.root, self.split, self.label_nc = Path(root), split, label_nc
        if not self.root.is_dir():
            raise ValueError(f"root: folder {self.root} does not exist")
        self.image_size = check_size(size)
        if split == "train" and load_size is None:
            load_size = tuple(round(s * LOAD_RATIO) for s in self.image_size)
        self.load_size = check_size(load_size if load_size is not None else self.image_size, "load_size")
        if any(load < crop for load, crop in zip(self.load_size, self.image_size, strict=True)):
            raise ValueError(f"load_size: expected at least size {self.image_size}, got {load_size!r}")
        self.flip = flip and split == "train"
        self.known_warp = check_probability(known_warp, "known_warp")

        found = _split_folders(self.root, split)
        if image_dir is None or label_dir is None:
            if found is None:
                tried = ", ".join(SPLIT_FOLDERS[split])
                raise ValueError(f"root: no {split} folder ({tried}, or images/ and annotations/ with one of "
                                 f"them) in {self.root}; or give image_dir and label_dir")
        self.image_dir = Path(image_dir) if image_dir is not None else found[0]
        self.label_dir = Path(label_dir) if label_dir is not None else found[1]
        for name, folder in (("image_dir", self.image_dir), ("label_dir", self.label_dir)):
            if not folder.is_dir():
                raise ValueError(f"{name}: folder {folder} does not exist")
        self.instance_dir = Path(instance_dir) if instance_dir is not None else None
        if self.instance_dir is not None and not self.instance_dir.is_dir():
            raise ValueError(f"instance_dir: folder {self.instance_dir} does not exist")
        self.photos = _photos_in(self.image_dir, self.label_dir)
        if not self.photos:
            raise ValueError(f"root: no photos in {self.image_dir}")
        other = _split_folders(self.root, "test" if split == "train" else "train")
        self._exemplar_folders = [(self.image_dir, self.label_dir)] + ([other] if other else [])
        self.exemplars = self._read_exemplars(exemplar_list)
        self._load = SkippingLoader(self._load_item, len(self.photos), skip_bad_samples)

    def _read_exemplars(self, exemplar_list: str | os.PathLike | None) -> dict[str, list[str]]:
        if exemplar_list is None:
            cocosnet_list = "ade20k_ref.txt" if self.split == "train" else "ade20k_ref_test.txt"
            names = (f"exemplars_{self.split}.txt", cocosnet_list)
            existing = [self.root / name for name in names if (self.root / name).is_file()]
            if not existing:
                return {}
            path = existing[0]
        else:
            path = Path(exemplar_list)
            if not path.is_file():
                raise ValueError(f"exemplar_list: file {path} does not exist")
        exemplars = {}
        for line in read_list(path):
            items = [item.strip() for item in line.split(",") if item.strip()]
            if len(items) >= 2:
                exemplars[os.path.basename(items[0])] = items[1:]
        return exemplars

    @property
    def has_instances(self) -> bool:
        return self.instance_dir is not None

    def exemplar_of(self, photo: Path) -> Path:
        """The exemplar photo of ``photo`` (itself when it is in no list)."""
        choices = self.exemplars.get(photo.name)
        if not choices:
            return photo
        pick = int(torch.randint(0, len(choices), ()).item()) if self.split == "train" else 0
        name = choices[pick]
        for image_dir, _ in self._exemplar_folders:
            if (image_dir / name).is_file():
                return image_dir / name
        raise BadSampleError(f"exemplar {name} of {photo} is in none of "
                             f"{', '.join(str(folder) for folder, _ in self._exemplar_folders)}")

    def _label_path(self, photo: Path) -> Path:
        for image_dir, label_dir in self._exemplar_folders:
            if photo.is_relative_to(image_dir):
                return (label_dir / photo.relative_to(image_dir)).with_suffix(".png")
        return photo.with_suffix(".png")

    def _load_item(self, index: int) -> dict[str, torch.Tensor | str]:
        photo = self.photos[index]
        # Drawn only when asked for, so that known_warp=0 leaves every other draw as it was.
        warped = self.known_warp > 0 and bool(torch.rand(()) < self.known_warp)
        exemplar = photo if warped else self.exemplar_of(photo)
        image, label, instance = self._load_sample(photo, with_instance=self.has_instances)
        pair = None
        if warped:
            matrix = random_affine(self.image_size, flip_probability=0.5 if self.flip else 0.0)
            pair = self_reference_pair(image, label, matrix)
            exemplar_image, exemplar_label = pair.exemplar, pair.exemplar_label
        else:
            exemplar_image, exemplar_label, _ = self._load_sample(exemplar, with_instance=False)
        item = {
            "label": label,
            "image": image,
            "exemplar": exemplar_image,
            "exemplar_label": exemplar_label,
            "self_ref": torch.tensor(1.0 if exemplar == photo else 0.0),
            "name": safe_name(str(photo.relative_to(self.image_dir))),
        }
        if instance is not None:
            item["instance"] = instance
        if self.known_warp > 0:
            item.update(correspondence_fields(pair, self.image_size))
        return item

    def _load_sample(self, photo: Path, with_instance: bool) -> tuple[torch.Tensor, ...]:
        """Photo, one-hot label and instance ids, resized, cropped and flipped together."""
        image = read_photo(photo)
        label_path = self._label_path(photo)
        ids = read_label_map(label_path)
        if ids.shape != (image.size[1], image.size[0]):
            raise BadSampleError(f"label map {label_path} is {ids.shape[1]}x{ids.shape[0]}, "
                                 f"its photo {photo} is {image.size[0]}x{image.size[1]}")
        maps = [ids]
        if with_instance:
            instance_path = (self.instance_dir / photo.relative_to(self.image_dir)).with_suffix(".png")
            maps.append(read_label_map(instance_path))
            if maps[1].shape != ids.shape:
                raise BadSampleError(f"instance map {instance_path} does not match the size of {photo}")
        height, width = self.load_size
        if image.size != (width, height):
            image = image.resize((width, height), Image.BICUBIC)
        maps = [cv2.resize(m.astype(np.int32), (width, height), interpolation=cv2.INTER_NEAREST)
                for m in maps]
        image_tensor = photo_to_tensor(image)
        map_tensors = [torch.from_numpy(m.astype(np.int64)) for m in maps]
        crop_h, crop_w = self.image_size
        if (height, width) != (crop_h, crop_w):
            top, left = (random_crop_origin((height, width), (crop_h, crop_w)) if self.split == "train"
                         else ((height - crop_h) // 2, (width - crop_w) // 2))
            image_tensor = image_tensor[:, top:top + crop_h, left:left + crop_w]
            map_tensors = [m[top:top + crop_h, left:left + crop_w] for m in map_tensors]
        if self.flip and torch.rand(()) < 0.5:
            image_tensor = image_tensor.flip(-1)
            map_tensors = [m.flip(-1) for m in map_tensors]
        label = self._one_hot(map_tensors[0], label_path)
        instance = map_tensors[1][None].float() if with_instance else None
        return image_tensor.contiguous(), label, instance

    def _one_hot(self, ids: torch.Tensor, path: Path) -> torch.Tensor:
        care = ids != DONT_CARE
        if care.any() and int(ids[care].max()) >= self.label_nc:
            raise ValueError(f"label map {path} holds class id {int(ids[care].max())}, but label_nc is "
                             f"{self.label_nc} (ids 0..{self.label_nc - 1}, and {DONT_CARE} for don't care)")
        if (ids < 0).any():
            raise ValueError(f"label map {path} holds negative class ids")
        label = torch.zeros(self.label_nc, *ids.shape)
        label.scatter_(0, torch.where(care, ids, 0)[None], care[None].float())
        return label
