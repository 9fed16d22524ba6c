"""The Triton kernels (backend="triton") against the reference and the cpu kernels.

Without a GPU they run on CPU tensors in Triton's interpreter: conftest.py sets
TRITON_INTERPRET=1 before anything imports triton; the kernels are also compiled for a GPU
there, to catch what the interpreter lets pass. With a GPU (and TRITON_INTERPRET unset) the
same tests run the compiled kernels on CUDA tensors.

On integer-valued features every score is exact whatever the order of the sums, so the search
must give bitwise the indices and scores of the cpu kernels and of the reference.
"""

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")

from kernel_cases import check_within_bound, init_with_holes, integer_features, unit_features  # noqa: E402

import cocosnet_ops  # noqa: E402
from cocosnet_ops import ops, reference  # noqa: E402
from cocosnet_ops import triton as triton_kernels  # noqa: E402

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")
DEVICE = torch.device("cpu" if INTERPRETED else "cuda")
pytestmark = [
    pytest.mark.triton,
    pytest.mark.skipif(
        bool(triton_kernels.unavailable(DEVICE.type)), reason=triton_kernels.unavailable(DEVICE.type)
    ),
]


def on_device(*tensors):
    return tuple(t.to(DEVICE) for t in tensors)


def assert_equal(got, want):
    """Bitwise equality of a device result with a CPU one."""
    assert torch.equal(got.cpu(), want), (got.cpu() - want).abs().max()


# ----------------------------------------------------------------------------- patch_match

SEARCH_CASES = [
    # (B, C, Hq, Wq, Hk, Wk, k, iters, patch_size, random_search, seed)
    (2, 8, 8, 8, 8, 8, 4, 3, 1, True, 0),
    (2, 5, 9, 11, 8, 13, 6, 4, 1, True, 7),
    (2, 3, 10, 7, 6, 12, 5, 2, 3, True, 2**32 - 1),
    (1, 9, 6, 10, 10, 6, 3, 2, 1, False, 0),
    (1, 2, 3, 4, 2, 3, 6, 2, 3, True, 1),  # k equals the key pixel count: the exhaustive fill
    (2, 32, 24, 24, 20, 16, 16, 3, 1, True, 99),
]


@pytest.mark.parametrize("case", SEARCH_CASES, ids=str)
def test_patch_match_equals_cpu_and_reference(case):
    B, C, Hq, Wq, Hk, Wk, k, iters, patch_size, random_search, seed = case
    g = torch.Generator().manual_seed(sum(case[:10]))
    fq, fk = integer_features(g, B, C, Hq, Wq), integer_features(g, B, C, Hk, Wk)
    args = dict(k=k, iters=iters, patch_size=patch_size, random_search=random_search, seed=seed)
    nnf, scores = cocosnet_ops.patch_match(*on_device(fq, fk), backend="triton", **args)
    assert nnf.dtype == torch.int32 and nnf.device.type == DEVICE.type
    want = cocosnet_ops.patch_match(fq, fk, backend="torch", **args)
    assert_equal(nnf, want[0])
    assert_equal(scores, want[1])
    if cocosnet_ops.HAS_COMPILED:
        cpu = cocosnet_ops.patch_match(fq, fk, backend="cpu", **args)
        assert_equal(nnf, cpu[0])


def test_patch_match_with_init_jumps_and_float64_equals_reference():
    g = torch.Generator().manual_seed(3)
    fq, fk = integer_features(g, 2, 6, 10, 12, dtype=torch.float64), integer_features(g, 2, 6, 9, 7)
    fk = fk.double()
    init = torch.randint(-5, 63, (2, 9, 10, 12), generator=g, dtype=torch.int32)
    for extra in ({}, {"jump": [3, 1]}):
        args = dict(k=5, iters=3, **extra)
        got = cocosnet_ops.patch_match(*on_device(fq, fk), init=init.to(DEVICE), backend="triton", **args)
        want = cocosnet_ops.patch_match(fq, fk, init=init, backend="torch", **args)
        assert got[1].dtype == torch.float64
        assert_equal(got[0], want[0])
        assert_equal(got[1], want[1])


BOUNDED_CASES = [
    # (search case, init candidates per pixel, max_radius)
    (SEARCH_CASES[1], 3, 1),
    (SEARCH_CASES[2], 40, 2),  # the window reads its init list in more than one chunk
    (SEARCH_CASES[3], 5, 0),
    (SEARCH_CASES[4], 2, 1),
]


