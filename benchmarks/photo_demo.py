"""make photo-demo: match a photo to a rotated, scaled and shifted copy of itself, and rebuild it.

The photo is scikit-image's astronaut (shipped inside the package, nothing is downloaded). The
exemplar is its affine warp, so the true correspondence is known. Features: a fixed random
(seed 0) 3x3 filter bank with 32 outputs over the RGB at three blur scales, then tanh,
per-channel standardisation and L2 normalisation per pixel (``benchmarks/bench_recall.py``'s
photo pair takes them from here). The search is ``cocosnet_ops.match`` with its default settings;
the query photo is then rebuilt from the exemplar with ``weighted_gather``. Writes PNGs to
``--out`` and prints timings, recall against exact kNN and the end-point error against the
true correspondence.

    python benchmarks/photo_demo.py --side 256 --out demo_output
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from skimage import data

import cocosnet_ops
from cocosnet_ops import nnf as nnf_utils

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cli  # noqa: E402

CHANNELS = 32
BLUR_SIGMAS = (1.0, 2.0, 4.0)
ROTATION_DEG = 10.0
SCALE = 1.1
SHIFT = (0.04, -0.03)  # fractions of the side


def affine_transform(side: int) -> np.ndarray:
    """The 2x3 affine map from query pixel (x, y) to its exemplar pixel."""
    matrix = cv2.getRotationMatrix2D(((side - 1) / 2, (side - 1) / 2), ROTATION_DEG, SCALE)
    matrix[:, 2] += np.array(SHIFT) * side
    return matrix


def features(image: np.ndarray) -> torch.Tensor:
    """(1, C, H, W) features of an RGB float image (see the module docstring)."""
    blurred = [cv2.GaussianBlur(image, (0, 0), sigma) for sigma in BLUR_SIGMAS]
    stack = torch.from_numpy(np.concatenate(blurred, axis=2)).permute(2, 0, 1).unsqueeze(0)
    bank = torch.randn(CHANNELS, stack.shape[1], 3, 3, generator=torch.Generator().manual_seed(0))
    responses = torch.tanh(F.conv2d(stack, bank, padding=1))
    mean = responses.mean(dim=(2, 3), keepdim=True)
    return F.normalize((responses - mean) / responses.std(dim=(2, 3), keepdim=True), dim=1)


def to_png(path: Path, image: np.ndarray | torch.Tensor) -> None:
    if isinstance(image, torch.Tensor):  # (1, 3, H, W) in [0, 1]
        image = (image[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=cli.int_at_least(8), default=256, help="photo side in pixels")
    parser.add_argument("--k", type=cli.int_at_least(1), default=16)
    parser.add_argument("--out", type=Path, default=Path("demo_output"))
    args = parser.parse_args()
    torch.set_flush_denormal(True)

    photo = cv2.resize(data.astronaut(), (args.side, args.side), interpolation=cv2.INTER_AREA)
    photo = photo.astype(np.float32) / 255.0
    matrix = affine_transform(args.side)
    exemplar = cv2.warpAffine(photo, matrix, (args.side, args.side), flags=cv2.INTER_LINEAR)
    query, key = features(photo), features(exemplar)
    exemplar_tensor = torch.from_numpy(exemplar).permute(2, 0, 1).unsqueeze(0).contiguous()

    start = time.perf_counter()
    nnf, scores = cocosnet_ops.match(query, key, args.k)
    search_seconds = time.perf_counter() - start
    start = time.perf_counter()
    rebuilt = cocosnet_ops.weighted_gather(query, key, exemplar_tensor, nnf, temperature=0.01)
    gather_seconds = time.perf_counter() - start

    # recall@1: the best match found scores as well as the exact best (within 1e-6).
    exact_scores = cocosnet_ops.exact_knn(query, key, 1)[1]
    recall_at_1 = (scores[:, 0] >= exact_scores[:, 0] - 1e-6).float().mean().item()
    y, x = np.mgrid[0 : args.side, 0 : args.side].astype(np.float64)
    true_xy = torch.from_numpy(np.stack([x, y, np.ones_like(x)], axis=-1) @ matrix.T)
    found_xy = nnf_utils.index_to_xy(nnf[:, :1], (args.side, args.side))[0, 0].double()
    inside = (true_xy >= 0).all(-1) & (true_xy <= args.side - 1).all(-1)
    epe = (found_xy - true_xy).norm(dim=-1)[inside]

    args.out.mkdir(parents=True, exist_ok=True)
    to_png(args.out / "query.png", (photo * 255).round().astype(np.uint8))
    to_png(args.out / "exemplar.png", (exemplar * 255).round().astype(np.uint8))
    to_png(args.out / "rebuilt.png", rebuilt)
    to_png(args.out / "matches.png", nnf_utils.nnf_to_flow_image(nnf, (args.side, args.side))[0])
    backend = "cpu (compiled)" if cocosnet_ops.HAS_COMPILED else "torch (reference)"
    print(f"side {args.side}, K={args.k}, cocosnet_ops.match with its defaults, backend {backend}")
    print(f"search {search_seconds:.2f} s, weighted_gather {gather_seconds:.3f} s")
    print(f"recall@1 {recall_at_1:.3f} against exact kNN")
    print(f"end-point error of the best match: median {epe.median():.2f} px, mean {epe.mean():.2f} px")
    print(f"wrote {', '.join(sorted(p.name for p in args.out.glob('*.png')))} to {args.out}/")


if __name__ == "__main__":
    cli.run(main)
