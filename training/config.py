"""Training configuration: defaults, YAML files and ``--set section.key=value`` overrides.

A configuration has three sections:

- ``data``: ``name`` and the options of ``data.build_dataset(name, "train", **train)``.
- ``model``: fields of :class:`models.CoCosNetOptions`; ``loss_weights`` holds those of
  :class:`models.LossWeights`. ``label_nc`` defaults to the dataset's.
- ``train``: everything else (see :data:`TRAIN_DEFAULTS`).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch._dynamo
import yaml

from models import CoCosNetOptions, LossWeights

# The public CoCosNet v2 recipe: TTUR (G at lr / 2, D at 2 lr, Adam betas (0, 0.9)), Adam eps 1e-3
# for the generator side, lr 1e-4 on DeepFashionHD, constant for ``constant_epochs`` epochs and
# then decaying linearly towards 0 over ``decay_epochs`` more.
TRAIN_DEFAULTS: dict[str, Any] = {
    "batch_size": 4,  # per process; the global batch is batch_size x the number of processes
    "num_workers": 4,
    "lr": 1e-4,
    "ttur": True,
    "betas": [0.0, 0.9],
    "generator_eps": 1e-3,
    "constant_epochs": 100,
    "decay_epochs": 0,
    "max_steps": None,  # stop after this many optimiser steps even if epochs remain
    # Steps at the start during which every level warps by the exact softmax over every pair
    # (dense_warp), before the hierarchical PatchMatch takes over (0: from the first step).
    "dense_warmup_steps": 0,
    "amp": "auto",  # auto (bf16 on a GPU that has it, else fp16; none on CPU), none, bf16, fp16
    "compile": False,  # torch.compile the training step (forward and backward; not the optimisers)
    "compile_backend": "inductor",  # the torch.compile backend: one of torch._dynamo.list_backends
    # float32, or float64 for the parameters, optimiser states and batches (for comparisons of
    # runs that must agree beyond float32 rounding, e.g. several processes against one).
    "dtype": "float32",
    "seed": 0,
    "vgg_weights": "weights/vgg19.pth",  # torchvision-format VGG19 state_dict, or "none"
    "checkpoint_every": 1000,
    "keep_checkpoints": 3,  # the newest N step checkpoints are kept (0 keeps all)
    "log_every": 50,
    "image_every": 500,
    "grid_samples": 4,
    "visual_label": "auto",  # how grids draw labels: pose, segmentation, or auto (from data.name)
    "device": "auto",  # auto (cuda when available), cpu, cuda
}
AMP_MODES = ("auto", "none", "bf16", "fp16")
DTYPES = ("float32", "float64")
VISUAL_LABELS = ("auto", "pose", "segmentation")
SECTIONS = ("data", "model", "train")


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-4`` (no dot) as a string; here it is the float everybody means."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


class ConfigError(ValueError):
    """A configuration that cannot train: the message names the key and what was expected."""


def default_config() -> dict[str, Any]:
    return {"data": {"name": "synthetic", "train": {}}, "model": {}, "train": copy.deepcopy(TRAIN_DEFAULTS)}


def load_config(
    path: str | os.PathLike | None, overrides: Sequence[str] = (), train: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The defaults, updated by the YAML file at ``path`` (if any), then by the ``train`` section
    values ``train`` (the command line's explicit flags), then by ``overrides``
    (``"section.key=value"``, ``"section.key.subkey=value"`` or ``"section={key: value}"``, the
    value parsed as YAML)."""
    config = default_config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"--config: no file at {path}")
        loaded = parse_yaml(path.read_text()) or {}
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"--config: {path} must hold a mapping with sections {SECTIONS}")
        _merge(config, loaded, str(path))
    if train:
        _merge(config, {"train": train}, "command line")
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(f"--set: expected section.key=value or section={{key: value}}, got {item!r}")
        nested: dict[str, Any] = {}
        inner = nested
        for part in parts[:-1]:
            inner = inner.setdefault(part, {})
        inner[parts[-1]] = parse_yaml(value)
        _merge(config, nested, f"--set {item}")
    validate(config)
    return config


def _merge(config: dict[str, Any], update: Mapping[str, Any], source: str) -> None:
    unknown = set(update) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"{source}: unknown sections {sorted(unknown)}; expected {SECTIONS}")
    for section, values in update.items():
        if not isinstance(values, Mapping):
            raise ConfigError(f"{source}: section {section!r} must be a mapping, got {values!r}")
        _deep_update(config[section], values)


