"""train.py --model pix2pixhd: the coarse-to-fine recipe's stages, loading a global generator,
exact resume across the global-to-local switch, and the recipe's settings checked.

A tiny model (widths 4, 32x32 synthetic scenes, 6 items so an epoch is 3 steps of 2) trains one
epoch of the global generator, one of the local enhancer with the global generator frozen
(``niter_fix_global``), then one of everything, with one intra-op thread so that the runs that
must be bitwise equal do the same floating-point work.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml

import train
from models import Pix2PixHDOptions
from training import checkpoint
from training.config import ConfigError, load_config, model_options

TINY = {
    "data": {"name": "synthetic_scenes", "train": {"size": 32, "length": 6, "seed": 0}},
    "model": {
        "ngf": 4, "nef": 4, "n_downsample_E": 2, "n_downsample_global": 2, "n_blocks_global": 1,
        "n_blocks_local": 1, "ndf": 4, "num_D": 1, "n_layers_D": 2,
    },
    "train": {
        "model": "pix2pixhd", "batch_size": 2, "num_workers": 0, "vgg_weights": "none",
        "checkpoint_every": 3, "keep_checkpoints": 0, "log_every": 1, "image_every": 3, "seed": 3,
        "global_epochs": 1, "niter_fix_global": 1, "constant_epochs": 2, "decay_epochs": 0,
        "lr": 2.0e-4, "betas": [0.5, 0.999], "ttur": False,
    },
}
STEPS_PER_EPOCH = 3
ROOT = Path(__file__).resolve().parent.parent
GLOBAL = ("generator.global_generator.", "generator.global_output.", "encoder.")
ENHANCERS = ("generator.enhancers_",)


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "pix2pixhd_tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def run_args(config_file: Path, out: Path, *extra: str) -> list[str]:
    return ["--config", str(config_file), "--out", str(out), *extra]


@pytest.fixture(scope="module")
def straight(config_file, tmp_path_factory, one_intra_op_thread) -> Path:
    """The checkpoints of the three epochs (global, local_fixed, local) of one uninterrupted run."""
    out = tmp_path_factory.mktemp("straight")
    train.main(run_args(config_file, out))
    return out / "checkpoints"


def at_step(folder: Path, step: int) -> dict:
    return checkpoint.load(checkpoint.checkpoint_path(folder, step))


def part(state: dict, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    found = {name: t for name, t in state["model"].items() if name.startswith(prefixes)}
    assert found, prefixes
    return found


def equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def test_stages_follow_the_epochs_and_freeze_the_global_generator(straight):
    after_global, after_fixed, after_local = (at_step(straight, s * STEPS_PER_EPOCH) for s in (1, 2, 3))
    stages = [s["stage"] for s in (after_global, after_fixed, after_local)]
    assert stages == ["global", "local_fixed", "local"]
    # niter_fix_global: the local enhancer trains, the global generator and the encoder stay bitwise.
    assert equal(part(after_global, GLOBAL), part(after_fixed, GLOBAL))
    assert not equal(part(after_global, ENHANCERS), part(after_fixed, ENHANCERS))
    # Then the global generator trains too (its output block, replaced by the enhancer, does not).
    assert not equal(part(after_fixed, ("generator.global_generator.",)),
                     part(after_local, ("generator.global_generator.",)))
    head = ("generator.global_output.",)
    assert equal(part(after_fixed, head), part(after_local, head))
    model = checkpoint.load_model(checkpoint.checkpoint_path(straight, STEPS_PER_EPOCH))
    assert model.stage == "global"  # a checkpoint of the global stage generates at half size


def test_resume_is_exact_across_the_global_to_local_switch(config_file, straight, tmp_path,
                                                           one_intra_op_thread):
    train.main(run_args(config_file, tmp_path, "--max_steps", "2"))
    steps = str(2 * STEPS_PER_EPOCH)
    final = train.main(run_args(config_file, tmp_path, "--max_steps", steps, "--resume"))
    resumed, uninterrupted = checkpoint.load(final), at_step(straight, 2 * STEPS_PER_EPOCH)
    assert resumed["stage"] == uninterrupted["stage"] == "local_fixed"
    assert equal(resumed["model"], uninterrupted["model"])
    for key in ("optimizer_g", "optimizer_d"):
        states, expected = resumed[key]["state"], uninterrupted[key]["state"]
        assert states.keys() == expected.keys()
        assert all(equal(states[i], expected[i]) for i in states)


def test_local_stage_starts_from_a_saved_global_generator(config_file, tmp_path, one_intra_op_thread):
    """train.load_global: a run of the global generator alone at half size (16x16, twice the local
    run's ngf as pix2pixHD's 64 and 32) starts the local run at full size, which keeps it bitwise
    for niter_fix_global epochs and then trains it."""
    global_run = train.main(run_args(
        config_file, tmp_path / "global", "--set", "model.n_local_enhancers=0", "--set", "model.ngf=8",
        "--set", "data.train.size=16",
        "--set", "train.global_epochs=0", "--set", "train.niter_fix_global=0",
    ))
    train.main(run_args(
        config_file, tmp_path / "local", "--set", "train.global_epochs=0",
        "--set", f"train.load_global={global_run}",
    ))
    saved = checkpoint.load(global_run)
    local = tmp_path / "local" / "checkpoints"
    after_fixed, after_local = at_step(local, STEPS_PER_EPOCH), at_step(local, 2 * STEPS_PER_EPOCH)
    # The global-only generator's layers are the local model's global generator, then its output block.
    local_model = checkpoint.load_model(checkpoint.checkpoint_path(local, STEPS_PER_EPOCH))
    layers = len(local_model.generator.global_generator)
    renamed = {}
    for name, tensor in part(saved, ("generator.global_generator.", "encoder.")).items():
        if name.startswith("generator."):
            _, _, index, rest = name.split(".", 3)
            if int(index) >= layers:
                name = f"generator.global_output.{int(index) - layers}.{rest}"
        renamed[name] = tensor
    assert any(name.startswith("generator.global_output.") for name in renamed)
    assert equal(renamed, part(after_fixed, GLOBAL))
    assert not equal(part(after_fixed, ("generator.global_generator.",)),
                     part(after_local, ("generator.global_generator.",)))


@pytest.mark.parametrize(("overrides", "named"), [
    (["--model", "cocosnet"], "train.global_epochs"),
    (["--set", "model.n_local_enhancers=0"], "train.global_epochs"),
    (["--set", "train.dense_warmup_steps=2"], "train.dense_warmup_steps"),
    (["--set", "model.norm_D=group"], "model.norm_D"),
    (["--set", "model.k=4"], "model"),
    (["--set", "data.train.size=36"], "data.train.size"),
    (["--set", "data.name=synthetic"], "model.instance_edges, model.feat_nc"),
])
def test_recipe_settings_are_checked(config_file, tmp_path, overrides, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        train.main(run_args(config_file, tmp_path, *overrides))


def test_load_global_must_be_a_pix2pixhd_checkpoint_of_the_same_widths(config_file, tmp_path, straight):
    wider = ["--set", "model.ngf=8", "--set", "train.global_epochs=0"]
    with pytest.raises(ConfigError, match="train.load_global"):
        train.main(run_args(config_file, tmp_path, *wider, "--set",
                            f"train.load_global={checkpoint.checkpoint_path(straight, 3)}"))


def test_pix2pixhd_configs_are_valid_and_the_cityscapes_steps_fit_together():
    root = Path(__file__).resolve().parent.parent / "configs"
    configs = {path.stem: load_config(path) for path in root.glob("pix2pixhd_*.yaml")}
    names = ("demo", "ade20k", "cityscapes_1024", "cityscapes_2048")
    assert {f"pix2pixhd_{name}" for name in names} <= set(configs)
    for config in configs.values():
        label_nc = config["data"]["train"].get("label_nc", 4)
        assert isinstance(model_options(config, label_nc), Pix2PixHDOptions)
    first = configs["pix2pixhd_cityscapes_1024"]["model"]
    second = configs["pix2pixhd_cityscapes_2048"]["model"]
    # Step 2 loads step 1's global generator: the same width, at twice the resolution.
    assert first["ngf"] == second["ngf"] * 2 ** second["n_local_enhancers"]
    sizes = [configs[f"pix2pixhd_cityscapes_{side}"]["data"]["train"]["size"] for side in (1024, 2048)]
    assert [2 * s for s in sizes[0]] == sizes[1]


@pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo"
)
def test_torchrun_two_processes_match_one_process_across_the_switch(config_file, tmp_path,
                                                                    one_intra_op_thread):
    """Two gloo processes of one sample each against one process of two, in float64, for two
    epochs: the global stage, then the local enhancer alone, DDP wrapped anew at the switch with
    the frozen global generator expecting no gradient."""
    steps, exact = str(2 * STEPS_PER_EPOCH), ["--set", "train.dtype=float64"]
    single = train.main(run_args(config_file, tmp_path / "one", "--max_steps", steps, *exact))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "train.py",
        *run_args(config_file, tmp_path / "two", "--max_steps", steps, "--batch_size", "1", *exact),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = checkpoint.load(single), at_step(tmp_path / "two" / "checkpoints", 2 * STEPS_PER_EPOCH)
    assert one["stage"] == two["stage"] == "local_fixed" and two["sampler"]["world_size"] == 2
    # Up to the summation order of the convolutions and the all-reduce; the weights move by ~1e-3.
    floats = [n for n, t in two["model"].items() if t.is_floating_point()]
    assert max(float((one["model"][n] - two["model"][n]).abs().max()) for n in floats) < 1e-9
    after_global = at_step(tmp_path / "two" / "checkpoints", STEPS_PER_EPOCH)
    assert not equal(part(after_global, ENHANCERS), part(two, ENHANCERS))
