"""make photo-demo: match a photo to a rotated, scaled and shifted copy of itself, and rebuild it.

The photo is scikit-image's astronaut (shipped inside the package, nothing is downloaded). The
exemplar is its affine warp, so the true correspondence is known. Features are the fixed
random filter bank of ``benchmarks/bench_recall.py``; the search is the hierarchical one
(exact kNN at 1/8, then ``nnf_upsample`` + ``patch_match`` per level); the query photo is then
rebuilt from the exemplar with ``weighted_gather``. Writes PNGs to ``--out`` and prints
timings, recall against exact kNN and the end-point error against the true correspondence.

    python benchmarks/photo_demo.py --side 256 --out demo_output
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from bench_recall import (
    exact_in_bands,
    hierarchical_search,
    photo_features,
    photo_transform,
    recall,
)
from skimage import data

import cocosnet_ops
from cocosnet_ops import nnf as nnf_utils


def to_png(path: Path, image: np.ndarray | torch.Tensor) -> None:
    if isinstance(image, torch.Tensor):  # (1, 3, H, W) in [0, 1]
        image = (image[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=256, help="photo side in pixels")
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("demo_output"))
    args = parser.parse_args()
    torch.set_flush_denormal(True)

    photo = cv2.resize(data.astronaut(), (args.side, args.side), interpolation=cv2.INTER_AREA)
    photo = photo.astype(np.float32) / 255.0
    matrix = photo_transform(args.side)
    exemplar = cv2.warpAffine(photo, matrix, (args.side, args.side), flags=cv2.INTER_LINEAR)
    query, key = photo_features(photo), photo_features(exemplar)
    exemplar_tensor = torch.from_numpy(exemplar).permute(2, 0, 1).unsqueeze(0).contiguous()

    start = time.perf_counter()
    nnf, scores = hierarchical_search(query, key, args.k, args.iters, random_search=True, levels=3,
                                      upsample_options={})
    search_seconds = time.perf_counter() - start
    start = time.perf_counter()
    rebuilt = cocosnet_ops.weighted_gather(query, key, exemplar_tensor, nnf, temperature=0.01)
    gather_seconds = time.perf_counter() - start

    recall_at_1, recall_at_k = recall((nnf, scores), exact_in_bands(query, key, args.k))
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
    print(f"side {args.side}, K={args.k}, {args.iters} iterations per level, backend "
          f"{'cpu (compiled)' if cocosnet_ops.HAS_COMPILED else 'torch (reference)'}")
    print(f"search {search_seconds:.2f} s, weighted_gather {gather_seconds:.3f} s")
    print(f"recall@1 {recall_at_1:.3f}, recall@{args.k} {recall_at_k:.3f} against exact kNN")
    print(f"end-point error of the best match: median {epe.median():.2f} px, mean {epe.mean():.2f} px")
    print(f"wrote {', '.join(sorted(p.name for p in args.out.glob('*.png')))} to {args.out}/")


if __name__ == "__main__":
    main()
