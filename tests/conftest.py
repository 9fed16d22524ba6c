"""Shared helpers of the op tests: the backends to run on and seeded feature makers.

Any test that takes a ``backend`` argument is parametrised over :data:`BACKENDS` by
``pytest_generate_tests`` (a parametrisation, not a function-scoped fixture, so hypothesis
tests can take it too). The feature makers are session-scoped fixtures returning plain
functions, for the same reason.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

# Without a GPU the triton backend's tests (test_triton.py) run in Triton's interpreter, which
# must be chosen before triton is first imported, and importing cocosnet_ops imports it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import cocosnet_ops  # noqa: E402
from cocosnet_ops import reference  # noqa: E402
from cocosnet_ops.ops import COMPILED_LOAD_ERROR  # noqa: E402

# "torch" (reference.py) always works; "cpu" needs the compiled extension cocosnet_ops._C.
BACKENDS = ["torch"] + (["cpu"] if cocosnet_ops.HAS_COMPILED else [])


def pytest_configure(config):
    """Where the kernels must exist (CI sets COCOSNET_REQUIRE_COMPILED=1), a failed build must
    stop the run, not turn into skipped kernel tests and a suite that checks the reference
    against itself."""
    if os.environ.get("COCOSNET_REQUIRE_COMPILED") == "1" and not cocosnet_ops.HAS_COMPILED:
        raise pytest.UsageError(f"COCOSNET_REQUIRE_COMPILED=1, but {COMPILED_LOAD_ERROR}")


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