def _deep_update(target: dict[str, Any], update: Mapping[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def validate(config: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` naming the first key that cannot work."""
    train = config["train"]
    unknown = set(train) - set(TRAIN_DEFAULTS)
    if unknown:
        raise ConfigError(f"train: unknown keys {sorted(unknown)}; known: {sorted(TRAIN_DEFAULTS)}")
    for key in ("batch_size", "checkpoint_every", "log_every", "image_every", "grid_samples"):
        if not isinstance(train[key], int) or train[key] < 1:
            raise ConfigError(f"train.{key}: expected a positive int, got {train[key]!r}")
    for key in ("num_workers", "keep_checkpoints", "constant_epochs", "decay_epochs", "dense_warmup_steps"):
        if not isinstance(train[key], int) or train[key] < 0:
            raise ConfigError(f"train.{key}: expected an int >= 0, got {train[key]!r}")
    if train["constant_epochs"] + train["decay_epochs"] < 1:
        raise ConfigError("train.constant_epochs + train.decay_epochs: expected at least one epoch")
    if train["max_steps"] is not None and (not isinstance(train["max_steps"], int) or train["max_steps"] < 0):
        raise ConfigError(f"train.max_steps: expected an int >= 0 or null, got {train['max_steps']!r}")
    if not isinstance(train["lr"], (int, float)) or not train["lr"] > 0:
        raise ConfigError(f"train.lr: expected a positive number, got {train['lr']!r}")
    betas = train["betas"]
    if not (isinstance(betas, Sequence) and len(betas) == 2 and all(0 <= float(b) < 1 for b in betas)):
        raise ConfigError(f"train.betas: expected two numbers in [0, 1), got {betas!r}")
    if train["amp"] not in AMP_MODES:
        raise ConfigError(f"train.amp: expected one of {AMP_MODES}, got {train['amp']!r}")
    if train["dtype"] not in DTYPES:
        raise ConfigError(f"train.dtype: expected one of {DTYPES}, got {train['dtype']!r}")
    if train["dtype"] != "float32" and train["amp"] in ("bf16", "fp16"):
        raise ConfigError(
            f"train.amp: {train['amp']} is half precision; with train.dtype {train['dtype']} use none or auto"
        )
    backends = compile_backends()
    if train["compile_backend"] not in backends:
        raise ConfigError(
            f"train.compile_backend: expected one of {backends}, got {train['compile_backend']!r}"
        )
    if train["visual_label"] not in VISUAL_LABELS:
        raise ConfigError(
            f"train.visual_label: expected one of {VISUAL_LABELS}, got {train['visual_label']!r}"
        )
    if train["device"] not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"train.device: expected auto, cpu or cuda, got {train['device']!r}")
    data = config["data"]
    if not isinstance(data.get("name"), str):
        raise ConfigError(f"data.name: expected a dataset name, got {data.get('name')!r}")
    if not isinstance(data.get("train", {}), Mapping):
        raise ConfigError(f"data.train: expected a mapping of dataset options, got {data.get('train')!r}")
    option_names = {f.name for f in dataclasses.fields(CoCosNetOptions)} - {"vgg_weights"}
    unknown = set(config["model"]) - option_names
    if unknown:
        raise ConfigError(f"model: unknown keys {sorted(unknown)}; known: {sorted(option_names)}")
    weight_names = {f.name for f in dataclasses.fields(LossWeights)}
    unknown = set(config["model"].get("loss_weights") or {}) - weight_names
    if unknown:
        raise ConfigError(
            f"model.loss_weights: unknown keys {sorted(unknown)}; known: {sorted(weight_names)}"
        )


def compile_backends() -> list[str]:
    """The names torch.compile accepts as a backend (debugging ones such as aot_eager included)."""
    return torch._dynamo.list_backends(exclude_tags=())


def uses_vgg(config: Mapping[str, Any]) -> bool:
    weights = config["train"]["vgg_weights"]
    return weights is not None and str(weights).lower() != "none"


def model_options(config: Mapping[str, Any], label_nc: int) -> CoCosNetOptions:
    """The model options of ``config`` for a dataset of ``label_nc`` channels. Without VGG19
    weights the three VGG loss terms get weight 0 (and the file is not needed)."""
    model = dict(config["model"])
    if model.setdefault("label_nc", label_nc) != label_nc:
        raise ConfigError(
            f"model.label_nc: {model['label_nc']}, but the dataset's labels have {label_nc} channels"
        )
    weights = LossWeights(**(model.pop("loss_weights", None) or {}))
    if not uses_vgg(config):
        weights = dataclasses.replace(weights, vgg=0.0, perceptual=0.0, contextual=0.0)
    vgg_weights = config["train"]["vgg_weights"] if uses_vgg(config) else None
    return CoCosNetOptions(**model, loss_weights=weights, vgg_weights=vgg_weights)


def visual_label_kind(config: Mapping[str, Any]) -> str:
    kind = config["train"]["visual_label"]
    if kind != "auto":
        return kind
    return "segmentation" if config["data"]["name"] == "folder" else "pose"