@pytest.mark.parametrize(("case", "init_candidates", "max_radius"), BOUNDED_CASES, ids=str)
def test_bounded_patch_match_equals_cpu_and_reference(case, init_candidates, max_radius):
    B, C, Hq, Wq, Hk, Wk, k, iters, patch_size, random_search, seed = case
    g = torch.Generator().manual_seed(sum(case[:10]) + max_radius)
    fq, fk = integer_features(g, B, C, Hq, Wq), integer_features(g, B, C, Hk, Wk)
    init = init_with_holes(g, B, init_candidates, Hq, Wq, Hk * Wk)
    args = dict(k=k, iters=iters, patch_size=patch_size, random_search=random_search, seed=seed,
                max_radius=max_radius)
    nnf, scores = cocosnet_ops.patch_match(*on_device(fq, fk), init=init.to(DEVICE), backend="triton", **args)
    want = cocosnet_ops.patch_match(fq, fk, init=init, backend="torch", **args)
    assert_equal(nnf, want[0])
    assert_equal(scores, want[1])
    check_within_bound(nnf.cpu(), init, Wk, max_radius, k)
    if cocosnet_ops.HAS_COMPILED:
        assert_equal(nnf, cocosnet_ops.patch_match(fq, fk, init=init, backend="cpu", **args)[0])


@st.composite
def bounded_cases(draw):
    B, C = draw(st.integers(1, 2)), draw(st.integers(1, 4))
    Hq, Wq, Hk, Wk = (draw(st.integers(1, 8)) for _ in range(4))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    fq, fk = integer_features(g, B, C, Hq, Wq), integer_features(g, B, C, Hk, Wk)
    init = init_with_holes(g, B, draw(st.integers(0, 6)), Hq, Wq, Hk * Wk, draw(st.sampled_from([0, 0.3, 1])))
    args = dict(
        k=draw(st.integers(1, min(6, Hk * Wk))),
        iters=draw(st.integers(0, 3)),
        patch_size=draw(st.sampled_from([1, 3])),
        random_search=draw(st.booleans()),
        seed=draw(st.integers(0, 2**32 - 1)),
        max_radius=draw(st.integers(0, 3)),
    )
    return fq, fk, init, args


