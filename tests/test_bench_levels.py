"""benchmarks/bench_levels.py: training variants x seeds, measured level by level."""

from __future__ import annotations

import csv
import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "bench_levels.py"
RECIPE_GRU_OFF = "recipe: bounded + correspondence loss + residual levels"


def run(*args: str) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=600, env=env, cwd=ROOT)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def load_bench_levels():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_levels", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_rows(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


@pytest.mark.slow  # three training processes at 128x128: minutes on 2 cores
def test_two_variants_train_measure_and_share_their_runs(tmp_path):
    """One row per variant and seed with every level measured; a variant of another set with the
    same settings (the recipe with the GRU off) reuses the run instead of training it again."""
    bench = load_bench_levels()
    assert bench.VARIANT_SETS["gru"]["recipe, gru off"] == bench.VARIANT_SETS["levels"][RECIPE_GRU_OFF]
    runs, out = tmp_path / "runs", tmp_path / "gru.csv"
    common = ["--steps", "2", "--seeds", "0", "--held_out", "2", "--runs", str(runs)]
    stdout = run("--set-name", "gru", "--variants", "recipe, gru off", "recipe, gru interleaved",
                 *common, "--out", str(out))  # fmt: skip
    columns, rows = read_rows(out)
    assert columns == list(bench.COLUMNS)
    assert [r["variant"] for r in rows] == ["recipe, gru off", "recipe, gru interleaved"]
    for row in rows:
        assert row["steps"] == "2" and float(row["train_s"]) > 0
        for level in bench.LEVELS:
            assert math.isfinite(float(row[f"epe_{level}"])) and float(row[f"epe_{level}"]) >= 0
        for level in bench.LEVELS[1:]:  # the share of the window the coarser level gave
            assert 0 <= float(row[f"window_share_{level}"]) <= 1
        assert float(row["epe_identity_px"]) > 0 and row["window_share_1_8"] == "nan"
    assert len(list(runs.glob("*_seed0"))) == 2, "one run folder per distinct setting"
    assert (tmp_path / "gru.png").stat().st_size > 0
    table = (tmp_path / "gru.md").read_text()
    assert "| recipe, gru interleaved |" in table and "bench_levels.py --set-name gru" in table
    assert "| recipe, gru interleaved |" in stdout

    again = tmp_path / "levels.csv"
    run("--set-name", "levels", "--variants", RECIPE_GRU_OFF, *common, "--out", str(again))
    (reused,) = read_rows(again)[1]
    assert reused["train_s"] == "", "the recipe was trained by the gru set already"
    first = next(r for r in rows if r["variant"] == "recipe, gru off")
    for level in bench.LEVELS:
        assert reused[f"epe_{level}"] == first[f"epe_{level}"]
    assert len(list(runs.glob("*_seed0"))) == 2
