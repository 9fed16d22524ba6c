"""Training configuration: defaults, YAML files and ``--set section.key=value`` overrides.

A configuration has three sections:

- ``data``: ``name`` and the options of ``data.build_dataset(name, "train", **train)`` (and of the
  held-out split, ``test``, which ``test.py`` reads).
- ``model``: fields of :class:`models.CoCosNetOptions` (or, with ``train.model: pix2pixhd``, of
  :class:`models.Pix2PixHDOptions`); ``loss_weights`` holds those of :class:`models.LossWeights`
  (:class:`models.Pix2PixHDLossWeights`). ``label_nc`` defaults to the dataset's.
- ``train``: everything else (see :data:`TRAIN_DEFAULTS`).

Every value is checked before use against its declared type (the dataclass fields' annotations,
:data:`TRAIN_TYPES`, the dataset constructor's annotations) and range (:data:`RULES`); a value
that cannot work is a :class:`ConfigError` naming it (``model.k: expected an int >= 1, got 0``).
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import os
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch._dynamo
import yaml

import data as datasets
from cli import UsageError, short_reason
from models import CoCosNetOptions, LossWeights, Pix2PixHDLossWeights, Pix2PixHDOptions
from models.cocosnet import GENERATORS
from models.correspondence import GRU_MODES
from models.losses import GAN_MODES
from models.normalization import PARAM_FREE_NORMS

# The public CoCosNet v2 recipe: TTUR (G at lr / 2, D at 2 lr, Adam betas (0, 0.9)), Adam eps 1e-3
# for the generator side, lr 1e-4 on DeepFashionHD, constant for ``constant_epochs`` epochs and
# then decaying linearly towards 0 over ``decay_epochs`` more.
TRAIN_DEFAULTS: dict[str, Any] = {
    "model": "cocosnet",  # cocosnet, or pix2pixhd (label map to photo without an exemplar)
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
    # pix2pixHD's coarse-to-fine recipe (models.pix2pixhd): epochs of the global generator alone at
    # its half resolution, then epochs of the local enhancers with the global generator (and the
    # encoder) frozen, before everything trains; constant_epochs and decay_epochs count from the
    # end of the global stage. load_global: a checkpoint of a pix2pixhd run whose global
    # generator, encoder and discriminator start this run (a global run at half resolution).
    "global_epochs": 0,
    "niter_fix_global": 0,
    "load_global": None,
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
# The declared type of each train setting.
TRAIN_TYPES: dict[str, Any] = {
    "model": str,
    "batch_size": int,
    "num_workers": int,
    "lr": float,
    "ttur": bool,
    "betas": tuple[float, float],
    "generator_eps": float,
    "constant_epochs": int,
    "decay_epochs": int,
    "max_steps": int | None,
    "dense_warmup_steps": int,
    "global_epochs": int,
    "niter_fix_global": int,
    "load_global": os.PathLike | None,
    "amp": str,
    "compile": bool,
    "compile_backend": str,
    "dtype": str,
    "seed": int,
    "vgg_weights": str | None,
    "checkpoint_every": int,
    "keep_checkpoints": int,
    "log_every": int,
    "image_every": int,
    "grid_samples": int,
    "visual_label": str,
    "device": str,
}
MODELS = ("cocosnet", "pix2pixhd")
DISCRIMINATOR_NORMS = tuple(f"{s}{n}" for s in ("", "spectral") for n in ("instance", "batch", "none"))
# What each model's configuration section holds: its options, and those of its loss weights.
MODEL_OPTIONS = {
    "cocosnet": (CoCosNetOptions, LossWeights),
    "pix2pixhd": (Pix2PixHDOptions, Pix2PixHDLossWeights),
}
AMP_MODES = ("auto", "none", "bf16", "fp16")
DTYPES = ("float32", "float64")
VISUAL_LABELS = ("auto", "pose", "segmentation")
# The train settings of the pix2pixHD recipe, which CoCosNet does not take.
PIX2PIXHD_SETTINGS = ("global_epochs", "niter_fix_global", "load_global")
DEVICES = ("auto", "cpu", "cuda")
SECTIONS = ("data", "model", "train")
# model fields that come from elsewhere: vgg_weights from train.vgg_weights.
MODEL_EXCLUDED = ("vgg_weights",)


def compile_backends() -> list[str]:
    """The names torch.compile accepts as a backend (debugging ones such as aot_eager included)."""
    return torch._dynamo.list_backends(exclude_tags=())


@dataclasses.dataclass(frozen=True)
class Rule:
    """What a setting accepts beyond its type: numbers from ``minimum`` on (above it when
    ``strict``), or one of ``choices`` (a sequence, or a function giving one)."""

    minimum: float | None = None
    strict: bool = False
    choices: Sequence[str] | Callable[[], Sequence[str]] = ()


AT_LEAST_0, AT_LEAST_1, ABOVE_0 = Rule(0), Rule(1), Rule(0, strict=True)
# The ranges of the settings, by full name (every number of model.loss_weights: AT_LEAST_0).
RULES: dict[str, Rule] = {
    **{f"train.{key}": AT_LEAST_1 for key in ("batch_size", "checkpoint_every", "log_every", "image_every",
                                                "grid_samples")},
    **{f"train.{key}": AT_LEAST_0 for key in ("num_workers", "keep_checkpoints", "constant_epochs",
                                                "decay_epochs", "dense_warmup_steps", "max_steps", "seed",
                                                "global_epochs", "niter_fix_global")},
    "train.model": Rule(choices=MODELS),
    "train.lr": ABOVE_0,
    "train.generator_eps": ABOVE_0,
    "train.amp": Rule(choices=AMP_MODES),
    "train.dtype": Rule(choices=DTYPES),
    "train.compile_backend": Rule(choices=compile_backends),
    "train.visual_label": Rule(choices=VISUAL_LABELS),
    "train.device": Rule(choices=DEVICES),
    **{f"model.{key}": AT_LEAST_1 for key in (
        "label_nc", "spade_nc", "nef", "match_nc", "k", "patch_size", "upsample_matches", "upsample_window",
        "upsample_dilation", "gru_hidden_nc", "gru_input_nc", "correspondence_samples", "ngf",
        "pix2pixhd_ngf", "ndf", "num_D", "n_layers_D", "n_downsample_E", "n_downsample_global")},
    **{f"model.{key}": AT_LEAST_0 for key in (
        "patch_match_iters", "search_radius", "gru_iters", "n_local_enhancers", "n_blocks_global",
        "n_blocks_local", "feat_nc")},
    "model.norm_D": Rule(choices=DISCRIMINATOR_NORMS),
    "model.gru_max_delta": ABOVE_0,
    "model.temperature": ABOVE_0,
    "model.norm": Rule(choices=PARAM_FREE_NORMS),
    "model.gru_mode": Rule(choices=GRU_MODES),
    "model.generator": Rule(choices=GENERATORS),
    "model.gan_mode": Rule(choices=GAN_MODES),
}


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-4`` (no dot) as a string; here it is the float everybody means."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


class ConfigError(UsageError):
    """A configuration that cannot train: the message names the key and what was expected."""


def parse_yaml(text: str, source: str = "YAML") -> Any:
    """``text`` parsed as YAML; a :class:`ConfigError` naming ``source`` where it is not YAML."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or short_reason(error)
        raise ConfigError(f"{source}: not valid YAML ({problem}{where})") from error


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
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"--config: cannot read {path} ({short_reason(error)})") from error
        loaded = parse_yaml(text, f"--config {path}") or {}
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
        inner[parts[-1]] = parse_yaml(value, f"--set {item}")
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
    """Raise :class:`ConfigError` naming the first setting that cannot work: an unknown key, a
    value of another type than declared, out of its range, or at odds with another setting."""
    train = config["train"]
    _check_keys("train", train, TRAIN_TYPES)
    for key, annotation in TRAIN_TYPES.items():
        check_setting(f"train.{key}", train[key], annotation)
    if train["constant_epochs"] + train["decay_epochs"] < 1:
        raise ConfigError("train.constant_epochs + train.decay_epochs: expected at least one epoch")
    if not all(0 <= b < 1 for b in train["betas"]):
        raise ConfigError(f"train.betas: expected two numbers in [0, 1), got {train['betas']!r}")
    if train["dtype"] != "float32" and train["amp"] in ("bf16", "fp16"):
        raise ConfigError(
            f"train.amp: {train['amp']} is half precision; with train.dtype {train['dtype']} use none or auto"
        )
    _validate_data(config["data"])
    if train["model"] == "pix2pixhd":
        _validate_pix2pixhd(config)
        return
    recipe = [key for key in PIX2PIXHD_SETTINGS if train[key] != TRAIN_DEFAULTS[key]]
    if recipe:
        raise ConfigError(f"train.{recipe[0]}: a setting of pix2pixHD's recipe; train.model is cocosnet")
    _validate_model(config["model"])


