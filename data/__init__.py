"""Datasets: the embedded synthetic figures, DeepFashionHD (OpenPose txt poses), paired label folders,
and the embedded synthetic scenes with instances (pix2pixHD's; no exemplars, see data.synthetic_scenes).

``build_dataset(name, split, **options)`` gives a ``torch.utils.data.Dataset`` whose items are dicts:

- "label" float32 (label_nc, H, W): the semantic input of the target;
- "image" float32 (3, H, W) in [-1, 1]: the target photo;
- "exemplar" float32 (3, H, W) in [-1, 1] and "exemplar_label" float32 (label_nc, H, W);
- "self_ref" float32 scalar: 1.0 when the exemplar shows the same subject as the target;
- "name" str: a file-name-safe id of the sample;
- folder datasets with instance maps: "instance" float32 (1, H, W) instance ids;
- synthetic: "exemplar_coords" float32 (2, H, W), the true (x, y) exemplar pixel of each target pixel
  (pixel centres at integers), and "valid" float32 (1, H, W), 1 where that correspondence exists;
- deepfashionhd and folder with ``known_warp`` > 0: the same two keys in every item. With probability
  ``known_warp`` the exemplar is a random affine warp of the target photo and label (a self-reference pair,
  "self_ref" 1; see ``data.common.self_reference_pair``) and they hold its exact correspondence; items
  that kept their usual exemplar hold zeros in both (no valid pixel), so that any mix collates.

Every dataset has ``label_nc`` (channels of "label") and ``image_size`` (H, W) attributes.
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset

DATASETS = ("synthetic", "deepfashionhd", "folder", "synthetic_scenes")
SPLITS = ("train", "test")


def dataset_class(name: str) -> type[Dataset]:
    """The class of the dataset ``name`` (one of DATASETS, in any case); its constructor's keyword
    arguments but ``split`` are the dataset's options."""
    if not isinstance(name, str) or name.lower() not in DATASETS:
        raise ValueError(f"name: expected one of {DATASETS}, got {name!r}")
    name = name.lower()
    if name == "synthetic":
        from data.synthetic import SyntheticPoseDataset

        return SyntheticPoseDataset
    if name == "synthetic_scenes":
        from data.synthetic_scenes import SyntheticScenesDataset

        return SyntheticScenesDataset
    if name == "deepfashionhd":
        from data.deepfashion import DeepFashionHDDataset

        return DeepFashionHDDataset
    from data.folder import PairedFolderDataset

    return PairedFolderDataset


def build_dataset(name: str, split: str, **options: Any) -> Dataset:
    """The dataset ``name`` (one of DATASETS) for ``split`` ("train", or "test": held out).

    Options: synthetic: size=128, length=1000, seed=0. synthetic_scenes: size=64, length=1000,
    seed=0. deepfashionhd: root, size=256, skip_bad_samples=False, known_warp=0.0 (see
    data.deepfashion). folder: root, label_nc, size=256, known_warp=0.0 (see data.folder).
    """
    cls = dataset_class(name)
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    return cls(split=split, **options)
