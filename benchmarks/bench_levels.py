"""Does every level of the correspondence learn, and does the ConvGRU help? Training variants of
the demo model, several seeds each, measured level by level on held-out synthetic pairs.

Every variant trains ``demo.py``'s configuration (``configs/demo.yaml`` with the demo's
overrides) for the same number of steps from each seed, then is measured on the same held-out
synthetic pairs, whose true correspondence is known (``training.evaluation.evaluate``): per
level (1/8 .. 1/1), the best match's end-point error in full-resolution pixels, the error of the
best candidate the level's search started from (the window built from the coarser level: what
the search could have found), the share of the final candidates inside that window and the
candidates' score contrast, all over the pixels visible in both images; the finest level's
softmax-weighted error, the warp L1, and the error of matching every pixel to its own position
(the figure to beat). One CSV row per variant and seed; a plot of the per-level errors (mean and
spread over the seeds); a markdown table.

    python benchmarks/bench_levels.py --set-name levels --steps 300 --seeds 0 1 2 --jobs 2 \
        --out benchmarks/results/levels.csv
    python benchmarks/bench_levels.py --set-name gru --steps 300 --seeds 0 1 2 --jobs 2 \
        --out benchmarks/results/gru.csv

Runs train in their own processes (``--jobs`` at a time, one thread each) into ``--runs``; a
finished run there is reused, so the command can be rerun to add variants or seeds.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_recall import processor_name  # noqa: E402

import cli  # noqa: E402
import data  # noqa: E402
import demo  # noqa: E402
from training import checkpoint  # noqa: E402
from training.config import load_config  # noqa: E402
from training.evaluation import evaluate  # noqa: E402

# The search of the paper's model in the demo's widths (configs/demo.yaml with demo.py's CPU
# overrides): the 4 best coarse matches each spread over a 4x4 window 2 pixels apart, K=4, two
# unbounded PatchMatch iterations, matching features of each level on their own.
TODAY = ("model.matching_levels=own", "model.upsample_matches=4", "model.upsample_dilation=2",
         "model.search_radius=null", "model.k=4", "model.patch_match_iters=2",
         "model.loss_weights.correspondence=0", "train.dense_warmup_steps=0")  # fmt: skip
# The search that refines: the windows dense (dilation 1), K=8, the iterations kept within one
# pixel of them (patch_match's max_radius).
BOUNDED = ("model.upsample_dilation=1", "model.search_radius=1", "model.k=8")
# The correspondence loss where the truth is known, at weight 10.
CORRESPONDENCE = ("model.loss_weights.correspondence=10",)
# The recipe: all three, each finer level's matching features built on the coarser one's.
RECIPE = (*TODAY, *BOUNDED, *CORRESPONDENCE, "model.matching_levels=residual")
GRU_OFF = ("model.gru_iters=0",)

# Named sets of variants: each a list of `--set` overrides on top of the demo's configuration.
VARIANT_SETS: dict[str, dict[str, tuple[str, ...]]] = {
    "levels": {
        "today's search": (*TODAY, *GRU_OFF),
        "public-like: the window only": (*TODAY, "model.upsample_matches=1", "model.k=16",
                                         "model.patch_match_iters=0", *GRU_OFF),
        "dense warm-up (100 steps)": (*TODAY, "train.dense_warmup_steps=100", *GRU_OFF),
        "bounded search": (*TODAY, *BOUNDED, *GRU_OFF),
        "correspondence loss": (*TODAY, *CORRESPONDENCE, *GRU_OFF),
        "bounded search + correspondence loss": (*TODAY, *BOUNDED, *CORRESPONDENCE, *GRU_OFF),
        "recipe: bounded + correspondence loss + residual levels": (*RECIPE, *GRU_OFF),
    },
    "gru": {
        "recipe, gru off": (*RECIPE, *GRU_OFF),
        "recipe, gru after patchmatch": (*RECIPE, "model.gru_iters=2", "model.gru_mode=after"),
        "recipe, gru interleaved": (*RECIPE, "model.gru_iters=2", "model.gru_mode=interleaved"),
    },
}
LEVELS = ("1_8", "1_4", "1_2", "1_1")
PER_LEVEL = ("epe", "oracle", "window_share", "contrast")
COLUMNS = ("variant", "seed", "steps", "extra", *(f"{m}_{level}" for m in PER_LEVEL for level in LEVELS),
           "epe_softmax_px", "warp_l1", "epe_identity_px", "train_s", "processor")  # fmt: skip


def train_run(folder: Path, steps: int, seed: int, overrides: Sequence[str]) -> tuple[Path, float | None]:
    """The run's final checkpoint, trained now in a one-thread subprocess (with its wall seconds)
    or reused (None)."""
    done = checkpoint.checkpoint_path(folder / "checkpoints", steps)
    if done.is_file():
        return done, None
    # Over what an unfinished run left there: the finished one was looked for above.
    command = [sys.executable, str(ROOT / "train.py"),
               *demo.train_args(folder, steps, seed, overrides, overwrite=True)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    start = time.perf_counter()
    with open(folder.with_suffix(".log"), "w") as log:
        subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    return done, time.perf_counter() - start


def run_folder(runs: Path, overrides: Sequence[str], seed: int) -> Path:
    """Named by what it trains, so a variant in two sets (the recipe, GRU off) trains once; its
    config.yaml says which settings those are."""
    digest = hashlib.sha1("\n".join(overrides).encode()).hexdigest()[:12]
    return runs / f"{digest}_seed{seed}"


def measure(final: Path, batches: list) -> dict[str, str]:
    scores = evaluate(checkpoint.load_model(final), batches)
    row = {"epe_softmax_px": f"{scores.epe_softmax:.3f}", "warp_l1": f"{scores.warp_l1:.4f}",
           "epe_identity_px": f"{scores.epe_identity:.3f}"}  # fmt: skip
    per_level = {"epe": scores.epe_levels, "oracle": scores.oracle_levels,
                 "window_share": scores.window_share_levels, "contrast": scores.contrast_levels}  # fmt: skip
    for name, values in per_level.items():
        row |= {f"{name}_{level}": f"{v:.3f}" for level, v in zip(LEVELS, values, strict=True)}
    return row


def spread(values: Sequence[float]) -> str:
    """Mean (min-max) of the seeds' values."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def by_variant(rows: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for row in rows:
        grouped.setdefault(row["variant"], []).append(row)
    return grouped


