"""Parity with the public CoCosNet v2 code on the same weights and inputs.

Builds the public networks (from a checkout of github.com/microsoft/CoCosNet-v2 that the user
provides: ``--public-dir``; imported at run time, nothing is copied) with its DeepFashionHD
options, at small widths and at the public widths (nef 32, ngf 64, ndf 64), freshly
initialised; gives ours their weights through ``models.public_checkpoints``; runs both on the
same 512x512 inputs (the public level-0 warp only runs at 512x512): two DeepFashion sample
photos from ``../shared/data/deepfashion_samples`` with one pose label map per photo, drawn once
here by ``data.pose`` (as the DeepFashionHD loader draws them) and given to both. Compares, level
by level, the alignment features (the two U-Nets' normalised outputs and the projected matching
features), the level-0 dense warp, and the generator's output given identical warps (the public
level-0 warp, then the exemplar pooled to levels 1-3: the public PatchMatch of levels 1-3 casts
its offsets to float32, so it cannot run in float64; its warps differ from ours by design anyway:
our PatchMatch and GRU are not the public ones).

In float64 (``--dtypes float64``, the default) rounding is ~1e-15, so any mapping error stands out;
in float32 the differences are the processor's rounding of the convolutions (summation order),
reported without a tolerance.

    PYTHONPATH=. python benchmarks/public_parity.py --public-dir ../public-cocosnet-v2 \
        --dtypes float64 float32

writes ``benchmarks/results/public_parity.csv`` and ``.md`` (the README table). With
``--write-fixture tests/fixtures/public_cocosnet_v2_small.pt`` it also writes the small-width
fixture that ``tests/test_public_checkpoints.py`` checks with no public code present: the
public-format state dicts (float16, so exact in float32 and float64), synthetic inputs (uint8 at
low resolution, upsampled exactly by nearest neighbour) and the public code's float64 outputs in
full: every level of the alignment features at 64x96, the level-0 matching features and dense
warp at 512x512, and the generator's 64x128 output.
"""

from __future__ import annotations

import csv
import importlib
import sys
import time
from argparse import Namespace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from bench_recall import processor_name
from PIL import Image
from torch import Tensor, nn
from torch.nn.utils.spectral_norm import SpectralNorm

import cli
import cocosnet_ops
from data.pose import draw_pose_label, read_openpose, resize_label
from models import CoCosNet, CoCosNetOptions, generator_input
from models.alignment import NUM_LEVELS
from models.normalization import l2_normalize
from models.public_checkpoints import convert, load_public

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT.parent / "shared" / "data" / "deepfashion_samples"
SIDE = 512  # the public level-0 warp's only size
LABEL_NC = 20  # DeepFashionHD: 3 pose-drawing channels + 17 limb distance maps
WIDTHS = {"small": {"nef": 8, "ngf": 4, "ndf": 4}, "public": {"nef": 32, "ngf": 64, "ndf": 64}}
DTYPES = {"float64": torch.float64, "float32": torch.float32}
FLOAT64_TOLERANCE = 1e-10  # rounding is ~1e-15; a mapping error is ~1e-1
# The fixture's networks: small enough to keep it at a few MB (the public SPADE layers are 128
# wide whatever the widths), on a 3-channel label.
FIXTURE_WIDTHS = {"nef": 4, "ngf": 2, "ndf": 4, "label_nc": 3}
# Every alignment level in full at a small non-square size (the public U-Nets take any size
# divisible by 8; float64 convolutions at 512x512 would make the test take ~40 s).
FIXTURE_ALIGNMENT_SIZE = (64, 96)
# The public generator takes its conditioning at 512x512 (hard-coded) and sizes its output by
# crop_size and aspect_ratio: 128 wide, 64 high. It reads the conditioning only by nearest
# neighbour at power-of-two steps, so ours, given the same pixels at 64x128, computes the same.
FIXTURE_GENERATOR_SIZE = (64, 128)
COLUMNS = ["dtype", "processor", "widths", "level", "quantity", "max_abs_diff", "max_abs_value", "tolerance",
           "holds"]  # fmt: skip
QUANTITIES = {
    "label_features": "label U-Net features (normalised)",
    "image_features": "image U-Net features (normalised)",
    "query": "matching features, label (query)",
    "key": "matching features, exemplar (key)",
}


