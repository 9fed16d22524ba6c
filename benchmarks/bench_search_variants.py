"""A/B of the CUDA search-step variants (csrc/cuda/kernels.h, ``SearchVariant``) against the
default kernel, and of half-precision scoring (``patch_match(score_dtype=...)``), in one process.

Every round times each configuration once, in turn (interleaved, so drift of clocks and
temperature falls on all alike); a configuration's ratio is the median over rounds of its time
over the default kernel's in the same round. Each variant must return the default kernel's
results bit for bit (``same_results``); the half-precision rows report the share of pixels whose
best match is the default's instead (they search on rounded features).

On a GPU (benchmarks/gpu_check.sh runs this):

    python benchmarks/bench_search_variants.py --sides 512 1024 --out benchmarks/results/search_variants.csv

Without one, ``--emulated`` runs the same loop on the CPU emulator of the CUDA kernels
(cocosnet_ops._C_emulated) at a small size: it checks the results and the files, and times
nothing of meaning (tests/test_gpu_check.py).

Inputs: query and key features drawn from a normal distribution and L2-normalised over the
channels, B = 1, patch_match with k, iters and the default jumps, no init (the search alone:
18.1 ms of patch_match + weighted_gather's 16.0 at side 512 were the search, README).
"""

from __future__ import annotations

import argparse
import csv
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from kernel_resources import variant_name

COLUMNS = (
    "config",
    "variant",
    "score_dtype",
    "side",
    "channels",
    "k",
    "iters",
    "median_ms",
    "ratio_to_default",
    "same_results",
    "top1_agreement",
    "device",
    "torch",
    "cuda",
)


def configurations() -> list[tuple[str, int, torch.dtype | None]]:
    """(name, variant bits, score_dtype): the default first, every variant, half-precision scoring."""
    configs = [(variant_name(bits), bits, None) for bits in range(16)]
    configs += [
        (f"score_{dtype}".replace("torch.", ""), 0, dtype) for dtype in (torch.float16, torch.bfloat16)
    ]
    return configs


def unit_features(generator: torch.Generator, channels: int, side: int) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(1, channels, side, side, generator=generator), dim=1)


class Search:
    """patch_match through the GPU's library or the emulator's, with a variant set per call."""

    def __init__(self, emulated: bool, device: torch.device) -> None:
        import cocosnet_ops

        self.device = device
        self.emulated = emulated
        self.ops = torch.ops.cocosnet_ops_emulated if emulated else torch.ops.cocosnet_ops
        self.evaluate = cocosnet_ops.evaluate_candidates
        self.default_jumps = cocosnet_ops.reference.default_jumps
        self.patch_match = cocosnet_ops.patch_match

    def __call__(self, query, key, k, iters, variant, score_dtype):
        self.ops._set_search_variant(variant)
        try:
            if not self.emulated:
                return self.patch_match(query, key, k=k, iters=iters, score_dtype=score_dtype, backend="cuda")
            # The emulator's op takes the kernels' arguments; score_dtype as patch_match does it.
            jumps = self.default_jumps(query.shape[2], query.shape[3], iters)
            searched = (query.to(score_dtype), key.to(score_dtype)) if score_dtype else (query, key)
            nnf, scores = self.ops.patch_match(*searched, k, iters, None, 1, jumps, True, 0)
            return self.evaluate(query, key, nnf, k, backend="cpu") if score_dtype else (nnf, scores)
        finally:
            self.ops._set_search_variant(0)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def measure(search: Search, side: int, channels: int, k: int, iters: int, rounds: int) -> list[dict]:
    g = torch.Generator().manual_seed(side)
    query = unit_features(g, channels, side).to(search.device)
    key = unit_features(g, channels, side).to(search.device)
    configs = configurations()
    baseline = search(query, key, k, iters, 0, None)  # also the warm-up of the default kernel
    results = {}
    for name, bits, dtype in configs:
        results[name] = search(query, key, k, iters, bits, dtype)  # warm-up, and the results to compare
    seconds: dict[str, list[float]] = {name: [] for name, _, _ in configs}
    for _ in range(rounds):
        for name, bits, dtype in configs:
            search.synchronize()
            start = time.perf_counter()
            search(query, key, k, iters, bits, dtype)
            search.synchronize()
            seconds[name].append(time.perf_counter() - start)
    rows = []
    for name, bits, dtype in configs:
        nnf, scores = results[name]
        ratios = [a / b for a, b in zip(seconds[name], seconds["default"], strict=True)]
        rows.append(
            {
                "config": name,
                "variant": bits,
                "score_dtype": str(dtype).replace("torch.", "") if dtype else "",
                "side": side,
                "channels": channels,
                "k": k,
                "iters": iters,
                "median_ms": f"{statistics.median(seconds[name]) * 1e3:.3f}",
                "ratio_to_default": f"{statistics.median(ratios):.3f}",
                "same_results": bool(torch.equal(nnf, baseline[0]) and torch.equal(scores, baseline[1])),
                "top1_agreement": f"{(nnf[:, 0] == baseline[0][:, 0]).float().mean().item():.4f}",
            }
        )
    return rows


