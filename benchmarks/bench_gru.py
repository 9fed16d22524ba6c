"""Does the ConvGRU help? The demo's training, with the GRU off, after PatchMatch, or inside it.

Every variant trains the demo model (``demo.py``'s configuration) for the same number of steps
from the same seed, then is measured on the same held-out synthetic pairs, whose true
correspondence is known: the finest level's end-point error (pixels) of the softmax-weighted
matched coordinate (the weights the warp gives the K candidates) and of the best-scoring one,
over the pixels visible in both images, plus the warp L1, the best match's error at every level
(1/8 .. 1/1) and, as the figure to beat, the error of matching every pixel to its own position,
and per level how far apart the K candidates' scores are (``contrast``: near 0 once the features
no longer tell them apart).
Writes one CSV row per variant and seed, with the training's CPU seconds (empty where a finished
run in ``--runs`` was reused).

    python benchmarks/bench_gru.py --steps 30 --seeds 0 --out benchmarks/results/gru.csv
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_recall import processor_name  # noqa: E402

import cli  # noqa: E402
import data  # noqa: E402
import demo  # noqa: E402
from training import checkpoint  # noqa: E402
from training.evaluation import evaluate  # noqa: E402

VARIANTS = {
    "gru off": ("model.gru_iters=0",),
    "gru after patchmatch": ("model.gru_mode=after",),
    "gru interleaved": ("model.gru_mode=interleaved",),
}
LEVELS = ("1_8", "1_4", "1_2", "1_1")
EPE_LEVELS = tuple(f"epe_best_{level}_px" for level in LEVELS)
CONTRAST_LEVELS = tuple(f"contrast_{level}" for level in LEVELS)
COLUMNS = ("variant", "seed", "steps", "extra", "epe_softmax_px", "epe_best_px", "warp_l1", *EPE_LEVELS,
           "epe_identity_px", *CONTRAST_LEVELS, "train_cpu_s", "processor")


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=cli.int_at_least(0), default=30)
    parser.add_argument("--seeds", type=cli.int_at_least(0), nargs="+", default=[0])
    parser.add_argument("--held_out", type=cli.int_at_least(1), default=16)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="configuration overrides for every variant (e.g. model.gru_max_delta=2)")
    parser.add_argument("--runs", type=Path, default=Path("runs/bench_gru"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gru.csv")
    args = parser.parse_args()

    held_out = data.build_dataset("synthetic", "test", size=128, length=args.held_out, seed=0)
    batches = list(DataLoader(held_out, batch_size=4))
    rows = []
    for seed in args.seeds:
        for name in args.variants:
            overrides = [*VARIANTS[name], *args.overrides]
            folder = args.runs / f"{name.replace(' ', '_')}_seed{seed}"
            start = time.process_time()
            reused = checkpoint.checkpoint_path(folder / "checkpoints", args.steps).is_file()
            final = demo.train_or_reuse(folder, args.steps, seed, overrides)
            seconds = "" if reused else f"{time.process_time() - start:.0f}"  # empty: trained earlier
            scores = evaluate(checkpoint.load_model(final), batches)
            row = {
                "variant": name, "seed": seed, "steps": args.steps, "extra": " ".join(args.overrides),
                "epe_softmax_px": f"{scores.epe_softmax:.3f}", "epe_best_px": f"{scores.epe_best:.3f}",
                "warp_l1": f"{scores.warp_l1:.4f}",
                **{name: f"{e:.3f}" for name, e in zip(EPE_LEVELS, scores.epe_levels, strict=True)},
                "epe_identity_px": f"{scores.epe_identity:.3f}",
                **{name: f"{c:.4f}" for name, c in zip(CONTRAST_LEVELS, scores.contrast_levels, strict=True)},
                "train_cpu_s": seconds,
                "processor": processor_name(),
            }
            print(row, flush=True)
            rows.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    cli.run(main)
