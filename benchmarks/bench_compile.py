"""Training step time of CoCosNet v2 on CPU: eager against ``torch.compile`` (default settings).

One step is ``TrainingStep(model)(batch).total.backward()``: the correspondence, the generator,
the discriminator and every loss forward, then one backward for all of them (the optimizer
step, the same in both modes, is left out). Reproduce the README numbers:

    python benchmarks/bench_compile.py --out benchmarks/results/compile.csv

Smallest run (minutes: most of it is compiling):

    python benchmarks/bench_compile.py --side 32 --repeats 2 --out /tmp/compile.csv

Measurement: the eager and the compiled step run in the same process, interleaved, ``--repeats``
rounds after one warm-up round (for the compiled step the warm-up is the compilation, timed
separately); each round times both once, so their ratio compares them under the same load
(the machine may be shared). Reported per mode: the minimum and the median step time, the
median over rounds of eager / compiled (> 1: compiled is faster), and the compilation time.
The processor is named from /proc/cpuinfo.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from bench_recall import processor_name, write_csv

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cli  # noqa: E402
from models import CoCosNet, CoCosNetOptions, TrainingStep  # noqa: E402

COLUMNS = (
    "mode",
    "side",
    "batch",
    "threads",
    "min_s",
    "median_s",
    "eager_over_compiled",
    "compile_s",
    "repeats",
    "widths",
    "processor",
    "torch",
)


def make_batch(side: int, batch: int, label_nc: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """One-hot label maps of blocky random regions and random images in [-1, 1]."""
    gen = torch.Generator().manual_seed(seed)

    def label() -> torch.Tensor:
        coarse = torch.randint(0, label_nc, (batch, side // 8, side // 8), generator=gen)
        classes = coarse.repeat_interleave(8, 1).repeat_interleave(8, 2)
        return torch.nn.functional.one_hot(classes, label_nc).permute(0, 3, 1, 2).float().contiguous()

    def image() -> torch.Tensor:
        return torch.rand(batch, 3, side, side, generator=gen) * 2 - 1

    return {"label": label(), "image": image(), "exemplar": image(), "exemplar_label": label()}


def timed_step(step: torch.nn.Module, model: CoCosNet, batch: dict[str, torch.Tensor]) -> float:
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    step(batch).total.backward()
    return time.perf_counter() - start


def write_plot(rows: list[dict], path: Path) -> None:
    """Bars of the minimum and median step time per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [row["mode"] for row in rows]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for offset, (column, label) in enumerate((("min_s", "min"), ("median_s", "median"))):
        ax.bar(
            [i + 0.4 * offset for i in range(len(rows))],
            [float(row[column]) for row in rows],
            0.4,
            label=label,
        )
    ax.set_xticks([i + 0.2 for i in range(len(rows))], modes)
    ax.set_ylabel("training step (s)")
    first = rows[0]
    ax.set_title(f"side {first['side']}, batch {first['batch']}, {first['threads']} thread(s)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = cli.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--side", type=cli.int_at_least(8), default=128, help="label and exemplar side (divisible by 8)"
    )
    parser.add_argument("--batch", type=cli.int_at_least(1), default=1)
    parser.add_argument("--repeats", type=cli.int_at_least(1), default=5)
    parser.add_argument("--threads", type=cli.int_at_least(1), default=torch.get_num_threads())
    parser.add_argument(
        "--width", type=cli.int_at_least(1), default=16, help="nef, match_nc, ngf and ndf; spade_nc twice it"
    )
    parser.add_argument("--k", type=cli.int_at_least(1), default=8)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/compile.csv"))
    args = parser.parse_args()
    if args.side % 8:
        parser.error(f"argument --side: expected a multiple of 8, got {args.side}")
    if args.k > (args.side // 8) ** 2:
        parser.error(f"argument --k: expected at most the {(args.side // 8) ** 2} pixels of the 1/8 level")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    width = args.width
    options = CoCosNetOptions(
        label_nc=8, nef=width, match_nc=width, ngf=width, ndf=width, spade_nc=2 * width, k=args.k
    )
    model = CoCosNet(options).train()
    step = TrainingStep(model)
    compiled = torch.compile(step)
    batch = make_batch(args.side, args.batch, options.label_nc)

    timed_step(step, model, batch)
    compile_s = timed_step(compiled, model, batch)
    print(f"compiled in {compile_s:.1f} s", flush=True)
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for round_ in range(args.repeats):
        times["eager"].append(timed_step(step, model, batch))
        times["compiled"].append(timed_step(compiled, model, batch))
        print(f"round {round_}: eager {times['eager'][-1]:.3f} s, compiled {times['compiled'][-1]:.3f} s")
    ratio = statistics.median(e / c for e, c in zip(times["eager"], times["compiled"], strict=True))

    common = {
        "side": args.side,
        "batch": args.batch,
        "threads": args.threads,
        "repeats": args.repeats,
        "widths": f"nef=match_nc=ngf=ndf={width} spade_nc={2 * width} k={args.k}",
        "processor": processor_name(),
        "torch": torch.__version__,
    }
    rows = [
        {
            "mode": mode,
            "min_s": min(ts),
            "median_s": statistics.median(ts),
            "eager_over_compiled": ratio if mode == "compiled" else 1.0,
            "compile_s": compile_s if mode == "compiled" else 0.0,
            **common,
        }
        for mode, ts in times.items()
    ]
    write_csv(rows, args.out, COLUMNS)
    write_plot(rows, args.out.with_suffix(".png"))
    print(f"\nwrote {args.out} and {args.out.with_suffix('.png')}")
    print("| mode | min (s) | median (s) | eager / compiled | compile (s) |\n|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['mode']} | {row['min_s']:.3f} | {row['median_s']:.3f} | "
            f"{row['eager_over_compiled']:.2f} | {row['compile_s']:.0f} |"
        )
    print(f"\n{common['processor']}, {args.threads} threads, torch {torch.__version__}")


if __name__ == "__main__":
    cli.run(main)
