"""Load the public CoCosNet v2 checkpoints (github.com/microsoft/CoCosNet-v2) into these networks.

The public DeepFashionHD model ships three state dicts: ``latest_net_Corr.pth`` (domain
alignment and the PatchMatch GRU), ``latest_net_G.pth`` (SPADE generator) and
``latest_net_D.pth`` (multiscale discriminator). Our networks have the same tensors under other
names: module prefixes differ, and the public code uses the old spectral-norm hook
(``weight_orig``, ``weight_u``, ``weight_v``) where ours uses the parametrization
(``parametrizations.weight.original``, ``.0._u``, ``.0._v``). The public discriminator also
holds a segmentation decoder (``dec``) that its forward never runs: those tensors are skipped.

The public GRU counts offsets as (row, column); ours as (x, y) = (column, row). Its tensors
are mapped with the two halves of the offset channels swapped, so each weight keeps reading or
writing the same axis. Its offsets are in key-map pixels and unbounded, ours are fractions of
the key map's size bounded by a tanh, so the mapped GRU does not reproduce the public moves
(the public GRU's weights never received a gradient there: they are its initialisation).

Convert once and keep one file (``python -m models.public_checkpoints --corr latest_net_Corr.pth
--G latest_net_G.pth [--D latest_net_D.pth] --out cocosnet_v2_deepfashionhd.pt``), or load the
raw files directly with ``CoCosNet.from_public``.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

import cli

PROG = "python -m models.public_checkpoints"
CONVERTED_FORMAT = "cocosnet_ops/public-cocosnet-v2"
PUBLIC_FILES = {
    "correspondence": "latest_net_Corr.pth",
    "generator": "latest_net_G.pth",
    "discriminator": "latest_net_D.pth",
}
# Options whose values the public tensors' shapes determine.
INFERRED_OPTIONS = ("label_nc", "nef", "match_nc", "k", "ngf", "ndf", "num_D", "n_layers_D")

StateSource = str | os.PathLike | Mapping[str, Tensor]


class CheckpointMismatchError(ValueError):
    """The public tensors do not fit the model: lists every unmapped, missing and mis-shaped name."""


@dataclass
class ConvertedCheckpoint:
    """Our ``CoCosNet`` state dict (``correspondence.``, ``generator.``, ``discriminator.`` entries),
    the options the public shapes imply, and the public tensors left out with the reason."""

    state_dict: dict[str, Tensor]
    options: dict[str, int]
    skipped: dict[str, str] = field(default_factory=dict)

    def save(self, path: str | os.PathLike) -> None:
        torch.save(
            {
                "format": CONVERTED_FORMAT,
                "options": self.options,
                "state_dict": self.state_dict,
                "skipped": self.skipped,
            },
            path,
        )


def _load_file(path: str | os.PathLike, argument: str) -> object:
    """What ``torch.load`` finds in ``path``; a file it cannot read is a ``ValueError`` naming it."""
    where = f"{argument} {os.fspath(path)!r}"
    if not os.path.isfile(path):
        raise ValueError(f"{where}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # RuntimeError, EOFError, UnpicklingError... depending on the damage
        raise ValueError(
            f"{where}: cannot be read as tensors, so not a checkpoint in the public CoCosNet v2 format "
            f"(corrupt or truncated?): {cli.short_reason(err)}"
        ) from err


def read_state_dict(source: StateSource, argument: str = "checkpoint") -> dict[str, Tensor]:
    """A state dict from a file or a mapping, without a DataParallel ``module.`` prefix.

    A file that torch cannot read (corrupted, truncated, not a checkpoint) is a ``ValueError``
    naming the file; so is one that holds no tensors by name.
    """
    if isinstance(source, Mapping):
        state, where = source, f"{argument} (a mapping)"
    elif isinstance(source, (str, os.PathLike)):
        state, where = _load_file(source, argument), f"{argument} {os.fspath(source)!r}"
    else:
        raise TypeError(f"{argument}: expected a path or a mapping of tensors, got {type(source).__name__}")
    if (
        not isinstance(state, Mapping)
        or not state
        or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items())
    ):
        raise ValueError(f"{where}: expected a state dict (tensors by name), got {type(state).__name__}")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def _spectral(name: str) -> str:
    """The old spectral-norm hook's names to the parametrization's."""
    name = re.sub(r"\.weight_orig$", ".parametrizations.weight.original", name)
    name = re.sub(r"\.weight_u$", ".parametrizations.weight.0._u", name)
    return re.sub(r"\.weight_v$", ".parametrizations.weight.0._v", name)


def _unet(name: str) -> str:
    name = re.sub(r"^G_middle_(\d)\.", r"up_\1.", name)
    name = re.sub(r"^(layer\d\.1)\.relu\.", r"\1.act.", name)
    return re.sub(r"^(layer\d\.1)\.model\.", r"\1.body.", name)


# (public pattern, ours): the first whose pattern matches renames the tensor.
_CORRESPONDENCE_RULES: list[tuple[str, Callable[[re.Match], str]]] = [
    (r"^adaptive_model_seg\.(.+)$", lambda m: "alignment.label_unet." + _unet(m[1])),
    (r"^adaptive_model_img\.(.+)$", lambda m: "alignment.image_unet." + _unet(m[1])),
    (r"^theta_(\d)\.(weight|bias)$", lambda m: f"alignment.query_proj.{m[1]}.{m[2]}"),
    (r"^phi_(\d)\.(weight|bias)$", lambda m: f"alignment.key_proj.{m[1]}.{m[2]}"),
    (r"^patch_match\.initial_layer\.(.+)$", lambda m: "update.initial." + m[1]),
    (r"^patch_match\.refine_net\.(encoder|gru)\.(.+)$", lambda m: f"update.{m[1]}.{m[2]}"),
    (r"^patch_match\.refine_net\.flow_head\.(.+)$", lambda m: "update.head." + m[1]),
]
_GENERATOR_RULES: list[tuple[str, Callable[[re.Match], str]]] = [
    (r"^G_middle_(\d)\.(.+)$", lambda m: f"middle_{m[1]}.{m[2]}"),
    (r"^(fc|head_0|up_\d|conv_img)\.(.+)$", lambda m: f"{m[1]}.{m[2]}"),
]
_DISCRIMINATOR_SKIP = r"^discriminator_\d+\.dec\."


def _discriminator_name(name: str, last_layer: int) -> str | None:
    m = re.match(r"^discriminator_(\d+)\.model(\d+)\.(.+)$", name)
    if m is None:
        return None
    scale, layer, rest = m[1], int(m[2]), m[3]
    if layer == last_layer:  # ours: a bare conv, theirs: a one-module Sequential
        rest = re.sub(r"^0\.", "", rest)
    return f"discriminators.{scale}.layers.{layer}.{rest}"


def _rename(state: Mapping[str, Tensor], rules, prefix: str) -> tuple[dict[str, Tensor], list[str]]:
    out, unmapped = {}, []
    for name, tensor in state.items():
        for pattern, target in rules:
            m = re.match(pattern, name)
            if m:
                out[prefix + _spectral(target(m))] = tensor
                break
        else:
            unmapped.append(name)
    return out, unmapped


def _swap_halves(t: Tensor, dim: int, start: int, length: int) -> Tensor:
    """``t`` with the two halves of ``[start, start + length)`` along ``dim`` exchanged."""
    half = length // 2
    order = list(range(t.shape[dim]))
    order[start : start + length] = order[start + half : start + length] + order[start : start + half]
    return t.index_select(dim, torch.tensor(order))


def _gru_axes(state: dict[str, Tensor]) -> None:
    """Offsets (row, column) there, (x, y) here: swap the halves of every offset channel range."""
    p = "correspondence.update."
    if p + "encoder.convf1.weight" not in state:
        return
    two_k = state[p + "encoder.convf1.weight"].shape[1]
    state[p + "encoder.convf1.weight"] = _swap_halves(state[p + "encoder.convf1.weight"], 1, 0, two_k)
    for name in ("head.conv2.weight", "head.conv2.bias"):
        if p + name in state:
            state[p + name] = _swap_halves(state[p + name], 0, 0, two_k)
    for gate in ("z1", "r1", "q1", "z2", "r2", "q2"):
        name = f"{p}gru.conv{gate}.weight"
        if name in state:  # the encoder's output ends with the offsets it passes through
            width = state[name].shape[1]
            state[name] = _swap_halves(state[name], 1, width - two_k, two_k)


def infer_options(
    corr: Mapping[str, Tensor],
    generator: Mapping[str, Tensor] | None = None,
    discriminator: Mapping[str, Tensor] | None = None,
) -> dict[str, int]:
    """The ``CoCosNetOptions`` fields that the public tensors' shapes fix."""

    def shape(state: Mapping[str, Tensor], name: str, argument: str) -> torch.Size:
        if name not in state:
            raise CheckpointMismatchError(
                f"{argument}: not a public CoCosNet v2 {argument} state dict: it has no {name!r}"
            )
        return state[name].shape

    options: dict[str, int] = {}
    options["nef"], options["label_nc"] = shape(corr, "adaptive_model_seg.layer1.0.weight_orig", "corr")[:2]
    options["match_nc"] = shape(corr, "theta_0.weight", "corr")[0]
    if "patch_match.refine_net.encoder.convc1.weight" in corr:
        options["k"] = corr["patch_match.refine_net.encoder.convc1.weight"].shape[1]
    if generator is not None:
        options["ngf"] = shape(generator, "conv_img.weight", "generator")[1]
    if discriminator is not None:
        options["ndf"] = shape(discriminator, "discriminator_0.model0.0.weight", "discriminator")[0]
        scales = {int(m[1]) for k in discriminator if (m := re.match(r"^discriminator_(\d+)\.", k))}
        layers = {int(m[1]) for k in discriminator if (m := re.match(r"^discriminator_0\.model(\d+)", k))}
        options["num_D"], options["n_layers_D"] = len(scales), max(layers) - 1
    return {k: int(v) for k, v in options.items()}


