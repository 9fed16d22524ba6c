"""Translate with a trained CoCosNet v2 (a dataset split, or one label with one exemplar) or pix2pixHD
(a dataset split, several outputs per label map) into PNGs.

    python test.py --checkpoint runs/demo/checkpoints/step_00000300.pt --out results/demo --limit 8
    python test.py --checkpoint CKPT --out results/one --label pose/a_candidate.txt \\
        --exemplar img/b.jpg --exemplar_label pose/b_candidate.txt
    python test.py --checkpoint CKPT --out results/ade --label a.png --exemplar b.jpg --exemplar_label b.png
    python test.py --checkpoint latest_net_Corr.pth --public_G latest_net_G.pth --out results/public \\
        --label pose/a_candidate.txt --exemplar img/b.jpg --exemplar_label pose/b_candidate.txt

``--checkpoint`` is a train.py checkpoint, a file converted by ``python -m
models.public_checkpoints``, or the public ``latest_net_Corr.pth`` with ``--public_G``.
Dataset mode reads the split (default ``test``, the held-out one) of the checkpoint's dataset,
or of ``--config``'s (required with public weights). A label is an OpenPose ``*_candidate.txt``
(its ``*_subset.txt`` beside it) or a label PNG of class ids. For every sample ``NAME`` it
writes ``NAME.png`` (the translation), ``NAME_warp_<level>.png`` (the exemplar warped at 1/8,
1/4, 1/2, 1/1: levels 0 to 3),
``NAME_flow.png`` (the finest level's best matches as offsets, colour-coded: hue the direction,
saturation the length) and ``NAME_grid.png`` (label | exemplar | warps | output, and the target
when the dataset has one). Files of those names already in ``--out`` are replaced (said once);
other files there are kept.

A pix2pixHD checkpoint translates a dataset split into ``--outputs`` images per label map,
``NAME_<j>.png``, in which every instance takes one of its class's feature centres (the file
``cluster_features.py`` writes, ``--centres``): a random one, or the one ``--centre CLASS=INDEX``
chooses for the class; ``NAME_grid.png`` is label | instance edges | outputs | target:

    python test.py --checkpoint runs/p2p/checkpoints/step_00000500.pt --centres runs/p2p/centres.npz \
        --out results/p2p --outputs 3 --centre 1=0
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Subset

import cli
import data
from cocosnet_ops.nnf import flow_to_color, nnf_to_coords
from data import pose as openpose
from data.common import BadSampleError, photo_to_tensor, read_label_map, read_photo
from data.deepfashion import pad_to_square
from models import CoCosNet, Pix2PixHD, Translation, instance_edges
from models.correspondence import query_positions_in_key
from models.feature_clusters import features_from_centres, load_centres
from models.video import VideoTranslator
from training import checkpoint, visuals
from training.config import ConfigError, load_config

CANDIDATE_SUFFIX = "_candidate.txt"
SUBSET_SUFFIX = "_subset.txt"
LABEL_IMAGE_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")
SIDE_MULTIPLE = 8  # the model's sides are multiples of 8 (its coarsest level is 1/8)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = cli.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="a train.py checkpoint (step_<N>.pt)")
    parser.add_argument("--public_G", type=Path, help="the public latest_net_G.pth, when --checkpoint is "
                        "the public latest_net_Corr.pth")
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNGs")
    parser.add_argument("--config", type=Path, help="dataset mode: YAML whose data section to read "
                        "(default: the checkpoint's)")
    parser.add_argument("--split", default="test", choices=data.SPLITS, help="dataset mode: the split")
    parser.add_argument("--limit", type=cli.int_at_least(1),
                        help="dataset mode: translate only the first N samples")
    parser.add_argument("--batch_size", type=cli.int_at_least(1), default=4)
    parser.add_argument("--label", type=Path, help="one label: OpenPose *_candidate.txt or a label PNG")
    parser.add_argument("--video", type=Path, help="a folder of label frames (OpenPose *_candidate.txt or "
                        "label PNGs, in name order) to translate with --exemplar into a video")
    parser.add_argument("--per_frame", action="store_true", help="video mode: search every frame anew "
                        "(the baseline) instead of carrying the correspondence from frame to frame")
    parser.add_argument("--fps", type=cli.positive_number, default=10.0, help="video mode: frames per second")
    parser.add_argument("--exemplar", type=Path, help="the exemplar photo of --label")
    parser.add_argument("--exemplar_label", type=Path, help="the label of --exemplar (same kind as --label)")
    parser.add_argument("--size", type=cli.int_at_least(SIDE_MULTIPLE), help="one-label mode: side of the "
                        f"square images, a multiple of {SIDE_MULTIPLE} (default: the training size)")
    parser.add_argument("--pose_frame", type=cli.positive_number, help="one-label mode: side of the square "
                        "frame the pose coordinates are in (default: the exemplar photo's larger side)")
    parser.add_argument("--device", type=cli.torch_device, default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--centres", type=Path, help="pix2pixhd: the feature centres of cluster_features.py")
    parser.add_argument("--outputs", type=cli.int_at_least(1), default=3,
                        help="pix2pixhd: outputs per label map")
    parser.add_argument("--centre", type=class_choice, action="append", default=[], metavar="CLASS=INDEX",
                        help="pix2pixhd: every instance of CLASS takes centre INDEX (repeatable)")
    parser.add_argument("--seed", type=cli.int_at_least(0), default=0,
                        help="pix2pixhd: seed of the random centres")
    args = parser.parse_args(argv)
    if args.size is not None and args.size % SIDE_MULTIPLE:
        parser.error(f"argument --size: expected a multiple of {SIDE_MULTIPLE}, got {args.size}")
    if args.label is not None and args.video is not None:
        parser.error("--label and --video: give one label or a folder of them, not both")
    labels = args.label if args.video is None else args.video
    exemplars = (args.exemplar, args.exemplar_label)
    if labels is None and exemplars != (None, None):
        parser.error("--exemplar and --exemplar_label go with --label or --video")
    if labels is not None and None in exemplars:
        one = "--label" if args.video is None else "--video"
        parser.error(f"{one} needs --exemplar (a photo) and --exemplar_label (its pose file or label image)")
    if args.per_frame and args.video is None:
        parser.error("--per_frame goes with --video")
    if args.video is not None and not args.video.is_dir():
        parser.error(f"--video: no folder at {args.video}")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out: {args.out} is a file; expected a folder for the PNGs")
    return args


def class_choice(text: str) -> tuple[int, int]:
    """``CLASS=INDEX`` as two ints."""
    cls, sep, index = text.partition("=")
    try:
        if not sep:
            raise ValueError
        return int(cls), int(index)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected CLASS=INDEX (two ints), got {text!r}") from None


# ----------------------------------------------------------------------------- inputs


def pose_files(candidate: Path) -> tuple[Path, Path]:
    """The candidate file and the subset file beside it, both checked to exist."""
    if not candidate.name.endswith(CANDIDATE_SUFFIX):
        raise cli.UsageError(f"--label: a pose file must be named *{CANDIDATE_SUFFIX}, got {candidate}")
    subset = candidate.with_name(candidate.name[: -len(CANDIDATE_SUFFIX)] + SUBSET_SUFFIX)
    subset = cli.require_file(subset, "pose subset file (beside the candidates)")
    return cli.require_file(candidate, "pose file"), subset


def label_kind(path: Path) -> str:
    if path.name.endswith(CANDIDATE_SUFFIX):
        return "pose"
    if path.suffix.lower() in LABEL_IMAGE_SUFFIXES:
        return "segmentation"
    raise cli.UsageError(
        f"label: expected an OpenPose *{CANDIDATE_SUFFIX} or a label image "
        f"({', '.join(LABEL_IMAGE_SUFFIXES)}), got {path}"
    )


def pose_label(candidate: Path, side: int, frame: float) -> Tensor:
    """The 20-channel label (20, side, side) of a pose whose coordinates are in a ``frame``-pixel square."""
    files = pose_files(candidate)
    try:
        keypoints = openpose.read_openpose(*files)
    except ValueError as error:  # not OpenPose's txt layout; the message names the file
        raise cli.UsageError(f"pose file: {error}") from error
    label = openpose.draw_pose_label(keypoints * (side / frame), (side, side))
    return torch.from_numpy(np.ascontiguousarray(label.transpose(2, 0, 1)))


def segmentation_label(path: Path, side: int, label_nc: int) -> Tensor:
    """One-hot (label_nc, side, side) of a label PNG of class ids (nearest-neighbour resize)."""
    try:
        ids = torch.from_numpy(read_label_map(cli.require_file(path, "label image")))
    except BadSampleError as error:  # not an image of class ids; the message names the file
        raise cli.UsageError(f"label image: {error}") from error
    ids = F.interpolate(ids[None, None].float(), size=(side, side), mode="nearest")[0, 0].long()
    if int(ids.max()) >= label_nc or int(ids.min()) < 0:
        raise cli.UsageError(
            f"label image {path}: class ids in [{int(ids.min())}, {int(ids.max())}], but the model has "
            f"label_nc={label_nc}"
        )
    return F.one_hot(ids, label_nc).permute(2, 0, 1).float()


def single_pair(args: argparse.Namespace, label_nc: int, side: int) -> dict[str, Any]:
    """The batch of one (label, exemplar, exemplar label) given on the command line."""
    kind = label_kind(args.label)
    if label_kind(args.exemplar_label) != kind:
        raise cli.UsageError(f"--exemplar_label: expected the same kind of label as --label ({kind})")
    try:
        photo = read_photo(cli.require_file(args.exemplar, "--exemplar"))
    except BadSampleError as error:  # the message names the file
        raise cli.UsageError(f"--exemplar: {error}") from error
    if kind == "pose":
        if label_nc != openpose.LABEL_NC:
            raise cli.UsageError(
                f"--label: a pose gives {openpose.LABEL_NC} channels, the model takes {label_nc}"
            )
        frame = args.pose_frame or float(max(photo.size))
        label = pose_label(args.label, side, frame)
        exemplar_label = pose_label(args.exemplar_label, side, frame)
        photo = pad_to_square(photo)
    else:
        label = segmentation_label(args.label, side, label_nc)
        exemplar_label = segmentation_label(args.exemplar_label, side, label_nc)
    exemplar = photo_to_tensor(photo.resize((side, side), Image.BICUBIC))
    name = args.label.name.removesuffix(CANDIDATE_SUFFIX) if kind == "pose" else args.label.stem
    return {
        "label": label[None],
        "exemplar": exemplar[None],
        "exemplar_label": exemplar_label[None],
        "name": [name],
        "kind": kind,
    }


def dataset_batches(
    config: Mapping[str, Any], split: str, limit: int | None, batch_size: int
) -> Iterator[dict[str, Any]]:
    section = split if config["data"].get(split) else "train"
    try:
        dataset = data.build_dataset(config["data"]["name"], split, **(config["data"].get(section) or {}))
    except ValueError as error:  # the options' types are checked; here their values, folders and files
        raise ConfigError(f"data.{section}: {error}") from error
    if limit is not None:
        dataset = Subset(dataset, range(min(limit, len(dataset))))
    yield from DataLoader(dataset, batch_size=batch_size, shuffle=False)


# ----------------------------------------------------------------------------- outputs


def best_match_flow(translation: Translation, level: int = -1) -> Tensor:
    """Offsets (B, H, W, 2) in key pixels of each query pixel's best match at ``level``, from its
    zero-offset position: the GRU-moved coordinates where the GRU ran, else the NNF."""
    nnf = translation.nnfs[level]
    key_size = tuple(translation.features.key[level].shape[-2:])
    coords = translation.coords[level]
    coords = nnf_to_coords(nnf, key_size) if coords is None else coords.detach()
    x, y = query_positions_in_key(tuple(nnf.shape[-2:]), key_size, nnf.device)
    return torch.stack([coords[:, 0, ..., 0] - x[0], coords[:, 0, ..., 1] - y[0]], dim=-1)


def save_image(image: Tensor, path: Path) -> None:
    """A (3, H, W) image in [-1, 1] as an 8-bit PNG."""
    visuals.save_png(visuals.image_to_unit(image.detach().cpu()), path)


def save_translations(
    batch: Mapping[str, Any], translation: Translation, out: Path, label_kind: str
) -> list[Path]:
    """Write the PNGs of every sample of ``batch``; returns the grid paths."""
    out.mkdir(parents=True, exist_ok=True)
    flows = best_match_flow(translation)
    scale = float(flows.norm(dim=-1).amax()) or 1.0
    target = batch.get("image")
    grids = []
    for i, name in enumerate(batch["name"]):
        save_image(translation.image[i], out / f"{name}.png")
        for level, warp in enumerate(translation.warps):
            save_image(warp[i], out / f"{name}_warp_{level}.png")
        Image.fromarray(flow_to_color(flows[i], scale)).save(out / f"{name}_flow.png")
        row = slice(i, i + 1)
        grid = visuals.training_grid(
            batch["label"][row], batch["exemplar"][row], [w[row] for w in translation.warps],
            translation.image[row], target[row] if target is not None else translation.image[row],
            label_kind, samples=1,
        )
        if target is None:  # no ground truth: drop the last column, which repeated the output
            grid = grid[..., : -translation.image.shape[-1]]
        visuals.save_png(grid, out / f"{name}_grid.png")
        grids.append(out / f"{name}_grid.png")
    return grids


@torch.no_grad()
def translate(model: CoCosNet, batch: Mapping[str, Any], device: torch.device) -> Translation:
    tensors = [batch[k].to(device) for k in ("label", "exemplar", "exemplar_label")]
    return model(*tensors)


# The side the public DeepFashionHD model was trained at.
PUBLIC_SIDE = 512


def training_size(config: Mapping[str, Any]) -> int:
    size = (config["data"].get("train") or {}).get("size", 256)
    return int(size if isinstance(size, int) else max(size))


def load_translator(args: argparse.Namespace, device: torch.device) -> tuple[CoCosNet, dict[str, Any] | None]:
    """The model and its configuration (None for public weights without ``--config``): a train.py
    checkpoint, a file converted by ``models.public_checkpoints``, or the public
    ``latest_net_Corr.pth`` as ``--checkpoint`` with ``--public_G``."""
    path = cli.require_file(args.checkpoint, "--checkpoint")
    config = None if args.config is None else load_config(cli.require_file(args.config, "--config"))
    if args.public_G is not None:
        return public_model(path, cli.require_file(args.public_G, "--public_G")).to(device), config
    try:
        state = checkpoint.load(path, "--checkpoint")
    except checkpoint.ForeignCheckpointError:  # torch reads it, train.py did not write it
        return public_model(path).to(device), config
    return checkpoint.load_model(path, device), state["config"] if config is None else config


def public_model(corr: Path, generator: Path | None = None) -> CoCosNet:
    """``CoCosNet.from_public`` of the files given, a :class:`cli.UsageError` naming them when they
    are not public CoCosNet v2 weights that fit the model."""
    try:
        return CoCosNet.from_public(corr, generator)
    except ValueError as error:  # the file's format or its tensors; the message names the file
        if generator is None:
            raise cli.UsageError(
                f"--checkpoint: {corr} is neither a train.py checkpoint nor converted public weights "
                f"({error}); the raw public weights go as --checkpoint latest_net_Corr.pth "
                "--public_G latest_net_G.pth"
            ) from error
        message = f"--checkpoint, --public_G: not the public CoCosNet v2 weights ({error})"
        raise cli.UsageError(message) from error


class Outputs:
    """The folder ``--out``: a sample's files replace those an earlier run wrote for a sample of
    the same name (said once); other files there are kept."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.said = False

    def write(self, batch: Mapping[str, Any], translation: Translation, label_kind: str) -> list[Path]:
        self.say_replacing(batch["name"])
        return save_translations(batch, translation, self.folder, label_kind)

    def write_label_map_outputs(self, batch: Mapping[str, Any], images: Sequence[Tensor]) -> list[Path]:
        """pix2pixHD's outputs of one batch: ``NAME_<j>.png`` per output, and the grids."""
        self.say_replacing(batch["name"])
        self.folder.mkdir(parents=True, exist_ok=True)
        instance = batch.get("instance")
        edges = instance_edges(instance) if instance is not None else None
        grids = []
        for i, name in enumerate(batch["name"]):
            for j, image in enumerate(images):
                save_image(image[i], self.folder / f"{name}_{j}.png")
            row = slice(i, i + 1)
            grid = visuals.label_map_grid(
                batch["label"][row], None if edges is None else edges[row], [im[row] for im in images],
                batch["image"][row], samples=1,
            )
            visuals.save_png(grid, self.folder / f"{name}_grid.png")
            grids.append(self.folder / f"{name}_grid.png")
        return grids

    def say_replacing(self, names: Sequence[str]) -> None:
        if not self.said and any((self.folder / f"{name}_grid.png").exists() for name in names):
            print(f"replacing earlier translations in {self.folder} (other files there are kept)")
            self.said = True


