"""Recall of ``cocosnet_ops.match`` against exact kNN, versus iterations, for its ways to search.

Reproduce the README tables (about 5 minutes on 2 idle cores with the compiled cpu backend; the
reference backend is far slower):

    python benchmarks/bench_recall.py --side 256 --min-iters 5 --speed-side 512 --speed-repeats 3 \
        --out benchmarks/results/recall.csv

The whole sweep (iterations 0..5) drops ``--min-iters``. ``--speed-side 512`` also times every
search with ``--iters`` iterations at side 512 on the smooth pair (C = 32), interleaved, into
``recall_speed.csv``. Development size (about a minute, on either backend):

    python benchmarks/bench_recall.py --side 64 --out benchmarks/results/recall_64.csv

Definitions, per query pixel, averaged over the map:

* recall@1: the found best match is as good as the exact best: its score is at least the exact
  top-1 score minus 1e-6 (so a tie with a different pixel counts as found), or it is the same
  index;
* recall@K: |found top-K intersected with exact top-K| / K (K = 16);
* EPE (photo and hard pairs): distance in key pixels from the found best match to the true
  corresponding point, over the query pixels whose true point lies inside the key map and is
  not occluded (mean and median; exact kNN's own EPE, the floor the features allow, is
  reported too).

Exact top-K comes from ``cocosnet_ops.exact_knn``. The searches are ``cocosnet_ops.match`` with
``exact=False`` (so small development sides search too) and ``iters`` iterations per level:

* "random": ``coarse=None, neighbours=None``: ``patch_match`` from random candidates;
* "coarse-to-fine": ``neighbours=None``: exact kNN at the coarse level ``match`` chooses, then
  ``nnf_upsample`` + ``patch_match`` at every finer level;
* "self neighbours": ``neighbours="self"``: then 4 rounds of ``share_matches`` with the query
  pixels the query map's search against itself finds;
* "shared neighbours": ``match``'s defaults: the rounds with the query pixels that list the
  same key pixels.

Data (query and key maps of side S, L2-normalised per pixel; C = 32 but for the hard pairs):

* smooth: Gaussian-filtered white noise (sigma 2 px) on a canvas larger than the map; the
  query is its centre crop, the key the same canvas seen through a smooth random displacement
  field (Gaussian-filtered noise of scale S/8 scaled to at most S/16 px, applied with
  bilinear ``grid_sample``) plus white noise of 0.3 times the feature level per channel;
* photo: scikit-image's ``astronaut`` photo resized to S x S is the query image; the key
  image is the same rotated by 10 degrees, scaled by 1.1 about the centre and shifted by
  (0.04 S, -0.03 S) with ``cv2.warpAffine``, so key = A(query) for a known affine A. Each
  image becomes features by a fixed random (seed 0) 3x3 convolution bank with 32 outputs over
  its RGB at three Gaussian blur scales (sigma 1, 2, 4 px), then tanh, per-channel
  standardisation over the image, and L2 normalisation per pixel (``photo_demo.py``'s
  ``affine_transform`` and ``features``, the one place they are defined);
* hard: five pairs in one batch (scikit-image's astronaut, coffee, chelsea and rocket photos
  and its brick texture, each centre-cropped and resized to S x S). The query is the image; the
  key is the same under a random perspective map (each corner moved by up to 0.12 S, borders
  reflected), occluded by six discs (radius 0.06 S to 0.14 S) of the grass or gravel texture,
  relit by a gain ramp from 0.75 to 1.15 across the image in a random direction plus 0.05,
  with Gaussian noise of std 0.02, clipped to [0, 1] (seed 0). Features: low-dimensional, as
  a hand-made descriptor would be: each RGB channel standardised over the image, then the 3x3
  patch around every pixel, C = 27.
"""

from __future__ import annotations

import argparse
import csv
import math
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from photo_demo import affine_transform as photo_transform
from photo_demo import features as photo_features
from torch import Tensor

import cocosnet_ops
from cocosnet_ops import nnf as nnf_utils

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cli  # noqa: E402