def convert(
    corr: StateSource, generator: StateSource | None = None, discriminator: StateSource | None = None
) -> ConvertedCheckpoint:
    """The public state dicts (paths or mappings) renamed to ours; no check against a model yet
    (``check`` does that; ``load_public`` does both)."""
    public = {"corr": read_state_dict(corr, "corr")}
    if generator is not None:
        public["generator"] = read_state_dict(generator, "generator")
    if discriminator is not None:
        public["discriminator"] = read_state_dict(discriminator, "discriminator")
    options = infer_options(public["corr"], public.get("generator"), public.get("discriminator"))
    state, unmapped = _rename(public["corr"], _CORRESPONDENCE_RULES, "correspondence.")
    unmapped = [f"corr: {n}" for n in unmapped]
    skipped: dict[str, str] = {}
    if "generator" in public:
        renamed, left = _rename(public["generator"], _GENERATOR_RULES, "generator.")
        state.update(renamed)
        unmapped += [f"generator: {n}" for n in left]
    if "discriminator" in public:
        last = options["n_layers_D"] + 1
        for name, tensor in public["discriminator"].items():
            if re.match(_DISCRIMINATOR_SKIP, name):
                skipped[f"discriminator: {name}"] = "segmentation decoder, unused by the public forward"
            elif (ours := _discriminator_name(name, last)) is not None:
                state["discriminator." + _spectral(ours)] = tensor
            else:
                unmapped.append(f"discriminator: {name}")
    if unmapped:
        raise CheckpointMismatchError(
            f"{len(unmapped)} public tensors have no counterpart here:\n  " + "\n  ".join(unmapped)
        )
    _gru_axes(state)
    return ConvertedCheckpoint(state, options, skipped)


