"""bilinear_scores: the reference's definition, the compiled kernel against it, and its ties to
patch_match's scores (integer coordinates) and to bilinear_weighted_gather (its logits)."""

from __future__ import annotations

import pytest
import torch

import cocosnet_ops
from cocosnet_ops import reference

compiled_only = pytest.mark.skipif(not cocosnet_ops.HAS_COMPILED, reason="cocosnet_ops._C is not built")


def inputs(dtype=torch.float64, seed=0, k=3, query=(6, 7), key=(4, 9), batch=2, channels=5):
    """Unit features and coordinates that reach one pixel past every border of the key map."""
    g = torch.Generator().manual_seed(seed)
    fq = torch.nn.functional.normalize(torch.randn(batch, channels, *query, generator=g, dtype=dtype), dim=1)
    fk = torch.nn.functional.normalize(torch.randn(batch, channels, *key, generator=g, dtype=dtype), dim=1)
    span = torch.tensor([key[1] + 1.0, key[0] + 1.0], dtype=dtype)
    coords = torch.rand(batch, k, *query, 2, generator=g, dtype=dtype) * span - 1
    return fq, fk, coords


def integer_coords(fq, fk, k, seed=0):
    """Random integer key positions inside the map, as flat indices and as (x, y) coordinates."""
    g = torch.Generator().manual_seed(seed)
    wk = fk.shape[3]
    cand = torch.randint(0, fk.shape[2] * wk, (fq.shape[0], k, *fq.shape[2:]), generator=g, dtype=torch.int32)
    return cand, torch.stack([cand % wk, cand // wk], dim=-1).to(fq.dtype)


# ----------------------------------------------------------------------------- the definition


def test_reference_by_hand_at_patch_size_1():
    """Border-clamped bilinear sampling, written out for single pixels."""
    gen = torch.Generator().manual_seed(3)
    fq, fk = torch.randn(1, 5, 2, 3, generator=gen), torch.randn(1, 5, 4, 6, generator=gen)
    coords = torch.tensor([[0.0, 0.0], [5.0, 3.0], [2.25, 1.5], [-1.0, 9.0], [4.5, 0.75], [1.0, 2.0]])
    coords = coords.view(1, 1, 2, 3, 2)
    scores = reference.bilinear_scores(fq, fk, coords)
    for i in range(2):
        for j in range(3):
            x, y = coords[0, 0, i, j].tolist()
            x, y = min(max(x, 0), 5), min(max(y, 0), 3)
            x0, y0 = int(x), int(y)
            x1, y1 = min(x0 + 1, 5), min(y0 + 1, 3)
            ax, ay = x - x0, y - y0
            sample = (
                fk[0, :, y0, x0] * (1 - ax) * (1 - ay)
                + fk[0, :, y0, x1] * ax * (1 - ay)
                + fk[0, :, y1, x0] * (1 - ax) * ay
                + fk[0, :, y1, x1] * ax * ay
            )
            torch.testing.assert_close(
                scores[0, 0, i, j], (fq[0, :, i, j] * sample).sum(), rtol=1e-5, atol=1e-5
            )


def test_reference_by_hand_with_a_window():
    """A 3x3 window at a corner of both maps: only the in-map terms count, divided by 9."""
    gen = torch.Generator().manual_seed(5)
    fq, fk = (
        torch.randn(1, 4, 3, 3, generator=gen, dtype=torch.float64),
        torch.randn(1, 4, 3, 4, generator=gen, dtype=torch.float64),
    )
    coords = torch.zeros(1, 1, 3, 3, 2, dtype=torch.float64)
    coords[0, 0, 0, 0] = torch.tensor([0.5, 0.0], dtype=torch.float64)  # query (0, 0) at key (x 0.5, y 0)
    got = reference.bilinear_scores(fq, fk, coords, patch_size=3)[0, 0, 0, 0]

    def key_at(x, y):
        return 0.5 * fk[0, :, y, int(x)] + 0.5 * fk[0, :, y, int(x) + 1]

    # Offsets (dx, dy) in {0, 1}^2 keep both the query pixel and the key position inside.
    want = sum((fq[0, :, dy, dx] * key_at(0.5 + dx, dy)).sum() for dy in (0, 1) for dx in (0, 1)) / 9
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("patch_size", [1, 3, 5])
def test_at_integer_coordinates_equals_patch_scores(patch_size, backend):
    fq, fk, _ = inputs(k=4)
    cand, coords = integer_coords(fq, fk, 4)
    got = cocosnet_ops.bilinear_scores(fq, fk, coords, patch_size, backend=backend)
    torch.testing.assert_close(got, reference.patch_scores(fq, fk, cand, patch_size), rtol=1e-12, atol=1e-14)


def test_at_patch_size_1_equals_the_gathers_inner_products(backend):
    """What bilinear_weighted_gather turns into logits: <query, key sampled at coords>."""
    fq, fk, coords = inputs()
    logits = (fq.unsqueeze(2) * reference.bilinear_sample(fk, coords)).sum(1)
    got = cocosnet_ops.bilinear_scores(fq, fk, coords, backend=backend)
    torch.testing.assert_close(got, logits, rtol=1e-12, atol=1e-14)


def test_the_gather_weights_are_the_softmax_of_the_scores(backend):
    """Warping a one-hot value per candidate position reads the gather's softmax weights back;
    they must be softmax(bilinear_scores / T)."""
    fq, fk, _ = inputs(k=2, query=(3, 4), key=(3, 4), batch=1)
    cand, coords = integer_coords(fq, fk, 2, seed=1)
    cand[:, 1] = (cand[:, 0] + 1) % 12  # two distinct positions per pixel
    coords = torch.stack([cand % 4, cand // 4], dim=-1).to(fq.dtype)
    temperature = 0.7
    scores = cocosnet_ops.bilinear_scores(fq, fk, coords, backend=backend)
    one_hot = torch.eye(12, dtype=fq.dtype).view(1, 12, 3, 4)  # value channel c marks key pixel c
    warp = cocosnet_ops.bilinear_weighted_gather(fq, fk, one_hot, coords, temperature, backend=backend)
    weights = warp.gather(1, cand.long())
    torch.testing.assert_close(weights, torch.softmax(scores / temperature, dim=1), rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- the kernel


@compiled_only
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("patch_size", [1, 3, 5])
def test_compiled_equals_reference(dtype, patch_size):
    tol = {"rtol": 1e-12, "atol": 1e-14} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-6}
    for seed, query, key in ((0, (6, 7), (4, 9)), (1, (5, 3), (8, 6)), (2, (1, 1), (1, 1))):
        fq, fk, coords = inputs(dtype, seed, query=query, key=key)
        got = cocosnet_ops.bilinear_scores(fq, fk, coords, patch_size, backend="cpu")
        assert got.dtype == dtype and got.shape == coords.shape[:4]
        torch.testing.assert_close(got, reference.bilinear_scores(fq, fk, coords, patch_size), **tol)


@compiled_only
@pytest.mark.parametrize("patch_size", [1, 3])
def test_compiled_at_integer_coordinates_is_bitwise_patch_match(patch_size):
    """The kernel sums like the search's patch_score, so patch_match's scores come back exactly."""
    fq, fk, _ = inputs(torch.float32, seed=4, query=(9, 8), key=(7, 10))
    nnf, scores = cocosnet_ops.patch_match(fq, fk, k=4, iters=2, patch_size=patch_size, backend="cpu")
    coords = cocosnet_ops.nnf.nnf_to_coords(nnf, fk.shape[-2:])
    assert torch.equal(cocosnet_ops.bilinear_scores(fq, fk, coords, patch_size, backend="cpu"), scores)


def test_not_differentiable_and_half_is_float32(backend):
    fq, fk, coords = inputs(torch.float32)
    got = cocosnet_ops.bilinear_scores(
        fq.requires_grad_(), fk.requires_grad_(), coords.requires_grad_(), 3, backend=backend
    )
    assert not got.requires_grad
    half = cocosnet_ops.bilinear_scores(
        fq.detach().half(), fk.detach().half(), coords.detach(), backend=backend
    )
    assert half.dtype == torch.float32
    want = reference.bilinear_scores(fq.detach().half().float(), fk.detach().half().float(), coords.detach())
    torch.testing.assert_close(half, want)


@compiled_only
def test_direct_op_call_checks_patch_size():
    fq, fk, coords = inputs(torch.float32)
    for bad in (0, 4, 2**31 + 1):
        with pytest.raises(ValueError, match="^patch_size"):
            torch.ops.cocosnet_ops.bilinear_scores(fq, fk, coords, bad)


@compiled_only
def test_opcheck():
    fq, fk, coords = inputs(torch.float32)
    for patch_size in (1, 3):
        torch.library.opcheck(torch.ops.cocosnet_ops.bilinear_scores.default, (fq, fk, coords, patch_size))


def test_torch_compile_fullgraph_matches_eager(backend):
    fq, fk, coords = inputs(torch.float32)

    def scores(query, key, xy):
        return cocosnet_ops.bilinear_scores(query, key, xy + 0.25, 3, backend=backend)

    compiled = torch.compile(scores, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(fq, fk, coords), scores(fq, fk, coords))
