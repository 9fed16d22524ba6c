"""benchmarks/gpu_check.sh without a GPU: its dry run lists every step, the Python commands it
would run parse, and the training smoke it runs on a GPU works on the CPU. GPU time is short and
rare, so the script must not rot between loans."""

from __future__ import annotations

import csv
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
sys.path.insert(0, str(ROOT / "benchmarks"))

QUICK_STEPS = [
    "build",
    "CUDA kernels in the build",
    "CUDA and Triton tests",
    "compute-sanitizer memcheck",
    "warp benchmark",
    "search variants A/B",
    "training smoke, one process",
    "training smoke, torchrun",
]


def dry_run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, RESULTS=str(tmp_path / "results"))
    return subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )


def steps_and_commands(stdout: str) -> tuple[list[str], list[list[str]]]:
    lines = stdout.splitlines()
    steps = [line.removeprefix("== ") for line in lines if line.startswith("== ") and line != "== summary"]
    commands = [shlex.split(line.removeprefix("+ ")) for line in lines if line.startswith("+ ")]
    return steps, commands


def test_quick_dry_run_lists_every_step_in_order_and_runs_none(tmp_path):
    done = dry_run(tmp_path, "--quick")
    assert done.returncode == 0, done.stderr
    steps, commands = steps_and_commands(done.stdout)
    assert len(steps) == len(QUICK_STEPS) == len(commands)
    for step, expected in zip(steps, QUICK_STEPS, strict=True):
        assert step.startswith(expected)
    assert done.stdout.count("not run (dry run)") == len(QUICK_STEPS)
    assert not (tmp_path / "results").exists()
    for command in commands:
        for word in command:
            if word.startswith("benchmarks/") and word.endswith((".py", ".sh")):
                assert (ROOT / word).is_file(), f"gpu_check.sh runs {word}, which does not exist"


def test_full_dry_run_adds_racecheck_and_the_gather_benchmark(tmp_path):
    done = dry_run(tmp_path)
    assert done.returncode == 0, done.stderr
    steps, _ = steps_and_commands(done.stdout)
    assert "compute-sanitizer racecheck" in steps and "gather bandwidth" in steps
    assert len(steps) == len(QUICK_STEPS) + 2


def script_arguments(commands: list[list[str]], script: str) -> list[list[str]]:
    return [c[c.index(script) + 1 :] for c in commands if script in c]


def test_the_python_commands_of_the_quick_run_parse(tmp_path):
    """A renamed flag in bench_warp.py or gpu_train_smoke.py would fail on the GPU only: parse
    the dry run's arguments with the scripts' own parsers here."""
    import bench_search_variants
    import bench_warp
    import gpu_train_smoke

    _, commands = steps_and_commands(dry_run(tmp_path, "--quick").stdout)
    (warp,) = script_arguments(commands, "benchmarks/bench_warp.py")
    # bench_warp refuses --device cuda without a GPU; the rest of the list is what is checked.
    args = bench_warp.parse_args([("cpu" if a == "cuda" else a) for a in warp])
    assert args.sides == [512, 1024] and "patchmatch_triton" in args.methods
    (variants,) = script_arguments(commands, "benchmarks/bench_search_variants.py")
    args = bench_search_variants.parse_args(variants)
    assert args.sides == [512, 1024] and args.k == 16 and args.out.name == "search_variants.csv"
    smokes = script_arguments(commands, "benchmarks/gpu_train_smoke.py")
    assert len(smokes) == 2
    for smoke in smokes:
        args = gpu_train_smoke.parse_args(smoke)
        assert (args.device, args.size, args.steps, args.amp) == ("cuda", 256, 50, "auto")


