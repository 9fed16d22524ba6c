"""train.py: exact resume, SIGKILL safety, torchrun DDP against one process, the VGG19 error.

One tiny model (widths 8, 32x32 synthetic items, 6 items so an epoch is 3 steps of 2) trains
4 steps once per module; the other runs are compared with its checkpoints. Everything runs
with one intra-op thread, in-process and in the subprocesses alike, so the runs that must be
bitwise equal do the same floating-point work.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml

import train
from training import checkpoint

ROOT = Path(__file__).resolve().parent.parent
STEPS = 4  # crosses the end of the first epoch (3 steps)
TINY = {
    "data": {"name": "synthetic", "train": {"size": 32, "length": 6, "seed": 0}},
    "model": {
        "nef": 8, "match_nc": 8, "ngf": 8, "ndf": 8, "spade_nc": 16, "k": 4,
        "patch_match_iters": 2, "gru_iters": 2,
    },
    "train": {
        "batch_size": 2, "num_workers": 0, "vgg_weights": "none", "checkpoint_every": 2,
        "keep_checkpoints": 0, "log_every": 1, "image_every": 2, "seed": 3,
    },
}


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def run_args(config_file: Path, out: Path, *extra: str) -> list[str]:
    return ["--config", str(config_file), "--out", str(out), *extra]


@pytest.fixture(scope="module")
def straight(config_file, tmp_path_factory, one_intra_op_thread) -> Path:
    """Checkpoints of an uninterrupted run at steps 2 and 4."""
    out = tmp_path_factory.mktemp("straight")
    final = train.main(run_args(config_file, out, "--max_steps", str(STEPS)))
    assert final == checkpoint.checkpoint_path(out / "checkpoints", STEPS)
    assert sorted(p.name for p in (out / "grids").iterdir()) == ["step_00000002.png", "step_00000004.png"]
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    return out / "checkpoints"


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_resume_continues_exactly(config_file, straight, tmp_path, one_intra_op_thread):
    half = STEPS // 2
    train.main(run_args(config_file, tmp_path, "--max_steps", str(half)))
    final = train.main(run_args(config_file, tmp_path, "--max_steps", str(STEPS), "--resume"))
    resumed, uninterrupted = checkpoint.load(final), checkpoint.load(straight / f"step_{STEPS:08d}.pt")
    assert resumed["step"] == STEPS and resumed["epoch"] == uninterrupted["epoch"] == 1
    assert_bitwise_equal(resumed["model"], uninterrupted["model"])
    for key in ("optimizer_g", "optimizer_d"):
        for index, state in uninterrupted[key]["state"].items():
            assert_bitwise_equal(resumed[key]["state"][index], state)
    # The run really trained: the weights moved from the half-way checkpoint.
    halfway = checkpoint.load(straight / f"step_{half:08d}.pt")["model"]
    assert any(not torch.equal(halfway[k], v) for k, v in resumed["model"].items())


def test_sigkill_resumes_from_last_checkpoint_and_never_truncates(config_file, straight, tmp_path):
    out = tmp_path / "killed"
    folder = out / "checkpoints"
    args = [sys.executable, "train.py", *run_args(config_file, out, "--max_steps", str(STEPS)),
            "--set", "train.checkpoint_every=1"]
    timing = random.Random(0)

    def newest_step() -> int | None:
        found = checkpoint.list_checkpoints(folder)
        return int(found[-1].stem.split("_")[1]) if found else None

    for attempt in range(2):
        before = newest_step()
        with open(tmp_path / f"log{attempt}.txt", "w") as log:
            process = subprocess.Popen(
                args + (["--resume"] if before is not None else []),
                cwd=ROOT, env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT,
            )
            # Kill at a random moment after the process wrote a checkpoint of its own.
            while newest_step() == before and process.poll() is None:
                time.sleep(0.02)
            time.sleep(timing.uniform(0.0, 1.5))
            process.kill()
            process.wait()
        for path in checkpoint.list_checkpoints(folder):
            assert checkpoint.load(path)["step"] == int(path.stem.split("_")[1])
    last = newest_step()
    assert last is not None
    done = subprocess.run(args + ["--resume"], cwd=ROOT, env=subprocess_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"at step {last}," in done.stdout + done.stderr
    assert not list(folder.glob(f"*{checkpoint.TEMP_SUFFIX}"))
    for path in checkpoint.list_checkpoints(folder):
        checkpoint.load(path)
    final = checkpoint.load(checkpoint.checkpoint_path(folder, STEPS))
    assert_bitwise_equal(final["model"], checkpoint.load(straight / f"step_{STEPS:08d}.pt")["model"])


@pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo"
)
def test_torchrun_two_processes_match_one_process(config_file, straight, tmp_path, one_intra_op_thread):
    """Two gloo processes with one sample each against one process with both: the same global
    batch, so the same weights up to the summation order of the gradient all-reduce and the
    batch size the convolutions see."""
    steps = STEPS // 2
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "train.py",
        *run_args(config_file, tmp_path / "ddp", "--max_steps", str(steps), "--batch_size", "1"),
    ]
    done = subprocess.run(command, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = checkpoint.load(checkpoint.checkpoint_path(tmp_path / "ddp" / "checkpoints", steps))["model"]
    single = checkpoint.load(straight / f"step_{steps:08d}.pt")["model"]
    initial_path = train.main(run_args(config_file, tmp_path / "init", "--max_steps", "0"))
    initial = checkpoint.load(initial_path)["model"]
    names = [name for name, t in single.items() if t.is_floating_point()]
    moved = sum(float((single[n] - initial[n]).double().square().sum()) for n in names) ** 0.5
    apart = sum(float((single[n] - ddp[n]).double().square().sum()) for n in names) ** 0.5
    assert moved > 0
    # Measured 3e-4; a different global batch or unsynchronised gradients give order 1.
    assert apart < 1e-2 * moved, (apart, moved)


def test_missing_vgg_weights_say_where_to_put_them(config_file, tmp_path):
    missing = tmp_path / "nowhere" / "vgg19.pth"
    with pytest.raises(train.MissingWeightsError) as error:
        train.main(run_args(config_file, tmp_path / "run", "--vgg_weights", str(missing)))
    message = str(error.value)
    assert str(missing) in message and "--vgg_weights none" in message and "IMAGENET1K_V1" in message
