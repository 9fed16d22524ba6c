"""pix2pixHD's instance feature clusters: per-class k-means centres of the encoder's instance
features, and the feature maps that give each instance one of its class's centres.

A trained encoder gives every instance of the training set one feature (``feat_nc`` numbers);
k-means (faiss) over the instances of each class gives that class's centres, a palette of
plausible appearances. At test time every instance of a label map takes one centre of its
class, random or chosen per class, so one label map yields several outputs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .pix2pixhd import Pix2PixHD


def instance_features(
    model: Pix2PixHD, batches: Iterable[Mapping[str, Tensor]], device: torch.device | str = "cpu"
) -> dict[int, np.ndarray]:
    """The encoder's feature of every instance of ``batches`` (``label``, ``image``,
    ``instance``), by class: {class: (instances, feat_nc) float32}. An instance's class is the
    most frequent label of its pixels."""
    found: dict[int, list[np.ndarray]] = {}
    with torch.no_grad():
        for batch in batches:
            image, instance = batch["image"].to(device), batch["instance"].to(device)
            features = model.encode(image, instance).cpu()
            classes = batch["label"].argmax(dim=1)
            for b in range(image.shape[0]):
                ids = batch["instance"][b, 0]
                for value in ids.unique():
                    mask = ids == value
                    cls = int(classes[b][mask].mode().values)
                    found.setdefault(cls, []).append(features[b][:, mask][:, 0].numpy())
    return {cls: np.stack(rows).astype(np.float32) for cls, rows in sorted(found.items())}


def cluster_features(features: Mapping[int, np.ndarray], k: int, seed: int = 0, iterations: int = 50
                     ) -> dict[int, np.ndarray]:
    """Per class, the centres (at most ``k``, fewer where the class has fewer instances) of
    faiss k-means over its instance features: {class: (centres, feat_nc) float32}."""
    import faiss  # an optional dependency (the train extra): only clustering needs it

    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k: expected an int >= 1, got {k!r}")
    centres = {}
    for cls, rows in features.items():
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        clusters = min(k, len(rows))
        if clusters == len(rows):  # one centre per instance: the instances themselves
            centres[cls] = rows.copy()
            continue
        # The best of several starts: one start can leave two centres on one group. A class may have
        # few instances, which faiss would warn about.
        kmeans = faiss.Kmeans(rows.shape[1], clusters, niter=iterations, nredo=10, seed=seed, verbose=False,
                              min_points_per_centroid=1)
        kmeans.train(rows)
        # faiss orders the centres arbitrarily: sorted by their first feature, a centre's index means
        # the same in every run.
        order = np.lexsort(kmeans.centroids.T[::-1])
        centres[cls] = kmeans.centroids[order].astype(np.float32)
    return centres


def save_centres(centres: Mapping[int, np.ndarray], path: str | os.PathLike) -> Path:
    """Write the centres to ``path`` (a ``.npz``, one array ``class_<c>`` per class)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        np.savez(file, **{f"class_{cls}": np.asarray(c, dtype=np.float32) for cls, c in centres.items()})
    return path


def load_centres(path: str | os.PathLike) -> dict[int, np.ndarray]:
    """The centres :func:`save_centres` wrote to ``path``."""
    try:
        with np.load(path) as archive:
            return {int(name.removeprefix("class_")): archive[name] for name in archive.files}
    except (OSError, ValueError) as error:
        raise ValueError(f"path: {path} is not a file of cluster centres ({error})") from error


def features_from_centres(
    label: Tensor,
    instance: Tensor,
    centres: Mapping[int, np.ndarray],
    choice: Mapping[int, int] | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Feature maps (B, feat_nc, H, W) in which every instance holds one centre of its class:
    ``choice[class]`` where given, else a random one (from ``generator``). Instances of a class
    without centres hold zeros."""
    choice = dict(choice or {})
    for cls, index in choice.items():
        if cls not in centres:
            raise ValueError(f"choice: class {cls} has no centres (classes with centres: {sorted(centres)})")
        if not 0 <= index < len(centres[cls]):
            raise ValueError(f"choice: class {cls} has {len(centres[cls])} centres, got index {index}")
    feat_nc = len(next(iter(centres.values()))[0])
    batch, _, height, width = label.shape
    out = torch.zeros(batch, feat_nc, height, width)
    classes = label.argmax(dim=1).cpu()
    for b in range(batch):
        ids = instance[b, 0].cpu()
        for value in ids.unique():
            mask = ids == value
            cls = int(classes[b][mask].mode().values)
            if cls not in centres:
                continue
            index = choice.get(cls)
            if index is None:
                index = int(torch.randint(len(centres[cls]), (), generator=generator))
            out[b][:, mask] = torch.from_numpy(centres[cls][index])[:, None]
    return out.to(label.device)
