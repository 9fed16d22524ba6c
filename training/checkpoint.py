"""Checkpoints: written whole or not at all, found again, and turned back into a model.

A checkpoint is one ``torch.save`` file ``step_<step>.pt`` holding the model (without the
frozen VGG19, which comes from its own file), both optimisers, the gradient scaler, the
learning-rate schedule, the epoch, step and sampler position, every rank's RNG states, the
model options and the configuration. It is written to a temporary file in the same folder,
flushed to disk and then renamed over the final name (``os.replace`` is atomic on POSIX), so a
process killed at any moment leaves either the complete previous files or the complete new
one, never a truncated file under a checkpoint's name.
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cli import UsageError, require_file, short_reason
from models import CoCosNet, CoCosNetOptions, LossWeights, Pix2PixHD, Pix2PixHDLossWeights, Pix2PixHDOptions

FORMAT_VERSION = 1
CHECKPOINT_PATTERN = re.compile(r"step_(\d+)\.pt")
TEMP_SUFFIX = ".tmp"
# Parameters that are not trained and not saved: the VGG19 of the losses loads from its own file.
FROZEN_PREFIX = "vgg."
# Test hook: the checkpoint file name (e.g. step_00000002.pt) whose writing stops for a minute
# after its first bytes, so that a test can kill the process with a partial file on disk.
PAUSE_MID_WRITE_ENV = "COCOSNET_TEST_PAUSE_MID_WRITE"
PAUSE_MID_WRITE_SECONDS = 60.0


class CheckpointError(UsageError):
    """A file given as a checkpoint that is not one train.py wrote (or not one of this model); the
    message names the file."""


class ForeignCheckpointError(CheckpointError):
    """A file that torch.load reads but train.py did not write (converted public weights, say)."""


def checkpoint_path(folder: str | os.PathLike, step: int) -> Path:
    return Path(folder) / f"step_{step:08d}.pt"


def list_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """The checkpoints in ``folder``, oldest step first (temporary files are not listed)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_PATTERN.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    found = list_checkpoints(folder)
    return found[-1] if found else None


def save_atomic(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """``torch.save(state)`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f"{path.name}.{os.getpid()}{TEMP_SUFFIX}")
    try:
        with open(temp, "wb") as f:
            pause = os.environ.get(PAUSE_MID_WRITE_ENV) == path.name
            torch.save(state, _PausingWriter(f, path.name) if pause else f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    # The rename itself reaches the disk only with the folder's entry.
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
    return path


class _PausingWriter:
    """The file ``file`` for ``torch.save``, pausing after its first write (see PAUSE_MID_WRITE_ENV)."""

    def __init__(self, file: Any, name: str) -> None:
        self.file, self.name, self.paused = file, name, False

    def write(self, data: bytes) -> int:
        written = self.file.write(data)
        if not self.paused:
            self.paused = True
            self.file.flush()
            message = f"checkpoint: paused mid-write of {self.name} ({PAUSE_MID_WRITE_ENV})"
            print(message, file=sys.stderr, flush=True)
            time.sleep(PAUSE_MID_WRITE_SECONDS)
        return written

    def flush(self) -> None:
        self.file.flush()


def remove_stale_temporaries(folder: str | os.PathLike) -> None:
    """Delete temporary files left by a process killed while writing."""
    folder = Path(folder)
    if folder.is_dir():
        for temp in folder.glob(f"step_*.pt.*{TEMP_SUFFIX}"):
            temp.unlink(missing_ok=True)


def prune(folder: str | os.PathLike, keep: int) -> None:
    """Keep the ``keep`` newest checkpoints (all when ``keep`` is 0)."""
    if keep > 0:
        for old in list_checkpoints(folder)[:-keep]:
            old.unlink(missing_ok=True)


def load(path: str | os.PathLike, argument: str = "checkpoint") -> dict[str, Any]:
    """A checkpoint's contents on the CPU. A missing file is a :class:`cli.MissingFileError`, one
    that cannot be read (corrupt, truncated) a :class:`CheckpointError`, one that torch reads but
    train.py did not write a :class:`ForeignCheckpointError`; each names ``argument`` and the file."""
    path = require_file(Path(path), argument)
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # EOFError, RuntimeError, UnpicklingError, ... depending on the damage
        raise CheckpointError(
            f"{argument}: {path} cannot be read, it is not a checkpoint of this project (corrupt or "
            f"truncated?): {short_reason(error)}"
        ) from error
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise ForeignCheckpointError(
            f"{argument}: {path} is not a checkpoint of this project (train.py format {FORMAT_VERSION})"
        )
    return state


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state_dict without the frozen VGG19."""
    return {name: t for name, t in model.state_dict().items() if not name.startswith(FROZEN_PREFIX)}


def load_trainable_state(
    model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint"
) -> None:
    """Copy a checkpoint's trained tensors into ``model``; a :class:`CheckpointError` naming
    ``source`` when they are another model's (other options)."""
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shapes that differ
        message = f"{source}: a model of other options than this one ({short_reason(error)})"
        raise CheckpointError(message) from error
    missing = [name for name in result.missing_keys if not name.startswith(FROZEN_PREFIX)]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"{source}: a model of other options than this one; missing {missing[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )


def options_to_dict(options: CoCosNetOptions | Pix2PixHDOptions) -> dict[str, Any]:
    state = dataclasses.asdict(options)
    state["vgg_weights"] = None if options.vgg_weights is None else os.fspath(options.vgg_weights)
    return state


def model_kind(state: dict[str, Any]) -> str:
    """Which model a checkpoint holds: ``cocosnet`` or ``pix2pixhd`` (its ``train.model``; the
    checkpoints written before pix2pixHD hold CoCosNet)."""
    return state["config"]["train"].get("model", "cocosnet")


def options_from_dict(state: dict[str, Any], kind: str = "cocosnet") -> CoCosNetOptions | Pix2PixHDOptions:
    state = dict(state)
    weights = state.pop("loss_weights")
    if kind == "pix2pixhd":
        return Pix2PixHDOptions(**state, loss_weights=Pix2PixHDLossWeights(**weights))
    return CoCosNetOptions(**state, loss_weights=LossWeights(**weights))


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> CoCosNet | Pix2PixHD:
    """The trained model of a checkpoint (:class:`CoCosNet` or :class:`Pix2PixHD`), in evaluation
    mode (CoCosNet's VGG19, needed only by the training losses, keeps random weights; pix2pixHD
    is built without one)."""
    state = load(path)
    kind = model_kind(state)
    options = dataclasses.replace(options_from_dict(state["options"], kind), vgg_weights=None)
    if kind == "pix2pixhd":
        no_vgg = dataclasses.replace(options.loss_weights, vgg=0.0)
        options = dataclasses.replace(options, loss_weights=no_vgg)
        model: CoCosNet | Pix2PixHD = Pix2PixHD(options)
        if state["stage"]:  # empty in a checkpoint of step 0: no stage entered yet
            model.set_stage(state["stage"])
    else:
        model = CoCosNet(options)
    load_trainable_state(model, state["model"], str(path))
    return model.to(device).eval()


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's random states: torch (CPU and, on a GPU, that device), numpy, python."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
