"""Train CoCosNet v2 (or pix2pixHD) on one CPU or GPU, or on many GPUs and nodes through ``torchrun``.

    python train.py --config configs/demo.yaml --out runs/demo
    python train.py --config configs/demo.yaml --out runs/demo --resume          # newest checkpoint
    python train.py --config configs/demo.yaml --out runs/demo --overwrite       # start over
    torchrun --nproc_per_node 8 train.py --config configs/deepfashionhd_512.yaml --out runs/dfhd512
    python train.py --config configs/ade20k.yaml --set data.train.root=/data/ADE20K --set train.lr=2e-4
    python train.py --model pix2pixhd --config configs/pix2pixhd_demo.yaml --out runs/pix2pixhd

Settings come from the YAML file (see ``training/config.py``), then the explicit flags, then
``--set section.key=value`` (values parsed as YAML). ``--batch_size`` is per process. The run
writes ``OUT/checkpoints/step_<N>.pt``, ``OUT/tensorboard/`` and ``OUT/grids/step_<N>.png``; in a
folder that already holds checkpoints it starts only with ``--resume`` (continue the newest) or
``--overwrite`` (remove the earlier run's checkpoints, TensorBoard logs and grids first).
``main(argv)`` does the same in-process and returns the final checkpoint's path.
"""

from __future__ import annotations

import argparse
import math
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import cli
import data
from models import CoCosNet, Pix2PixHD, Pix2PixHDLosses, Pix2PixHDOptions, TrainingLosses, TrainingStep
from models.alignment import NUM_LEVELS
from models.discriminator import instance_edges
from models.normalization import synchronize_batch_norms
from models.pix2pixhd import STAGES as PIX2PIXHD_STAGES
from training import checkpoint, compile_workaround, distributed, visuals
from training.config import MODELS, ConfigError, load_config, model_options, uses_vgg, visual_label_kind

# Training stages: every level warped densely (train.dense_warmup_steps), then the hierarchical
# PatchMatch of the paper.
STAGE_DENSE = "dense"
STAGE_PATCHMATCH = "patchmatch"
# pix2pixHD's stages (models.pix2pixhd.STAGES) are functions of the epoch: train.global_epochs of
# the global generator, train.niter_fix_global of the local enhancers alone, then everything.


class MissingWeightsError(cli.MissingFileError):
    """The VGG19 weight file of the perceptual losses is not where the configuration says."""


class RunFolderError(cli.UsageError):
    """``--out`` is not a run folder, or holds an earlier run and neither ``--resume`` nor
    ``--overwrite`` says what to do with it."""


def vgg_weights_error(path: str) -> MissingWeightsError:
    return MissingWeightsError(
        f"VGG19 weights not found at {path!r}. The VGG losses need torchvision's ImageNet VGG19 "
        "weights as a local state_dict file (nothing is downloaded at run time). On a machine with "
        "torchvision and a network run\n"
        "    python -c \"import torch, torchvision; torch.save(torchvision.models.vgg19("
        "weights='IMAGENET1K_V1').state_dict(), 'vgg19.pth')\"\n"
        f"and put vgg19.pth at {path} (or pass --vgg_weights PATH), or train without the VGG "
        "losses with --vgg_weights none."
    )


class NoFeatures(nn.Module):
    """Stands in for the VGG19 when training without the VGG losses, so it is never run."""

    def forward(self, image: Tensor) -> list[Tensor]:
        return []


