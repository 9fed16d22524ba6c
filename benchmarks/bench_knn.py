"""Exact top-K search on CPU: ``exact_knn`` against faiss ``IndexFlatIP``, the exact index a user
would reach for instead, and ``cocosnet_ops.match``, the approximate search that replaces both.

Reproduce the README table (side 256 dominates: about 3 minutes on 2 cores):

    python benchmarks/bench_knn.py --out benchmarks/results/knn.csv

Smallest run (seconds):

    python benchmarks/bench_knn.py --sides 16 32 --repeats 2 --out /tmp/knn.csv

faiss is a test extra (``pip install faiss-cpu``), never a dependency of cocosnet_ops. Without
it the faiss rows read "unavailable (faiss not installed: pip install faiss-cpu)" and the
script says so; everything else still runs.

Methods, on square maps of side S (N = S * S pixels), batch 1, K matches:

* ``exact_knn``: ``cocosnet_ops.exact_knn(query, key, K)`` (compiled cpu backend when built);
* ``faiss_flat_ip``: ``faiss.IndexFlatIP(C)``, ``add`` of the N key rows and ``search`` of the N
  query rows for K, on the same features as contiguous float32 (N, C) arrays (layout changes
  not timed);
* ``match``: ``cocosnet_ops.match(query, key, K)`` with its default settings; its recall@1
  against ``exact_knn`` is reported beside its time (``bench_match.py`` compares it on more
  data and with faiss's HNSW index too).

Inputs: ``bench_recall.py``'s *smooth* pair (C = 32, L2-normalised per pixel): smooth random
features and a smoothly deformed, noisy copy, so that PatchMatch has the spatial coherence of
real features (on white noise no search but brute force finds anything); the exact searches
do the same work on any features. Both libraries run ``--threads`` threads
(``torch.set_num_threads`` and ``faiss.omp_set_num_threads``).

Measurement: all methods run in the same process, interleaved, ``--repeats`` rounds after
one warm-up round; each round times every method once, so the ratio of a round's times
compares the methods under the same load. Reported per method: the minimum and the median
time, and the median over rounds of faiss's time divided by the method's (> 1: faster than
faiss). ``agrees_with_exact``: fraction of query pixels whose best match has exact_knn's best
score within 1e-5 (faiss computes in its own order, so the last bits may differ; a tie with
another index counts as agreeing). The processor is named from /proc/cpuinfo.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from bench_recall import processor_name, recall, smooth_pair, write_csv
from torch import Tensor

import cocosnet_ops

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cli  # noqa: E402

try:
    import faiss
except ImportError:
    faiss = None

METHODS = ("exact_knn", "faiss_flat_ip", "match")
COLUMNS = (
    "method",
    "side",
    "channels",
    "k",
    "threads",
    "repeats",
    "status",
    "min_s",
    "median_s",
    "faiss_over_method_median",
    "recall_at_1",
    "agrees_with_exact",
    "processor",
)
FAISS_MISSING = "unavailable (faiss not installed: pip install faiss-cpu)"
SCORE_TOLERANCE = 1e-5


def as_rows(t: Tensor) -> np.ndarray:
    """(1, C, H, W) -> contiguous float32 (H * W, C), the layout faiss takes."""
    return np.ascontiguousarray(t[0].flatten(1).T.numpy(), dtype=np.float32)


def faiss_search(query_rows: np.ndarray, key_rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, indices) (N, k) of faiss's exact inner-product index."""
    index = faiss.IndexFlatIP(key_rows.shape[1])
    index.add(key_rows)
    return index.search(query_rows, k)


def searches(
    args: argparse.Namespace, query: Tensor, key: Tensor
) -> dict[str, Callable[[], tuple[Tensor, Tensor]]]:
    """Each method as a function of no arguments returning (nnf, scores) (B, K, H, W)."""
    side, k = query.shape[2], args.k
    query_rows, key_rows = as_rows(query), as_rows(key)

    def faiss_as_nnf() -> tuple[Tensor, Tensor]:
        scores, index = faiss_search(query_rows, key_rows, k)
        shape = (1, side, side, k)
        nnf = torch.from_numpy(index.astype(np.int32)).view(shape).permute(0, 3, 1, 2)
        return nnf, torch.from_numpy(scores).view(shape).permute(0, 3, 1, 2)

    return {
        "exact_knn": lambda: cocosnet_ops.exact_knn(query, key, k),
        "faiss_flat_ip": faiss_as_nnf,
        "match": lambda: cocosnet_ops.match(query, key, k),
    }