def markdown_table(rows: list[dict], command: str) -> str:
    identity = statistics.mean(float(r["epe_identity_px"]) for r in rows)
    seeds = sorted({int(r["seed"]) for r in rows})
    lines = [f"`{command}` ({processor_name()}; seeds {seeds}; mean (min-max) over the seeds; "
             f"matching every pixel to its own position: {identity:.1f} px)", "",
             "| variant | best-match EPE 1/8, 1/4, 1/2, 1/1 (px) | window oracle 1/4, 1/2, 1/1 (px) | "
             "window share 1/4, 1/2, 1/1 | warp L1 |", "|---|---|---|---|---|"]  # fmt: skip
    for name, group in by_variant(rows).items():

        def column(key: str, group: list[dict] = group) -> list[float]:
            return [float(r[key]) for r in group]

        epe = ", ".join(spread(column(f"epe_{level}")) for level in LEVELS)
        oracle = ", ".join(spread(column(f"oracle_{level}")) for level in LEVELS[1:])
        share = ", ".join(f"{statistics.mean(column(f'window_share_{level}')):.2f}" for level in LEVELS[1:])
        warp = statistics.mean(column("warp_l1"))
        lines.append(f"| {name} | {epe} | {oracle} | {share} | {warp:.3f} |")
    return "\n".join(lines) + "\n"


def write_plot(rows: list[dict], path: Path) -> None:
    figure, axes = plt.subplots(figsize=(8, 4.5))
    for name, group in by_variant(rows).items():
        values = [[float(r[f"epe_{level}"]) for r in group] for level in LEVELS]
        means = [statistics.mean(v) for v in values]
        low = [m - min(v) for m, v in zip(means, values, strict=True)]
        high = [max(v) - m for m, v in zip(means, values, strict=True)]
        axes.errorbar(range(len(LEVELS)), means, yerr=[low, high], marker="o", capsize=3, label=name)
    identity = statistics.mean(float(r["epe_identity_px"]) for r in rows)
    axes.axhline(identity, color="gray", linestyle="--", label="every pixel to its own position")
    axes.set_xticks(range(len(LEVELS)), [level.replace("_", "/") for level in LEVELS])
    axes.set_xlabel("level (fraction of the image size)")
    axes.set_ylabel("best match's end-point error (px, full resolution)")
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set-name", choices=sorted(VARIANT_SETS), default="levels")
    parser.add_argument("--variants", nargs="+", help="names from the set (default: all of it)")
    parser.add_argument("--steps", type=cli.int_at_least(0), default=30)
    parser.add_argument("--seeds", type=cli.int_at_least(0), nargs="+", default=[0])
    parser.add_argument("--held_out", type=cli.int_at_least(1), default=16)
    parser.add_argument("--jobs", type=cli.int_at_least(1), default=1,
                        help="training runs at a time, one thread each")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="configuration overrides for every variant")
    parser.add_argument("--runs", type=Path, default=Path("runs/bench_levels"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "levels.csv")
    args = parser.parse_args(argv)
    known = VARIANT_SETS[args.set_name]
    for name in args.variants or []:
        if name not in known:
            parser.error(f"--variants: {name!r} is not in set {args.set_name!r}: {sorted(known)}")
    # A bad setting stops here, not in the training subprocesses' logs.
    for name in args.variants or known:
        load_config(demo.CONFIG, [*demo.CPU_OVERRIDES, *known[name], *args.overrides])
    return args


def main(argv: Sequence[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    known = VARIANT_SETS[args.set_name]
    variants = {name: known[name] for name in args.variants or known}
    runs = [(name, seed) for seed in args.seeds for name in variants]
    folders = {run: run_folder(args.runs, [*variants[run[0]], *args.overrides], run[1]) for run in runs}
    for folder in folders.values():
        folder.parent.mkdir(parents=True, exist_ok=True)

    def train(run: tuple[str, int]) -> tuple[Path, float | None]:
        return train_run(folders[run], args.steps, run[1], [*variants[run[0]], *args.overrides])

    with ThreadPoolExecutor(args.jobs) as pool:
        trained = dict(zip(runs, pool.map(train, runs), strict=True))
    held_out = data.build_dataset("synthetic", "test", size=128, length=args.held_out, seed=0)
    batches = list(DataLoader(held_out, batch_size=4))
    rows = []
    for name, seed in runs:
        final, seconds = trained[(name, seed)]
        row = {"variant": name, "seed": seed, "steps": args.steps, "extra": " ".join(args.overrides),
               **measure(final, batches), "train_s": "" if seconds is None else f"{seconds:.0f}",
               "processor": processor_name()}  # fmt: skip
        print(row, flush=True)
        rows.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    write_plot(rows, args.out.with_suffix(".png"))
    command = "python benchmarks/bench_levels.py " + " ".join(sys.argv[1:] if argv is None else argv)
    table = markdown_table(rows, command)
    args.out.with_suffix(".md").write_text(table)
    print(table)
    print(f"wrote {args.out} and its .png and .md")
    return rows


if __name__ == "__main__":
    cli.run(main, "bench_levels.py")
