"""make pix2pixhd-demo: train pix2pixHD on the embedded synthetic scenes (64x64, CPU) with the
coarse-to-fine recipe, cluster its instance features per class, and draw held-out label maps
with three different centres.

It trains through ``train.main`` with ``configs/pix2pixhd_demo.yaml`` (the global generator alone
at 32x32, then the local enhancer with the global generator frozen, then both), saves the same
model at initialisation (zero steps, same seed) beside it, and prints the held-out L1 of both
(each output made from the target's own instance features, as in training). Then
``cluster_features.py`` finds ``--k`` centres per class, and ``grid.png`` shows held-out scenes
as label | instance edges | output with every object at centre 0, 1, 2 of its class | target.

    python demo_pix2pixhd.py --out runs/pix2pixhd_demo     # under a minute on two cores
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader

import cli
import cluster_features
import data
import train
from models import Pix2PixHD, instance_edges
from models.feature_clusters import features_from_centres
from training import checkpoint, visuals

ROOT = Path(__file__).resolve().parent
CONFIG = ROOT / "configs" / "pix2pixhd_demo.yaml"
GRID_CENTRES = 3  # outputs in the grid: every object at centre 0, 1, 2 of its class


def train_or_reuse(out: Path, seed: int, extra: Sequence[str], untrained: bool = False) -> Path:
    """The final checkpoint of a demo training in ``out`` (``untrained``: of zero steps): reused
    when a run there already finished (rerunning the demo), else trained now over whatever an
    unfinished run left there."""
    latest = checkpoint.latest_checkpoint(out / "checkpoints")
    if latest is not None:
        state = checkpoint.load(latest)
        settings = state["config"]["train"]
        epochs = settings["global_epochs"] + settings["constant_epochs"] + settings["decay_epochs"]
        if (state["step"] == 0) if untrained else (state["epoch"] == epochs):
            print(f"reusing {latest}")
            return latest
    args = ["--config", str(CONFIG), "--out", str(out), "--seed", str(seed), "--device", "cpu", "--overwrite"]
    if untrained:
        args += ["--max_steps", "0"]
    for override in extra:
        args += ["--set", override]
    return train.main(args)


@torch.no_grad()
def held_out_l1(model: Pix2PixHD, batches: Sequence[Mapping[str, Tensor]]) -> float:
    """Mean absolute error in [-1, 1] units of the outputs made from the targets' own instance
    features against the targets."""
    errors = []
    for batch in batches:
        features = model.encode(batch["image"], batch["instance"]) if model.encoder is not None else None
        output = model(batch["label"], batch["instance"], features)
        errors.append((output - batch["image"]).abs().mean(dim=(1, 2, 3)))
    return float(torch.cat(errors).mean())


@torch.no_grad()
def centre_grid(model: Pix2PixHD, batch: Mapping[str, Tensor], centres: Mapping, samples: int) -> Tensor:
    """label | edges | output with every object at centre j of its class (j = 0, 1, 2) | target."""
    label, instance = batch["label"][:samples], batch["instance"][:samples]
    outputs = []
    for j in range(GRID_CENTRES):
        choice = {cls: min(j, len(c) - 1) for cls, c in centres.items()}
        outputs.append(model(label, instance, features_from_centres(label, instance, centres, choice)))
    return visuals.label_map_grid(label, instance_edges(instance), outputs, batch["image"][:samples], samples)


def main(argv: Sequence[str] | None = None) -> tuple[float, float]:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/pix2pixhd_demo"))
    parser.add_argument("--held_out", type=cli.int_at_least(1), default=16, help="held-out scenes to measure")
    parser.add_argument("--grid_samples", type=cli.int_at_least(1), default=4,
                        help="held-out scenes in the grid")
    parser.add_argument("--k", type=cli.int_at_least(GRID_CENTRES), default=GRID_CENTRES,
                        help="feature centres per class")
    parser.add_argument("--seed", type=cli.int_at_least(0), default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="more configuration overrides, as train.py takes them")
    args = parser.parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out: {args.out} is a file; expected a folder for the demo's runs and pictures")
    start = time.perf_counter()
    untrained = train_or_reuse(args.out / "untrained", args.seed, args.overrides, untrained=True)
    trained = train_or_reuse(args.out / "trained", args.seed, args.overrides)
    train_seconds = time.perf_counter() - start

    config = checkpoint.load(trained)["config"]
    options = {**config["data"]["train"], **(config["data"].get("test") or {}), "length": args.held_out}
    held_out = data.build_dataset(config["data"]["name"], "test", **options)
    batches = list(DataLoader(held_out, batch_size=8))
    before = held_out_l1(checkpoint.load_model(untrained), batches)
    model = checkpoint.load_model(trained)
    after = held_out_l1(model, batches)

    centres = cluster_features.main(["--checkpoint", str(trained), "--out", str(args.out / "centres.npz"),
                                     "--k", str(args.k), "--seed", str(args.seed), "--overwrite"])
    grid = centre_grid(model, batches[0], centres, args.grid_samples)
    visuals.save_png(grid, args.out / "grid.png")
    print(f"trained in {train_seconds:.0f} s on {torch.get_num_threads()} threads; "
          f"total {time.perf_counter() - start:.0f} s")
    print(f"wrote {args.out / 'grid.png'}: label | instance edges | centre 0, 1, 2 of each class | target")
    print(f"held-out L1 (outputs from the targets' own instance features): untrained {before:.4f} -> "
          f"trained {after:.4f} ({100 * (1 - after / before):.0f}% lower)")
    return before, after


if __name__ == "__main__":
    cli.run(main)
