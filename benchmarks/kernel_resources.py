"""Registers, spills and stack of every CUDA search kernel, as ptxas reports them (no GPU needed).

Occupancy on a GPU follows from the registers a thread uses: an H100 SM has 65536 registers and
at most 2048 threads, so a kernel of 128 threads a block at 128 registers keeps 4 blocks (25%)
in flight, at 64 registers 8 blocks (50%). Spills go to local memory (cached, but loads on the
critical path). This compiles csrc/cuda/search.cu with nvcc for one architecture and tabulates
what ptxas says of each instantiation, so the search-step variants of kernels.h
(``SearchVariant``) can be compared before a GPU times them.

    python benchmarks/kernel_resources.py --arch 90 --out benchmarks/results/kernel_resources.csv

Writes the CSV and a markdown table beside it (.md). Needs nvcc and c++filt; about a minute.
"""

from __future__ import annotations

import argparse
import csv
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANT_BITS = {1: "coalesced_lists", 2: "pipelined_rows", 4: "bounded_registers", 8: "split_lists"}
FIELDS = (
    "kernel",
    "scores",
    "features",
    "list_bound",
    "variant",
    "registers",
    "stack_bytes",
    "spill_stores",
    "spill_loads",
    "blocks_per_sm",
    "occupancy",
)
THREADS_PER_BLOCK = 128  # search.cu's kThreads
REGISTERS_PER_SM = 65536
MAX_THREADS_PER_SM = 2048


def variant_name(bits: int) -> str:
    return "+".join(name for bit, name in VARIANT_BITS.items() if bits & bit) or "default"


def parse_signature(demangled: str) -> dict[str, object] | None:
    """kernel name and template arguments of a search kernel's demangled symbol, else None."""
    match = re.search(r"(\w+_kernel)<([^()]*)>\(", demangled)
    if match is None:
        return None
    arguments = [a.strip() for a in match.group(2).split(",")]
    kernel = match.group(1).removeprefix("bounded_")  # kBoundedRegisters' kernel: its variant bits say so
    row: dict[str, object] = {"kernel": kernel, "scores": arguments[0].split("::")[-1]}
    if kernel in ("initial_search_kernel", "search_step_kernel"):
        row["features"] = arguments[1].split("::")[-1]
        row["list_bound"] = int(arguments[2])
        row["variant"] = variant_name(int(arguments[3])) if kernel == "search_step_kernel" else ""
    elif kernel == "share_matches_kernel":
        row.update(features=row["scores"], list_bound=int(arguments[1]), variant="")
    else:
        return None
    return row


def occupancy(registers: int) -> tuple[int, float]:
    blocks = min(
        REGISTERS_PER_SM // max(registers * THREADS_PER_BLOCK, 1), MAX_THREADS_PER_SM // THREADS_PER_BLOCK
    )
    return blocks, blocks * THREADS_PER_BLOCK / MAX_THREADS_PER_SM


def parse_ptxas(log: str, demangle) -> list[dict[str, object]]:
    """One row per kernel from `nvcc -Xptxas -v` output (a function's stack/spill line comes
    before its register line)."""
    rows, current, spills = [], None, None
    for line in log.splitlines():
        if "Compiling entry function" in line:
            symbol = line.split("'")[1]
            current, spills = parse_signature(demangle(symbol)), None
        elif current is not None and "bytes stack frame" in line:
            spills = [int(n) for n in re.findall(r"(\d+) bytes", line)]
        elif current is not None and (match := re.search(r"Used (\d+) registers", line)):
            registers = int(match.group(1))
            stack, stores, loads = spills if spills else (0, 0, 0)
            blocks, fraction = occupancy(registers)
            rows.append(
                {
                    **current,
                    "registers": registers,
                    "stack_bytes": stack,
                    "spill_stores": stores,
                    "spill_loads": loads,
                    "blocks_per_sm": blocks,
                    "occupancy": f"{fraction:.3f}",
                }
            )
            current = None
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="90", help="compute capability without the dot (default 90: H100)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/kernel_resources.csv")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"\d{2,3}a?", args.arch):
        parser.error(f"--arch: expected a compute capability such as 90 or 80, got {args.arch!r}")
    for tool in ("nvcc", "c++filt"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} not found on PATH")
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            "nvcc",
            "-std=c++17",
            "-O3",
            "-c",
            str(ROOT / "csrc/cuda/search.cu"),
            "-gencode",
            f"arch=compute_{args.arch},code=sm_{args.arch}",
            "-Xptxas",
            "-v",
            "-o",
            f"{tmp}/search.o",
        ]
        result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        print(f"kernel_resources.py: error: nvcc failed:\n{result.stderr[-2000:]}", file=sys.stderr)
        return 1

    def demangle(symbol: str) -> str:
        return subprocess.run(["c++filt", symbol], capture_output=True, text=True).stdout.strip()

    rows = sorted(
        parse_ptxas(result.stderr + result.stdout, demangle),
        key=lambda r: (r["kernel"], r["scores"], r["features"], r["list_bound"], r["variant"]),
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    out = args.out.resolve()
    shown = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    lines = [
        "# CUDA search kernels: registers and spills (ptxas)",
        "",
        f"Command: `python benchmarks/kernel_resources.py --arch {args.arch} --out {shown}` "
        f"(nvcc {nvcc_version()}, sm_{args.arch}; occupancy from registers alone, "
        f"{THREADS_PER_BLOCK} threads a block).",
        "",
        "| kernel | scores | features | list bound | variant | registers | spill stores / loads (bytes) | "
        "blocks / SM | occupancy |",
        "|---|---|---|---:|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['kernel']} | {r['scores']} | {r['features']} | {r['list_bound']} | {r['variant']} | "
        f"{r['registers']} | {r['spill_stores']} / {r['spill_loads']} | {r['blocks_per_sm']} | "
        f"{r['occupancy']} |"
        for r in rows
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def nvcc_version() -> str:
    output = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout
    match = re.search(r"release ([\d.]+)", output)
    return match.group(1) if match else "unknown"


if __name__ == "__main__":
    sys.exit(main())
