"""GPU time and achieved memory bandwidth of the CUDA kernels, one op at a time.

    python benchmarks/bench_gather_cuda.py --out benchmarks/results/gather_cuda.csv
    python benchmarks/bench_gather_cuda.py --backend triton --out benchmarks/results/gather_triton.csv

``--backend triton`` times the Triton kernels of the same ops (the first calls compile them).

For each square side S (N = S * S pixels, batch 1), C feature channels, K = 16 and a 3-channel
value, times with CUDA events (median of --repeats after warm-up): ``patch_match`` (5
iterations), ``weighted_gather`` forward, its backward (``weighted_gather_backward``, the atomic
path), and the same for ``bilinear_weighted_gather``. Bandwidth is reported against two byte
counts:

* compulsory: every input read once and every output written once (query N*C, key N*C,
  value N*3, NNF N*K, output N*3 for the forward; plus the gradients for the backward);
* gathered: what a kernel without any cache reuse would read, N*K rows of C + 3 key and value
  channels (4 corners each for the bilinear gather) on top of the compulsory bytes.

The peak is measured in the same run by a device-to-device copy (bytes read plus written),
next to the GPU's name, so the fractions are against what this GPU really reaches.
"""

from __future__ import annotations

import csv
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import cocosnet_ops
from cocosnet_ops import triton as triton_kernels

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cli  # noqa: E402

FLOAT = 4
COLUMNS = (
    "backend",
    "op",
    "side",
    "channels",
    "k",
    "seconds",
    "compulsory_gb",
    "gathered_gb",
    "compulsory_tb_s",
    "gathered_tb_s",
    "fraction_of_copy_peak",
)


def cuda_seconds(fn: Callable[[], object], repeats: int) -> float:
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return statistics.median(times)


def copy_peak_bytes_per_second(repeats: int) -> float:
    source = torch.empty(2**30, dtype=torch.uint8, device="cuda").random_()
    target = torch.empty_like(source)
    return 2 * source.numel() / cuda_seconds(lambda: target.copy_(source), repeats)


def measure(side: int, channels: int, k: int, repeats: int, backend: str) -> list[dict]:
    n = side * side
    g = torch.Generator(device="cuda").manual_seed(0)
    query = F.normalize(torch.randn(1, channels, side, side, device="cuda", generator=g), dim=1)
    key = F.normalize(torch.randn(1, channels, side, side, device="cuda", generator=g), dim=1)
    value = torch.rand(1, 3, side, side, device="cuda", generator=g)
    nnf, _ = cocosnet_ops.patch_match(query, key, k=k, iters=5)
    coords = cocosnet_ops.nnf.nnf_to_coords(nnf, (side, side)) + 0.25
    grad_out = torch.rand(1, 3, side, side, device="cuda", generator=g)
    # The Triton ops take the same arguments as the compiled ones.
    ops = torch.ops.cocosnet_ops_triton if backend == "triton" else torch.ops.cocosnet_ops
    features, values, index = n * channels * FLOAT, n * 3 * FLOAT, n * k * FLOAT
    rows_read = n * k * (channels + 3) * FLOAT
    cases = [
        (
            "patch_match",
            lambda: ops.patch_match(query, key, k, 5, None, 1, [8, 4, 2, 1, 1], True, 0),
            2 * features + 2 * index * 5,
            0,
        ),
        (
            "weighted_gather",
            lambda: ops.weighted_gather(query, key, value, nnf, 0.01),
            2 * features + 2 * values + index,
            rows_read,
        ),
        (
            "weighted_gather_backward",
            lambda: ops.weighted_gather_backward(grad_out, query, key, value, nnf, 0.01),
            4 * features + 3 * values + index + 2 * values,
            2 * rows_read,
        ),
        (
            "bilinear_weighted_gather",
            lambda: ops.bilinear_weighted_gather(query, key, value, coords, 0.01),
            2 * features + 2 * values + 2 * index,
            4 * rows_read,
        ),
        (
            "bilinear_weighted_gather_backward",
            lambda: ops.bilinear_weighted_gather_backward(grad_out, query, key, value, coords, 0.01),
            4 * features + 3 * values + 4 * index + 2 * values,
            8 * rows_read,
        ),
    ]
    results = []
    for name, fn, compulsory, gathered in cases:
        seconds = cuda_seconds(fn, repeats)
        results.append(
            {
                "backend": backend,
                "op": name,
                "side": side,
                "channels": channels,
                "k": k,
                "seconds": seconds,
                "compulsory_gb": compulsory / 1e9,
                "gathered_gb": (compulsory + gathered) / 1e9,
            }
        )
    return results


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sides", type=cli.int_at_least(1), nargs="+", default=[512, 1024])
    parser.add_argument("--channels", type=cli.int_at_least(1), nargs="+", default=[32, 64])
    parser.add_argument("--k", type=cli.int_at_least(1), default=16)
    parser.add_argument("--repeats", type=cli.int_at_least(1), default=20)
    parser.add_argument("--backend", choices=("cuda", "triton"), default="cuda")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gather_cuda.csv"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("this benchmark needs a GPU, and torch sees none on this machine")
    if args.backend == "cuda" and not cocosnet_ops.HAS_CUDA_KERNELS:
        parser.error("--backend cuda: needs cocosnet_ops._C built with its CUDA kernels")
    if args.backend == "triton" and triton_kernels.unavailable("cuda"):
        parser.error(f"--backend triton: {triton_kernels.unavailable('cuda')}")
    peak = copy_peak_bytes_per_second(args.repeats)
    print(
        f"GPU: {torch.cuda.get_device_name()}; device-to-device copy: {peak / 1e12:.2f} TB/s (read + write)"
    )
    rows = [
        row
        for side in args.sides
        for channels in args.channels
        for row in measure(side, channels, args.k, args.repeats, args.backend)
    ]
    for row in rows:
        row["compulsory_tb_s"] = row["compulsory_gb"] / row["seconds"] / 1e3
        row["gathered_tb_s"] = row["gathered_gb"] / row["seconds"] / 1e3
        row["fraction_of_copy_peak"] = row["gathered_gb"] * 1e9 / row["seconds"] / peak
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({c: round(v, 6) if isinstance(v, float) else v for c, v in r.items()} for r in rows)
    print("| backend | op | side | C | time (ms) | compulsory TB/s | gathered TB/s | gathered / copy peak |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['backend']} | {r['op']} | {r['side']} | {r['channels']} | {r['seconds'] * 1e3:.3f} | "
            f"{r['compulsory_tb_s']:.2f} | {r['gathered_tb_s']:.2f} | {r['fraction_of_copy_peak']:.0%} |"
        )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    cli.run(main)
