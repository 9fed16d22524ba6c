"""make demo: train CoCosNet v2 on the embedded synthetic figures at 128x128 on the CPU, then translate
held-out pairs and show how much better the trained correspondence warps the exemplar.

It trains through ``train.main`` with ``configs/demo.yaml`` and the CPU-sized overrides below
(a narrower ConvGRU and generator, fewer steps: the demo has minutes on two cores), saves the
same model at initialisation (zero steps, same seed) beside it, measures both on the same
held-out pairs, and runs ``test.py`` on those pairs, which writes translations, warps per level,
NNF flow pictures and one grid per pair (label | exemplar | warp 1/8 .. 1/1 | output | target).

    python demo.py --out runs/demo            # about 3 minutes on two cores (5 with the build)
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

import cli
import data
import train
from training import checkpoint
from training.evaluation import HeldOutScores, evaluate

ROOT = Path(__file__).resolve().parent
CONFIG = ROOT / "configs" / "demo.yaml"
# configs/demo.yaml, narrowed so that training fits in minutes on a 2-core CPU.
CPU_OVERRIDES = (
    "model.nef=8",
    "model.match_nc=8",
    "model.patch_match_iters=2",
    "model.spade_nc=16",
    "model.ngf=8",
    "model.ndf=8",
    "model.num_D=1",
    "model.gru_hidden_nc=16",
    "model.gru_input_nc=32",
    "train.batch_size=2",
    "train.num_workers=0",
    "train.checkpoint_every=1000",
    "train.image_every=1000",
)


def load_test_script():
    """test.py as a module (its name would otherwise be the standard library's ``test`` package)."""
    spec = importlib.util.spec_from_file_location("cocosnet_test", ROOT / "test.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_args(out: Path, steps: int, seed: int, extra: Sequence[str], overwrite: bool = False) -> list[str]:
    """train.py's command line of a demo training; ``overwrite`` starts over in a run folder an
    unfinished run left (for callers that looked for a finished run there first)."""
    args = ["--config", str(CONFIG), "--out", str(out), "--max_steps", str(steps), "--seed", str(seed),
            "--device", "cpu", "--vgg_weights", "none", *(["--overwrite"] if overwrite else [])]
    for override in (*CPU_OVERRIDES, *extra):
        args += ["--set", override]
    return args


def train_or_reuse(out: Path, steps: int, seed: int, extra: Sequence[str]) -> Path:
    """The final checkpoint of a demo training in ``out``: reused when a run there already reached
    ``steps`` (rerunning the demo), else trained now, over
    whatever an unfinished run left there."""
    done = checkpoint.checkpoint_path(out / "checkpoints", steps)
    if done.is_file():
        print(f"reusing {done}")
        return done
    return train.main(train_args(out, steps, seed, extra, overwrite=True))


def stack_grids(paths: Sequence[Path], out: Path) -> None:
    """The per-pair grids one above the other in one PNG."""
    rows = [np.asarray(Image.open(p)) for p in paths]
    Image.fromarray(np.concatenate(rows, axis=0)).save(out)


def main(argv: Sequence[str] | None = None) -> tuple[HeldOutScores, HeldOutScores]:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    parser.add_argument("--steps", type=cli.int_at_least(1), default=300,
                        help="training steps (batch 2; the recipe's budget, docs/training.md)")
    parser.add_argument("--held_out", type=cli.int_at_least(1), default=8,
                        help="held-out pairs to measure and translate")
    parser.add_argument("--seed", type=cli.int_at_least(0), default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="more configuration overrides, as train.py takes them")
    args = parser.parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out: {args.out} is a file; expected a folder for the demo's runs and pictures")
    start = time.perf_counter()
    untrained = train_or_reuse(args.out / "untrained", 0, args.seed, args.overrides)
    trained = train_or_reuse(args.out / "trained", args.steps, args.seed, args.overrides)
    train_seconds = time.perf_counter() - start

    config = checkpoint.load(trained)["config"]
    size = config["data"]["train"]["size"]
    held_out = data.build_dataset("synthetic", "test", size=size, length=args.held_out, seed=args.seed)
    batches = list(DataLoader(held_out, batch_size=4))
    before = evaluate(checkpoint.load_model(untrained), batches)
    after = evaluate(checkpoint.load_model(trained), batches)

    translations = args.out / "translations"
    grids = load_test_script().main(["--checkpoint", str(trained), "--out", str(translations),
                                     "--limit", str(args.held_out)])
    stack_grids(grids, args.out / "grid.png")
    print(f"trained {args.steps} steps in {train_seconds:.0f} s on {torch.get_num_threads()} threads; "
          f"total {time.perf_counter() - start:.0f} s")
    print(f"wrote {len(grids)} translations to {translations}/ and their grids to {args.out / 'grid.png'}")
    print(result_line(before, after))
    return before, after


def result_line(before: HeldOutScores, after: HeldOutScores) -> str:
    """The demo's result: the finest level's best-match error and warp L1, untrained -> trained,
    beside the error of matching every pixel to its own position."""
    return (f"held-out, finest level: best-match error untrained {before.epe_levels[-1]:.1f} px -> trained "
            f"{after.epe_levels[-1]:.1f} px (every pixel to its own position: {after.epe_identity:.1f} px); "
            f"warp L1 {before.warp_l1:.4f} -> {after.warp_l1:.4f}")


if __name__ == "__main__":
    cli.run(main)