def measure_side(args: argparse.Namespace, side: int, processor: str) -> list[dict]:
    query, key = smooth_pair(side)
    available = [m for m in args.methods if m != "faiss_flat_ip" or faiss is not None]
    run = searches(args, query, key)
    results = {method: run[method]() for method in available}  # warm-up round, kept for quality
    times: dict[str, list[float]] = {method: [] for method in available}
    for _ in range(args.repeats):
        for method in available:
            start = time.perf_counter()
            run[method]()
            times[method].append(time.perf_counter() - start)
    exact = results["exact_knn"] if "exact_knn" in results else cocosnet_ops.exact_knn(query, key, args.k)
    rows = []
    for method in args.methods:
        row = {
            "method": method,
            "side": side,
            "channels": query.shape[1],
            "k": args.k,
            "threads": args.threads,
            "repeats": args.repeats,
            "processor": processor,
        }
        if method not in available:
            row["status"] = FAISS_MISSING
            rows.append(row)
            continue
        found = results[method]
        row.update(
            status="ok",
            min_s=min(times[method]),
            median_s=statistics.median(times[method]),
            recall_at_1=recall(found, exact)[0],
            agrees_with_exact=(found[1][:, 0] >= exact[1][:, 0] - SCORE_TOLERANCE).float().mean().item(),
        )
        if "faiss_flat_ip" in available:
            ratios = [f / t for f, t in zip(times["faiss_flat_ip"], times[method], strict=True)]
            row["faiss_over_method_median"] = statistics.median(ratios)
        rows.append(row)
    return rows


def format_progress(row: dict) -> str:
    head = f"{row['method']:>24} side {row['side']:>4}: "
    if row["status"] != "ok":
        return head + row["status"]
    ratio = row.get("faiss_over_method_median")
    versus = f", faiss / this {ratio:.2f}x" if ratio is not None else ""
    return head + (
        f"min {row['min_s']:.4f} s, median {row['median_s']:.4f} s{versus}, recall@1 {row['recall_at_1']:.4f}"
    )


# ----------------------------------------------------------------------------- outputs


def write_plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for index, method in enumerate(METHODS):
        done = [r for r in rows if r["method"] == method and r["status"] == "ok"]
        if not done:
            continue
        sides = [r["side"] for r in done]
        colour = f"C{index}"
        ax.plot(sides, [r["median_s"] for r in done], "-o", color=colour, label=f"{method} (median)")
        ax.plot(sides, [r["min_s"] for r in done], "--", color=colour, alpha=0.6, label=f"{method} (min)")
    first = rows[0]
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("map side S (N = S * S query and key pixels)")
    ax.set_ylabel("seconds")
    ax.set_title(
        f"top-{first['k']} search, C={first['channels']}, {first['threads']} threads\n{first['processor']}"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| method | side | min (s) | median (s) | faiss time / this, median | recall@1 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if row["status"] != "ok":
            lines.append(f"| {row['method']} | {row['side']} | {row['status']} | | | |")
            continue
        ratio = row.get("faiss_over_method_median")
        lines.append(
            f"| {row['method']} | {row['side']} | {row['min_s']:.4g} | {row['median_s']:.4g} | "
            f"{'' if ratio is None else f'{ratio:.2f}'} | {row['recall_at_1']:.3f} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sides", type=cli.int_at_least(1), nargs="+", default=[64, 128, 256])
    parser.add_argument("--k", type=cli.int_at_least(1), default=16)
    parser.add_argument("--threads", type=cli.int_at_least(1), default=2)
    parser.add_argument(
        "--repeats", type=cli.int_at_least(1), default=5, help="timed rounds after one warm-up round"
    )
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/knn.csv"))
    args = parser.parse_args(argv)
    if any(side * side < args.k for side in args.sides):
        parser.error("every side must have at least k pixels")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if faiss is None:
        print(f"faiss is not installed: the faiss_flat_ip rows read {FAISS_MISSING!r}.")
    else:
        faiss.omp_set_num_threads(args.threads)
    processor = processor_name()
    print(
        f"cocosnet_ops compiled: {cocosnet_ops.HAS_COMPILED}; threads: {args.threads}; "
        f"faiss: {faiss.__version__ if faiss is not None else 'not installed'}; processor: {processor}"
    )
    rows = []
    with torch.no_grad():
        for side in args.sides:
            for row in measure_side(args, side, processor):
                print(format_progress(row), flush=True)
                rows.append(row)
    write_csv(rows, args.out, COLUMNS)
    plot_path = args.out.with_suffix(".png")
    write_plot(rows, plot_path)
    print(f"\nwrote {args.out} and {plot_path}\n")
    print(markdown_table(rows))


if __name__ == "__main__":
    cli.run(main)