COLUMNS = (
    "dataset",
    "side",
    "k",
    "pairs",
    "search",
    "iters",
    "recall_at_1",
    "recall_at_k",
    "epe_px",
    "epe_median_px",
    "seconds",
)
DATASETS = ("smooth", "photo", "hard")
# match's settings of every search (besides k and iters).
SEARCHES = {
    "random": {"coarse": None, "neighbours": None},
    "coarse-to-fine": {"neighbours": None},
    "self neighbours": {"neighbours": "self"},
    "shared neighbours": {},
}
SPEED_COLUMNS = (
    "method",
    "side",
    "channels",
    "k",
    "iters",
    "threads",
    "repeats",
    "min_s",
    "median_s",
    "processor",
)
CHANNELS = 32
SCORE_TOLERANCE = 1e-6
SMOOTH_FEATURE_SIGMA = 2.0
SMOOTH_NOISE_LEVEL = 0.3
# Hard pairs: photos and a repeated texture shipped with scikit-image, one pair per image,
# occluded by discs of stochastic textures.
HARD_IMAGES = ("astronaut", "coffee", "chelsea", "rocket", "brick")
HARD_OCCLUDER_IMAGES = ("grass", "gravel")
HARD_CORNER_SHIFT = 0.12  # perspective: each corner moves up to this fraction of the side
HARD_OCCLUDERS = 6
HARD_OCCLUDER_RADIUS = (0.06, 0.14)  # fractions of the side
HARD_NOISE_STD = 0.02
HARD_GAIN = (0.75, 1.15)  # brightness ramp across the key image
HARD_BIAS = 0.05