def device_description(device: torch.device) -> dict[str, str]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return {"device": name, "torch": torch.__version__, "cuda": str(torch.version.cuda)}
    return {
        "device": f"emulated CUDA on {platform.processor() or platform.machine()}",
        "torch": torch.__version__,
        "cuda": "",
    }


def faster_everywhere(rows: list[dict]) -> list[str]:
    """The configurations below the default kernel's time at every side, fastest first by their
    worst ratio; a variant must also have returned the default's results."""
    worst: dict[str, float] = {}
    for row in rows:
        if row["config"] == "default":
            continue
        ratio = float(row["ratio_to_default"])
        if not row["score_dtype"] and not row["same_results"]:
            ratio = float("inf")
        worst[row["config"]] = max(worst.get(row["config"], 0.0), ratio)
    return [
        f"{name} (x{ratio:.3f})"
        for name, ratio in sorted(worst.items(), key=lambda item: item[1])
        if ratio < 1
    ]


def write_outputs(rows: list[dict], out: Path, command: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "# CUDA search-step variants against the default kernel",
        "",
        f"Command: `{command}` ({rows[0]['device']}, torch {rows[0]['torch']}, "
        f"CUDA {rows[0]['cuda'] or 'none'}).",
        "",
        f"Faster than the default kernel at every side: {', '.join(faster_everywhere(rows)) or 'none'}.",
        "",
        "| config | side | C | k | iters | median ms | time / default's | same results | top-1 as default |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    lines += [
        f"| {r['config']} | {r['side']} | {r['channels']} | {r['k']} | {r['iters']} | {r['median_ms']} | "
        f"{r['ratio_to_default']} | {r['same_results']} | {r['top1_agreement']} |"
        for r in rows
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument(
        "--k", type=int, default=16, help="the variants are built for k in 9..16 (default 16)"
    )
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--emulated", action="store_true", help="run on the CPU emulator (checks, no timing)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/search_variants.csv"))
    args = parser.parse_args(argv)
    if not 9 <= args.k <= 16:
        parser.error(f"--k: the variants are built for k in 9..16, got {args.k}")
    for name in ("channels", "iters", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}: expected a positive integer, got {getattr(args, name)}")
    if any(side < 4 for side in args.sides):
        parser.error(f"--sides: expected sides of at least 4, got {args.sides}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.emulated:
        try:
            import cocosnet_ops._C_emulated  # noqa: F401
        except ImportError as error:
            print(
                f"bench_search_variants.py: error: --emulated needs cocosnet_ops._C_emulated ({error})",
                file=sys.stderr,
            )
            return 2
        device = torch.device("cpu")
    else:
        import cocosnet_ops

        if not (torch.cuda.is_available() and cocosnet_ops.HAS_CUDA_KERNELS):
            print(
                "bench_search_variants.py: error: needs a GPU and the CUDA kernels (or --emulated)",
                file=sys.stderr,
            )
            return 2
        device = torch.device("cuda")
    search = Search(args.emulated, device)
    description = device_description(device)
    rows = []
    for side in args.sides:
        for row in measure(search, side, args.channels, args.k, args.iters, args.rounds):
            rows.append({**row, **description})
            print(
                f"side {side} {row['config']}: {row['median_ms']} ms, x{row['ratio_to_default']}, "
                f"same {row['same_results']}",
                flush=True,
            )
    command = "python benchmarks/bench_search_variants.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    write_outputs(rows, args.out, command.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
