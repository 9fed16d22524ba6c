"""Cluster a trained pix2pixHD's instance features per class: the centres test.py picks from.

    python cluster_features.py --checkpoint runs/pix2pixhd/checkpoints/step_00001000.pt \\
        --out runs/pix2pixhd/centres.npz --k 10

Encodes the training split of the checkpoint's dataset (or of ``--config``'s) with the model's
feature encoder, runs k-means (faiss) over the instance features of each semantic class and
writes at most ``--k`` centres per class to ``--out`` (``.npz``, see models.feature_clusters).
An existing ``--out`` is replaced only with ``--overwrite``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader, Subset

import cli
import data
from models.feature_clusters import cluster_features, instance_features, save_centres
from training import checkpoint
from training.config import ConfigError, load_config


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = cli.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="a pix2pixhd train.py checkpoint")
    parser.add_argument("--out", type=Path, required=True, help="the .npz file of centres to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--config", type=Path,
                        help="YAML whose data section to read (default: the checkpoint's)")
    parser.add_argument("--k", type=cli.int_at_least(1), default=10, help="centres per class (pix2pixHD: 10)")
    parser.add_argument("--limit", type=cli.int_at_least(1), help="encode only the first N training samples")
    parser.add_argument("--batch_size", type=cli.int_at_least(1), default=8)
    parser.add_argument("--seed", type=cli.int_at_least(0), default=0, help="k-means seed")
    parser.add_argument("--device", type=cli.torch_device, default="cpu", help="cpu, cuda or cuda:N")
    args = parser.parse_args(argv)
    if args.out.exists() and not args.overwrite:
        parser.error(f"--out: {args.out} exists; pass --overwrite to replace it")
    return args


def main(argv: Sequence[str] | None = None) -> dict[int, np.ndarray]:
    """Cluster as the command line ``argv`` says; returns the centres by class."""
    args = parse_args(argv)
    state = checkpoint.load(args.checkpoint, "--checkpoint")
    if checkpoint.model_kind(state) != "pix2pixhd":
        raise cli.UsageError(f"--checkpoint: {args.checkpoint} holds a {checkpoint.model_kind(state)} model")
    model = checkpoint.load_model(args.checkpoint, args.device)
    if model.encoder is None:
        raise cli.UsageError(f"--checkpoint: {args.checkpoint} has no feature encoder (model.feat_nc 0)")
    config = state["config"]
    if args.config is not None:
        config = load_config(cli.require_file(args.config, "--config"))
    try:
        dataset = data.build_dataset(config["data"]["name"], "train", **(config["data"]["train"] or {}))
    except ValueError as error:
        raise ConfigError(f"data.train: {error}") from error
    if args.limit is not None:
        dataset = Subset(dataset, range(min(args.limit, len(dataset))))
    features = instance_features(model, DataLoader(dataset, batch_size=args.batch_size), args.device)
    centres = cluster_features(features, args.k, args.seed)
    save_centres(centres, args.out)
    counts = ", ".join(f"class {c}: {len(centres[c])} of {len(features[c])}" for c in centres)
    print(f"wrote the centres ({counts} instances) to {args.out}")
    return centres


if __name__ == "__main__":
    cli.run(main)
