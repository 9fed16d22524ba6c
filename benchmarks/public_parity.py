"""Parity with the public CoCosNet v2 code on the same weights and inputs.

Builds the public networks (from a checkout of github.com/microsoft/CoCosNet-v2 that the user
provides: ``--public-dir``; imported at run time, nothing is copied) with its DeepFashionHD
options, at small widths and at the public widths (nef 32, ngf 64, ndf 64), freshly
initialised; gives ours their weights through ``models.public_checkpoints``; runs both on the
same 512x512 inputs (the public code only runs at 512x512): two DeepFashion sample photos from
``../shared/data/deepfashion_samples`` with one pose label map per photo, drawn once here by
``data.pose`` (as the DeepFashionHD loader draws them) and given to both. Compares, level by
level, the alignment features (the two U-Nets' normalised outputs and the projected matching
features), the level-0 dense warp, and the generator's output given identical warps (the public
warps at all four levels, fed to both generators). The warps of levels 1-3 differ by design
(our PatchMatch and GRU are not the public ones) and are not compared.

    PYTHONPATH=. python benchmarks/public_parity.py --public-dir ../public-cocosnet-v2

writes ``benchmarks/results/public_parity.csv`` and ``.md`` (the README table). With
``--write-fixture tests/fixtures/public_cocosnet_v2_small.pt`` it also writes the small-width
fixture that ``tests/test_public_checkpoints.py`` checks with no public code present: the
public-format state dicts (float16), synthetic inputs (uint8 at low resolution, upsampled
exactly by nearest neighbour) and the public code's outputs, subsampled.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib
import random
import sys
import time
from argparse import Namespace
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from bench_recall import processor_name
from PIL import Image
from torch import Tensor, nn
from torch.nn.utils.spectral_norm import SpectralNorm

import cocosnet_ops
from data.pose import draw_pose_label, read_openpose, resize_label
from models import CoCosNet, CoCosNetOptions, generator_input
from models.normalization import l2_normalize
from models.public_checkpoints import convert, load_public

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT.parent / "shared" / "data" / "deepfashion_samples"
SIDE = 512  # the public code's only size
LABEL_NC = 20  # DeepFashionHD: 3 pose-drawing channels + 17 limb distance maps
WIDTHS = {"small": {"nef": 8, "ngf": 4, "ndf": 4}, "public": {"nef": 32, "ngf": 64, "ndf": 64}}
# The fixture's networks: small enough to keep it at a few MB (the public SPADE layers are 128
# wide whatever the widths), on a 3-channel label; its outputs: a 32x32 grid of each level.
FIXTURE_WIDTHS = {"nef": 4, "ngf": 2, "ndf": 4, "label_nc": 3}
FIXTURE_STRIDES = (2, 4, 8, 16)
COLUMNS = ["widths", "level", "quantity", "max_abs_diff", "max_abs_value", "tolerance", "holds"]


def import_public(public_dir: Path) -> Namespace:
    """The public network modules. Both projects name their package ``models``: ours is set
    aside in ``sys.modules`` while the public one imports, then restored; the public modules keep
    working through their own globals. Nothing on the networks' import path needs torchvision,
    so no placeholder module is registered."""
    if not (public_dir / "models" / "networks" / "correspondence.py").is_file():
        raise ValueError(f"--public-dir: {public_dir} is not a checkout of microsoft/CoCosNet-v2")

    def owned(name: str) -> bool:
        return name.split(".")[0] in ("models", "util")

    ours = {k: sys.modules.pop(k) for k in list(sys.modules) if owned(k)}
    sys.path.insert(0, str(public_dir))
    try:
        modules = Namespace(
            correspondence=importlib.import_module("models.networks.correspondence"),
            generator=importlib.import_module("models.networks.generator"),
            discriminator=importlib.import_module("models.networks.discriminator"),
        )
    finally:
        sys.path.remove(str(public_dir))
        for k in [k for k in sys.modules if owned(k)]:
            del sys.modules[k]
        sys.modules.update(ours)
    return modules


def public_options(nef: int, ngf: int, ndf: int, label_nc: int = LABEL_NC) -> Namespace:
    """The public test options for DeepFashionHD (its README's command: --PONO --PONO_C --nef 32
    --iteration_count 5 --crop_size 512), at the given widths."""
    return Namespace(
        label_nc=label_nc, semantic_nc=label_nc, contain_dontcare_label=False, output_nc=3,
        nef=nef, ngf=ngf, ndf=ndf, norm_E="spectralinstance", norm_G="spectralspadesyncbatch3x3",
        norm_D="spectralinstance", PONO=True, PONO_C=True, featEnc_kernel=3, match_kernel=1,
        temperature=0.01, iteration_count=5, batchSize=1, isTrain=False, phase="test",
        weight_warp_cycle=0.0, crop_size=SIDE, aspect_ratio=1.0, num_D=2, n_layers_D=4,
        netD_subarch="n_layer", no_ganFeat_loss=False,
    )  # fmt: skip


def converge_spectral_norms(net: nn.Module, iters: int = 30) -> None:
    """Power iterations of the public spectral-norm hooks (as training does), so that u and v
    estimate the top singular vectors as in a trained checkpoint; fresh ones are random."""
    with torch.no_grad():
        for module in net.modules():
            for hook in module._forward_pre_hooks.values():
                if isinstance(hook, SpectralNorm):
                    for _ in range(iters):
                        hook.compute_weight(module, do_power_iteration=True)


def build_public(public: Namespace, widths: dict[str, int], seed: int) -> dict[str, nn.Module]:
    torch.manual_seed(seed)
    opt = public_options(**widths)
    nets = {
        "corr": public.correspondence.NoVGGHPMCorrespondence(opt),
        "G": public.generator.SPADEGenerator(opt),
        "D": public.discriminator.MultiscaleDiscriminator(opt),
    }
    for net in nets.values():
        converge_spectral_norms(net)
        net.eval()
    return nets


def ours_from(nets: dict[str, nn.Module]) -> tuple[CoCosNet, dict[str, str], int]:
    """Our model at the public widths with the public weights, through the converter."""
    converted = convert(nets["corr"].state_dict(), nets["G"].state_dict(), nets["D"].state_dict())
    model = CoCosNet(CoCosNetOptions(**converted.options))
    skipped = load_public(model, converted)
    return model.eval(), skipped, len(converted.state_dict)


@contextlib.contextmanager
def public_cpu_devices() -> Iterator[None]:
    """The public PatchMatch moves tensors with ``.to(t.get_device())``, which is -1 (an invalid
    index) on the CPU; while it runs, ``get_device`` returns the device itself."""
    original = torch.Tensor.get_device
    torch.Tensor.get_device = lambda self: self.device
    try:
        yield
    finally:
        torch.Tensor.get_device = original


def pose_label(pose_stem: Path, photo_side: int) -> Tensor:
    """The 20-channel DeepFashionHD pose label (``data.pose``) at SIDE x SIDE, (1, 20, SIDE, SIDE)."""
    keypoints = read_openpose(f"{pose_stem}_candidate.txt", f"{pose_stem}_subset.txt")
    label = resize_label(draw_pose_label(keypoints, (photo_side, photo_side)), (SIDE, SIDE))
    return torch.from_numpy(np.ascontiguousarray(label.transpose(2, 0, 1))).unsqueeze(0)


def sample_inputs() -> tuple[Tensor, Tensor, Tensor]:
    """(label of one sample's pose, the other sample's photo in [-1, 1], that photo's pose label)."""
    if not SAMPLES.is_dir():
        raise SystemExit(f"the sample photos are missing: {SAMPLES}")
    photos = sorted((SAMPLES / "img").rglob("*.jpg"))[:2]

    def stem(photo: Path) -> Path:
        return SAMPLES / "pose" / photo.relative_to(SAMPLES / "img").with_suffix("")

    exemplar_photo = Image.open(photos[1]).convert("RGB")
    exemplar = torch.from_numpy(np.array(exemplar_photo.resize((SIDE, SIDE), Image.BILINEAR)))
    exemplar = exemplar.permute(2, 0, 1).float().unsqueeze(0) / 127.5 - 1
    label_side = Image.open(photos[0]).width
    return (
        pose_label(stem(photos[0]), label_side),
        exemplar,
        pose_label(stem(photos[1]), exemplar_photo.width),
    )


def synthetic_inputs(label_nc: int) -> tuple[dict[str, Tensor], tuple[Tensor, Tensor, Tensor]]:
    """Seeded low-resolution uint8 inputs (stored in the fixture) and their exact 512x512 upsampling."""
    g = torch.Generator().manual_seed(0)
    stored = {
        "label": torch.randint(0, 256, (1, label_nc, 64, 64), generator=g, dtype=torch.uint8),
        "exemplar": torch.randint(0, 256, (1, 3, 128, 128), generator=g, dtype=torch.uint8),
        "exemplar_label": torch.randint(0, 256, (1, label_nc, 64, 64), generator=g, dtype=torch.uint8),
    }
    return stored, fixture_inputs(stored)


def fixture_inputs(stored: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """The fixture's stored uint8 maps as the 512x512 inputs: labels in [0, 1], the exemplar in [-1, 1]."""

    def up(t: Tensor) -> Tensor:
        return F.interpolate(t.float(), size=(SIDE, SIDE), mode="nearest")

    return up(stored["label"]) / 255, up(stored["exemplar"]) / 127.5 - 1, up(stored["exemplar_label"]) / 255


def public_forward(
    public: Namespace,
    corr: nn.Module,
    label: Tensor,
    exemplar: Tensor,
    exemplar_label: Tensor,
    all_levels: bool,
) -> dict[str, list[Tensor]]:
    """The public correspondence's features and warps, step by step as its forward computes them."""
    util = public.correspondence.util
    match = public.correspondence.match_kernel_and_pono_c
    opt = corr.opt
    seg = [util.feature_normalize(f) for f in corr.adaptive_model_seg(label, label)]
    ref_input = torch.cat((exemplar, exemplar_label), dim=1)
    img = [util.feature_normalize(f) for f in corr.adaptive_model_img(ref_input, ref_input)]
    theta = [match(getattr(corr, f"theta_{i}")(seg[i]), opt.match_kernel, opt.PONO_C) for i in range(4)]
    phi = [match(getattr(corr, f"phi_{i}")(img[i]), opt.match_kernel, opt.PONO_C) for i in range(4)]
    mat, warp0, _ = corr.multi_scale_patch_match(theta[0], phi[0], exemplar, 0)
    out = {"label_features": seg, "image_features": img, "query": theta, "key": phi, "warps": [warp0]}
    if all_levels:  # the rest of its forward's loop
        random.seed(0)  # the public PatchMatch draws its propagation order from `random`
        with public_cpu_devices():
            for level in range(1, 4):
                mat, warp = corr.multi_scale_patch_match(theta[level], phi[level], exemplar, level, pre=mat)
                out["warps"].append(warp)
    return out


def our_features(model: CoCosNet, label: Tensor, exemplar: Tensor, exemplar_label: Tensor) -> dict:
    """Our alignment's features as its forward computes them (the image U-Net's outputs caught by
    a hook, not recomputed), and the level-0 dense warp as the correspondence computes it."""
    alignment = model.correspondence.alignment
    caught = []
    hook = alignment.image_unet.register_forward_hook(lambda module, args, output: caught.append(output))
    try:
        features = alignment(label, exemplar, exemplar_label)
    finally:
        hook.remove()
    value = F.avg_pool2d(exemplar, 8)
    warp = cocosnet_ops.dense_warp(features.query[0], features.key[0], value, model.options.temperature)
    return {"label_features": features.label_features, "image_features": [l2_normalize(f) for f in caught[0]],
            "query": features.query, "key": features.key, "warp0": warp}  # fmt: skip


def max_diff(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def parity_rows(
    name: str,
    public: Namespace,
    nets: dict[str, nn.Module],
    model: CoCosNet,
    inputs: tuple[Tensor, Tensor, Tensor],
) -> list[dict]:
    label, exemplar, exemplar_label = inputs
    rows = []

    def row(level: int | str, quantity: str, diff: float, scale: float, tolerance: float) -> None:
        holds = "yes" if diff <= tolerance else "NO"
        rows.append(dict(widths=name, level=level, quantity=quantity, max_abs_diff=diff,
                         max_abs_value=scale, tolerance=tolerance, holds=holds))  # fmt: skip
        print(f"{name:>6} level {level}: {quantity:<34} max |diff| {diff:.3e}  (max |value| {scale:.3g})")

    with torch.no_grad():
        theirs = public_forward(public, nets["corr"], label, exemplar, exemplar_label, all_levels=True)
        ours = our_features(model, label, exemplar, exemplar_label)
        for level in range(4):
            for quantity, title in [("label_features", "label U-Net features (normalised)"),
                                    ("image_features", "image U-Net features (normalised)"),
                                    ("query", "matching features, label (query)"),
                                    ("key", "matching features, exemplar (key)")]:  # fmt: skip
                a, b = ours[quantity][level], theirs[quantity][level]
                row(level, title, max_diff(a, b), float(b.abs().max()), 1e-5)
        row(
            0,
            "dense warp",
            max_diff(ours["warp0"], theirs["warps"][0]),
            float(theirs["warps"][0].abs().max()),
            1e-5,
        )
        warps = theirs["warps"]
        ours_image = model.generator(generator_input(label, warps))
        their_image = nets["G"](label, warp_out=warps)
        row("-", "generator output, public warps", max_diff(ours_image, their_image),
            float(their_image.abs().max()), 1e-4)  # fmt: skip
    return rows


def write_fixture(path: Path, public: Namespace) -> None:
    """Small widths: public-format state dicts in float16 (the public networks then run with those
    rounded weights), synthetic inputs and the public outputs, subsampled."""
    nets = build_public(public, FIXTURE_WIDTHS, seed=1)
    states = {key: {k: v.half() for k, v in net.state_dict().items()} for key, net in nets.items()}
    for key, net in nets.items():
        net.load_state_dict({k: v.float() for k, v in states[key].items()})
    stored, (label, exemplar, exemplar_label) = synthetic_inputs(FIXTURE_WIDTHS["label_nc"])
    with torch.no_grad():
        theirs = public_forward(public, nets["corr"], label, exemplar, exemplar_label, all_levels=False)
        warps = fixture_generator_warps(theirs["warps"][0], exemplar)
        image = nets["G"](label, warp_out=warps)
    outputs = {q: [f[..., ::s, ::s].contiguous() for f, s in zip(theirs[q], FIXTURE_STRIDES, strict=True)]
               for q in ("label_features", "image_features", "query", "key")}  # fmt: skip
    torch.save({"widths": FIXTURE_WIDTHS, "corr": states["corr"], "G": states["G"], "D": states["D"],
                "inputs": stored, "outputs": outputs, "strides": FIXTURE_STRIDES, "warp0": theirs["warps"][0],
                "image": image[..., ::4, ::4].contiguous(), "image_stride": 4}, path)  # fmt: skip
    print(f"wrote {path} ({path.stat().st_size / 2**20:.2f} MiB)")


def fixture_generator_warps(warp0: Tensor, exemplar: Tensor) -> list[Tensor]:
    """The generator's warps in the fixture: the public level-0 warp, then the exemplar pooled to
    levels 1-3 (cheap to recompute exactly, unlike the stored public warps would be large)."""
    return [warp0, F.avg_pool2d(exemplar, 4), F.avg_pool2d(exemplar, 2), exemplar]


def markdown(rows: list[dict], command: str, notes: list[str]) -> str:
    lines = [*notes, "",f"`{command}` (float32, {processor_name()}, torch {torch.__version__}):", "",
             "| widths | level | quantity | max abs diff | max abs value | tolerance |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        tol = f"{r['tolerance']:.0e} ({r['holds']})"
        lines.append(f"| {r['widths']} | {r['level']} | {r['quantity']} | {r['max_abs_diff']:.2e} | "
                     f"{r['max_abs_value']:.3g} | {tol} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--public-dir", type=Path, required=True, help="a checkout of microsoft/CoCosNet-v2")
    parser.add_argument(
        "--widths",
        nargs="*",
        choices=sorted(WIDTHS),
        default=["small", "public"],
        help="none: only write the fixture",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "public_parity.csv")
    parser.add_argument("--write-fixture", type=Path, help="also write the small-width test fixture here")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    public = import_public(args.public_dir.resolve())
    if args.write_fixture:
        write_fixture(args.write_fixture, public)
    if not args.widths:
        return 0
    inputs = sample_inputs()
    rows, notes = [], []
    for name in args.widths:
        start = time.perf_counter()
        nets = build_public(public, WIDTHS[name], seed=0)
        model, skipped, mapped = ours_from(nets)
        notes.append(
            f"{name} widths ({WIDTHS[name]}): {mapped} public tensors mapped, {len(skipped)} "
            "skipped (the discriminators' unused segmentation decoder), none unmapped or missing."
        )
        print(notes[-1])
        rows += parity_rows(name, public, nets, model, inputs)
        print(f"{name}: {time.perf_counter() - start:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    command = "PYTHONPATH=. python benchmarks/public_parity.py --public-dir ../public-cocosnet-v2"
    args.out.with_suffix(".md").write_text(markdown(rows, command, notes))
    print(markdown(rows, command, notes))
    return 0 if all(r["holds"] != "NO" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