def test_unknown_argument_is_one_line_and_exit_status_2(tmp_path):
    done = subprocess.run(["bash", str(SCRIPT), "--fast"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "'--fast'" in done.stderr


def run_smoke(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_train_smoke.py"), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


def test_training_smoke_on_the_cpu_writes_its_row(tmp_path):
    out = tmp_path / "smoke.csv"
    done = run_smoke(
        "--device", "cpu", "--size", "64", "--steps", "3", "--batch-size", "1", "--amp", "none",
        "--run-dir", str(tmp_path / "run"), "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    with out.open(newline="") as f:
        (row,) = list(csv.DictReader(f))
    described = (row["device_name"], row["world_size"], row["backend"], row["amp_dtype"])
    assert described == ("cpu", "1", "none", "none")
    assert row["steps"] == "3" and row["finite"] == "True" and float(row["wall_s"]) > 0
    assert row["losses_fall"] in ("True", "False")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where torch sees no GPU")
def test_training_smoke_asks_for_a_gpu_in_one_line(tmp_path):
    done = run_smoke("--run-dir", str(tmp_path / "run"), "--out", str(tmp_path / "smoke.csv"))
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "--device" in done.stderr
    assert not (tmp_path / "run").exists()


def test_search_variants_ab_on_the_emulator_writes_its_table(tmp_path):
    """The A/B loop gpu_check.sh runs, on the CPU emulator of the CUDA kernels at a small size:
    every variant returns the default kernel's results, half-precision scoring mostly the same
    best matches; the CSV and its table are written."""
    pytest.importorskip("cocosnet_ops._C_emulated")  # conftest.py requires it where CI runs
    out = tmp_path / "variants.csv"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_search_variants.py"), "--emulated", "--sides", "10",
         "--rounds", "1", "--iters", "2", "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["variant"] for r in rows] == [str(bits) for bits in range(16)] + ["0", "0"]
    assert all(r["same_results"] == "True" for r in rows[:16])
    assert all(float(r["top1_agreement"]) >= 0.9 for r in rows[16:])
    assert out.with_suffix(".md").read_text().count("\n| ") == len(rows) + 1


def test_search_variants_ab_refuses_k_outside_the_variants_bound(tmp_path):
    import bench_search_variants

    with pytest.raises(SystemExit) as raised:
        bench_search_variants.parse_args(["--k", "32"])
    assert raised.value.code == 2


def test_kernel_resources_reads_ptxas_reports():
    """benchmarks/kernel_resources.py's parser on ptxas's own lines (nvcc 13, sm_90): a kernel's
    stack and spill line comes before its register line; non-search kernels are left out."""
    import kernel_resources

    step = "_Z4stepv"
    log = "\n".join(
        [
            f"ptxas info    : Compiling entry function '{step}' for 'sm_90'",
            f"ptxas info    : Function properties for {step}",
            "    320 bytes stack frame, 792 bytes spill stores, 820 bytes spill loads",
            "ptxas info    : Used 64 registers, used 0 barriers, 320 bytes cumulative stack size",
            "ptxas info    : Compiling entry function '_Z8upsamplev' for 'sm_90'",
            "ptxas info    : Used 40 registers, used 0 barriers",
        ]
    )
    names = {
        step: "void cocosnet_ops::cuda::(anonymous namespace)::bounded_search_step_kernel<float, "
        "cocosnet_ops::cuda::HalfBits, 16, 5>(cocosnet_ops::cuda::SearchArgs<float, float>, int)",
        "_Z8upsamplev": "void cocosnet_ops::cuda::nnf_upsample_kernel(int const*, int*)",
    }
    (row,) = kernel_resources.parse_ptxas(log, names.__getitem__)
    assert row == {
        "kernel": "search_step_kernel", "scores": "float", "features": "HalfBits", "list_bound": 16,
        "variant": "coalesced_lists+bounded_registers", "registers": 64, "stack_bytes": 320,
        "spill_stores": 792, "spill_loads": 820, "blocks_per_sm": 8, "occupancy": "0.500",
    }  # fmt: skip
    assert kernel_resources.occupancy(128) == (4, 0.25) and kernel_resources.occupancy(255) == (2, 0.125)


def test_search_variants_ab_names_what_beats_the_default_at_every_side():
    """A variant counts only below the default's time at every side and with its results; a
    half-precision row by time alone (it searches on rounded features)."""
    import bench_search_variants

    def rows(config, bits, dtype, ratios, same=True):
        return [
            dict(config=config, variant=bits, score_dtype=dtype, ratio_to_default=r, same_results=same)
            for r in ratios
        ]

    table = (
        rows("default", 0, "", ["1.000", "1.000"])
        + rows("coalesced_lists", 1, "", ["0.800", "0.900"])
        + rows("pipelined_rows", 2, "", ["0.700", "1.100"])
        + rows("split_lists", 8, "", ["0.500", "0.500"], same=False)
        + rows("score_float16", 0, "float16", ["0.600", "0.650"])
    )
    faster = bench_search_variants.faster_everywhere(table)
    assert faster == ["score_float16 (x0.650)", "coalesced_lists (x0.900)"]