@torch.no_grad()
def label_map_outputs(
    model: Pix2PixHD,
    batch: Mapping[str, Any],
    centres: Mapping[int, np.ndarray] | None,
    choice: Mapping[int, int],
    outputs: int,
    generator: torch.Generator,
    device: torch.device,
) -> list[Tensor]:
    """pix2pixHD's ``outputs`` images of a batch: each with every instance's features drawn anew
    from ``centres`` (``choice``'s centre for its classes), or one image without an encoder."""
    label, instance = batch["label"].to(device), batch.get("instance")
    instance = instance.to(device) if instance is not None else None
    if centres is None:
        return [model(label, instance)]
    images = []
    for _ in range(outputs):
        try:
            features = features_from_centres(label, instance, centres, choice, generator)
        except ValueError as error:  # a choice of a class or centre that the file does not hold
            raise cli.UsageError(f"--centre: {error}") from error
        images.append(model(label, instance, features))
    return images


def translate_label_maps(args: argparse.Namespace, model: Pix2PixHD, config: Mapping[str, Any]) -> list[Path]:
    """test.py for a pix2pixHD checkpoint: the dataset split, ``--outputs`` images per label map."""
    if args.label is not None:
        raise cli.UsageError("--label: a pix2pixhd checkpoint translates a dataset split (leave out --label)")
    centres = None
    if model.encoder is not None:
        if args.centres is None:
            raise cli.UsageError(
                "--centres: this pix2pixhd model takes instance features; pass the file of centres "
                "that cluster_features.py wrote"
            )
        try:
            centres = load_centres(cli.require_file(args.centres, "--centres"))
        except ValueError as error:
            raise cli.UsageError(f"--centres: {error}") from error
    generator = torch.Generator().manual_seed(args.seed)
    outputs = Outputs(args.out)
    grids = []
    for batch in dataset_batches(config, args.split, args.limit, args.batch_size):
        images = label_map_outputs(
            model, batch, centres, dict(args.centre), args.outputs, generator, args.device
        )
        grids += outputs.write_label_map_outputs(batch, images)
    return grids


