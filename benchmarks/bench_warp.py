"""Time and peak memory of the exemplar warp: PatchMatch + weighted_gather against dense softmax.

Reproduce the README table (full grid, about 80 minutes on 2 cores, most of it SDPA at sides
512 and 1024 and the reference backend at 512; needs the compiled cpu backend, ``pip install
--no-build-isolation -e .``, else its rows read "unavailable"):

    python benchmarks/bench_warp.py --out benchmarks/results/warp.csv

Smallest run (seconds):

    python benchmarks/bench_warp.py --sides 32 --channels 32 --methods dense --repeats 1 --out /tmp/warp.csv

Methods, on square maps of side S, N = S * S pixels, C channels, batch 1:

* ``patchmatch_cpu``: ``patch_match`` (K=16, 5 iterations, under ``no_grad``: it is a search)
  then ``weighted_gather``, compiled cpu backend;
* ``patchmatch_torch``: the same on the pure-PyTorch reference backend;
* ``patchmatch_triton``: the same on the triton backend, a ``--device cuda`` method (on CPU
  tensors Triton runs only in its interpreter); the untimed first passes compile the kernels;
* ``dense``: ``reference.attention_warp``, matmul + softmax over all N x N pairs (CoCosNet v1);
* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` with scale 1 / temperature.
  Inputs are laid out as contiguous (1, 1, N, C) and the value is zero-padded from 3 to C
  channels (the output cut back to 3): with unequal head sizes or strided inputs torch falls
  back to its materialising math kernel; so it runs the fused flash kernel, memory linear in N.

Inputs: query and key features drawn from a normal distribution and L2-normalised over the
channels, as the model's are; temperature 0.01; value a 3-channel image (uniform noise).

Measurement: every case runs in its own subprocess (``--case``), so peak memory is that
process's own RSS high-water mark, ``resource.getrusage(RUSAGE_SELF).ru_maxrss``, read after
the inputs are built (baseline: imports, inputs, allocator state) and again after one
forward pass under ``no_grad`` (forward peak) and after one forward + backward pass of
``out.sum()`` (forward+backward peak, gradients to query, key and value included). Reported
memory is that increase over the baseline. (tracemalloc does not see torch's allocations.)
Those two passes also warm up; times are then the best of ``--repeats`` further passes (fewer
once a measurement has spent ``--max-seconds``): the minimum is the estimate least disturbed
by other load on the machine. A warm-up pass slower than ``--max-seconds`` is not repeated:
its own time is reported.

Denormals are flushed to zero (``torch.set_flush_denormal(True)``) unless ``--keep-denormals``:
with temperature 0.01 the softmax weights of poor pairs, exp(-100 * gap), fall below float32's
normal range, and x86 computes on denormals many times slower, so without flushing the dense
and SDPA times depend on the feature statistics (SDPA forward+backward at side 64: 0.21 s at
C=32 against 0.05 s flushed). A training script should flush them too.
A case is skipped without running when an analytic estimate of its memory exceeds
``--memory-limit-gib`` (row "skipped (needs N GiB)"), and once a method times out at some
side, larger sides of that method and channel count are not attempted.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

import cocosnet_ops
from cocosnet_ops import reference
from cocosnet_ops import triton as triton_kernels

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cli  # noqa: E402

CPU_METHODS = ("patchmatch_cpu", "patchmatch_torch", "dense", "sdpa")
CUDA_METHODS = ("patchmatch_cuda", "patchmatch_triton", "dense", "sdpa_flash_bf16", "sdpa_efficient_bf16")
METHODS = tuple(dict.fromkeys(CPU_METHODS + CUDA_METHODS))
SDPA_BACKENDS = {"sdpa_flash_bf16": "FLASH_ATTENTION", "sdpa_efficient_bf16": "EFFICIENT_ATTENTION"}
COLUMNS = (
    "method",
    "side",
    "channels",
    "k",
    "iters",
    "threads",
    "status",
    "forward_s",
    "forward_backward_s",
    "forward_peak_mib",
    "forward_backward_peak_mib",
    "estimated_gib",
)
FLOAT_BYTES = 4
INDEX_BYTES = 8
GIB = 2**30
MIB = 2**20


# ----------------------------------------------------------------------------- memory estimates


def candidates_per_iteration(side: int, k: int) -> int:
    """Candidates the reference patch_match scores per pixel and iteration."""
    anchors = min(k, reference.SEARCH_ANCHORS)
    return 5 * k + anchors * len(reference.search_radii(side, side))


def estimate_bytes(method: str, side: int, channels: int, k: int) -> int:
    """Analytic upper estimate of the extra memory of one forward + backward pass.

    dense: the N x N logits, their scaled copy, the softmax kept for backward and its gradient;
    sdpa (flash kernel): N x C buffers (contiguous copies, output, gradients, padded value);
    patchmatch_torch: the reference gathers (C, M, N) key features per iteration for M
    candidates and multiplies them with the query (2 float copies), sorts (M, N) int64 and
    float arrays (about 12 of them); its weighted_gather gathers (C + 3, K, N) and their grads;
    patchmatch_cpu: the NNF and scores (K, N) and the gradients (C, N) of query and key.
    """
    n = side * side
    if method == "dense":
        return 4 * n * n * FLOAT_BYTES
    if method == "sdpa" or method in SDPA_BACKENDS:
        return 16 * n * channels * FLOAT_BYTES
    if method == "patchmatch_torch":
        m = candidates_per_iteration(side, k)
        search = n * m * (2 * channels * FLOAT_BYTES + 12 * INDEX_BYTES)
        gather = 4 * n * k * (channels + 3) * FLOAT_BYTES
        return max(search, gather)
    if method in ("patchmatch_cpu", "patchmatch_cuda", "patchmatch_triton"):
        return n * (4 * k * INDEX_BYTES + 4 * channels * FLOAT_BYTES)
    raise ValueError(f"method: expected one of {METHODS}, got {method!r}")


# ----------------------------------------------------------------------------- one case (subprocess)


def make_warp(
    method: str, k: int, iters: int, temperature: float
) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """The function (query, key, value) -> warped value (1, 3, S, S) that ``method`` names."""
    if method.startswith("patchmatch_"):
        backend = method.removeprefix("patchmatch_")

        def patchmatch_warp(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
            with torch.no_grad():
                nnf, _ = cocosnet_ops.patch_match(query, key, k=k, iters=iters, backend=backend)
            return cocosnet_ops.weighted_gather(query, key, value, nnf, temperature, backend=backend)

        return patchmatch_warp
    if method == "dense":
        return lambda query, key, value: reference.attention_warp(query, key, value, temperature)
    if method == "sdpa" or method in SDPA_BACKENDS:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        # On the CPU torch picks the kernel; on a GPU each SDPA row names the one it forces.
        forced = SDPA_BACKENDS.get(method)

        def sdpa_warp(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
            B, C, H, W = query.shape
            q, kk, v = (
                t.flatten(2).transpose(1, 2).unsqueeze(1).contiguous()
                for t in (query, key, F.pad(value, (0, 0, 0, 0, 0, C - value.shape[1])))
            )
            with sdpa_kernel(getattr(SDPBackend, forced)) if forced else contextlib.nullcontext():
                out = F.scaled_dot_product_attention(q, kk, v, scale=1.0 / temperature)
            return out[..., : value.shape[1]].squeeze(1).transpose(1, 2).reshape(B, value.shape[1], H, W)

        return sdpa_warp
    raise ValueError(f"method: expected one of {METHODS}, got {method!r}")


def warp_passes(
    warp: Callable[[Tensor, Tensor, Tensor], Tensor], query: Tensor, key: Tensor, value: Tensor
) -> tuple[Callable[[], None], Callable[[], None]]:
    """The two passes every case measures: a forward under no_grad, and a forward + backward
    of ``out.sum()`` that clears the inputs' gradients after itself."""

    def forward() -> None:
        with torch.no_grad():
            warp(query, key, value)

    def forward_backward() -> None:
        warp(query, key, value).sum().backward()
        for t in (query, key, value):
            t.grad = None

    return forward, forward_backward