def _fit(model: nn.Module, converted: ConvertedCheckpoint) -> ConvertedCheckpoint:
    """``converted`` less the GRU's tensors when the model has no GRU (``reference_mode``)."""
    if model.correspondence.update is not None:
        return converted
    gru = [k for k in converted.state_dict if k.startswith("correspondence.update.")]
    reason = "the model has no GRU (reference_mode)"
    return ConvertedCheckpoint(
        {k: v for k, v in converted.state_dict.items() if k not in gru},
        converted.options,
        {**converted.skipped, **{k: reason for k in gru}},
    )


def check(model: nn.Module, converted: ConvertedCheckpoint) -> None:
    """Raise ``CheckpointMismatchError`` listing every converted tensor ``model`` (a ``CoCosNet``)
    lacks, every tensor of the converted networks the checkpoint lacks, and every shape that
    differs."""
    converted = _fit(model, converted)
    networks = {name.split(".", 1)[0] for name in converted.state_dict}
    expected = {k: v for k, v in model.state_dict().items() if k.split(".", 1)[0] in networks}
    problems = [f"unmapped (no such tensor here): {k}" for k in converted.state_dict if k not in expected]
    problems += [f"missing (not in the checkpoint): {k}" for k in expected if k not in converted.state_dict]
    problems += [
        f"shape mismatch: {k}: checkpoint {tuple(v.shape)}, model {tuple(expected[k].shape)}"
        for k, v in converted.state_dict.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if problems:
        raise CheckpointMismatchError(
            f"the public checkpoint does not fit the model ({len(problems)} problems):\n  "
            + "\n  ".join(problems)
        )


def load_public(model: nn.Module, converted: ConvertedCheckpoint) -> dict[str, str]:
    """Check, then copy the converted tensors into ``model`` (a ``CoCosNet``); returns the public
    tensors skipped (by name, with the reason)."""
    check(model, converted)
    converted = _fit(model, converted)
    for network in {name.split(".", 1)[0] for name in converted.state_dict}:
        prefix = network + "."
        getattr(model, network).load_state_dict(
            {k[len(prefix) :]: v for k, v in converted.state_dict.items() if k.startswith(prefix)}
        )
    return converted.skipped


def read_public(
    corr: StateSource, generator: StateSource | None = None, discriminator: StateSource | None = None
) -> ConvertedCheckpoint:
    """The checkpoint ``CoCosNet.from_public`` loads: ``corr`` is either a file written by
    ``python -m models.public_checkpoints`` (then alone) or the public ``latest_net_Corr.pth``,
    converted with ``generator`` its ``latest_net_G.pth`` and optionally ``discriminator`` its
    ``latest_net_D.pth`` (paths or state dicts)."""
    data = corr if isinstance(corr, Mapping) else _load_file(corr, "corr")
    if isinstance(data, Mapping) and data.get("format") == CONVERTED_FORMAT:
        if generator is not None or discriminator is not None:
            raise ValueError(
                "generator/discriminator: a converted checkpoint holds every network; pass it alone"
            )
        return ConvertedCheckpoint(dict(data["state_dict"]), dict(data["options"]), dict(data["skipped"]))
    if generator is None:
        raise ValueError("generator: the public latest_net_G.pth goes with its latest_net_Corr.pth")
    return convert(corr, generator, discriminator)


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--corr", required=True, help="the public latest_net_Corr.pth")
    parser.add_argument("--G", required=True, help="the public latest_net_G.pth")
    parser.add_argument("--D", help="the public latest_net_D.pth (only needed to fine-tune)")
    parser.add_argument("--out", type=Path, required=True, help="where to write the converted checkpoint")
    args = parser.parse_args(argv)
    if args.out.is_dir():
        parser.error(f"--out: {args.out} is a folder; expected the converted checkpoint's file name")
    try:
        # Every public tensor must map to one of ours; the fit to the model is checked where the
        # model is built, by CoCosNet.from_public (this module does not depend on the model's).
        converted = convert(args.corr, args.G, args.D)
    except ValueError as err:  # a file that is not the public format; the message names it
        parser.error(str(err))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    converted.save(args.out)
    print(f"wrote {len(converted.state_dict)} tensors to {args.out} (options {converted.options})")
    for name, reason in converted.skipped.items():
        print(f"skipped {name}: {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, PROG))