def _check_model_section(model: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """The model section's keys and types against the options of the model ``kind``; gives the
    options with the defaults of those not set."""
    options_class, weights_class = MODEL_OPTIONS[kind]
    hints = typing.get_type_hints(options_class)
    fields = {key: hints[key] for key in hints if key not in MODEL_EXCLUDED}
    fields["loss_weights"] = Mapping | None
    _check_keys("model", model, fields)
    for key, value in model.items():
        check_setting(f"model.{key}", value, fields[key])
    weights = model.get("loss_weights") or {}
    weight_types = typing.get_type_hints(weights_class)
    _check_keys("model.loss_weights", weights, weight_types)
    for key, value in weights.items():
        check_setting(f"model.loss_weights.{key}", value, weight_types[key], AT_LEAST_0)
    defaults = {f.name: f.default for f in dataclasses.fields(options_class) if f.name in fields}
    return defaults | dict(model)


def _validate_pix2pixhd(config: Mapping[str, Any]) -> None:
    """The pix2pixHD model options, and the recipe's settings against them."""
    train = config["train"]
    options = _check_model_section(config["model"], "pix2pixhd")
    if train["dense_warmup_steps"]:
        raise ConfigError("train.dense_warmup_steps: CoCosNet's warm-up; train.model is pix2pixhd")
    if options["n_local_enhancers"] == 0:
        for key in ("global_epochs", "niter_fix_global"):
            if train[key]:
                raise ConfigError(
                    f"train.{key}: a stage of local enhancers, but model.n_local_enhancers is 0"
                )


def _validate_data(data: Mapping[str, Any]) -> None:
    """The dataset's name, and its options against the constructor's parameters (types from their
    annotations; the constructor checks the ranges when it runs)."""
    _check_keys("data", data, {"name": str, **{split: Mapping for split in datasets.SPLITS}})
    name = data.get("name")
    if not isinstance(name, str) or name.lower() not in datasets.DATASETS:
        raise ConfigError(f"data.name: expected one of {datasets.DATASETS}, got {name!r}")
    dataset = datasets.dataset_class(name)
    hints = typing.get_type_hints(dataset.__init__)
    signature = inspect.signature(dataset).parameters
    parameters = {key: hints.get(key, Any) for key in signature if key != "split"}
    for split in datasets.SPLITS:
        options = data.get(split)
        if options is None:
            continue
        if not isinstance(options, Mapping):
            raise ConfigError(f"data.{split}: expected a mapping of dataset options, got {options!r}")
        _check_keys(f"data.{split}", options, parameters)
        for key, value in options.items():
            check_setting(f"data.{split}.{key}", value, parameters[key])
    required = [key for key in parameters if signature[key].default is inspect.Parameter.empty]
    missing = [key for key in required if key not in (data.get("train") or {})]
    if missing:
        raise ConfigError(f"data.train: the {name} dataset needs {', '.join(missing)}")


def _validate_model(model: Mapping[str, Any]) -> None:
    """The model options against the fields of CoCosNetOptions and LossWeights, then the ones that
    depend on each other (with the defaults of those not set)."""
    options = _check_model_section(model, "cocosnet")
    k, iters = options["k"], options["patch_match_iters"]
    if options["patch_size"] % 2 == 0:
        raise ConfigError(f"model.patch_size: expected an odd int, got {options['patch_size']}")
    if options["reference_mode"]:
        return
    if options["upsample_matches"] > k:
        raise ConfigError(
            f"model.upsample_matches: expected at most model.k = {k}, got {options['upsample_matches']}"
        )
    if options["gru_iters"] > 0 and options["gru_input_nc"] <= 2 * k:
        raise ConfigError(
            f"model.gru_input_nc: expected more than 2 * model.k = {2 * k}, got {options['gru_input_nc']}"
        )
    if options["gru_mode"] == "interleaved" and options["gru_iters"] > iters:
        raise ConfigError(
            f"model.gru_iters: the interleaved GRU follows PatchMatch iterations, so expected at most "
            f"model.patch_match_iters = {iters}, got {options['gru_iters']}"
        )


def _check_keys(section: str, values: Mapping[str, Any], known: Mapping[str, Any]) -> None:
    unknown = [key for key in values if key not in known]
    if unknown:
        raise ConfigError(f"{section}: unknown keys {sorted(map(str, unknown))}; known: {sorted(known)}")


def check_setting(name: str, value: Any, annotation: Any, rule: Rule | None = None) -> None:
    """Raise :class:`ConfigError` unless ``value`` is of the type ``annotation`` and within the
    setting's rule (``rule``, else ``RULES[name]``)."""
    if not _accepts(annotation, value):
        raise ConfigError(f"{name}: expected {_describe(annotation)}, got {value!r}")
    rule = rule or RULES.get(name)
    if rule is None or value is None:
        return
    if rule.minimum is not None and (value < rule.minimum or (rule.strict and value == rule.minimum)):
        bound = f"{'>' if rule.strict else '>='} {rule.minimum}"
        raise ConfigError(f"{name}: expected {_describe(annotation, with_none=False)} {bound}, got {value!r}")
    choices = tuple(rule.choices() if callable(rule.choices) else rule.choices)
    if choices and value not in choices:
        raise ConfigError(f"{name}: expected one of {choices}, got {value!r}")


# How the types of the settings read in a message: (one value, several values).
_TYPE_NAMES: dict[Any, tuple[str, str]] = {
    bool: ("true or false", "booleans"),
    int: ("an int", "ints"),
    float: ("a number", "numbers"),
    str: ("a string", "strings"),
    os.PathLike: ("a path", "paths"),
    type(None): ("null", "nulls"),
}


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _accepts(annotation: Any, value: Any) -> bool:
    """Whether ``value`` (as YAML gives it) is of the type ``annotation``; a list stands for a tuple."""
    if _is_union(annotation):
        return any(_accepts(member, value) for member in typing.get_args(annotation))
    if annotation is Any:
        return True
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if annotation is os.PathLike:
        return isinstance(value, (str, os.PathLike))
    if typing.get_origin(annotation) is tuple:
        items = typing.get_args(annotation)
        return isinstance(value, (list, tuple)) and len(value) == len(items) and all(
            map(_accepts, items, value)
        )
    return isinstance(value, annotation)


def _describe(annotation: Any, with_none: bool = True, plural: bool = False) -> str:
    """How the type ``annotation`` reads in a message: "an int", "a list of 2 numbers", ..."""
    if _is_union(annotation):
        members = typing.get_args(annotation)
        # A path in YAML is a string: "a string or a path" would say no more than "a path".
        shown = [m for m in members if not (m is str and os.PathLike in members)]
        shown = [m for m in shown if with_none or m is not type(None)]
        return " or ".join(_describe(m, plural=plural) for m in shown)
    if annotation in _TYPE_NAMES:
        return _TYPE_NAMES[annotation][plural]
    if typing.get_origin(annotation) is tuple:
        items = typing.get_args(annotation)
        if len(set(items)) == 1:
            return f"a list of {len(items)} {_describe(items[0], plural=True)}"
        return f"a list of ({', '.join(_describe(item) for item in items)})"
    if annotation is Mapping:
        return "mappings" if plural else "a mapping"
    return getattr(annotation, "__name__", str(annotation))


def uses_vgg(config: Mapping[str, Any]) -> bool:
    weights = config["train"]["vgg_weights"]
    return weights is not None and str(weights).lower() != "none"


def model_options(config: Mapping[str, Any], label_nc: int) -> CoCosNetOptions | Pix2PixHDOptions:
    """The model options of ``config`` (of its ``train.model``) for a dataset of ``label_nc``
    channels. Without VGG19 weights the VGG loss terms get weight 0 (and the file is not needed)."""
    model = dict(config["model"])
    if model.setdefault("label_nc", label_nc) != label_nc:
        raise ConfigError(
            f"model.label_nc: {model['label_nc']}, but the dataset's labels have {label_nc} channels"
        )
    options_class, weights_class = MODEL_OPTIONS[config["train"]["model"]]
    weights = weights_class(**(model.pop("loss_weights", None) or {}))
    if not uses_vgg(config):
        off = {"vgg", "perceptual", "contextual"} & {f.name for f in dataclasses.fields(weights_class)}
        weights = dataclasses.replace(weights, **dict.fromkeys(off, 0.0))
    vgg_weights = config["train"]["vgg_weights"] if uses_vgg(config) else None
    return options_class(**model, loss_weights=weights, vgg_weights=vgg_weights)


def visual_label_kind(config: Mapping[str, Any]) -> str:
    kind = config["train"]["visual_label"]
    if kind != "auto":
        return kind
    return "segmentation" if config["data"]["name"] in ("folder", "synthetic_scenes") else "pose"
