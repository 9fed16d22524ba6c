"""The programs a user runs answer a user's mistake with one line, and never mix two runs.

Every program (``train.py``, ``test.py``, ``demo.py``, ``python -m models.public_checkpoints``,
the benchmarks' scripts that take arguments) is run with malformed input of each kind a user
types: malformed arguments, missing files, values of the wrong type or out of range, unknown
keys, bad YAML, corrupt, truncated or foreign checkpoints, a GPU asked for on a machine without
one. Each must end with exit status 2 and exactly one non-empty line on stderr,
``PROGRAM: error: ...``, naming the problem, and no traceback.

Starting a Python with torch takes seconds, so most cases run in one driver process that runs
each program's ``__main__`` (``runpy``) with its own ``sys.argv``, stderr and exit status; one
case per program runs as a plain subprocess too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import train
from data import pose as openpose
from training import checkpoint

ROOT = Path(__file__).resolve().parent.parent
PUBLIC = "-m models.public_checkpoints"
PUBLIC_PROG = "python -m models.public_checkpoints"
HAS_GPU = torch.cuda.is_available()
TINY = {
    "data": {"name": "synthetic", "train": {"size": 32, "length": 6, "seed": 0}},
    "model": {
        "nef": 8, "match_nc": 8, "ngf": 8, "ndf": 8, "spade_nc": 16, "k": 4,
        "patch_match_iters": 2, "gru_iters": 2,
    },
    "train": {
        "batch_size": 2, "num_workers": 0, "vgg_weights": "none", "checkpoint_every": 1,
        "keep_checkpoints": 0, "log_every": 1, "image_every": 1, "seed": 3,
    },
}

# Runs each case of a JSON list [program, argv] as its program's __main__ and writes a JSON list
# of {"code", "stderr"}. A program is a script path or "-m module".
DRIVER = r"""
import contextlib, io, json, runpy, sys, traceback
cases_path, results_path = sys.argv[1:]
sys.path.insert(0, "benchmarks")  # where the benchmarks' scripts import each other from
results = []
for program, argv in json.load(open(cases_path)):
    stderr, stdout, code = io.StringIO(), io.StringIO(), 0
    sys.argv = [program.removeprefix("-m "), *argv]
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
            if program.startswith("-m "):
                sys.modules.pop(program.removeprefix("-m "), None)  # as in a fresh interpreter
                runpy.run_module(program.removeprefix("-m "), run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(program, run_name="__main__")
    except SystemExit as exit:
        if isinstance(exit.code, str):
            stderr.write(exit.code + "\n")
        code = exit.code if isinstance(exit.code, int) else int(exit.code is not None)
    except BaseException:
        stderr.write(traceback.format_exc())
        code = 1
    results.append({"code": code, "stderr": stderr.getvalue()})
json.dump(results, open(results_path, "w"))
"""


def environment() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def prog(program: str) -> str:
    return PUBLIC_PROG if program == PUBLIC else Path(program).name


def assert_one_line_error(program: str, code: int, stderr: str, expected: list[str]) -> None:
    """Exit status 2, one non-empty stderr line ``PROG: error: ...`` holding every ``expected``."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    context = f"{program}: exit status {code}, stderr:\n{stderr}"
    assert code == 2, context
    assert "Traceback" not in stderr, context
    assert len(lines) == 1 and lines[0].startswith(f"{prog(program)}: error: "), context
    for text in expected:
        assert text in lines[0], (text, context)


@pytest.fixture(scope="module")
def files(tmp_path_factory, one_intra_op_thread) -> dict[str, Path]:
    """What the cases point at: configurations good and bad, a trained run, corrupt files."""
    folder = tmp_path_factory.mktemp("inputs")
    paths = {name: folder / name for name in (
        "tiny.yaml", "bad.yaml", "list.yaml", "folder.yaml", "no_dataset.yaml", "corrupt.pt", "truncated.pt",
        "foreign.pt", "empty.pt", "not_a_folder", "empty_folder", "out",
    )}  # fmt: skip
    paths["tiny.yaml"].write_text(yaml.safe_dump(TINY))
    paths["bad.yaml"].write_text("model:\n  k: 4: 5\n")
    paths["list.yaml"].write_text("- model\n- train\n")
    paths["folder.yaml"].write_text("data: {name: folder, train: {size: 64}}\n")
    no_dataset = {"data": {"name": "deepfashionhd", "train": {"root": str(folder / "nowhere")}}}
    paths["no_dataset.yaml"].write_text(yaml.safe_dump(no_dataset))
    paths["corrupt.pt"].write_bytes(b"this is not a checkpoint\n" * 8)
    torch.save({"weight": torch.zeros(2)}, paths["foreign.pt"])
    paths["truncated.pt"].write_bytes(paths["foreign.pt"].read_bytes()[:200])
    paths["empty.pt"].write_bytes(b"")
    paths["not_a_folder"].write_text("a file where a folder belongs\n")
    paths["empty_folder"].mkdir()
    paths["run"] = folder / "run"
    paths["checkpoint"] = train.main(["--config", str(paths["tiny.yaml"]), "--out", str(paths["run"]),
                                      "--max_steps", "0"])
    keypoints = np.full((openpose.NUM_KEYPOINTS, 2), np.nan)
    keypoints[[1, 2, 3, 5, 8, 11]] = [[16, 8], [12, 9], [10, 16], [20, 9], [14, 20], [18, 20]]
    openpose.write_openpose(folder / "a_candidate.txt", folder / "a_subset.txt", keypoints)
    paths["pose"] = folder / "a_candidate.txt"
    paths["lonely_pose"] = folder / "b_candidate.txt"  # no b_subset.txt beside it
    paths["lonely_pose"].write_text(paths["pose"].read_text())
    paths["corrupt.jpg"] = folder / "corrupt.jpg"
    paths["corrupt.jpg"].write_bytes(b"not a photo")
    paths["photo.jpg"] = folder / "photo.jpg"
    Image.fromarray(np.full((32, 32, 3), 90, dtype=np.uint8)).save(paths["photo.jpg"])
    return paths


def cases(f: dict[str, Path]) -> list[tuple[str, list[str], list[str]]]:
    """(program, its arguments, what the error line must say) for every case."""
    s = {name: str(path) for name, path in f.items()}
    out, not_ours = s["out"], "not a checkpoint of this project"
    base = ["--config", s["tiny.yaml"], "--out", out]
    train_cases = [
        (["--config", s["bad.yaml"]], ["--config", "bad.yaml", "not valid YAML", "at line 2, column 7"]),
        (["--config", s["list.yaml"]], ["--config", "list.yaml", "mapping"]),
        (["--config", out + ".yaml"], ["--config: no file at"]),
        ([*base, "--set", "model.k=abc"], ["model.k: expected an int, got 'abc'"]),
        ([*base, "--set", "model.k=0"], ["model.k: expected an int >= 1, got 0"]),
        ([*base, "--set", "model.k=2"], ["model.upsample_matches: expected at most model.k = 2"]),
        ([*base, "--set", "model.kk=3"], ["model: unknown keys ['kk']"]),
        ([*base, "--set", "model.loss_weights.warp=-1"], ["model.loss_weights.warp: expected a number >= 0"]),
        ([*base, "--set", "model.norm=layer"], ["model.norm: expected one of", "'layer'"]),
        ([*base, "--set", "train.lr=-1"], ["train.lr: expected a number > 0, got -1"]),
        ([*base, "--set", "train.betas=[0.5]"], ["train.betas: expected a list of 2 numbers"]),
        ([*base, "--set", "train.amp=bf16"], ["train.amp: bf16 is for GPUs"]),
        ([*base, "--set", "bogus.x=1"], ["unknown sections ['bogus']"]),
        ([*base, "--set", "model.k"], ["--set: expected section.key=value"]),
        ([*base, "--set", "model.k=[4"], ["--set model.k=[4: not valid YAML"]),
        ([*base, "--set", "data.train.size=abc"], ["data.train.size: expected an int, got 'abc'"]),
        ([*base, "--set", "data.train.colour=red"], ["data.train: unknown keys ['colour']"]),
        ([*base, "--set", "data.train.size=8"], ["data.train: size: expected an int >= 16, got 8"]),
        ([*base, "--set", "data.name=folder"], ["data.train: unknown keys ['length', 'seed']"]),
        (["--config", s["folder.yaml"]], ["data.train: the folder dataset needs root, label_nc"]),
        (["--config", s["no_dataset.yaml"], "--out", out], ["data.train: root:", "nowhere"]),
        ([*base, "--max_steps", "abc"], ["argument --max_steps: expected an int, got 'abc'"]),
        ([*base, "--max_steps", "-1"], ["argument --max_steps: expected an int >= 0, got -1"]),
        ([*base, "--batch_size", "0"], ["argument --batch_size: expected an int >= 1, got 0"]),
        ([*base, "--batch_size", "100"], ["train.batch_size: 100 per process"]),
        ([*base, "--bogus"], ["unrecognized arguments: --bogus"]),
        ([*base, "--amp", "fp8"], ["argument --amp: invalid choice: 'fp8'"]),
        ([*base, "--resume", s["corrupt.pt"]], ["--resume:", "corrupt.pt", not_ours]),
        ([*base, "--resume", s["truncated.pt"]], ["--resume:", "truncated.pt", not_ours]),
        ([*base, "--resume", s["empty.pt"]], ["--resume:", "empty.pt", not_ours]),
        ([*base, "--resume", s["foreign.pt"]], ["--resume:", "foreign.pt", not_ours]),
        ([*base, "--resume", out + ".pt"], ["--resume: no file at"]),
        (["--config", s["tiny.yaml"], "--out", s["empty_folder"], "--resume"],
         ["--resume: no checkpoint in"]),
        ([*base, "--resume", "--overwrite"], ["argument --overwrite: not allowed with argument --resume"]),
        ([*base, "--resume", s["checkpoint"], "--set", "model.nef=4"], ["--resume:", "other options"]),
        (["--config", s["tiny.yaml"], "--out", s["not_a_folder"]], ["--out:", "is a file"]),
        (["--config", s["tiny.yaml"], "--out", s["run"]],
         ["--out:", s["run"], "already holds a run", "--resume", "--overwrite"]),
        ([*base, "--vgg_weights", out + ".pth"], ["VGG19 weights not found", "--vgg_weights none"]),
        ([*base, "--model", "gan"], ["argument --model: invalid choice: 'gan'"]),
        ([*base, "--model", "pix2pixhd"], ["model: unknown keys"]),
        ([*base, "--set", "train.niter_fix_global=2"], ["train.niter_fix_global: a setting of pix2pixHD's"]),
    ]
    if not HAS_GPU:
        train_cases += [
            ([*base, "--device", "cuda"], ["argument --device: cuda was asked for, but torch sees no GPU"]),
            ([*base, "--set", "train.device=cuda"], ["train.device (--device): cuda was asked for"]),
        ]
    trained = ["--checkpoint", s["checkpoint"], "--out", out]
    pose, photo = s["pose"], s["photo.jpg"]
    pair = ["--label", pose, "--exemplar", photo, "--exemplar_label", pose]
    test_cases = [
        (["--checkpoint", out + ".pt", "--out", out], ["--checkpoint: no file at"]),
        (["--checkpoint", s["corrupt.pt"], "--out", out], ["--checkpoint:", "corrupt.pt", not_ours]),
        (["--checkpoint", s["truncated.pt"], "--out", out], ["--checkpoint:", "truncated.pt", not_ours]),
        (["--checkpoint", s["foreign.pt"], "--out", out],
         ["--checkpoint:", "foreign.pt", "neither a train.py checkpoint nor converted public weights"]),
        ([*trained, "--public_G", s["corrupt.pt"]], ["--checkpoint, --public_G: not the public"]),
        (["--checkpoint", s["checkpoint"]], ["the following arguments are required: --out"]),
        ([*trained, "--device", "gpu"], ["argument --device: expected cpu, cuda or cuda:N, got 'gpu'"]),
        ([*trained, "--limit", "0"], ["argument --limit: expected an int >= 1, got 0"]),
        ([*trained, "--batch_size", "two"], ["argument --batch_size: expected an int, got 'two'"]),
        ([*trained, "--split", "val"], ["argument --split: invalid choice: 'val'"]),
        ([*trained, *pair, "--size", "30"], ["argument --size: expected a multiple of 8, got 30"]),
        ([*trained, *pair, "--pose_frame", "-2"], ["argument --pose_frame: expected a number > 0"]),
        ([*trained, "--label", pose], ["--label needs --exemplar"]),
        ([*trained, "--exemplar", photo], ["--exemplar and --exemplar_label go with --label"]),
        ([*trained, "--label", photo, "--exemplar", photo, "--exemplar_label", pose],
         ["label: expected an OpenPose"]),
        ([*trained, *pair[:-1], s["lonely_pose"]], ["pose subset file", "b_subset.txt"]),
        ([*trained, "--label", pose, "--exemplar", s["corrupt.jpg"], "--exemplar_label", pose],
         ["--exemplar: cannot read image", "corrupt.jpg"]),
        ([*trained, "--config", s["bad.yaml"]], ["--config", "not valid YAML"]),
        ([*trained, "--config", s["no_dataset.yaml"]], ["data.train: root:", "nowhere"]),
        (["--checkpoint", s["checkpoint"], "--out", s["not_a_folder"]], ["--out:", "is a file"]),
    ]
    if not HAS_GPU:
        test_cases.append(([*trained, "--device", "cuda"], ["argument --device: cuda was asked for"]))
    demo_cases = [
        (["--steps", "0"], ["argument --steps: expected an int >= 1, got 0"]),
        (["--held_out", "many"], ["argument --held_out: expected an int, got 'many'"]),
        (["--out", s["not_a_folder"]], ["--out:", "is a file"]),
        (["--out", out, "--set", "model.k=abc"], ["model.k: expected an int, got 'abc'"]),
        (["--out", out, "--set", "model.k=0"], ["model.k: expected an int >= 1, got 0"]),
    ]
    centres = ["--checkpoint", s["checkpoint"], "--out", out + ".npz"]
    cluster_cases = [
        (centres, ["--checkpoint:", "holds a cocosnet model"]),
        (["--checkpoint", s["corrupt.pt"], "--out", out + ".npz"], ["--checkpoint:", "corrupt.pt", not_ours]),
        ([*centres, "--k", "0"], ["argument --k: expected an int >= 1, got 0"]),
        (["--checkpoint", s["checkpoint"], "--out", s["not_a_folder"]], ["--out:", "exists", "--overwrite"]),
    ]
    pix2pixhd_demo_cases = [
        (["--k", "2"], ["argument --k: expected an int >= 3, got 2"]),
        (["--out", s["not_a_folder"]], ["--out:", "is a file"]),
    ]
    public, unreadable = ["--G", s["foreign.pt"], "--out", out + ".pt"], "not a checkpoint in the public"
    public_cases = [
        (["--corr", s["corrupt.pt"], *public], ["corr", "corrupt.pt", unreadable]),
        (["--corr", s["truncated.pt"], *public], ["corr", "truncated.pt", unreadable]),
        (["--corr", s["checkpoint"], *public], ["corr", unreadable, "UnpicklingError"]),
        (["--corr", out + ".pth", *public], ["corr", "no such file"]),
        (["--corr", s["foreign.pt"], *public], ["corr: not a public CoCosNet v2 corr state dict"]),
        (["--corr", s["foreign.pt"], "--out", out], ["the following arguments are required: --G"]),
        (["--corr", s["foreign.pt"], "--G", s["foreign.pt"], "--out", s["empty_folder"]],
         ["--out:", "is a folder"]),
    ]
    benchmark_cases = [
        ("bench_compile.py", ["--side", "30"], ["argument --side: expected a multiple of 8, got 30"]),
        ("bench_compile.py", ["--repeats", "0"], ["argument --repeats: expected an int >= 1"]),
        ("bench_gather_cuda.py", ["--k", "0"], ["argument --k: expected an int >= 1, got 0"]),
        ("bench_levels.py", ["--held_out", "0"], ["argument --held_out: expected an int >= 1"]),
        ("bench_levels.py", ["--set-name", "gru", "--variants", "x"], ["'x' is not in set 'gru'"]),
        ("bench_levels.py", ["--set", "model.k=abc"], ["model.k", "abc"]),
        ("bench_warp.py", ["--temperature", "0"], ["argument --temperature: expected a number > 0"]),
        ("bench_warp.py", ["--sides", "-4"], ["argument --sides: expected an int >= 1, got -4"]),
        ("bench_warp.py", ["--methods", "magic"], ["argument --methods: invalid choice: 'magic'"]),
        ("public_parity.py", ["--public-dir", s["empty_folder"]], ["--public-dir:", "not a checkout of"]),
        ("public_parity.py", [], ["the following arguments are required: --public-dir"]),
        ("time_patch_match.py", [out + "_nowhere", "1"], ["argument package_dir: no folder at"]),
        ("time_patch_match.py", [str(ROOT), "0"], ["argument threads: expected an int >= 1, got 0"]),
    ]
    if not HAS_GPU:
        benchmark_cases += [
            ("bench_gather_cuda.py", [], ["needs a GPU"]),
            ("bench_warp.py", ["--device", "cuda"], ["--device cuda: no GPU is visible"]),
        ]
    return [
        *(("train.py", argv, expected) for argv, expected in train_cases),
        *(("test.py", argv, expected) for argv, expected in test_cases),
        *(("demo.py", argv, expected) for argv, expected in demo_cases),
        *(("cluster_features.py", argv, expected) for argv, expected in cluster_cases),
        *(("demo_pix2pixhd.py", argv, expected) for argv, expected in pix2pixhd_demo_cases),
        *((PUBLIC, argv, expected) for argv, expected in public_cases),
        *((f"benchmarks/{script}", argv, expected) for script, argv, expected in benchmark_cases),
    ]


def test_every_program_answers_a_mistake_with_one_line(files, tmp_path):
    """Every case in one driver process (see the module docstring)."""
    every = cases(files)
    cases_path, results_path = tmp_path / "cases.json", tmp_path / "results.json"
    cases_path.write_text(json.dumps([[program, argv] for program, argv, _ in every]))
    done = subprocess.run([sys.executable, "-c", DRIVER, str(cases_path), str(results_path)], cwd=ROOT,
                          env=environment(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(results_path.read_text())
    failures = []
    for (program, argv, expected), result in zip(every, results, strict=True):
        try:
            assert_one_line_error(program, result["code"], result["stderr"], expected)
        except AssertionError as failure:
            failures.append(f"{program} {' '.join(argv)}\n{failure}")
    assert not failures, "\n\n".join(failures)
    # Nothing was trained or written into the folder of the run the cases pointed at.
    assert [p.name for p in checkpoint.list_checkpoints(files["run"] / "checkpoints")] == ["step_00000000.pt"]


@pytest.mark.parametrize(
    ("program", "argument"),
    [("train.py", "model.k=abc"), ("test.py", "corrupt.pt"), ("demo.py", "--steps"), (PUBLIC, "corrupt.pt"),
     ("benchmarks/bench_warp.py", "--temperature"), ("cluster_features.py", "corrupt.pt")],
)
def test_a_mistake_ends_the_process_with_one_line(files, program, argument):
    """One case per program as its own process (the first of its cases with an argument ending in
    ``argument``): what the interpreter itself prints and returns."""
    argv, expected = next(
        (a, e) for p, a, e in cases(files) if p == program and any(x.endswith(argument) for x in a)
    )
    command = [sys.executable, *(PUBLIC.split() if program == PUBLIC else [program]), *argv]
    done = subprocess.run(command, cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=300)
    assert_one_line_error(program, done.returncode, done.stderr, expected)


def test_a_second_run_refuses_the_folder_unless_resumed_or_overwritten(files, tmp_path, capsys):
    """train.py twice into one folder: refused without a flag (the first run untouched),
    ``--resume`` continues from the first run's newest checkpoint, ``--overwrite`` starts again
    from step 0 and leaves none of the first run's files in the checkpoints folder."""
    out = tmp_path / "run"
    args = ["--config", str(files["tiny.yaml"]), "--out", str(out)]
    folder = out / "checkpoints"
    train.main([*args, "--max_steps", "2"])
    first = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert sorted(first) == ["step_00000001.pt", "step_00000002.pt"]

    with pytest.raises(train.RunFolderError, match="already holds a run .*--resume.*--overwrite"):
        train.main([*args, "--max_steps", "2"])
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == first

    capsys.readouterr()
    final = train.main([*args, "--max_steps", "3", "--resume"])
    assert f"resumed from {folder / 'step_00000002.pt'} at step 2," in capsys.readouterr().out
    assert checkpoint.load(final)["step"] == 3
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.name in first} == first

    step_one = checkpoint.load(folder / "step_00000001.pt")
    final = train.main([*args, "--max_steps", "1", "--overwrite"])
    said = capsys.readouterr().out
    removed = "3 checkpoints, 2 TensorBoard logs, 3 grids"
    assert f"--overwrite: removed the earlier run's {removed} from {out}" in said
    assert [p.name for p in folder.iterdir()] == ["step_00000001.pt"]
    assert folder / "step_00000001.pt" == final
    again = checkpoint.load(final)
    assert again["step"] == 1
    # A new run from step 0: the same first step as the first run's (same seed, one thread).
    assert all(torch.equal(again["model"][k], v) for k, v in step_one["model"].items())
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert [p.name for p in (out / "grids").iterdir()] == ["step_00000001.png"]