def main(argv: Sequence[str] | None = None) -> list[Path]:
    """Translate as the command line ``argv`` says; returns the paths of the grids written."""
    args = parse_args(argv)
    model, config = load_translator(args, args.device)
    if isinstance(model, Pix2PixHD):
        return translate_label_maps(args, model, config)
    outputs = Outputs(args.out)
    grids = []
    if args.video is not None:
        side = args.size or (training_size(config) if config is not None else PUBLIC_SIDE)
        grids += translate_video(args, model, outputs, side)
    elif args.label is not None:
        side = args.size or (training_size(config) if config is not None else PUBLIC_SIDE)
        batch = single_pair(args, model.options.label_nc, side)
        grids += outputs.write(batch, translate(model, batch, args.device), batch["kind"])
    else:
        if config is None:
            raise cli.UsageError("--config: translating a dataset with public weights needs its YAML")
        kind = visuals_kind(config)
        for batch in dataset_batches(config, args.split, args.limit, args.batch_size):
            grids += outputs.write(batch, translate(model, batch, args.device), kind)
    return grids


def video_labels(folder: Path) -> list[Path]:
    """The label frames in ``folder``, in name order: OpenPose candidate files, else label images."""
    poses = sorted(folder.glob(f"*{CANDIDATE_SUFFIX}"))
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in LABEL_IMAGE_SUFFIXES)
    if not poses and not images:
        raise cli.UsageError(
            f"--video: no label frames (*{CANDIDATE_SUFFIX} or {', '.join(LABEL_IMAGE_SUFFIXES)}) in {folder}"
        )
    return poses or images