@settings(max_examples=max(2, settings().max_examples // 5))
@given(case=bounded_cases())
def test_bounded_patch_match_properties(case):
    """Hypothesis: the matches stay within max_radius of the init and equal the reference's."""
    fq, fk, init, args = case
    nnf, scores = cocosnet_ops.patch_match(*on_device(fq, fk), init=init.to(DEVICE), backend="triton", **args)
    want = cocosnet_ops.patch_match(fq, fk, init=init, backend="torch", **args)
    assert_equal(nnf, want[0])
    assert_equal(scores, want[1])
    check_within_bound(nnf.cpu(), init, fk.shape[3], args["max_radius"], args["k"])


def test_a_radius_past_the_key_map_is_the_unbounded_search():
    g = torch.Generator().manual_seed(12)
    fq, fk = on_device(unit_features(g, 2, 6, 7, 6), unit_features(g, 2, 6, 6, 9))
    init = init_with_holes(g, 2, 4, 7, 6, 6 * 9).to(DEVICE)
    args = dict(k=4, iters=2, init=init, patch_size=3, seed=4, backend="triton")
    bounded = cocosnet_ops.patch_match(fq, fk, max_radius=9, **args)
    unbounded = cocosnet_ops.patch_match(fq, fk, **args)
    assert torch.equal(bounded[0], unbounded[0]) and torch.equal(bounded[1], unbounded[1])


@pytest.mark.parametrize("candidates", [1, 5, 40])
def test_evaluate_candidates_equals_reference(candidates):
    g = torch.Generator().manual_seed(candidates)
    fq, fk = integer_features(g, 2, 4, 6, 7), integer_features(g, 2, 4, 5, 9)
    cand = torch.randint(-2, 45, (2, candidates, 6, 7), generator=g, dtype=torch.int32)
    for patch_size in (1, 3):
        got = cocosnet_ops.evaluate_candidates(*on_device(fq, fk, cand), 4, patch_size, backend="triton")
        want = cocosnet_ops.evaluate_candidates(fq, fk, cand, 4, patch_size, backend="torch")
        assert_equal(got[0], want[0])
        assert_equal(got[1], want[1])


def test_patch_match_float_features_are_a_valid_top_k():
    """Real-valued features: sums differ from the reference's in the last bits, so check the
    invariants instead: scores are the recomputed patch scores, sorted, indices unique and in range."""
    g = torch.Generator().manual_seed(5)
    fq, fk = unit_features(g, 2, 16, 14, 12), unit_features(g, 2, 16, 10, 15)
    for patch_size in (1, 3):
        nnf, scores = cocosnet_ops.patch_match(*on_device(fq, fk), k=6, iters=3, patch_size=patch_size,
                                               backend="triton")
        nnf, scores = nnf.cpu(), scores.cpu()
        want = reference.patch_scores(fq, fk, nnf, patch_size)
        torch.testing.assert_close(scores, want, rtol=1e-5, atol=1e-6)
        assert bool((scores[:, :-1] >= scores[:, 1:]).all())
        ordered = nnf.sort(dim=1).values
        assert bool((ordered[:, 1:] != ordered[:, :-1]).all())
        assert int(nnf.min()) >= 0 and int(nnf.max()) < 10 * 15


def test_patch_match_is_deterministic_and_batch_independent():
    g = torch.Generator().manual_seed(6)
    fq, fk = on_device(unit_features(g, 3, 8, 12, 11), unit_features(g, 3, 8, 9, 13))
    first = cocosnet_ops.patch_match(fq, fk, k=5, iters=3, seed=9, backend="triton")
    second = cocosnet_ops.patch_match(fq, fk, k=5, iters=3, seed=9, backend="triton")
    alone = cocosnet_ops.patch_match(fq[1:2], fk[1:2], k=5, iters=3, seed=9, backend="triton")
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert torch.equal(first[0][1:2], alone[0]) and torch.equal(first[1][1:2], alone[1])


# ----------------------------------------------------------------------------- bilinear_scores


def coords_for(generator, B, K, Hq, Wq, Hk, Wk, dtype):
    """(x, y) positions reaching one pixel past every border of the key map."""
    span = torch.tensor([Wk + 1.0, Hk + 1.0], dtype=dtype)
    return torch.rand(B, K, Hq, Wq, 2, generator=generator, dtype=dtype) * span - 1


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("patch_size", [1, 3])
def test_bilinear_scores_equal_reference(dtype, patch_size):
    tol = {"rtol": 1e-12, "atol": 1e-13} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-6}
    g = torch.Generator().manual_seed(patch_size)
    fq, fk = unit_features(g, 2, 5, 6, 7, dtype=dtype), unit_features(g, 2, 5, 4, 9, dtype=dtype)
    coords = coords_for(g, 2, 3, 6, 7, 4, 9, dtype)
    got = cocosnet_ops.bilinear_scores(*on_device(fq, fk, coords), patch_size, backend="triton")
    assert got.dtype == dtype
    torch.testing.assert_close(got.cpu(), reference.bilinear_scores(fq, fk, coords, patch_size), **tol)


@pytest.mark.parametrize("patch_size", [1, 3])
def test_bilinear_scores_at_integer_coordinates_are_patch_match_scores(patch_size):
    g = torch.Generator().manual_seed(4)
    fq, fk = on_device(integer_features(g, 2, 4, 9, 8), integer_features(g, 2, 4, 7, 10))
    nnf, scores = cocosnet_ops.patch_match(fq, fk, k=4, iters=2, patch_size=patch_size, backend="triton")
    coords = cocosnet_ops.nnf.nnf_to_coords(nnf, fk.shape[-2:])
    assert torch.equal(cocosnet_ops.bilinear_scores(fq, fk, coords, patch_size, backend="triton"), scores)


# ----------------------------------------------------------------------------- gathers


def gather_inputs(dtype, B=2, C=6, Cv=3, query=(7, 9), key=(8, 5), k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    fq = unit_features(g, B, C, *query, dtype=dtype)
    fk = unit_features(g, B, C, *key, dtype=dtype)
    v = torch.rand(B, Cv, *key, generator=g, dtype=dtype)
    nnf = torch.randint(0, key[0] * key[1], (B, k, *query), generator=g, dtype=torch.int32)
    coords = coords_for(g, B, k, *query, *key, dtype)
    return fq, fk, v, nnf, coords


def warps(which, query, key, value, index, backend):
    gather = cocosnet_ops.weighted_gather if which == "nnf" else cocosnet_ops.bilinear_weighted_gather
    return gather(query, key, value, index, 0.2, backend=backend)


def forward_backward(which, inputs, backend, grad_out):
    """The warp and the gradients of <warp, grad_out> to every differentiable input."""
    fq, fk, v, nnf, coords = (t.detach().clone() for t in inputs)
    leaves = [fq, fk, v] + ([coords] if which == "coords" else [])
    for t in leaves:
        t.requires_grad_()
    out = warps(which, fq, fk, v, nnf if which == "nnf" else coords, backend)
    return (out.detach(), *torch.autograd.grad(out, leaves, grad_out))


@pytest.mark.parametrize("which", ["nnf", "coords"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gathers_forward_and_backward_equal_reference(which, dtype):
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-5}
    inputs = gather_inputs(dtype, C=32, query=(12, 10), key=(9, 14), k=16)
    grad_out = torch.randn(2, 3, 12, 10, generator=torch.Generator().manual_seed(1), dtype=dtype)
    got = forward_backward(which, on_device(*inputs), "triton", grad_out.to(DEVICE))
    want = forward_backward(which, inputs, "torch", grad_out)
    for name, a, b in zip(("out", "query", "key", "value", "coords"), got, want, strict=False):
        torch.testing.assert_close(a.cpu(), b, **tol, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("which", ["nnf", "coords"])
def test_gathers_gradcheck(which):
    small = gather_inputs(torch.float64, B=1, C=3, Cv=2, query=(3, 4), key=(4, 3), k=3)
    fq, fk, v, nnf, coords = on_device(*small)
    index = nnf if which == "nnf" else coords
    leaves = [t.requires_grad_() for t in ([fq, fk, v] + ([coords] if which == "coords" else []))]

    def warp(*args):
        query, key, value = args[:3]
        return warps(which, query, key, value, args[3] if which == "coords" else index, "triton")

    # On a GPU the key and value gradients are added with atomics, in an order that varies.
    assert torch.autograd.gradcheck(warp, tuple(leaves), fast_mode=True, nondet_tol=1e-12)


@pytest.mark.parametrize("which", ["nnf", "coords"])
def test_deterministic_backward_is_bitwise_stable(which):
    """torch.use_deterministic_algorithms: each key pixel sums its entries in a fixed order."""
    inputs = on_device(*gather_inputs(torch.float32, C=8, k=6, seed=3))
    grad_out = torch.randn(2, 3, 7, 9, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    atomic = forward_backward(which, inputs, "triton", grad_out)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first = forward_backward(which, inputs, "triton", grad_out)
        second = forward_backward(which, inputs, "triton", grad_out)
    finally:
        torch.use_deterministic_algorithms(previous)
    for a, b, c in zip(first, second, atomic, strict=True):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)


def test_half_precision_warps_compute_in_float32():
    fq, fk, v, nnf, coords = gather_inputs(torch.float32)
    for which, index in (("nnf", nnf), ("coords", coords)):
        got = warps(which, *on_device(fq.half(), fk.half(), v.half(), index), "triton")
        assert got.dtype == torch.float16
        want = warps(which, fq.half().float(), fk.half().float(), v.half().float(), index, "torch")
        torch.testing.assert_close(got.cpu().float(), want, rtol=1e-3, atol=1e-3)


# ----------------------------------------------------------------------------- torch.library


def opcheck_cases():
    g = torch.Generator().manual_seed(2)
    fq, fk = on_device(unit_features(g, 2, 4, 6, 5), unit_features(g, 2, 4, 5, 7))
    v = torch.randn(2, 3, 5, 7, generator=g).to(DEVICE)
    nnf = cocosnet_ops.patch_match(fq, fk, k=4, backend="triton")[0]
    coords = (torch.rand(2, 4, 6, 5, 2, generator=g) * 4).to(DEVICE)
    grad_out = torch.randn(2, 3, 6, 5, generator=g).to(DEVICE)
    tops = torch.ops.cocosnet_ops_triton
    grads = lambda *ts: tuple(t.clone().requires_grad_() for t in ts)  # noqa: E731
    return {
        "patch_match": (tops.patch_match.default, (fq, fk, 4, 3, None, 1, [2, 1], True, 0)),
        "patch_match_init": (tops.patch_match.default, (fq, fk, 3, 2, nnf, 3, [1], False, 5)),
        "patch_match_bounded": (tops.patch_match.default, (fq, fk, 3, 2, nnf, 1, [2, 1], True, 5, 1)),
        "evaluate_candidates": (tops.evaluate_candidates.default, (fq, fk, nnf, 3, 1)),
        "bilinear_scores": (tops.bilinear_scores.default, (fq, fk, coords, 3)),
        "weighted_gather": (tops.weighted_gather.default, (*grads(fq, fk, v), nnf, 0.1)),
        "bilinear_weighted_gather": (tops.bilinear_weighted_gather.default, (*grads(fq, fk, v, coords), 0.1)),
        "weighted_gather_backward": (tops.weighted_gather_backward.default, (grad_out, fq, fk, v, nnf, 0.1)),
        "bilinear_weighted_gather_backward": (
            tops.bilinear_weighted_gather_backward.default,
            (grad_out, fq, fk, v, coords, 0.1),
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "patch_match",
        "patch_match_init",
        "patch_match_bounded",
        "evaluate_candidates",
        "bilinear_scores",
        "weighted_gather",
        "bilinear_weighted_gather",
        "weighted_gather_backward",
        "bilinear_weighted_gather_backward",
    ],
)
def test_opcheck(case):
    op, args = opcheck_cases()[case]
    torch.library.opcheck(op, args)


def test_torch_compile_fullgraph_matches_eager():
    g = torch.Generator().manual_seed(4)
    fq, fk = on_device(unit_features(g, 1, 8, 12, 10), unit_features(g, 1, 8, 9, 11))
    v = torch.rand(1, 3, 9, 11, generator=g).to(DEVICE)

    def warp(query, key, value):
        nnf, scores = cocosnet_ops.patch_match(query, key, k=4, iters=3, backend="triton")
        nnf, scores = cocosnet_ops.patch_match(query, key, 4, 2, nnf, max_radius=1, backend="triton")
        width = key.shape[-1]
        coords = torch.stack([nnf % width, nnf // width], dim=-1).to(query.dtype) + 0.25
        moved = cocosnet_ops.bilinear_scores(query, key, coords, backend="triton")
        out = cocosnet_ops.weighted_gather(query, key, value, nnf, 0.05, backend="triton")
        moved_out = cocosnet_ops.bilinear_weighted_gather(query, key, value, coords, 0.05, backend="triton")
        return out + moved_out, moved

    compiled = torch.compile(warp, fullgraph=True, backend="aot_eager")
    for a, b in zip(compiled(fq, fk, v), warp(fq, fk, v), strict=True):
        torch.testing.assert_close(a, b)
    q = fq.clone().requires_grad_()
    compiled(q, fk, v)[0].sum().backward()
    assert q.grad is not None and q.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- backend choice


def test_automatic_choice_never_picks_triton_on_cpu():
    for op in sorted(triton_kernels.OPS):
        assert ops._choose_backend(None, torch.device("cpu"), op) in ("cpu", "torch")


@pytest.mark.parametrize("op", ["nnf_upsample", "exact_knn", "dense_warp"])
def test_ops_without_triton_kernels_say_so(op):
    with pytest.raises(ValueError, match=rf"^backend: 'triton' has no kernel for {op}"):
        ops._choose_backend("triton", DEVICE, op)


def test_triton_on_cpu_without_the_interpreter_is_a_clear_error():
    """A fresh process (triton and the kernels are loaded once per process), TRITON_INTERPRET
    unset, then set too late: after importing cocosnet_ops, which imports triton."""
    script = (
        "import os, torch, cocosnet_ops\n"
        "x = torch.ones(1, 2, 3, 3)\n"
        "for late in (False, True):\n"
        "    os.environ.update({'TRITON_INTERPRET': '1'} if late else {})\n"
        "    try:\n"
        "        cocosnet_ops.patch_match(x, x, k=2, backend='triton')\n"
        "    except ValueError as e:\n"
        "        print(e)\n"
    )
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=root)
    assert done.returncode == 0, done.stderr
    unset, late = done.stdout.splitlines()
    assert unset.startswith("backend: 'triton' is not available here (Triton runs on CPU tensors only")
    assert late.startswith("backend: 'triton' is not available here (TRITON_INTERPRET=1 was set after triton")


@pytest.mark.skipif(not INTERPRETED, reason="on a GPU every test compiles the kernels")
def test_kernels_compile_for_a_gpu():
    """The interpreter checks less than the compiler: compile every launch for sm_90 (see
    triton_gpu_compile.py), in a process where the kernels load without the interpreter."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    script = os.path.join(root, "tests", "triton_gpu_compile.py")
    done = subprocess.run([sys.executable, script], capture_output=True, text=True, env=env, cwd=root)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