def processor_name() -> str:
    """The 'model name' of /proc/cpuinfo, else what platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ----------------------------------------------------------------------------- data


def gaussian_kernel(sigma: float) -> Tensor:
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_filter_valid(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian filter of (B, C, H, W) without padding: the result is smaller by
    2 * ceil(3 sigma) per axis, so it has no border effects."""
    kernel = gaussian_kernel(sigma)
    channels = x.shape[1]
    x = F.conv2d(x, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    return F.conv2d(x, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)


def smooth_noise(channels: int, height: int, width: int, sigma: float, generator: torch.Generator) -> Tensor:
    """(1, channels, height, width) white noise filtered by a Gaussian, unit std per channel."""
    margin = 2 * max(1, math.ceil(3 * sigma))
    noise = torch.randn(1, channels, height + margin, width + margin, generator=generator)
    smooth = gaussian_filter_valid(noise, sigma)
    return smooth / smooth.std(dim=(2, 3), keepdim=True)


def smooth_pair(side: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Query and key (1, C, S, S): smooth features and a smoothly deformed, noisy copy."""
    generator = torch.Generator().manual_seed(seed)
    max_displacement = side / 16
    margin = math.ceil(max_displacement) + 2
    canvas_side = side + 2 * margin
    canvas = smooth_noise(CHANNELS, canvas_side, canvas_side, SMOOTH_FEATURE_SIGMA, generator)
    query = canvas[:, :, margin : margin + side, margin : margin + side]
    displacement = smooth_noise(2, side, side, side / 8, generator)
    displacement = displacement * (max_displacement / displacement.abs().amax())
    y, x = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    source_x = x + margin + displacement[0, 0]
    source_y = y + margin + displacement[0, 1]
    grid = torch.stack([source_x, source_y], dim=-1) * (2 / (canvas_side - 1)) - 1
    key = F.grid_sample(canvas, grid.unsqueeze(0), mode="bilinear", align_corners=True)
    key = key + SMOOTH_NOISE_LEVEL * torch.randn(key.shape, generator=generator)
    return F.normalize(query, dim=1), F.normalize(key, dim=1)


def photo_pair(side: int) -> tuple[Tensor, Tensor, Tensor]:
    """Query and key features (1, C, S, S) and the true key point (x, y) of every query pixel
    (S, S, 2): the key is an affine warp of the query photo."""
    from skimage import data

    photo = cv2.resize(data.astronaut(), (side, side), interpolation=cv2.INTER_AREA)
    photo = photo.astype(np.float32) / 255.0
    matrix = photo_transform(side)
    warped = cv2.warpAffine(
        photo, matrix, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
    )
    y, x = np.mgrid[0:side, 0:side].astype(np.float64)
    true_xy = np.stack([x, y, np.ones_like(x)], axis=-1) @ matrix.T
    return photo_features(photo), photo_features(warped), torch.from_numpy(true_xy).float()


def skimage_rgb(name: str, side: int) -> np.ndarray:
    """scikit-image's image ``name``: centre square, resized to side x side, RGB float32 in [0, 1]."""
    from skimage import data

    image = getattr(data, name)()
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    height, width = image.shape[:2]
    crop = min(height, width)
    top, left = (height - crop) // 2, (width - crop) // 2
    image = image[top : top + crop, left : left + crop, :3]
    return cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def hard_homography(side: int, rng: np.random.Generator) -> np.ndarray:
    """A 3x3 perspective map from query pixel (x, y, 1) to key pixel: every corner of the map
    moves by up to ``HARD_CORNER_SHIFT * side`` in x and y."""
    corners = np.array([[0, 0], [side - 1, 0], [side - 1, side - 1], [0, side - 1]], dtype=np.float32)
    moved = corners + rng.uniform(-HARD_CORNER_SHIFT, HARD_CORNER_SHIFT, size=(4, 2)) * side
    return cv2.getPerspectiveTransform(corners, moved.astype(np.float32))


def apply_homography(matrix: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Points (..., 2) mapped by the 3x3 perspective ``matrix``."""
    mapped = np.concatenate([xy, np.ones_like(xy[..., :1])], axis=-1) @ matrix.T
    return mapped[..., :2] / mapped[..., 2:]


def hard_key_image(
    image: np.ndarray, occluder: np.ndarray, matrix: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The key image of a hard pair and its occlusion mask (True where an occluder covers it).

    ``image`` seen through the perspective ``matrix`` (reflected past the borders), then
    ``HARD_OCCLUDERS`` discs of another image (``occluder``, at the same place), a brightness
    ramp (gain from ``HARD_GAIN[0]`` to ``HARD_GAIN[1]`` along a random direction, plus
    ``HARD_BIAS``) and Gaussian noise of std ``HARD_NOISE_STD``, clipped to [0, 1]."""
    side = image.shape[0]
    key = cv2.warpPerspective(
        image, matrix, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
    )
    mask = np.zeros((side, side), dtype=np.uint8)
    for _ in range(HARD_OCCLUDERS):
        centre = rng.uniform(0, side, size=2)
        radius = rng.uniform(*HARD_OCCLUDER_RADIUS) * side
        cv2.circle(mask, (int(centre[0]), int(centre[1])), max(1, int(radius)), 1, thickness=-1)
    occluded = mask.astype(bool)
    key[occluded] = occluder[occluded]
    angle = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / max(1, side - 1)
    ramp = (np.cos(angle) * (x - 0.5) + np.sin(angle) * (y - 0.5)) / np.sqrt(0.5) + 0.5
    gain = HARD_GAIN[0] + (HARD_GAIN[1] - HARD_GAIN[0]) * ramp
    key = key * gain[:, :, None] + HARD_BIAS + rng.normal(0, HARD_NOISE_STD, size=key.shape)
    return np.clip(key, 0, 1).astype(np.float32), occluded


def patch_features(image: np.ndarray) -> Tensor:
    """(1, 27, H, W) features of an RGB float image: every channel standardised over the image,
    then the 3x3 patch around each pixel (borders reflected), L2-normalised per pixel."""
    rgb = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).unsqueeze(0)
    rgb = (rgb - rgb.mean(dim=(2, 3), keepdim=True)) / rgb.std(dim=(2, 3), keepdim=True)
    patches = F.unfold(F.pad(rgb, (1, 1, 1, 1), mode="reflect"), kernel_size=3)
    return F.normalize(patches.view(1, 27, *image.shape[:2]), dim=1)


def hard_pairs(
    side: int, images: Sequence[str] = HARD_IMAGES, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """Query and key features (B, 27, S, S), one batch item per image, and the true key point
    (x, y) of every query pixel (B, S, S, 2), NaN where an occluder hides it.

    The query is the image itself; the key is ``hard_key_image`` of it under a random
    perspective map (``hard_homography``), occluded by discs of the ``HARD_OCCLUDER_IMAGES`` in
    turn."""
    rng = np.random.default_rng(seed)
    rgb = [skimage_rgb(name, side) for name in images]
    occluders = [skimage_rgb(name, side) for name in HARD_OCCLUDER_IMAGES]
    y, x = np.mgrid[0:side, 0:side].astype(np.float64)
    queries, keys, true_points = [], [], []
    for index, image in enumerate(rgb):
        matrix = hard_homography(side, rng)
        key, occluded = hard_key_image(image, occluders[index % len(occluders)], matrix, rng)
        true_xy = apply_homography(matrix, np.stack([x, y], axis=-1))
        column = np.clip(np.round(true_xy[..., 0]), 0, side - 1).astype(int)
        row = np.clip(np.round(true_xy[..., 1]), 0, side - 1).astype(int)
        true_xy[occluded[row, column]] = np.nan
        queries.append(patch_features(image))
        keys.append(patch_features(key))
        true_points.append(torch.from_numpy(true_xy).float())
    return torch.cat(queries), torch.cat(keys), torch.stack(true_points)


# ----------------------------------------------------------------------------- measurement


def search(query: Tensor, key: Tensor, k: int, iters: int, name: str) -> tuple[Tensor, Tensor]:
    return cocosnet_ops.match(query, key, k, iters=iters, exact=False, **SEARCHES[name])


def recall(found: tuple[Tensor, Tensor], exact: tuple[Tensor, Tensor]) -> tuple[float, float]:
    """(recall@1, recall@K) of found (nnf, scores) against exact (nnf, scores)."""
    found_nnf, found_scores = found
    exact_nnf, exact_scores = exact
    top1 = (found_scores[:, 0] >= exact_scores[:, 0] - SCORE_TOLERANCE) | (found_nnf[:, 0] == exact_nnf[:, 0])
    shared = (found_nnf.unsqueeze(2) == exact_nnf.unsqueeze(1)).any(dim=2).sum(dim=1)
    return top1.float().mean().item(), (shared.float() / found_nnf.shape[1]).mean().item()


def end_point_errors(nnf: Tensor, key_size: tuple[int, int], true_xy: Tensor | None) -> dict:
    """Mean and median distance from the top-1 match to the true key point (B, Hq, Wq, 2), over
    the query pixels whose true point lies inside the key map (NaN: none, e.g. occluded; empty
    without a true correspondence)."""
    if true_xy is None:
        return {"epe_px": "", "epe_median_px": ""}
    found = nnf_utils.index_to_xy(nnf[:, :1], key_size)[:, 0].float()
    inside = (
        (true_xy[..., 0] >= 0)
        & (true_xy[..., 0] <= key_size[1] - 1)
        & (true_xy[..., 1] >= 0)
        & (true_xy[..., 1] <= key_size[0] - 1)
    )
    errors = (found - true_xy).norm(dim=-1)[inside]
    return {"epe_px": errors.mean().item(), "epe_median_px": errors.median().item()}


def dataset_pair(name: str, side: int) -> tuple[Tensor, Tensor, Tensor | None]:
    """Query and key features of a dataset and the true key points (None: not known)."""
    if name == "smooth":
        return (*smooth_pair(side), None)
    if name == "photo":
        query, key, true_xy = photo_pair(side)
        return query, key, true_xy.unsqueeze(0)
    return hard_pairs(side)


def run(args: argparse.Namespace) -> list[dict]:
    rows = []
    for dataset in args.datasets:
        query, key, true_xy = dataset_pair(dataset, args.side)
        key_size = (key.shape[2], key.shape[3])
        start = time.perf_counter()
        exact = cocosnet_ops.exact_knn(query, key, args.k)
        base = {"dataset": dataset, "side": args.side, "k": args.k, "pairs": query.shape[0]}
        rows.append(
            {
                **base,
                "search": "exact",
                "iters": "",
                "recall_at_1": 1.0,
                "recall_at_k": 1.0,
                **end_point_errors(exact[0], key_size, true_xy),
                "seconds": time.perf_counter() - start,
            }
        )
        print(format_progress(rows[-1]), flush=True)
        for name in args.searches:
            for iters in range(args.min_iters, args.iters + 1):
                start = time.perf_counter()
                found = search(query, key, args.k, iters, name)
                seconds = time.perf_counter() - start
                recall_at_1, recall_at_k = recall(found, exact)
                rows.append(
                    {
                        **base,
                        "search": name,
                        "iters": iters,
                        "recall_at_1": recall_at_1,
                        "recall_at_k": recall_at_k,
                        **end_point_errors(found[0], key_size, true_xy),
                        "seconds": seconds,
                    }
                )
                print(format_progress(rows[-1]), flush=True)
    return rows


def time_searches(args: argparse.Namespace) -> list[dict]:
    """Seconds of every search with ``--iters`` iterations on the smooth pair at side
    ``--speed-side``: one warm-up round, then ``--speed-repeats`` rounds each timing every
    search once, so that all see the same load."""
    side = args.speed_side
    query, key = smooth_pair(side)
    times: dict[str, list[float]] = {name: [] for name in args.searches}
    for round_index in range(args.speed_repeats + 1):
        for name in args.searches:
            start = time.perf_counter()
            search(query, key, args.k, args.iters, name)
            if round_index:
                times[name].append(time.perf_counter() - start)
    processor = processor_name()
    rows = [
        {
            "method": name,
            "side": side,
            "channels": query.shape[1],
            "k": args.k,
            "iters": args.iters,
            "threads": torch.get_num_threads(),
            "repeats": args.speed_repeats,
            "min_s": min(seconds),
            "median_s": statistics.median(seconds),
            "processor": processor,
        }
        for name, seconds in times.items()
    ]
    for row in rows:
        print(f"{row['method']}: min {row['min_s']:.3f} s, median {row['median_s']:.3f} s", flush=True)
    return rows


def format_epe(row: dict) -> str:
    return f"{row['epe_px']:.2f} / {row['epe_median_px']:.2f}" if row["epe_px"] != "" else ""


def format_progress(row: dict) -> str:
    iters = "" if row["search"] == "exact" else f", iters {row['iters']}"
    epe = f", EPE mean / median {format_epe(row)} px" if row["epe_px"] != "" else ""
    return (
        f"{row['dataset']} {row['search']}{iters}: recall@1 {row['recall_at_1']:.4f}, "
        f"recall@{row['k']} {row['recall_at_k']:.4f}{epe} ({row['seconds']:.1f} s)"
    )


# ----------------------------------------------------------------------------- outputs


def write_csv(rows: list[dict], path: Path, columns: Sequence[str] = COLUMNS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: round(v, 6) if isinstance(v, float) else v for c, v in row.items()})


def searches(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """Rows of each (dataset, search), ordered by iterations."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        if row["search"] != "exact":
            groups.setdefault((row["dataset"], row["search"]), []).append(row)
    return {key: sorted(group, key=lambda r: r["iters"]) for key, group in groups.items()}


def write_plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r["dataset"] for r in rows}, key=DATASETS.index)
    fig, axes = plt.subplots(2, len(datasets), figsize=(5.5 * len(datasets), 8), squeeze=False)
    for (dataset, name), group in searches(rows).items():
        column = datasets.index(dataset)
        iters = [r["iters"] for r in group]
        for row_index, metric in enumerate(("recall_at_1", "recall_at_k")):
            axes[row_index, column].plot(
                iters, [r[metric] for r in group], "-o", color=f"C{list(SEARCHES).index(name)}", label=name
            )
    k = rows[0]["k"]
    for column, dataset in enumerate(datasets):
        for row_index, name in enumerate(("recall@1", f"recall@{k}")):
            ax = axes[row_index, column]
            ax.set_title(f"{dataset}, side {rows[0]['side']}: {name}")
            ax.set_xlabel("patch_match iterations (per level)")
            ax.set_ylim(0, 1.02)
            ax.grid(True, alpha=0.3)
    axes[0, 0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown_table(rows: list[dict]) -> str:
    groups = searches(rows)
    iters = [r["iters"] for r in next(iter(groups.values()))]
    k = rows[0]["k"]
    header = (
        "| data | search | "
        + " | ".join(f"recall@1, {i} it" for i in iters)
        + f" | recall@{k}, {iters[-1]} it | EPE mean / median (px), {iters[-1]} it"
        + f" | seconds, {iters[-1]} it |"
    )
    lines = [header, "|---|---|" + "---:|" * (len(iters) + 3)]
    for row in rows:
        if row["search"] == "exact":
            lines.append(
                f"| {row['dataset']} | exact kNN | "
                + " | " * len(iters)
                + f"1 | {format_epe(row)} | {row['seconds']:.2f} |"
            )
    for (dataset, name), group in groups.items():
        last = group[-1]
        recalls = " | ".join(f"{r['recall_at_1']:.3f}" for r in group)
        lines.append(
            f"| {dataset} | {name} | {recalls} | {last['recall_at_k']:.3f} | {format_epe(last)} "
            f"| {last['seconds']:.2f} |"
        )
    return "\n".join(lines)


def speed_table(rows: list[dict]) -> str:
    lines = ["| method | side | C | iterations | min (s) | median (s) |", "|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(
            f"| {row['method']} | {row['side']} | {row['channels']} | {row['iters']} "
            f"| {row['min_s']:.3f} | {row['median_s']:.3f} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=cli.int_at_least(1), default=256)
    parser.add_argument(
        "--iters", type=cli.int_at_least(0), default=5, help="sweep patch_match iterations MIN_ITERS..ITERS"
    )
    parser.add_argument("--min-iters", type=cli.int_at_least(0), default=0)
    parser.add_argument("--k", type=cli.int_at_least(1), default=16)
    parser.add_argument(
        "--datasets", nargs="*", choices=DATASETS, default=list(DATASETS), help="none: only --speed-side"
    )
    parser.add_argument("--searches", nargs="+", choices=list(SEARCHES), default=list(SEARCHES))
    parser.add_argument(
        "--speed-side",
        type=cli.int_at_least(0),
        default=0,
        help="also time the searches at this side on the smooth pair",
    )
    parser.add_argument("--speed-repeats", type=cli.int_at_least(1), default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/recall.csv"))
    args = parser.parse_args(argv)
    if args.min_iters > args.iters:
        parser.error(f"--min-iters: expected at most --iters ({args.iters}), got {args.min_iters}")
    for side in (args.side, args.speed_side or args.side):
        if (side // 2) ** 2 < args.k:
            parser.error("sides must leave at least k pixels at half resolution")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(f"cocosnet_ops compiled: {cocosnet_ops.HAS_COMPILED}; torch threads: {torch.get_num_threads()}")
    with torch.no_grad():
        if args.speed_side:
            speed_rows = time_searches(args)
            speed_path = args.out.with_name(args.out.stem + "_speed.csv")
            write_csv(speed_rows, speed_path, SPEED_COLUMNS)
            print(f"\nwrote {speed_path}\n\n{speed_table(speed_rows)}\n")
        if not args.datasets:
            return
        rows = run(args)
    write_csv(rows, args.out)
    plot_path = args.out.with_suffix(".png")
    write_plot(rows, plot_path)
    print(f"\nwrote {args.out} and {plot_path}\n")
    print(markdown_table(rows))


if __name__ == "__main__":
    cli.run(main)
