"""train.py: exact resume, SIGKILL safety, torchrun DDP against one process, --compile, the VGG19 error.

One tiny model (widths 8, 32x32 synthetic items, 6 items so an epoch is 3 steps of 2) trains
4 steps once per module; the other runs are compared with its checkpoints. Everything runs
with one intra-op thread, in-process and in the subprocesses alike, so the runs that must be
bitwise equal do the same floating-point work.

Runs that cannot do the same floating-point work (two processes of one sample against one
process of two: the convolutions sum in another order) train in float64 (``train.dtype``), with
batch norm in the SPADE layers (``model.norm``) so that the batch statistics are synchronised
across the processes. In float32 the last-bit differences grow (softmax temperature 0.01,
PatchMatch choices) to 1e-2 in gradients of 200 after one step, and to 700 in exp_avg_sq after two.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch._dynamo
import torch.distributed as dist
import yaml
from torch._dynamo.utils import counters

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
# The settings of the runs compared across numbers of processes (see the module docstring).
EXACT = ["--set", "train.dtype=float64", "--set", "model.norm=batch"]
# Largest absolute difference allowed between those runs, in the weights and the Adam states
# (measured: 2e-14 in the weights, 6e-9 in exp_avg_sq, whose values reach 4e3).
EXACT_TOLERANCE = 1e-6

requires_gloo = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo"
)


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


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def assert_same_training_state(a: dict, b: dict) -> None:
    """Bitwise the same weights and optimiser states."""
    assert_bitwise_equal(a["model"], b["model"])
    for key in ("optimizer_g", "optimizer_d"):
        assert a[key]["state"].keys() == b[key]["state"].keys()
        for index, state in b[key]["state"].items():
            assert_bitwise_equal(a[key]["state"][index], state)


def largest_differences(a: dict, b: dict) -> dict[str, float]:
    """The largest absolute difference between two checkpoints' floating-point weights, and
    between their Adam moments (per optimiser): Adam's update hardly depends on the scale of the
    gradient, its moments are proportional to it."""
    def largest(x: dict, y: dict) -> float:
        return max(float((x[n].double() - y[n].double()).abs().max()) for n in x if x[n].is_floating_point())

    differences = {"weights": largest(a["model"], b["model"])}
    for key in ("optimizer_g", "optimizer_d"):
        states_a, states_b = a[key]["state"], b[key]["state"]
        assert states_a.keys() == states_b.keys()
        for moment in ("exp_avg", "exp_avg_sq"):
            differences[f"{key}.{moment}"] = max(
                float((states_a[i][moment] - states_b[i][moment]).abs().max()) for i in states_a
            )
    return differences


def test_resume_continues_exactly(config_file, straight, tmp_path, one_intra_op_thread):
    half = STEPS // 2
    train.main(run_args(config_file, tmp_path, "--max_steps", str(half)))
    final = train.main(run_args(config_file, tmp_path, "--max_steps", str(STEPS), "--resume"))
    resumed, uninterrupted = checkpoint.load(final), checkpoint.load(straight / f"step_{STEPS:08d}.pt")
    assert resumed["step"] == STEPS and resumed["epoch"] == uninterrupted["epoch"] == 1
    assert_same_training_state(resumed, uninterrupted)
    # The run really trained: the weights moved from the half-way checkpoint.
    halfway = checkpoint.load(straight / f"step_{half:08d}.pt")["model"]
    assert any(not torch.equal(halfway[k], v) for k, v in resumed["model"].items())


def test_dense_warmup_switches_at_its_step_and_resumes_exactly_across_it(config_file, tmp_path,
                                                                         one_intra_op_thread):
    """train.dense_warmup_steps: every level warps densely for those steps (no PatchMatch, so
    the ConvGRU is left out), then the hierarchical search; the checkpoints record the stage and
    a run resumed before the switch ends bitwise where an uninterrupted one does."""
    warmup = ["--set", "train.dense_warmup_steps=2", "--set", "train.checkpoint_every=1"]
    straight = tmp_path / "straight"
    train.main(run_args(config_file, straight, "--max_steps", str(STEPS), *warmup))
    saved = {step: checkpoint.load(checkpoint.checkpoint_path(straight / "checkpoints", step))
             for step in range(1, STEPS + 1)}  # fmt: skip
    # The stage of step N's training is saved after it: steps 1 and 2 dense, 3 and 4 PatchMatch.
    assert [saved[step]["stage"] for step in saved] == ["dense", "dense", "patchmatch", "patchmatch"]
    gru = "correspondence.update.gru.convz1.weight"
    initial = checkpoint.load(train.main(run_args(config_file, tmp_path / "init", "--max_steps", "0")))
    assert torch.equal(saved[2]["model"][gru], initial["model"][gru])  # no gradient while dense
    assert not torch.equal(saved[3]["model"][gru], saved[2]["model"][gru])
    resumed = tmp_path / "resumed"
    train.main(run_args(config_file, resumed, "--max_steps", "1", *warmup))
    final = train.main(run_args(config_file, resumed, "--max_steps", str(STEPS), "--resume", *warmup))
    assert_same_training_state(checkpoint.load(final), saved[STEPS])


def test_sigkill_resumes_from_last_checkpoint_and_never_truncates(config_file, straight, tmp_path):
    """SIGKILL at three points, each run resuming from the newest checkpoint the last one left:
    half-way through writing step 2's checkpoint, while step 3 trains, half-way through writing
    the final checkpoint (step 4). Checkpoint's test hook holds a write half-way, so those kills
    land there every time. No checkpoint is ever truncated, and the run that finishes ends
    bitwise where the uninterrupted one did."""
    out = tmp_path / "killed"
    folder = out / "checkpoints"
    args = [sys.executable, "train.py", *run_args(config_file, out, "--max_steps", str(STEPS)),
            "--set", "train.checkpoint_every=1"]

    def newest_step() -> int | None:
        found = checkpoint.list_checkpoints(folder)
        return int(found[-1].stem.split("_")[1]) if found else None

    def paused_mid_write(log_path: Path, name: str) -> bool:
        return f"paused mid-write of {name}" in log_path.read_text()

    def wrote(step: int) -> bool:
        return (newest_step() or 0) >= step

    def run_until(log_path: Path, ready: Callable[[], bool], env: dict[str, str]) -> None:
        """Start a run (resuming when there is a checkpoint), wait until ``ready()``, SIGKILL it."""
        resume = ["--resume"] if newest_step() is not None else []
        with open(log_path, "w") as log:
            process = subprocess.Popen(args + resume, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 300
            while not ready() and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            process.kill()
            process.wait()
        assert process.returncode == -signal.SIGKILL, (process.returncode, log_path.read_text()[-3000:])

    # (the kill point, the newest checkpoint it leaves)
    kills = [("mid-write", 2, 1), ("training", 2, 2), ("mid-write", STEPS, STEPS - 1)]
    resumed_at = []
    for attempt, (moment, step, newest) in enumerate(kills):
        log_path = tmp_path / f"log{attempt}.txt"
        name = checkpoint.checkpoint_path(folder, step).name
        if moment == "mid-write":
            env = subprocess_env(**{checkpoint.PAUSE_MID_WRITE_ENV: name})
            run_until(log_path, functools.partial(paused_mid_write, log_path, name), env)
        else:
            run_until(log_path, functools.partial(wrote, step), subprocess_env())
        if attempt:
            resumed_at.append(log_path.read_text())
        # Every file under a checkpoint's name is whole, and the run died before its last step.
        for path in checkpoint.list_checkpoints(folder):
            assert checkpoint.load(path)["step"] == int(path.stem.split("_")[1])
        assert newest_step() == newest < STEPS, (moment, newest_step())
        if moment == "mid-write":
            # The kill landed mid-write: the partial file is there, under a temporary name.
            partial = list(folder.glob(f"{name}.*{checkpoint.TEMP_SUFFIX}"))
            assert len(partial) == 1 and partial[0].stat().st_size > 0, partial
            with pytest.raises(ValueError, match="cannot be read"):
                checkpoint.load(partial[0])
    done = subprocess.run(args + ["--resume"], cwd=ROOT, env=subprocess_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed_at.append(done.stdout + done.stderr)
    for (_, _, newest), log in zip(kills, resumed_at, strict=True):
        assert f"at step {newest}," in log
    assert not list(folder.glob(f"*{checkpoint.TEMP_SUFFIX}"))
    steps = [checkpoint.load(path)["step"] for path in checkpoint.list_checkpoints(folder)]
    assert steps == list(range(1, STEPS + 1))
    final = checkpoint.load(checkpoint.checkpoint_path(folder, STEPS))
    assert_same_training_state(final, checkpoint.load(straight / f"step_{STEPS:08d}.pt"))


@pytest.fixture(scope="module")
def exact_single(config_file, tmp_path_factory, one_intra_op_thread) -> Path:
    """One process, two samples per step, in the settings of :data:`EXACT`: checkpoints at steps
    0 and 2."""
    out = tmp_path_factory.mktemp("exact_single")
    train.main(run_args(config_file, out, "--max_steps", "0", *EXACT))
    train.main(run_args(config_file, out, "--max_steps", str(STEPS // 2), "--resume", *EXACT))
    return out / "checkpoints"


def torchrun(script: str, config_file: Path, out: Path, *extra: str) -> None:
    """``script`` (train.py's command line) in two gloo processes of one sample each."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", script,
        *run_args(config_file, out, "--batch_size", "1", *EXACT, *extra),
    ]
    done = subprocess.run(command, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def two_processes(config_file, tmp_path_factory) -> Path:
    """Checkpoints of an uninterrupted two-process run (one sample each) at steps 2 and 4."""
    out = tmp_path_factory.mktemp("two_processes")
    torchrun("train.py", config_file, out, "--max_steps", str(STEPS))
    return out / "checkpoints"


def assert_exact_run_matches_one_process(run: dict, exact_single: Path) -> None:
    """``run``'s checkpoint at step 2 equals the one-process run's within :data:`EXACT_TOLERANCE`
    in the weights and both optimisers' Adam moments, which are far from that small."""
    single = checkpoint.load(exact_single / f"step_{STEPS // 2:08d}.pt")
    initial = checkpoint.load(exact_single / "step_00000000.pt")
    moved = max(float((single["model"][n] - t).abs().max()) for n, t in initial["model"].items()
                if t.is_floating_point())
    moments = {
        f"{key}.{moment}": max(float(state[moment].abs().max()) for state in single[key]["state"].values())
        for key in ("optimizer_g", "optimizer_d") for moment in ("exp_avg", "exp_avg_sq")
    }
    assert min(moved, *moments.values()) > 1e3 * EXACT_TOLERANCE, (moved, moments)
    differences = largest_differences(run, single)
    assert max(differences.values()) <= EXACT_TOLERANCE, differences


@requires_gloo
def test_torchrun_two_processes_match_one_process(exact_single, two_processes):
    """Two gloo processes with one sample each against one process with both: the same global
    batch, so the same training up to the summation order of the convolutions and the gradient
    all-reduce. That holds only if the samples are split by position in the global batch, each
    sample's PatchMatch search does not depend on its batch slot, batch norms use the global batch
    and every loss is a mean over the samples."""
    two = checkpoint.load(two_processes / f"step_{STEPS // 2:08d}.pt")
    assert_exact_run_matches_one_process(two, exact_single)


@requires_gloo
def test_torchrun_with_summed_gradients_fails_the_comparison(config_file, exact_single, tmp_path):
    """The negative control of the test above: gradients summed over the two processes, not
    averaged, must fail its comparison, above all in the Adam moments (proportional to the
    gradient, where Adam's step hardly depends on its scale)."""
    torchrun("tests/ddp_sum_gradients.py", config_file, tmp_path, "--max_steps", str(STEPS // 2))
    summed = checkpoint.load(checkpoint.checkpoint_path(tmp_path / "checkpoints", STEPS // 2))
    with pytest.raises(AssertionError) as failure:
        assert_exact_run_matches_one_process(summed, exact_single)
    differences = largest_differences(summed, checkpoint.load(exact_single / f"step_{STEPS // 2:08d}.pt"))
    assert differences["optimizer_g.exp_avg"] > 1e3 * EXACT_TOLERANCE, (differences, str(failure.value))


@requires_gloo
def test_torchrun_resume_continues_exactly(config_file, two_processes, tmp_path):
    """Two processes stop at step 2 and resume to step 4: bitwise the uninterrupted two-process run."""
    torchrun("train.py", config_file, tmp_path, "--max_steps", str(STEPS // 2))
    torchrun("train.py", config_file, tmp_path, "--max_steps", str(STEPS), "--resume")
    resumed = checkpoint.load(checkpoint.checkpoint_path(tmp_path / "checkpoints", STEPS))
    assert resumed["step"] == STEPS and resumed["sampler"]["world_size"] == 2
    assert_same_training_state(resumed, checkpoint.load(two_processes / f"step_{STEPS:08d}.pt"))


@pytest.fixture
def fresh_dynamo():
    """Dynamo's caches and counters emptied before and after the test."""
    torch._dynamo.reset()
    counters.clear()
    yield counters
    torch._dynamo.reset()
    counters.clear()


def test_compile_trains_the_compiled_step(
    config_file, exact_single, tmp_path, fresh_dynamo, one_intra_op_thread
):
    """``--compile`` really compiles the training step (one graph, no graph break, no frame left
    to eager), and trains as eager does. The aot_eager backend: Inductor would take 15-20 minutes
    over this step on a 2-core CPU."""
    args = ["--max_steps", str(STEPS // 2), "--compile", "--set", "train.compile_backend=aot_eager", *EXACT]
    final = train.main(run_args(config_file, tmp_path, *args))
    frames = dict(fresh_dynamo["frames"])
    assert frames.get("total", 0) >= 1 and frames.get("ok") == frames["total"], frames
    assert fresh_dynamo["stats"]["unique_graphs"] >= 1, dict(fresh_dynamo["stats"])
    assert not fresh_dynamo["graph_break"], dict(fresh_dynamo["graph_break"])
    assert fresh_dynamo["aot_autograd"]["ok"] >= 1, dict(fresh_dynamo["aot_autograd"])
    assert_exact_run_matches_one_process(checkpoint.load(final), exact_single)


@torch._dynamo.register_backend(name="failing_for_test_train")
def failing_backend(graph: torch.fx.GraphModule, example_inputs: list) -> None:
    raise RuntimeError("failing_for_test_train: this backend always fails")


def test_compile_error_stops_training(config_file, tmp_path, fresh_dynamo, one_intra_op_thread):
    """A backend that fails stops train.py with its error: no silent fallback to eager."""
    args = ["--max_steps", "1", "--compile", "--set", "train.compile_backend=failing_for_test_train"]
    with pytest.raises(torch._dynamo.exc.BackendCompilerFailed, match="this backend always fails"):
        train.main(run_args(config_file, tmp_path, *args))
    assert not checkpoint.list_checkpoints(tmp_path / "checkpoints")


def test_missing_vgg_weights_say_where_to_put_them(config_file, tmp_path):
    missing = tmp_path / "nowhere" / "vgg19.pth"
    with pytest.raises(train.MissingWeightsError) as error:
        train.main(run_args(config_file, tmp_path / "run", "--vgg_weights", str(missing)))
    message = str(error.value)
    assert str(missing) in message and "--vgg_weights none" in message and "IMAGENET1K_V1" in message
