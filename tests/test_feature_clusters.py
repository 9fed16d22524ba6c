"""pix2pixHD's feature clusters: per-class k-means, centres saved and reloaded, feature maps from
centres, and the programs around them (cluster_features.py, test.py on a pix2pixhd checkpoint)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_train_pix2pixhd import TINY

import cli
import cluster_features
import train
from models.feature_clusters import cluster_features as cluster
from models.feature_clusters import features_from_centres, load_centres, save_centres

pytest.importorskip("faiss")
ROOT = Path(__file__).resolve().parent.parent


def three_groups(seed: int, centres: np.ndarray, per_group: int = 20) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([c + rng.normal(0, 0.01, (per_group, len(c))) for c in centres]).astype(np.float32)


def test_kmeans_finds_each_class_groups_and_keeps_small_classes_whole():
    truth = {1: np.array([[-1.0, 0, 0], [0, 1, 0], [1, 0, 1]]),
             2: np.array([[0.5, 0.5, -0.5], [-0.5, 0, 0.9]])}
    features = {cls: three_groups(cls, c) for cls, c in truth.items()}
    features[3] = np.array([[0.1, 0.2, 0.3]], dtype=np.float32)  # one instance: it is its own centre
    centres = cluster(features, k=3, seed=0)
    assert len(centres[1]) == 3 and len(centres[2]) == 3 and np.array_equal(centres[3], features[3])
    for cls, expected in truth.items():
        distances = np.linalg.norm(centres[cls].astype(np.float64)[:, None] - expected[None], axis=2)
        assert (distances.min(axis=0) < 0.05).all()  # every true group has a centre on it
    with pytest.raises(ValueError, match="k"):
        cluster(features, k=0)


def test_centres_are_saved_and_reloaded(tmp_path):
    centres = {0: np.random.default_rng(0).normal(size=(3, 3)).astype(np.float32),
               4: np.zeros((1, 3), np.float32)}
    loaded = load_centres(save_centres(centres, tmp_path / "centres.npz"))
    assert loaded.keys() == centres.keys()
    assert all(np.array_equal(loaded[c], centres[c]) for c in centres)
    (tmp_path / "not.npz").write_text("text")
    with pytest.raises(ValueError, match="path"):
        load_centres(tmp_path / "not.npz")


def test_every_instance_takes_a_centre_of_its_class():
    label = torch.zeros(1, 3, 4, 6)
    label[:, 0] = 1
    instance = torch.zeros(1, 1, 4, 6)
    for cls, cols, ident in ((1, slice(0, 2), 1001), (1, slice(2, 4), 1002), (2, slice(4, 6), 2001)):
        label[0, :, :, cols] = 0
        label[0, cls, :, cols] = 1
        instance[0, 0, :, cols] = ident
    centres = {1: np.array([[1.0, 1], [2, 2], [3, 3]], np.float32), 2: np.array([[7.0, 7]], np.float32)}
    chosen = features_from_centres(label, instance, centres, choice={1: 2})
    assert (chosen[:, :, :, :4] == 3).all() and (chosen[:, :, :, 4:] == 7).all()
    # Random choices are per instance: over draws, the two objects of class 1 differ some time.
    generator = torch.Generator().manual_seed(0)
    draws = [features_from_centres(label, instance, centres, generator=generator) for _ in range(20)]
    assert any(not torch.equal(d[..., 0], d[..., 2]) for d in draws)
    for d in draws:
        assert torch.equal(d[..., 0], d[..., 1])  # one feature per instance
    with pytest.raises(ValueError, match="choice"):
        features_from_centres(label, instance, centres, choice={2: 1})


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, one_intra_op_thread) -> Path:
    folder = tmp_path_factory.mktemp("p2p")
    config = folder / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    return train.main(["--config", str(config), "--out", str(folder / "run"), "--max_steps", "2"])


def load_test_script():
    spec = importlib.util.spec_from_file_location("cocosnet_test", ROOT / "test.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cluster_then_translate_several_outputs(tiny_run, tmp_path):
    centres_file = tmp_path / "centres.npz"
    centres = cluster_features.main(["--checkpoint", str(tiny_run), "--out", str(centres_file), "--k", "2"])
    assert set(centres) == {0, 1, 2, 3} and all(len(c) == 2 for c in centres.values())
    with pytest.raises(cli.UsageError, match="--out"):
        cluster_features.main(["--checkpoint", str(tiny_run), "--out", str(centres_file)])
    test_script = load_test_script()
    out = tmp_path / "translations"
    grids = test_script.main(["--checkpoint", str(tiny_run), "--centres", str(centres_file),
                              "--out", str(out), "--limit", "2", "--outputs", "3", "--centre", "1=1"])
    assert len(grids) == 2 and all(g.is_file() for g in grids)
    written = sorted(p.name for p in out.glob("*_[0-9].png"))
    assert written[:3] == [f"scene_test_000000_{j}.png" for j in range(3)]
    with pytest.raises(cli.UsageError, match="--centres"):
        test_script.main(["--checkpoint", str(tiny_run), "--out", str(out)])
    with pytest.raises(cli.UsageError, match="--centre"):
        test_script.main(["--checkpoint", str(tiny_run), "--centres", str(centres_file), "--out", str(out),
                          "--centre", "1=5"])