class SeededItems(Dataset):
    """A dataset whose random augmentations are a function of (seed, epoch, index).

    Each item is made with torch's, numpy's and python's generators seeded from those three
    numbers and restored afterwards: the same in a worker process or the main one, for any
    number of workers or processes, and after a resume, and the training's own random draws
    are not disturbed.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        item_seed = int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0])
        saved = torch.get_rng_state(), np.random.get_state(), random.getstate()
        torch.random.default_generator.manual_seed(item_seed)
        np.random.seed(item_seed)
        random.seed(item_seed)
        try:
            return self.dataset[index]
        finally:
            torch.set_rng_state(saved[0])
            np.random.set_state(saved[1])
            random.setstate(saved[2])


def learning_rate_factor(epoch: int, constant_epochs: int, decay_epochs: int) -> float:
    """1 for the first ``constant_epochs`` epochs, then a linear decay over ``decay_epochs``
    more epochs (the last one trains at ``1 / (decay_epochs + 1)``)."""
    if epoch < constant_epochs:
        return 1.0
    return max(0.0, 1.0 - (epoch - constant_epochs + 1) / (decay_epochs + 1))


def amp_dtype(mode: str, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.dtype | None:
    """The autocast dtype of ``train.amp`` on ``device`` for a model in ``dtype`` (None: full
    precision; ``auto`` never lowers a float64 model)."""
    if mode == "none" or (mode == "auto" and (device.type != "cuda" or dtype != torch.float32)):
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type != "cuda":
        raise ConfigError(f"train.amp: {mode} is for GPUs; use none on {device.type}")
    return torch.bfloat16 if mode == "bf16" else torch.float16


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = cli.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, help="YAML configuration (configs/*.yaml)")
    parser.add_argument("--model", choices=MODELS, help="what to train (train.model; default cocosnet)")
    parser.add_argument("--out", type=Path, help="run folder (default runs/<config name>)")
    earlier_run = parser.add_mutually_exclusive_group()
    earlier_run.add_argument(
        "--resume", nargs="?", const="latest", default=None,
        help="continue from a checkpoint file, or (no value) from the newest one in OUT/checkpoints",
    )
    earlier_run.add_argument(
        "--overwrite", action="store_true",
        help="start over in a run folder that holds an earlier run (its checkpoints, logs and grids removed)",
    )
    parser.add_argument("--max_steps", type=cli.int_at_least(0), help="stop after this many optimiser steps")
    parser.add_argument("--batch_size", type=cli.int_at_least(1), help="samples per process and step")
    parser.add_argument(
        "--num_workers", type=cli.int_at_least(0), help="data loading processes per training process"
    )
    parser.add_argument("--seed", type=cli.int_at_least(0))
    parser.add_argument("--vgg_weights", help="torchvision VGG19 state_dict file, or none")
    parser.add_argument("--amp", choices=("auto", "none", "bf16", "fp16"))
    parser.add_argument("--device", type=cli.device_or_auto, choices=("auto", "cpu", "cuda"))
    parser.add_argument(
        "--compile", action="store_true",
        help="torch.compile the training step with train.compile_backend (a compile error stops training)",
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override a configuration value (repeatable), e.g. --set model.k=8",
    )
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> dict[str, Any]:
    flags = {
        "model": args.model,
        "max_steps": args.max_steps,
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "seed": args.seed,
        "vgg_weights": args.vgg_weights,
        "amp": args.amp,
        "device": args.device,
        "compile": True if args.compile else None,
    }
    return load_config(args.config, args.overrides, {k: v for k, v in flags.items() if v is not None})


def check_pix2pixhd_data(dataset: Dataset, options: Pix2PixHDOptions) -> None:
    """A :class:`ConfigError` where the pix2pixHD model cannot take the dataset's items: sides
    its generator and encoder cannot halve often enough, or no instance maps for the edges and
    the encoder."""
    multiple = 2 ** (options.n_downsample_global + options.n_local_enhancers)
    if options.feat_nc:
        multiple = max(multiple, 2**options.n_downsample_E)
    if any(side % multiple for side in dataset.image_size):
        raise ConfigError(
            f"data.train.size: the pix2pixhd model needs sides divisible by {multiple} "
            f"(model.n_downsample_global, model.n_local_enhancers, model.n_downsample_E), "
            f"got {tuple(dataset.image_size)}"
        )
    if (options.instance_edges or options.feat_nc) and "instance" not in dataset[0]:
        raise ConfigError(
            "model.instance_edges, model.feat_nc: the instance edges and the feature encoder need instance "
            "maps, which data.train's items lack (a folder dataset takes them from instance_dir); or set "
            "both to false and 0"
        )


class Trainer:
    """Everything one training process holds, and the loop."""

    def __init__(self, config: dict[str, Any], out: Path, context: distributed.Context) -> None:
        self.config, self.out, self.context = config, out, context
        settings = config["train"]
        self.settings = settings
        device = context.device
        seed = settings["seed"]
        # Every rank is seeded alike: the model's random draws (PatchMatch's random-search seeds)
        # are then those of one process, and a sample's search does not depend on its batch slot,
        # so N processes train like one process with the same global batch.
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)

        try:
            dataset = data.build_dataset(config["data"]["name"], "train", **(config["data"]["train"] or {}))
        except ValueError as error:  # the options' types are checked; here their values, folders and files
            raise ConfigError(f"data.train: {error}") from error
        self.dataset = SeededItems(dataset, seed)
        options = model_options(config, int(dataset.label_nc))
        if uses_vgg(config) and not Path(settings["vgg_weights"]).is_file():
            raise vgg_weights_error(str(settings["vgg_weights"]))
        self.pix2pixhd = settings["model"] == "pix2pixhd"
        if self.pix2pixhd:
            check_pix2pixhd_data(dataset, options)
        try:
            self.model: CoCosNet | Pix2PixHD = Pix2PixHD(options) if self.pix2pixhd else CoCosNet(options)
        except ValueError as error:  # what the configuration's checks leave to the model
            raise ConfigError(f"model: {error}") from error
        if not uses_vgg(config) and not self.pix2pixhd:  # pix2pixHD builds none without weights
            self.model.vgg = NoFeatures()
        if context.distributed:
            # Batch norms (model.norm: batch) normalise over the global batch, as in one process.
            synchronize_batch_norms(self.model)
        self.dtype: torch.dtype = getattr(torch, settings["dtype"])
        self.model.to(device, self.dtype).train()

        if settings["compile"] and settings["compile_backend"] == "inductor":
            # A new image size recompiles with dynamic shapes: torch 2.13 takes very long over it,
            # and would pin the sizes again without the second workaround.
            compile_workaround.install()
        self.stage = ""
        self.step_module: nn.Module = TrainingStep(self.model)

        lr, betas = float(settings["lr"]), tuple(float(b) for b in settings["betas"])
        lr_g, lr_d = (lr / 2, lr * 2) if settings["ttur"] else (lr, lr)
        # Everything but the discriminator and the frozen VGG19: CoCosNet's correspondence and
        # generator, pix2pixHD's generator and encoder (in registration order, as checkpoints hold them).
        generator_params = [
            p for name, p in self.model.named_parameters() if not name.startswith(("discriminator.", "vgg."))
        ]
        self.optimizer_g = torch.optim.Adam(
            generator_params, lr=lr_g, betas=betas, eps=settings["generator_eps"]
        )
        self.optimizer_d = torch.optim.Adam(self.model.discriminator.parameters(), lr=lr_d, betas=betas)
        self.base_lrs = (lr_g, lr_d)
        self.amp_dtype = amp_dtype(settings["amp"], device, self.dtype)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)

        self.sampler = distributed.ResumableSampler(self.dataset, context.world_size, context.rank, seed)
        if self.sampler.num_samples < settings["batch_size"]:
            raise ConfigError(
                f"train.batch_size: {settings['batch_size']} per process, but each of the "
                f"{context.world_size} processes gets only {self.sampler.num_samples} samples per epoch"
            )
        self.loader_generator = torch.Generator()
        self.loader = DataLoader(
            self.dataset,
            batch_size=settings["batch_size"],
            sampler=self.sampler,
            num_workers=settings["num_workers"],
            drop_last=True,
            pin_memory=device.type == "cuda",
            generator=self.loader_generator,
        )
        self.steps_per_epoch = self.sampler.num_samples // settings["batch_size"]
        self.global_batch = settings["batch_size"] * context.world_size
        self.label_kind = visual_label_kind(config)

        self.step = self.epoch = self.samples_in_epoch = 0
        self.saved_step: int | None = None
        self.checkpoints = out / "checkpoints"
        self.writer = None
        if context.is_main:
            from torch.utils.tensorboard import SummaryWriter

            (out / "grids").mkdir(parents=True, exist_ok=True)
            checkpoint.remove_stale_temporaries(self.checkpoints)
            (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
            self.writer = SummaryWriter(str(out / "tensorboard"))

    # ------------------------------------------------------------------ checkpoints

    def save(self) -> Path:
        path = checkpoint.checkpoint_path(self.checkpoints, self.step)
        rng = distributed.gather_objects(checkpoint.rng_state(self.context.device), self.context)
        if self.context.is_main:
            state = {
                "format": checkpoint.FORMAT_VERSION,
                "step": self.step,
                "stage": self.stage,
                "epoch": self.epoch,
                "sampler": {
                    "epoch": self.epoch,
                    "samples_taken": self.samples_in_epoch,
                    "seed": self.settings["seed"],
                    "world_size": self.context.world_size,
                },
                "schedule": {
                    "constant_epochs": self.settings["constant_epochs"],
                    "decay_epochs": self.settings["decay_epochs"],
                    "factor": self.lr_factor(),
                },
                "model": checkpoint.trainable_state(self.model),
                "optimizer_g": self.optimizer_g.state_dict(),
                "optimizer_d": self.optimizer_d.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": rng,
                "options": checkpoint.options_to_dict(self.model.options),
                "config": self.config,
            }
            checkpoint.save_atomic(state, path)
            checkpoint.prune(self.checkpoints, self.settings["keep_checkpoints"])
        distributed.barrier(self.context)
        self.saved_step = self.step
        return path

    def restore(self, path: Path, state: Mapping[str, Any]) -> None:
        """Continue from the checkpoint ``state`` read from ``path``."""
        checkpoint.load_trainable_state(self.model, state["model"], f"--resume: {path}")
        self.optimizer_g.load_state_dict(state["optimizer_g"])
        self.optimizer_d.load_state_dict(state["optimizer_d"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = self.saved_step = state["step"]
        self.epoch = state["sampler"]["epoch"]
        self.samples_in_epoch = state["sampler"]["samples_taken"]
        if self.samples_in_epoch % self.context.world_size:
            raise cli.UsageError(
                f"--resume: {path} stopped {self.samples_in_epoch} samples into an epoch, which "
                f"{self.context.world_size} processes cannot split evenly; resume at the end of an epoch"
            )
        rngs = state["rng"]
        # With another number of processes every rank takes rank 0's states (all ranks draw alike).
        own = rngs[self.context.rank] if len(rngs) == self.context.world_size else rngs[0]
        checkpoint.set_rng_state(own, self.context.device)

    def load_global(self, path: Path) -> None:
        """Start from the global generator, encoder and discriminator of the pix2pixHD checkpoint at
        ``path`` (pix2pixHD's ``--load_pretrain``): typically a run of the global generator alone
        (``model.n_local_enhancers: 0``, ``model.ngf`` this run's times 2**n_local_enhancers) at
        half resolution, whose output block becomes this generator's ``global_output``."""
        state = checkpoint.load(path, "train.load_global")
        kind = checkpoint.model_kind(state)
        if kind != "pix2pixhd":
            raise ConfigError(f"train.load_global: {path} holds a {kind} model, not pix2pixhd")
        own = self.model.state_dict()
        global_prefix, head_prefix = "generator.global_generator.", "generator.global_output."
        layers = len(self.model.generator.global_generator)
        loaded = {}
        for name, tensor in state["model"].items():
            if name.startswith(global_prefix):
                index, rest = name[len(global_prefix):].split(".", 1)
                if int(index) >= layers:  # a global-only generator's output block
                    name = f"generator.global_output.{int(index) - layers}.{rest}"
            elif not name.startswith((head_prefix, "encoder.", "discriminator.")):
                continue
            loaded[name] = tensor
        wanted = [n for n in own if n.startswith((global_prefix, head_prefix)) and n not in loaded]
        other = [n for n, t in loaded.items() if n not in own or own[n].shape != t.shape]
        if wanted or other:
            raise ConfigError(
                f"train.load_global: {path} is not a global generator of this model's widths "
                f"(missing {wanted[:3]}, other {other[:3]})"
            )
        self.model.load_state_dict(loaded, strict=False)

    # ------------------------------------------------------------------ training

    def lr_factor(self) -> float:
        """The schedule's factor; it counts epochs from the end of pix2pixHD's global stage."""
        settings = self.settings
        epoch = max(0, self.epoch - settings["global_epochs"])
        return learning_rate_factor(epoch, settings["constant_epochs"], settings["decay_epochs"])

    def current_stage(self) -> str:
        """The training stage now: a function of the step (CoCosNet) or of the epoch (pix2pixHD), so
        that a resume across a switch is exact."""
        settings = self.settings
        if not self.pix2pixhd:
            return STAGE_DENSE if self.step < settings["dense_warmup_steps"] else STAGE_PATCHMATCH
        if self.epoch < settings["global_epochs"] or not self.model.options.n_local_enhancers:
            return "global"
        fixed_until = settings["global_epochs"] + settings["niter_fix_global"]
        return "local_fixed" if self.epoch < fixed_until else "local"

    def set_learning_rates(self) -> None:
        factor = self.lr_factor()
        for optimizer, base in zip((self.optimizer_g, self.optimizer_d), self.base_lrs, strict=True):
            for group in optimizer.param_groups:
                group["lr"] = base * factor

    def enter_stage(self) -> None:
        """The stage of this step. CoCosNet: ``dense`` (every level warps by the exact softmax over
        every pair) for the first ``train.dense_warmup_steps`` steps, then ``patchmatch`` (the
        hierarchical search). pix2pixHD: ``global``, ``local_fixed``, ``local`` (see
        :meth:`current_stage` and models.pix2pixhd)."""
        stage = self.current_stage()
        if stage == self.stage:
            return
        self.stage = stage
        if self.pix2pixhd:
            # The parts out of the stage stop requiring gradients: DDP (wrapped anew below) then
            # expects none from them, and Adam leaves them as they are.
            self.model.set_stage(stage)
        else:
            self.model.correspondence.dense_levels = NUM_LEVELS if stage == STAGE_DENSE else 1
        step_module: nn.Module = TrainingStep(self.model)
        if self.context.distributed:
            device = self.context.device
            step_module = DistributedDataParallel(
                step_module,
                device_ids=[device.index] if device.type == "cuda" else None,
                # The dense stage leaves the ConvGRU out of the forward.
                find_unused_parameters=(
                    stage == STAGE_DENSE and self.model.correspondence.update is not None
                ),
            )
        if self.settings["compile"]:
            step_module = torch.compile(step_module, backend=self.settings["compile_backend"])
        self.step_module = step_module
        if self.step > 0 or stage == STAGE_DENSE:
            if self.context.is_main:
                tqdm.write(f"step {self.step}: {stage} stage")
            if self.writer is not None:
                self.writer.add_text("stage", f"{stage} from step {self.step}", self.step)

    def train_step(self, batch: Mapping[str, Any]) -> TrainingLosses | Pix2PixHDLosses:
        self.enter_stage()
        device = self.context.device
        tensors = {
            k: v.to(device, self.dtype if v.is_floating_point() else None, non_blocking=True)
            for k, v in batch.items()
            if isinstance(v, Tensor)
        }
        self.optimizer_g.zero_grad(set_to_none=True)
        self.optimizer_d.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            losses = self.step_module(tensors)
        # One backward: G's terms reach only G and D's only D (see models.TrainingLosses).
        self.scaler.scale(losses.total).backward()
        self.scaler.step(self.optimizer_g)
        self.scaler.step(self.optimizer_d)
        self.scaler.update()
        return losses

    def log(self, losses: TrainingLosses | Pix2PixHDLosses, progress: tqdm) -> None:
        scalars = {f"G/{k}": float(v.detach()) for k, v in losses.generator.items()}
        scalars |= {f"D/{k}": float(v.detach()) for k, v in losses.discriminator.items()}
        scalars["total"] = float(losses.total.detach())
        scalars = distributed.mean_over_ranks(scalars, self.context)
        if self.writer is None:
            return
        if self.pix2pixhd:
            self.writer.add_scalar("stage/index", float(PIX2PIXHD_STAGES.index(self.stage)), self.step)
        else:
            self.writer.add_scalar("stage/dense", float(self.stage == STAGE_DENSE), self.step)
        for name, value in scalars.items():
            self.writer.add_scalar(f"loss/{name}", value, self.step)
        self.writer.add_scalar("lr/generator", self.optimizer_g.param_groups[0]["lr"], self.step)
        self.writer.add_scalar("lr/discriminator", self.optimizer_d.param_groups[0]["lr"], self.step)
        if self.scaler.is_enabled():
            self.writer.add_scalar("amp/scale", self.scaler.get_scale(), self.step)
        g = sum(v for k, v in scalars.items() if k.startswith("G/"))
        d = sum(v for k, v in scalars.items() if k.startswith("D/"))
        progress.set_postfix(epoch=self.epoch, G=f"{g:.3f}", D=f"{d:.3f}")

    def write_grid(self, batch: Mapping[str, Any], losses: TrainingLosses | Pix2PixHDLosses) -> None:
        if isinstance(losses, Pix2PixHDLosses):
            instance = batch.get("instance")
            edges = instance_edges(instance) if instance is not None else None
            grid = visuals.label_map_grid(
                batch["label"], edges, [losses.image], batch["image"], self.settings["grid_samples"]
            )
            self.writer.add_image("label|edges|output|target", grid, self.step)
            visuals.save_png(grid, self.out / "grids" / f"step_{self.step:08d}.png")
            return
        translation = losses.translation
        grid = visuals.training_grid(
            batch["label"], batch["exemplar"], translation.warps, translation.image, batch["image"],
            self.label_kind, self.settings["grid_samples"],
        )
        self.writer.add_image("label|exemplar|warps|output|target", grid, self.step)
        visuals.save_png(grid, self.out / "grids" / f"step_{self.step:08d}.png")

    def fit(self, resume: tuple[Path, Mapping[str, Any]] | None = None) -> Path:
        """Train until the last epoch or ``max_steps``, first continuing from ``resume`` (a
        checkpoint's path and contents) if given; returns the final checkpoint's path."""
        if resume is not None:
            self.restore(*resume)
            if self.context.is_main:
                tqdm.write(f"resumed from {resume[0]} at step {self.step}, epoch {self.epoch}")
        elif self.settings["load_global"] is not None:
            self.load_global(Path(self.settings["load_global"]))
        settings = self.settings
        total_epochs = settings["global_epochs"] + settings["constant_epochs"] + settings["decay_epochs"]
        max_steps = settings["max_steps"] if settings["max_steps"] is not None else math.inf
        total_steps = min(max_steps, total_epochs * self.steps_per_epoch)
        progress = tqdm(
            total=total_steps, initial=self.step, disable=not self.context.is_main, unit="step",
            dynamic_ncols=True,
        )
        while self.epoch < total_epochs and self.step < max_steps:
            self.set_learning_rates()
            self.sampler.set_position(self.epoch, self.samples_in_epoch)
            self.dataset.epoch = self.epoch
            self.loader_generator.manual_seed(settings["seed"] * 1_000_003 + self.epoch)
            for batch in self.loader:
                losses = self.train_step(batch)
                self.step += 1
                self.samples_in_epoch += self.global_batch
                progress.update()
                if self.step % settings["log_every"] == 0 or self.step == 1:
                    self.log(losses, progress)
                if self.writer is not None and self.step % settings["image_every"] == 0:
                    self.write_grid(batch, losses)
                if self.step % settings["checkpoint_every"] == 0:
                    self.save()
                if self.step >= max_steps:
                    break
            else:
                self.epoch += 1
                self.samples_in_epoch = 0
        progress.close()
        if self.saved_step == self.step:
            final = checkpoint.checkpoint_path(self.checkpoints, self.step)
        else:
            final = self.save()
        if self.writer is not None:
            self.writer.close()
        return final


def earlier_run_files(out: Path) -> dict[str, list[Path]]:
    """What earlier runs of train.py left in the run folder ``out``, by kind."""
    checkpoints = out / "checkpoints"
    return {
        "checkpoints": [
            *checkpoint.list_checkpoints(checkpoints),
            *sorted(checkpoints.glob(f"step_*.pt.*{checkpoint.TEMP_SUFFIX}")),
        ],
        "TensorBoard logs": sorted((out / "tensorboard").glob("events.out.tfevents.*")),
        "grids": sorted((out / "grids").glob("step_*.png")),
    }


def check_run_folder(out: Path) -> None:
    """Refuse a run folder that holds an earlier run's checkpoints: it would end up mixing two runs."""
    found = checkpoint.list_checkpoints(out / "checkpoints")
    if found:
        raise RunFolderError(
            f"--out: {out} already holds a run ({len(found)} checkpoints, the newest {found[-1].name}); "
            "pass --resume to continue it or --overwrite to start over"
        )


def remove_earlier_run(out: Path) -> None:
    """Remove what earlier runs wrote in ``out`` (checkpoints, TensorBoard logs, grids), saying so."""
    found = {kind: paths for kind, paths in earlier_run_files(out).items() if paths}
    for path in (p for paths in found.values() for p in paths):
        path.unlink()
    if found:
        removed = ", ".join(f"{len(paths)} {kind}" for kind, paths in found.items())
        print(f"--overwrite: removed the earlier run's {removed} from {out}", flush=True)


def resume_from(resume: str, checkpoints: Path) -> tuple[Path, dict[str, Any]]:
    """The checkpoint ``--resume`` names (a file, or ``latest``: the newest in ``checkpoints``)
    and its contents."""
    if resume == "latest":
        path = checkpoint.latest_checkpoint(checkpoints)
        if path is None:
            raise RunFolderError(f"--resume: no checkpoint in {checkpoints} to continue from")
    else:
        path = Path(resume)
    return path, checkpoint.load(path, "--resume")


def main(argv: Sequence[str] | None = None) -> Path:
    """Train as the command line ``argv`` says; returns the final checkpoint's path."""
    args = parse_args(argv)
    config = build_config(args)
    out = args.out or Path("runs") / (args.config.stem if args.config else "default")
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--out: {out} is a file; expected a run folder")
    resume = resume_from(args.resume, out / "checkpoints") if args.resume is not None else None
    if resume is None and not args.overwrite:
        check_run_folder(out)
    context = distributed.setup(config["train"]["device"])
    try:
        if args.overwrite and context.is_main:
            remove_earlier_run(out)
        return Trainer(config, out, context).fit(resume)
    finally:
        distributed.teardown(context)


if __name__ == "__main__":
    cli.run(main)