def peak_rss_bytes() -> int:
    """This process's RSS high-water mark (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_case(
    method: str,
    side: int,
    channels: int,
    k: int,
    iters: int,
    temperature: float,
    repeats: int,
    max_seconds: float,
    device: str = "cpu",
) -> dict:
    """Measure one case in this process on ``device``; returns the timing and memory columns."""
    dtype = torch.bfloat16 if method.endswith("_bf16") else torch.float32
    generator = torch.Generator().manual_seed(0)

    def leaf(t: Tensor) -> Tensor:
        return t.to(device, dtype).requires_grad_()

    query = leaf(F.normalize(torch.randn(1, channels, side, side, generator=generator), dim=1))
    key = leaf(F.normalize(torch.randn(1, channels, side, side, generator=generator), dim=1))
    value = leaf(torch.rand(1, 3, side, side, generator=generator))
    forward, forward_backward = warp_passes(make_warp(method, k, iters, temperature), query, key, value)
    if device == "cuda":
        return run_cuda_case(forward, forward_backward, repeats, max_seconds)

    def seconds(fn: Callable[[], None]) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    def best_seconds(fn: Callable[[], None], warmup_seconds: float) -> float:
        if warmup_seconds > max_seconds:
            return warmup_seconds
        times = [seconds(fn)]
        while len(times) < repeats and sum(times) < max_seconds:
            times.append(seconds(fn))
        return min(times)

    baseline = peak_rss_bytes()
    forward_warmup = seconds(forward)
    forward_peak = peak_rss_bytes() - baseline
    forward_backward_warmup = seconds(forward_backward)
    forward_backward_peak = peak_rss_bytes() - baseline
    return {
        "threads": torch.get_num_threads(),
        "forward_s": best_seconds(forward, forward_warmup),
        "forward_backward_s": best_seconds(forward_backward, forward_backward_warmup),
        "forward_peak_mib": forward_peak / MIB,
        "forward_backward_peak_mib": forward_backward_peak / MIB,
    }


def run_cuda_case(
    forward: Callable[[], None],
    forward_backward: Callable[[], None],
    repeats: int,
    max_seconds: float,
) -> dict:
    """GPU timing with CUDA events (best of ``repeats`` after a warm-up pass), and peak memory
    from the caching allocator: ``max_memory_allocated`` above what the inputs hold."""

    def peak_bytes(fn: Callable[[], None]) -> int:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - baseline

    def best_seconds(fn: Callable[[], None]) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times: list[float] = []
        while len(times) < repeats and sum(times) < max_seconds:
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        return min(times)

    forward_peak, forward_backward_peak = peak_bytes(forward), peak_bytes(forward_backward)
    return {
        "threads": 0,
        "forward_s": best_seconds(forward),
        "forward_backward_s": best_seconds(forward_backward),
        "forward_peak_mib": forward_peak / MIB,
        "forward_backward_peak_mib": forward_backward_peak / MIB,
    }


# ----------------------------------------------------------------------------- the grid (parent)


def run_case_in_subprocess(args: argparse.Namespace, method: str, side: int, channels: int) -> dict:
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--case",
        method,
        str(side),
        str(channels),
        "--k",
        str(args.k),
        "--iters",
        str(args.iters),
        "--repeats",
        str(args.repeats),
        "--temperature",
        str(args.temperature),
        "--max-seconds",
        str(args.max_seconds),
        "--device",
        args.device,
        *(["--keep-denormals"] if args.keep_denormals else []),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout (> {args.timeout:g} s)"}
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        return {"status": f"failed: {last[:200]}"}
    return {"status": "ok", **json.loads(done.stdout.strip().splitlines()[-1])}


def skip_reason(
    args: argparse.Namespace, method: str, estimated: float, timed_out_at: int | None
) -> str | None:
    if method == "patchmatch_cpu" and not cocosnet_ops.HAS_COMPILED:
        return "unavailable (cocosnet_ops._C not built)"
    if method == "patchmatch_cuda" and not cocosnet_ops.HAS_CUDA_KERNELS:
        return "unavailable (cocosnet_ops._C built without CUDA kernels)"
    if method == "patchmatch_triton" and triton_kernels.unavailable(args.device):
        return f"unavailable ({triton_kernels.unavailable(args.device)})"
    if estimated > args.memory_limit_gib:
        return f"skipped (needs {math.ceil(estimated)} GiB)"
    if timed_out_at is not None:
        return f"skipped (timed out at side {timed_out_at})"
    return None


def run_grid(args: argparse.Namespace) -> list[dict]:
    rows = []
    for channels in args.channels:
        for method in args.methods:
            timed_out_at = None
            for side in sorted(args.sides):
                estimated = estimate_bytes(method, side, channels, args.k) / GIB
                row = {
                    "method": method,
                    "side": side,
                    "channels": channels,
                    "k": args.k,
                    "iters": args.iters,
                    "estimated_gib": round(estimated, 3),
                }
                reason = skip_reason(args, method, estimated, timed_out_at)
                if reason is None:
                    row.update(run_case_in_subprocess(args, method, side, channels))
                else:
                    row["status"] = reason
                if row["status"].startswith("timeout"):
                    timed_out_at = side
                print(format_progress(row), flush=True)
                rows.append(row)
    return rows


def format_progress(row: dict) -> str:
    head = f"{row['method']:>16} side {row['side']:>4} C {row['channels']:>3}: "
    if row["status"] != "ok":
        return head + row["status"]
    return head + (
        f"forward {row['forward_s']:.4f} s, forward+backward {row['forward_backward_s']:.4f} s, "
        f"peak {row['forward_backward_peak_mib']:.1f} MiB"
    )


# ----------------------------------------------------------------------------- outputs


def write_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: round(v, 6) if isinstance(v, float) else v for c, v in row.items()})


def write_plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("forward_s", "forward time (s)"),
        ("forward_backward_s", "forward + backward time (s)"),
        ("forward_peak_mib", "forward peak memory (MiB)"),
        ("forward_backward_peak_mib", "forward + backward peak memory (MiB)"),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharex=True)
    channel_styles = dict(zip(sorted({r["channels"] for r in rows}), ("-", "--", ":", "-."), strict=False))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (column, label) in zip(axes.flat, panels, strict=True):
        for i, method in enumerate(METHODS):
            for channels, style in channel_styles.items():
                points = [
                    (r["side"], r[column])
                    for r in rows
                    if r["method"] == method and r["channels"] == channels and r["status"] == "ok"
                ]
                if points:
                    xs, ys = zip(*sorted(points), strict=True)
                    ax.plot(xs, ys, style, marker="o", color=colours[i], label=f"{method}, C={channels}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("map side (pixels)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    for ax in axes.flat[1:]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize="small")
    fig.suptitle("Exemplar warp: PatchMatch + weighted_gather vs dense softmax (1 image, K=16, 5 iters)")
    fig.tight_layout(rect=(0, 0.08, 1, 0.97))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| method | side | C | forward (s) | forward+backward (s) | peak forward (MiB) "
        "| peak forward+backward (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["status"] == "ok":
            cells = [
                f"{r['forward_s']:.4g}",
                f"{r['forward_backward_s']:.4g}",
                f"{r['forward_peak_mib']:.1f}",
                f"{r['forward_backward_peak_mib']:.1f}",
            ]
        else:
            cells = [r["status"], "", "", ""]
        lines.append(f"| {r['method']} | {r['side']} | {r['channels']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratio_table(rows: list[dict]) -> str:
    """PatchMatch against the dense warp wherever both ran: speed-up and memory ratio."""
    ok = {(r["method"], r["side"], r["channels"]): r for r in rows if r["status"] == "ok"}
    lines = [
        "| method | side | C | forward+backward speed-up vs dense | peak memory ratio dense / method |",
        "|---|---:|---:|---:|---:|",
    ]
    for (method, side, channels), r in ok.items():
        dense = ok.get(("dense", side, channels))
        if not method.startswith("patchmatch") or dense is None:
            continue
        speedup = dense["forward_backward_s"] / r["forward_backward_s"]
        memory = dense["forward_backward_peak_mib"] / max(r["forward_backward_peak_mib"], 1e-3)
        lines.append(f"| {method} | {side} | {channels} | {speedup:.1f}x | {memory:.1f}x |")
    return "\n".join(lines) if len(lines) > 2 else ""


# ----------------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sides", type=cli.int_at_least(1), nargs="+", default=[32, 64, 128, 256, 512, 1024])
    parser.add_argument("--channels", type=cli.int_at_least(1), nargs="+", default=[32, 64])
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cpu: the CPU methods, times of whole passes; cuda: the GPU methods, CUDA-event times",
    )
    parser.add_argument("--methods", nargs="+", choices=METHODS, help="default: every method of --device")
    parser.add_argument(
        "--repeats", type=cli.int_at_least(1), default=3, help="timed passes per case (best of)"
    )
    parser.add_argument("--keep-denormals", action="store_true", help="do not flush denormals to zero")
    parser.add_argument(
        "--max-seconds", type=cli.positive_number, default=30.0,
        help="stop repeating a measurement after this long",
    )
    parser.add_argument("--k", type=cli.int_at_least(1), default=16)
    parser.add_argument("--iters", type=cli.int_at_least(0), default=5)
    parser.add_argument("--temperature", type=cli.positive_number, default=0.01)
    parser.add_argument("--memory-limit-gib", type=cli.positive_number, default=20.0)
    parser.add_argument(
        "--timeout", type=cli.positive_number, default=600.0, help="seconds per case subprocess"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/warp.csv"))
    parser.add_argument(
        "--case",
        nargs=3,
        metavar=("METHOD", "SIDE", "CHANNELS"),
        help="internal: measure one case in this process and print it as JSON",
    )
    args = parser.parse_args(argv)
    if args.methods is None:
        args.methods = list(CUDA_METHODS if args.device == "cuda" else CPU_METHODS)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no GPU is visible to torch")
    if args.case is not None and args.case[0] not in METHODS:
        parser.error(f"--case: method must be one of {METHODS}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_flush_denormal(not args.keep_denormals)
    if args.case is not None:
        method, side, channels = args.case[0], int(args.case[1]), int(args.case[2])
        result = run_case(
            method,
            side,
            channels,
            args.k,
            args.iters,
            args.temperature,
            args.repeats,
            args.max_seconds,
            args.device,
        )
        print(json.dumps(result))
        return
    print(f"cocosnet_ops compiled: {cocosnet_ops.HAS_COMPILED}; torch threads: {torch.get_num_threads()}")
    if args.device == "cuda":
        print(f"GPU: {torch.cuda.get_device_name()}; torch {torch.__version__}")
    rows = run_grid(args)
    write_csv(rows, args.out)
    plot_path = args.out.with_suffix(".png")
    write_plot(rows, plot_path)
    print(f"\nwrote {args.out} and {plot_path}\n")
    print(markdown_table(rows))
    ratios = ratio_table(rows)
    if ratios:
        print("\n" + ratios)


if __name__ == "__main__":
    cli.run(main)