def import_public(public_dir: Path) -> Namespace:
    """The public network modules. Both projects name their package ``models``: ours is set
    aside in ``sys.modules`` while the public one imports, then restored; the public modules keep
    working through their own globals. Nothing on the networks' import path needs torchvision,
    so no placeholder module is registered."""
    if not (public_dir / "models" / "networks" / "correspondence.py").is_file():
        raise cli.UsageError(f"--public-dir: {public_dir} is not a checkout of microsoft/CoCosNet-v2")

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


def public_options(
    nef: int, ngf: int, ndf: int, label_nc: int = LABEL_NC, output_size: tuple[int, int] = (SIDE, SIDE)
) -> Namespace:
    """The public test options for DeepFashionHD (its README's command: --PONO --PONO_C --nef 32
    --iteration_count 5 --crop_size 512), at the given widths; ``output_size`` (height, width)
    sets the generator's crop_size (the width) and aspect_ratio."""
    height, width = output_size
    return Namespace(
        label_nc=label_nc, semantic_nc=label_nc, contain_dontcare_label=False, output_nc=3,
        nef=nef, ngf=ngf, ndf=ndf, norm_E="spectralinstance", norm_G="spectralspadesyncbatch3x3",
        norm_D="spectralinstance", PONO=True, PONO_C=True, featEnc_kernel=3, match_kernel=1,
        temperature=0.01, iteration_count=5, batchSize=1, isTrain=False, phase="test",
        weight_warp_cycle=0.0, crop_size=width, aspect_ratio=width / height, num_D=2, n_layers_D=4,
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


def build_public(
    public: Namespace, widths: dict[str, int], seed: int, output_size: tuple[int, int] = (SIDE, SIDE)
) -> dict[str, nn.Module]:
    torch.manual_seed(seed)
    opt = public_options(**widths, output_size=output_size)
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


def pose_label(pose_stem: Path, photo_side: int) -> Tensor:
    """The 20-channel DeepFashionHD pose label (``data.pose``) at SIDE x SIDE, (1, 20, SIDE, SIDE)."""
    keypoints = read_openpose(f"{pose_stem}_candidate.txt", f"{pose_stem}_subset.txt")
    label = resize_label(draw_pose_label(keypoints, (photo_side, photo_side)), (SIDE, SIDE))
    return torch.from_numpy(np.ascontiguousarray(label.transpose(2, 0, 1))).unsqueeze(0)


def sample_inputs() -> tuple[Tensor, Tensor, Tensor]:
    """(label of one sample's pose, the other sample's photo in [-1, 1], that photo's pose label)."""
    if not SAMPLES.is_dir():
        raise cli.UsageError(f"the sample photos are missing: no folder {SAMPLES}")
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


def synthetic_maps(generator: torch.Generator, sizes: dict[str, tuple[int, ...]]) -> dict[str, Tensor]:
    """Seeded uint8 maps of the given (channels, height, width), stored in the fixture."""
    return {name: torch.randint(0, 256, (1, *size), generator=generator, dtype=torch.uint8)
            for name, size in sizes.items()}  # fmt: skip


def fixture_inputs(stored: dict[str, Tensor], size: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """The fixture's uint8 maps upsampled exactly (nearest) to ``size``, in float64: labels in
    [0, 1], the exemplar in [-1, 1]."""

    def up(t: Tensor) -> Tensor:
        return F.interpolate(t.double(), size=size, mode="nearest")

    return up(stored["label"]) / 255, up(stored["exemplar"]) / 127.5 - 1, up(stored["exemplar_label"]) / 255


def public_features(
    public: Namespace, corr: nn.Module, label: Tensor, exemplar: Tensor, exemplar_label: Tensor
) -> dict[str, list[Tensor]]:
    """The public correspondence's features, step by step as its forward computes them."""
    util = public.correspondence.util
    match = public.correspondence.match_kernel_and_pono_c
    opt = corr.opt
    seg = [util.feature_normalize(f) for f in corr.adaptive_model_seg(label, label)]
    ref_input = torch.cat((exemplar, exemplar_label), dim=1)
    img = [util.feature_normalize(f) for f in corr.adaptive_model_img(ref_input, ref_input)]
    theta = [match(getattr(corr, f"theta_{i}")(seg[i]), opt.match_kernel, opt.PONO_C) for i in range(4)]
    phi = [match(getattr(corr, f"phi_{i}")(img[i]), opt.match_kernel, opt.PONO_C) for i in range(4)]
    return {"label_features": seg, "image_features": img, "query": theta, "key": phi}


def public_dense_warp(corr: nn.Module, query: Tensor, key: Tensor, exemplar: Tensor) -> Tensor:
    """The public level-0 warp (its softmax over every pair of the 64x64 maps)."""
    return corr.multi_scale_patch_match(query, key, exemplar, 0)[1]


def our_features(model: CoCosNet, label: Tensor, exemplar: Tensor, exemplar_label: Tensor) -> dict:
    """Our alignment's features as its forward computes them (the image U-Net's outputs caught by
    a hook, not recomputed)."""
    alignment = model.correspondence.alignment
    caught = []
    hook = alignment.image_unet.register_forward_hook(lambda module, args, output: caught.append(output))
    try:
        features = alignment(label, exemplar, exemplar_label)
    finally:
        hook.remove()
    return {"label_features": features.label_features, "image_features": [l2_normalize(f) for f in caught[0]],
            "query": features.query, "key": features.key}  # fmt: skip


def our_dense_warp(model: CoCosNet, query: Tensor, key: Tensor, exemplar: Tensor) -> Tensor:
    """Level 0 of our correspondence: the exact softmax over every pair."""
    value = F.avg_pool2d(exemplar, 2 ** (NUM_LEVELS - 1))
    return cocosnet_ops.dense_warp(query, key, value, model.correspondence.temperature)


def generator_warps(warp0: Tensor, exemplar: Tensor) -> list[Tensor]:
    """The warps both generators get: the public level-0 warp, then the exemplar pooled to levels
    1-3 (the public PatchMatch of levels 1-3 runs in float32 only)."""
    return [warp0, F.avg_pool2d(exemplar, 4), F.avg_pool2d(exemplar, 2), exemplar]


def max_diff(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def parity_rows(
    name: str,
    dtype: torch.dtype,
    public: Namespace,
    nets: dict[str, nn.Module],
    model: CoCosNet,
    inputs: tuple[Tensor, Tensor, Tensor],
) -> list[dict]:
    label, exemplar, exemplar_label = (t.to(dtype) for t in inputs)
    dtype_name = str(dtype).removeprefix("torch.")
    # float32 differences are the processor's rounding, not a parity test: no tolerance.
    tolerance = FLOAT64_TOLERANCE if dtype == torch.float64 else None
    rows, processor = [], processor_name()

    def row(level: int | str, quantity: str, ours: Tensor, theirs: Tensor) -> None:
        diff, scale = max_diff(ours, theirs), float(theirs.abs().max())
        holds = "-" if tolerance is None else ("yes" if diff <= tolerance else "NO")
        rows.append(dict(dtype=dtype_name, processor=processor, widths=name, level=level, quantity=quantity,
                         max_abs_diff=diff, max_abs_value=scale, tolerance=tolerance or "-",
                         holds=holds))  # fmt: skip
        print(f"{dtype_name} {name:>6} level {level}: {quantity:<34} max |diff| {diff:.3e} "
              f"(max |value| {scale:.3g})")  # fmt: skip

    with torch.no_grad():
        theirs = public_features(public, nets["corr"], label, exemplar, exemplar_label)
        ours = our_features(model, label, exemplar, exemplar_label)
        for level in range(NUM_LEVELS):
            for quantity, title in QUANTITIES.items():
                row(level, title, ours[quantity][level], theirs[quantity][level])
        their_warp = public_dense_warp(nets["corr"], theirs["query"][0], theirs["key"][0], exemplar)
        row(0, "dense warp", our_dense_warp(model, ours["query"][0], ours["key"][0], exemplar), their_warp)
        warps = generator_warps(their_warp, exemplar)
        row("-", "generator output, same warps", model.generator(generator_input(label, warps)),
            nets["G"](label, warp_out=warps))  # fmt: skip
    return rows


def write_fixture(path: Path, public: Namespace) -> None:
    """Small widths: public-format state dicts in float16 (the public networks then run with those
    rounded weights, in float64), synthetic inputs and the public float64 outputs in full."""
    nets = build_public(public, FIXTURE_WIDTHS, seed=1, output_size=FIXTURE_GENERATOR_SIZE)
    states = {key: {k: v.half() for k, v in net.state_dict().items()} for key, net in nets.items()}
    for key, net in nets.items():
        net.load_state_dict({k: v.float() for k, v in states[key].items()})
        net.double()
    label_nc = FIXTURE_WIDTHS["label_nc"]
    maps = torch.Generator().manual_seed(0)
    at_512 = synthetic_maps(maps, {"label": (label_nc, 64, 64), "exemplar": (3, 128, 128),
                                   "exemplar_label": (label_nc, 64, 64)})  # fmt: skip
    half = tuple(side // 2 for side in FIXTURE_ALIGNMENT_SIZE)
    small = synthetic_maps(maps, {"label": (label_nc, *half), "exemplar": (3, *half),
                                  "exemplar_label": (label_nc, *half)})  # fmt: skip
    with torch.no_grad():
        features = public_features(public, nets["corr"], *fixture_inputs(small, FIXTURE_ALIGNMENT_SIZE))
        label, exemplar, exemplar_label = fixture_inputs(at_512, (SIDE, SIDE))
        at_512_features = public_features(public, nets["corr"], label, exemplar, exemplar_label)
        query, key = at_512_features["query"][0], at_512_features["key"][0]
        warp = public_dense_warp(nets["corr"], query, key, exemplar)
        image = nets["G"](label, warp_out=generator_warps(warp, exemplar))
    torch.save({"widths": FIXTURE_WIDTHS, "corr": states["corr"], "G": states["G"], "D": states["D"],
                "alignment": {"inputs": small, "size": FIXTURE_ALIGNMENT_SIZE, "outputs": features},
                "at_512": {"inputs": at_512, "query": query, "key": key, "warp": warp, "image": image}},
               path)  # fmt: skip
    print(f"wrote {path} ({path.stat().st_size / 2**20:.2f} MiB)")


def markdown(rows: list[dict], command: str, notes: list[str]) -> str:
    lines = [*notes, "", f"`{command}` ({processor_name()}, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads; float32 rows: the processor's rounding, no tolerance):", "",
             "| dtype | widths | level | quantity | max abs diff | max abs value | tolerance |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        tol = "-" if r["tolerance"] == "-" else f"{r['tolerance']:.0e} ({r['holds']})"
        lines.append(f"| {r['dtype']} | {r['widths']} | {r['level']} | {r['quantity']} | "
                     f"{r['max_abs_diff']:.2e} | {r['max_abs_value']:.3g} | {tol} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--public-dir", type=Path, required=True, help="a checkout of microsoft/CoCosNet-v2")
    parser.add_argument(
        "--widths",
        nargs="*",
        choices=sorted(WIDTHS),
        default=["small", "public"],
        help="none: only write the fixture",
    )
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=["float64"])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "public_parity.csv")
    parser.add_argument("--write-fixture", type=Path, help="also write the small-width test fixture here")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    public = import_public(args.public_dir.resolve())
    if args.write_fixture:
        start = time.perf_counter()
        write_fixture(args.write_fixture, public)
        print(f"fixture: {time.perf_counter() - start:.0f} s")
    if not args.widths:
        return 0
    inputs = sample_inputs()
    rows, notes = [], []
    for name in args.widths:
        nets = build_public(public, WIDTHS[name], seed=0)
        model, skipped, mapped = ours_from(nets)
        notes.append(
            f"{name} widths ({WIDTHS[name]}): {mapped} public tensors mapped, {len(skipped)} "
            "skipped (the discriminators' unused segmentation decoder), none unmapped or missing."
        )
        print(notes[-1])
        for dtype_name in args.dtypes:
            start = time.perf_counter()
            # float32 -> float64 -> float32 is exact: both dtypes run the same weights.
            for net in (*nets.values(), model):
                net.to(DTYPES[dtype_name])
            rows += parity_rows(name, DTYPES[dtype_name], public, nets, model, inputs)
            print(f"{name} {dtype_name}: {time.perf_counter() - start:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    command = "PYTHONPATH=. python benchmarks/public_parity.py --public-dir ../public-cocosnet-v2 --dtypes "
    command += " ".join(args.dtypes)
    args.out.with_suffix(".md").write_text(markdown(rows, command, notes))
    print(markdown(rows, command, notes))
    return 0 if all(r["holds"] != "NO" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(cli.run(main))
