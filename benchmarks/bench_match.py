"""``cocosnet_ops.match`` against exact kNN and faiss (exact and HNSW): recall and seconds.

Reproduce the README table (benchmarks/results/match.csv, .png, .md; about 80 minutes on 2
cores, the exact searches and faiss flat at 1024 dominate; --append puts the four runs in one
table):

    python benchmarks/bench_match.py --sides 128 256 --repeats 3 --append
    python benchmarks/bench_match.py --sides 512 --datasets smooth --repeats 2 \\
        --max-exact-pairs 4.3e9 --append
    python benchmarks/bench_match.py --sides 512 --datasets photo hard --repeats 2 \\
        --max-exact-pairs 4.3e9 --append
    python benchmarks/bench_match.py --sides 1024 --datasets smooth photo --repeats 2 \\
        --max-exact-pairs 4.3e9 --append

Smallest run (seconds):

    python benchmarks/bench_match.py --sides 32 --datasets smooth --repeats 1 --out /tmp/match.csv

Methods, all with K matches per query pixel, on the same features (float32, L2-normalised per
pixel), each batch item on its own (faiss: one index per item):

* ``match``: ``cocosnet_ops.match(query, key, K)`` with its default settings (compiled cpu
  backend when built);
* ``exact_knn``: ``cocosnet_ops.exact_knn(query, key, K)``, the ground truth;
* ``faiss_flat``: faiss ``IndexFlatIP``, ``add`` of the key pixels then ``search`` of the query
  pixels (exact);
* ``faiss_hnsw``: faiss ``IndexHNSWFlat`` (inner product, ``--hnsw-m`` links per node, faiss's
  default efConstruction 40), build then search: the index exists for one key map, so building
  it is part of the search. ``efSearch`` is tuned per dataset and side to the recall of
  ``match``: the smallest power of two from 16 to 4096 whose recall@1 and recall@K, measured on
  ``--tune-pixels`` query pixels spread over the batch items, are both at least ``match``'s. Where
  HNSW's recall levels off below that (on the photo pair from side 512 it stops rising near
  0.92, while each doubling costs more), the doubling stops once neither recall rises by
  ``--hnsw-plateau`` and the row keeps the efSearch before that doubling.

The faiss inputs are contiguous float32 (N, C) arrays made before timing. Data: the smooth,
photo and hard pairs of ``bench_recall.py`` (the hard pairs only up to ``--hard-max-side``: five
pairs in a batch, or the first ``--hard-pairs``). recall@1 and recall@K as in
``bench_recall.py`` (top-1 score within 1e-6 of the exact best; overlap of the top-K sets).

Measurement: every method runs in the same process, ``--threads`` threads for torch and faiss.
One untimed round gives each method's result; then ``--repeats`` rounds each time every method
once, in an order rotated from round to round, so that all see the same load. Reported per
method: median and minimum seconds, and the median over rounds of its time divided by
``match``'s time in the same round. The exact searches' cost is the same for every query row
(each is compared with every key pixel), so where a dataset and side have more than
``--max-exact-pairs`` (query, key) pixel pairs they are timed on evenly spaced query rows
(every N-th) and their time multiplied by N (``timed_on`` says so). The ground truth is
``exact_knn`` on every row, or above ``--max-truth-pairs`` pairs on evenly spaced rows, where
recall is then measured (``recall_on``); its run is timed too (``ground_truth_s``, multiplied
likewise).
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from bench_recall import DATASETS, dataset_pair, processor_name, recall, write_csv
from torch import Tensor

import cocosnet_ops

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cli  # noqa: E402

try:
    import faiss
except ImportError:
    faiss = None

METHODS = ("match", "exact_knn", "faiss_flat", "faiss_hnsw")
COLUMNS = (
    "dataset",
    "side",
    "pairs",
    "k",
    "method",
    "status",
    "recall_at_1",
    "recall_at_k",
    "median_s",
    "min_s",
    "over_match_median",
    "timed_on",
    "recall_on",
    "ground_truth_s",
    "hnsw_ef_search",
    "hnsw_build_s",
    "threads",
    "repeats",
    "processor",
    "load_average",
    "command",
)
INTEGER_COLUMNS = ("side", "pairs", "k", "hnsw_ef_search", "threads", "repeats")
FLOAT_COLUMNS = (
    "recall_at_1",
    "recall_at_k",
    "median_s",
    "min_s",
    "over_match_median",
    "ground_truth_s",
    "hnsw_build_s",
)
FAISS_MISSING = "unavailable (faiss not installed: pip install faiss-cpu)"
EF_SEARCH = tuple(2**e for e in range(4, 13))

Result = tuple[Tensor, Tensor]


def as_rows(t: Tensor) -> np.ndarray:
    """(C, H, W) -> contiguous float32 (H * W, C), the layout faiss takes."""
    return np.ascontiguousarray(t.flatten(1).T.numpy(), dtype=np.float32)


def as_nnf(scores: np.ndarray, index: np.ndarray, height: int, width: int) -> Result:
    """faiss's (N, K) scores and indices as a (1, K, H, W) NNF."""
    k = index.shape[1]
    nnf = torch.from_numpy(index.astype(np.int32)).view(1, height, width, k).permute(0, 3, 1, 2)
    return nnf.contiguous(), torch.from_numpy(scores).view(1, height, width, k).permute(
        0, 3, 1, 2
    ).contiguous()


