"""A short run of ``train.py`` that shows training works on a device: steps per second, peak
memory, the autocast dtype, the process group's backend and world size, and whether the losses
fall and stay finite. One row per run is appended to ``--out`` (CSV).

One process (``benchmarks/gpu_check.sh`` runs both forms on a GPU):

    python benchmarks/gpu_train_smoke.py --device cuda --run-dir /tmp/smoke_1 \\
        --out benchmarks/results/train_smoke.csv

Every GPU of the node, NCCL:

    torchrun --standalone --nproc_per_node 8 benchmarks/gpu_train_smoke.py --device cuda \\
        --run-dir /tmp/smoke_8 --out benchmarks/results/train_smoke.csv

The model and data are ``configs/demo.yaml``'s (the synthetic figures) at ``--size``; every step
is logged to TensorBoard, from which the losses and the steady steps per second (from step 10
on, so start-up and the first steps' kernel compilation are left out) are read back. A loss that
is not finite makes the exit status 1.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import cli  # noqa: E402
import train  # noqa: E402
from training import distributed  # noqa: E402

COLUMNS = (
    "device_name",
    "world_size",
    "backend",
    "amp_dtype",
    "size",
    "batch_per_process",
    "steps",
    "wall_s",
    "steady_steps_per_s",
    "peak_memory_mib",
    "first_total_loss",
    "last_total_loss",
    "losses_fall",
    "finite",
)
STEADY_FROM = 10  # the first steps compile kernels and warm caches


def total_losses(run_dir: Path) -> list[tuple[float, int, float]]:
    """``(wall_time, step, value)`` of ``loss/total`` in the run's TensorBoard log."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    return [(e.wall_time, e.step, e.value) for e in events.Scalars("loss/total")]


def steady_rate(losses: list[tuple[float, int, float]]) -> float:
    """Steps per second between step ``STEADY_FROM`` (or the first logged) and the last."""
    start = next((e for e in losses if e[1] >= STEADY_FROM), losses[0])
    end = losses[-1]
    return (end[1] - start[1]) / (end[0] - start[0]) if end[0] > start[0] else math.nan


def summarise(run_dir: Path, args: argparse.Namespace, wall: float, backend: str, world_size: int) -> dict:
    losses = total_losses(run_dir)
    values = [e[2] for e in losses]
    window = max(1, len(values) // 5)
    first, last = statistics.fmean(values[:window]), statistics.fmean(values[-window:])
    device = torch.device(args.device)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else math.nan
    amp = train.amp_dtype(args.amp, device)
    return {
        "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "world_size": world_size,
        "backend": backend,
        "amp_dtype": str(amp).removeprefix("torch.") if amp is not None else "none",
        "size": args.size,
        "batch_per_process": args.batch_size,
        "steps": losses[-1][1],
        "wall_s": round(wall, 2),
        "steady_steps_per_s": round(steady_rate(losses), 3),
        "peak_memory_mib": round(peak, 1),
        "first_total_loss": first,
        "last_total_loss": last,
        "losses_fall": last < first,
        "finite": all(math.isfinite(v) for v in values),
    }


def append_row(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--size", type=cli.int_at_least(32), default=256, help="image side (pixels)")
    parser.add_argument("--steps", type=cli.int_at_least(2), default=50)
    parser.add_argument("--batch-size", type=cli.int_at_least(1), default=4, help="samples per process")
    parser.add_argument("--amp", choices=("auto", "none", "bf16", "fp16"), default="auto")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml")
    parser.add_argument("--run-dir", type=Path, required=True, help="train.py's --out (must not hold a run)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train_smoke.csv"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise cli.UsageError("--device: cuda was asked for, but torch sees no GPU here")
    backend_seen = ["none"]
    teardown = distributed.teardown

    def recording_teardown(context: distributed.Context) -> None:
        if dist.is_initialized():  # the backend train.py chose, read before the group goes
            backend_seen[0] = str(dist.get_backend())
        teardown(context)

    distributed.teardown = recording_teardown
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    train_argv = [
        "--config", str(args.config), "--out", str(args.run_dir), "--max_steps", str(args.steps),
        "--batch_size", str(args.batch_size), "--amp", args.amp, "--device", args.device,
        "--set", f"data.train.size={args.size}", "--set", "train.log_every=1",
        "--set", f"train.checkpoint_every={args.steps}", "--set", f"train.image_every={args.steps}",
    ]  # fmt: skip
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    train.main(train_argv)
    wall = time.perf_counter() - start
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    row = summarise(args.run_dir, args, wall, backend_seen[0], world_size)
    append_row(args.out, row)
    print(", ".join(f"{k} {row[k]}" for k in COLUMNS), flush=True)
    return 0 if row["finite"] else 1


if __name__ == "__main__":
    cli.run(lambda: sys.exit(main()))