def translate_video(args: argparse.Namespace, model: CoCosNet, outputs: Outputs, side: int) -> list[Path]:
    """Every frame of ``--video`` with ``--exemplar``: the per-frame PNGs, then ``video.mp4`` and
    ``video.gif`` of the translations and ``video_strip.png`` (labels, finest warps and outputs of
    up to ``STRIP_FRAMES`` frames side by side)."""
    grids, images, strip = [], [], []
    translator = None
    labels = video_labels(args.video)
    every = max(1, len(labels) // STRIP_FRAMES)
    for index, path in enumerate(labels):
        batch = single_pair(argparse.Namespace(**{**vars(args), "label": path}), model.options.label_nc, side)
        if translator is None:
            exemplar, exemplar_label = (batch[k].to(args.device) for k in ("exemplar", "exemplar_label"))
            translator = VideoTranslator(model, exemplar, exemplar_label, per_frame=args.per_frame)
        translation = translator(batch["label"].to(args.device))
        grids += outputs.write(batch, translation, batch["kind"])
        images.append(visuals.image_to_unit(translation.image[0].detach().cpu()))
        if index % every == 0 and len(strip) < STRIP_FRAMES:
            label = visuals.label_to_rgb(batch["label"], batch["kind"])[0]
            warp = visuals.image_to_unit(translation.warps[-1][0].detach().cpu())
            strip.append(torch.cat([label, warp, images[-1]], dim=1))
    write_video(images, args.out, args.fps)
    visuals.save_png(torch.cat(strip, dim=2), args.out / "video_strip.png")
    return grids


STRIP_FRAMES = 6


def write_video(frames: list[Tensor], out: Path, fps: float) -> None:
    """``video.mp4`` (OpenCV, mp4v) and ``video.gif`` (Pillow) of (3, H, W) frames in [0, 1]."""
    pixels = [(f.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for f in frames]
    mp4, gif = out / "video.mp4", out / "video.gif"
    for path in (mp4, gif):
        if path.exists():
            print(f"replacing {path}")
    height, width = pixels[0].shape[:2]
    writer = cv2.VideoWriter(str(mp4), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    for frame in pixels:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    images = [Image.fromarray(frame) for frame in pixels]
    images[0].save(gif, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)


def visuals_kind(config: Mapping[str, Any]) -> str:
    kind = config["train"].get("visual_label", "auto")
    if kind != "auto":
        return kind
    return "segmentation" if config["data"]["name"] == "folder" else "pose"


if __name__ == "__main__":
    written = cli.run(main)
    print(f"wrote {len(written)} translations to {os.path.dirname(written[0]) if written else 'nothing'}")