def faiss_flat(query: list[np.ndarray], key: list[np.ndarray], k: int, size: tuple[int, int]) -> Result:
    results = []
    for q, kr in zip(query, key, strict=True):
        index = faiss.IndexFlatIP(kr.shape[1])
        index.add(kr)
        results.append(as_nnf(*index.search(q, k), *size))
    return torch.cat([r[0] for r in results]), torch.cat([r[1] for r in results])


def hnsw_index(key: np.ndarray, links: int):
    index = faiss.IndexHNSWFlat(key.shape[1], links, faiss.METRIC_INNER_PRODUCT)
    index.add(key)
    return index


def faiss_hnsw(
    query: list[np.ndarray], key: list[np.ndarray], k: int, size: tuple[int, int], links: int, ef_search: int
) -> Result:
    results = []
    for q, kr in zip(query, key, strict=True):
        index = hnsw_index(kr, links)
        index.hnsw.efSearch = ef_search
        results.append(as_nnf(*index.search(q, k), *size))
    return torch.cat([r[0] for r in results]), torch.cat([r[1] for r in results])


def tune_ef_search(
    query: list[np.ndarray],
    key: list[np.ndarray],
    exact: Result,
    truth_step: int,
    target: tuple[float, float],
    args: argparse.Namespace,
) -> tuple[int, float]:
    """The smallest efSearch whose recall on a sample of every item's query pixels (among those
    the ground truth ``exact`` has: every ``truth_step``-th row) reaches ``target`` (recall@1,
    recall@K), or where recall levels off below it, the last before the doubling that gained
    less than ``args.hnsw_plateau`` on both; and the seconds the indexes took to build."""
    start = time.perf_counter()
    indexes = [hnsw_index(kr, args.hnsw_m) for kr in key]
    build = time.perf_counter() - start
    truth_rows, width = exact[0].shape[2:]
    pixels = (np.arange(truth_rows)[:, None] * truth_step * width + np.arange(width)).ravel()
    count = max(1, min(args.tune_pixels // len(query), len(pixels)))
    picked = np.random.default_rng(0).permutation(len(pixels))[:count]
    truth = tuple(
        torch.cat([t[b].flatten(1)[:, torch.from_numpy(picked)] for b in range(len(query))], 1).view(
            1, args.k, -1, 1
        )
        for t in exact
    )
    previous: tuple[int, float, float] | None = None
    for ef_search in EF_SEARCH:
        found = []
        for index, rows in zip(indexes, query, strict=True):
            index.hnsw.efSearch = ef_search
            found.append(index.search(np.ascontiguousarray(rows[pixels[picked]]), args.k))
        scores, indices = (np.concatenate([f[i] for f in found]) for i in (0, 1))
        recall_at_1, recall_at_k = recall(as_nnf(scores, indices, len(found) * count, 1), truth)
        if recall_at_1 >= target[0] and recall_at_k >= target[1]:
            break
        gain = None if previous is None else max(recall_at_1 - previous[1], recall_at_k - previous[2])
        if gain is not None and gain < args.hnsw_plateau:
            print(
                f"  HNSW recall levels off below match's: efSearch {ef_search} gained less than "
                f"{args.hnsw_plateau} over {previous[0]} (recall@1 {recall_at_1:.4f}, recall@K "
                f"{recall_at_k:.4f}); keeping {previous[0]}",
                flush=True,
            )
            return previous[0], build
        previous = (ef_search, recall_at_1, recall_at_k)
    return ef_search, build


def row_step(query: Tensor, key: Tensor, max_pairs: float, multiple_of: int = 1) -> int:
    """Every how many query rows an exact search runs so that it scores at most ``max_pairs``
    (query, key) pixel pairs (1: every row), a multiple of ``multiple_of``."""
    pairs = query.shape[0] * query.shape[2] * query.shape[3] * key.shape[2] * key.shape[3]
    step = max(multiple_of, math.ceil(pairs / max_pairs))
    return min(query.shape[2], multiple_of * math.ceil(step / multiple_of))


def rows_label(step: int, height: int) -> str:
    return "all rows" if step == 1 else f"1 row in {step} of {height}, scaled"


def measure(args: argparse.Namespace, dataset: str, side: int, processor: str) -> list[dict]:
    query, key, _ = dataset_pair(dataset, side)
    if dataset == "hard":
        query, key = query[: args.hard_pairs], key[: args.hard_pairs]
    B, _, H, W = query.shape
    k = args.k
    base = {"dataset": dataset, "side": side, "pairs": B, "k": k, "threads": args.threads}
    base.update(repeats=args.repeats, processor=processor)
    # The ground truth, on every row or on evenly spaced rows; the timed exact searches run on
    # those rows or every few of them.
    truth_step = row_step(query, key, args.max_truth_pairs)
    timed_step = row_step(query, key, args.max_exact_pairs, truth_step)
    start = time.perf_counter()
    exact = cocosnet_ops.exact_knn(query[:, :, ::truth_step].contiguous(), key, k)
    ground_truth_s = (time.perf_counter() - start) * truth_step
    timed = query[:, :, ::timed_step].contiguous()
    query_rows = [as_rows(q) for q in query]
    timed_rows = [as_rows(q) for q in timed]
    key_rows = [as_rows(kr) for kr in key]
    methods: dict[str, Callable[[], Result]] = {
        "match": lambda: cocosnet_ops.match(query, key, k),
        "exact_knn": lambda: cocosnet_ops.exact_knn(timed, key, k),
    }
    if faiss is not None:
        methods["faiss_flat"] = lambda: faiss_flat(timed_rows, key_rows, k, tuple(timed.shape[2:]))
    results = {"match": methods["match"]()}
    match_recall = recall_on_truth(results["match"], exact, truth_step, timed_step)
    if faiss is not None:
        ef_search, build = tune_ef_search(query_rows, key_rows, exact, truth_step, match_recall, args)
        methods["faiss_hnsw"] = lambda: faiss_hnsw(query_rows, key_rows, k, (H, W), args.hnsw_m, ef_search)
        results["faiss_hnsw"] = methods["faiss_hnsw"]()
        results["faiss_flat"] = methods["faiss_flat"]()
    results["exact_knn"] = methods["exact_knn"]()
    scale = {name: timed_step if name in ("exact_knn", "faiss_flat") else 1 for name in methods}
    times: dict[str, list[float]] = {name: [] for name in methods}
    order = list(methods)
    for round_index in range(args.repeats):
        shift = round_index % len(order)
        for name in order[shift:] + order[:shift]:
            start = time.perf_counter()
            methods[name]()
            times[name].append((time.perf_counter() - start) * scale[name])
        print(
            f"  {dataset} {side} round {round_index + 1}: "
            + ", ".join(f"{name} {times[name][-1]:.3f} s" for name in order),
            flush=True,
        )
    rows = []
    for name in METHODS:
        row = {**base, "method": name}
        if name not in methods:
            rows.append({**row, "status": FAISS_MISSING})
            continue
        over_match = [t / m for t, m in zip(times[name], times["match"], strict=True)]
        recall_at_1, recall_at_k = recall_on_truth(results[name], exact, truth_step, timed_step)
        row.update(
            status="ok",
            recall_at_1=recall_at_1,
            recall_at_k=recall_at_k,
            median_s=statistics.median(times[name]),
            min_s=min(times[name]),
            over_match_median=statistics.median(over_match),
            timed_on=rows_label(scale[name], H),
            recall_on=rows_label(truth_step, H).removesuffix(", scaled"),
        )
        if name == "exact_knn":
            row["ground_truth_s"] = ground_truth_s
        if name == "faiss_hnsw":
            row.update(hnsw_ef_search=ef_search, hnsw_build_s=build)
        rows.append(row)
    return rows


def recall_on_truth(found: Result, exact: Result, truth_step: int, timed_step: int) -> tuple[float, float]:
    """recall@1 and recall@K of ``found`` on the rows the ground truth ``exact`` has (every
    ``truth_step``-th): ``found`` holds every row, those rows, or (a timed exact search) every
    ``timed_step``-th."""
    rows, truth_rows = found[0].shape[2], exact[0].shape[2]
    if rows > truth_rows:
        return recall(tuple(t[:, :, ::truth_step] for t in found), exact)
    if rows < truth_rows:
        return recall(found, tuple(t[:, :, :: timed_step // truth_step] for t in exact))
    return recall(found, exact)


def format_progress(row: dict) -> str:
    head = f"{row['dataset']:>6} {row['side']:>4} {row['method']:>10}: "
    if row["status"] != "ok":
        return head + row["status"]
    return head + (
        f"recall@1 {row['recall_at_1']:.4f}, recall@{row['k']} {row['recall_at_k']:.4f}, "
        f"median {row['median_s']:.3f} s ({row['over_match_median']:.2f}x match's)"
    )


# ----------------------------------------------------------------------------- outputs


def write_plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = [d for d in DATASETS if any(r["dataset"] == d for r in rows)]
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4.5), squeeze=False)
    for column, dataset in enumerate(datasets):
        ax = axes[0, column]
        for index, method in enumerate(METHODS):
            done = [
                r for r in rows if r["dataset"] == dataset and r["method"] == method and r["status"] == "ok"
            ]
            if done:
                ax.plot(
                    [r["side"] for r in done],
                    [r["median_s"] for r in done],
                    "-o",
                    color=f"C{index}",
                    label=method,
                )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("map side S (S x S query and key pixels)")
        ax.set_ylabel("seconds (median)")
        ax.set_title(f"{dataset} (batch {rows[[r['dataset'] for r in rows].index(dataset)]['pairs']})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(f"top-{rows[0]['k']} search, {rows[0]['threads']} threads, {rows[0]['processor']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| data | side | method | recall@1 | recall@K | median (s) | min (s) | time / match's |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if row["status"] != "ok":
            lines.append(f"| {row['dataset']} | {row['side']} | {row['method']} | {row['status']} | | | | |")
            continue
        notes = []
        if row["method"] == "faiss_hnsw":
            notes.append(f"efSearch {row['hnsw_ef_search']}")
        if row["timed_on"] != "all rows":
            notes.append(f"timed on {row['timed_on']}")
        if row["method"] == "exact_knn":
            notes.append(f"ground truth run {row['ground_truth_s']:.3g} s")
        method = row["method"] + (f" ({'; '.join(notes)})" if notes else "")
        lines.append(
            f"| {row['dataset']} | {row['side']} | {method} | {row['recall_at_1']:.4f} | "
            f"{row['recall_at_k']:.4f} | {row['median_s']:.3g} | {row['min_s']:.3g} | "
            f"{row['over_match_median']:.2f} |"
        )
    return "\n".join(lines)


def write_markdown(rows: list[dict], path: Path) -> None:
    first = rows[0]
    commands = "\n".join(f"    {command}" for command in dict.fromkeys(r["command"] for r in rows))
    recall_on = sorted(
        {
            f"{r['dataset']} {r['side']}: {r['recall_on']}"
            for r in rows
            if r.get("recall_on", "all rows") != "all rows"
        }
    )
    text = (
        f"# match against exact kNN and faiss\n\n"
        f"Commands:\n\n{commands}\n\n"
        f"Processor: {first['processor']}, {first['threads']} threads (torch and faiss), torch "
        f"{torch.__version__}, faiss {faiss.__version__ if faiss is not None else 'not installed'}, "
        f"cocosnet_ops compiled: {cocosnet_ops.HAS_COMPILED}. K={first['k']}; `--repeats` timed rounds "
        f"(the CSV's repeats column, beside each row's load average before / after) after an untimed one, "
        f'every method once per round in a rotating order; "time / match\'s" is the median over rounds of '
        f"the method's time divided by match's in the same round. Recall against exact kNN, on every query "
        f"pixel{' except: ' + ', '.join(recall_on) if recall_on else ''}.\n\n{markdown_table(rows)}\n"
    )
    path.write_text(text)


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


# ----------------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sides", type=cli.int_at_least(1), nargs="+", default=[128, 256, 512, 1024])
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument(
        "--hard-max-side",
        type=cli.int_at_least(1),
        default=512,
        help="the hard pairs (a batch of 5) up to this side",
    )
    parser.add_argument(
        "--hard-pairs",
        type=cli.int_at_least(1),
        default=5,
        help="the first this many of the five hard pairs (the exact searches' time grows with it)",
    )
    parser.add_argument("--k", type=cli.int_at_least(1), default=16)
    parser.add_argument("--threads", type=cli.int_at_least(1), default=2)
    parser.add_argument(
        "--repeats", type=cli.int_at_least(1), default=3, help="timed rounds after one untimed round"
    )
    parser.add_argument("--hnsw-m", type=cli.int_at_least(2), default=32, help="IndexHNSWFlat links per node")
    parser.add_argument(
        "--hnsw-plateau",
        type=cli.positive_number,
        default=0.005,
        help="stop doubling efSearch when neither recall rises by this much",
    )
    parser.add_argument(
        "--tune-pixels", type=cli.int_at_least(1), default=20000, help="query pixels that tune efSearch"
    )
    parser.add_argument(
        "--max-exact-pairs",
        type=cli.positive_number,
        default=2**36,
        help="above this many pixel pairs, time the exact searches on evenly spaced rows",
    )
    parser.add_argument(
        "--max-truth-pairs",
        type=cli.positive_number,
        default=4e11,
        help="above this many pixel pairs, the ground truth covers evenly spaced rows only",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/match.csv"))
    parser.add_argument(
        "--append",
        action="store_true",
        help="keep --out's rows of the datasets and sides this run does not measure (a grid measured in "
        "several runs); the plot and table show them all",
    )
    args = parser.parse_args(argv)
    if any(side * side < args.k for side in args.sides):
        parser.error("every side must have at least k pixels")
    return args


def read_rows(path: Path) -> list[dict]:
    """The rows of an earlier run's CSV, numbers as numbers."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for column in INTEGER_COLUMNS + FLOAT_COLUMNS:
            if row[column]:
                row[column] = int(row[column]) if column in INTEGER_COLUMNS else float(row[column])
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    command = " ".join(["python benchmarks/bench_match.py", *(sys.argv[1:] if argv is None else argv)])
    torch.set_num_threads(args.threads)
    if faiss is None:
        print(f"faiss is not installed: its rows read {FAISS_MISSING!r}.")
    else:
        faiss.omp_set_num_threads(args.threads)
    processor = processor_name()
    earlier = read_rows(args.out) if args.append and args.out.exists() else []
    print(
        f"cocosnet_ops compiled: {cocosnet_ops.HAS_COMPILED}; threads: {args.threads}; "
        f"processor: {processor}; load average: {load_average()}",
        flush=True,
    )
    rows = []
    with torch.no_grad():
        for side in args.sides:
            for dataset in args.datasets:
                if dataset == "hard" and side > args.hard_max_side:
                    continue
                load_before = load_average()
                measured = measure(args, dataset, side, processor)
                for row in measured:
                    row.update(load_average=f"{load_before} / {load_average()}", command=command)
                    print(format_progress(row), flush=True)
                rows += measured
                # So far: a long run keeps what it measured.
                write_csv(kept_and_new(earlier, rows), args.out, COLUMNS)
    rows = kept_and_new(earlier, rows)
    plot_path = args.out.with_suffix(".png")
    write_plot(rows, plot_path)
    markdown_path = args.out.with_suffix(".md")
    write_markdown(rows, markdown_path)
    print(f"\nwrote {args.out}, {plot_path} and {markdown_path}\n")
    print(markdown_table(rows))


def kept_and_new(earlier: list[dict], new: list[dict]) -> list[dict]:
    """``earlier``'s rows of the (dataset, side) pairs that ``new`` does not measure, then ``new``'s,
    ordered by side and dataset."""
    measured = {(r["dataset"], r["side"]) for r in new}
    rows = [r for r in earlier if (r["dataset"], r["side"]) not in measured] + new
    return sorted(rows, key=lambda r: (r["side"], DATASETS.index(r["dataset"])))


if __name__ == "__main__":
    cli.run(main)
