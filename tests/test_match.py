"""cocosnet_ops.match (the coarse-to-fine search in one call) and share_matches, the op its
neighbour rounds run. Quality is measured against exact kNN in float64 and recomputed scores,
so nothing depends on how a processor rounds float32 matmuls."""

import importlib
import math

import pytest
import torch
import torch.nn.functional as F
from kernel_cases import integer_features

import cocosnet_ops
from cocosnet_ops import reference

match_module = importlib.import_module("cocosnet_ops.match")
pytestmark = pytest.mark.skipif(not cocosnet_ops.HAS_COMPILED, reason="cocosnet_ops._C is not built")


def smooth_features(generator, batch, channels, height, width, sigma=2.0, dtype=torch.float64):
    """L2-normalised Gaussian-filtered noise: spatially coherent, like real feature maps."""
    radius = math.ceil(3 * sigma)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    noise = torch.randn(
        batch, channels, height + 2 * radius, width + 2 * radius, generator=generator, dtype=dtype
    )
    weight = kernel.to(dtype)
    noise = F.conv2d(noise, weight.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    noise = F.conv2d(noise, weight.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.normalize(noise, dim=1)


def deformed_pair(generator, batch, channels, query_size, key_size):
    """A query map and a key map of another size showing the same smooth content, the key with
    noise: every query pixel has a best match, but not an obvious one."""
    side = 2 * max(*query_size, *key_size)
    canvas = smooth_features(generator, batch, channels, side, side, sigma=4.0)
    query, key = (
        F.interpolate(canvas, size=size, mode="bilinear", antialias=True, align_corners=False)
        for size in (query_size, key_size)
    )
    key = key + 0.1 * torch.randn(key.shape, generator=generator, dtype=key.dtype)
    return F.normalize(query, dim=1), F.normalize(key, dim=1)


def recall_at_1(query, key, nnf, patch_size=1):
    """Fraction of query pixels whose best match scores (recomputed in float64) within 1e-9 of
    the exact best."""
    q, k = query.double(), key.double()
    found = reference.patch_scores(q, k, nnf[:, :1].long(), patch_size)[:, 0]
    if patch_size == 1:
        best = torch.einsum("bcq,bck->bqk", q.flatten(2), k.flatten(2)).amax(2).view_as(found)
    else:
        unfold = match_module._patches
        best = (
            torch.einsum("bcq,bck->bqk", unfold(q, patch_size).flatten(2), unfold(k, patch_size).flatten(2))
            .amax(2)
            .view_as(found)
            / patch_size**2
        )
    return (found >= best - 1e-9).double().mean().item()


def check_nnf(nnf, scores, query, key, k, patch_size=1):
    """The NNF contract: int32 (B, k, Hq, Wq) distinct key indices, scores best first and equal to
    the (patch) scores of those indices."""
    B, _, Hq, Wq = query.shape
    assert nnf.dtype == torch.int32 and nnf.shape == (B, k, Hq, Wq) and scores.shape == nnf.shape
    assert int(nnf.min()) >= 0 and int(nnf.max()) < key.shape[2] * key.shape[3]
    assert (nnf.sort(1).values.diff(dim=1) != 0).all()
    assert (scores[:, :-1] >= scores[:, 1:]).all()
    expected = reference.patch_scores(query.double(), key.double(), nnf.long(), patch_size)
    torch.testing.assert_close(scores.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def smooth_pair():
    g = torch.Generator().manual_seed(0)
    return deformed_pair(g, 1, 16, (64, 64), (64, 64))


def test_top1_equals_exact_knn_on_smooth_features(smooth_pair):
    query, key = smooth_pair
    nnf, scores = cocosnet_ops.match(query, key, 8, exact=False)
    check_nnf(nnf, scores, query, key, 8)
    assert recall_at_1(query, key, nnf) >= 0.99


def test_sizes_that_differ_and_batch_items_are_independent():
    g = torch.Generator().manual_seed(1)
    query, key = deformed_pair(g, 3, 12, (40, 72), (56, 36))
    nnf, scores = cocosnet_ops.match(query, key, 6, exact=False)
    check_nnf(nnf, scores, query, key, 6)
    assert recall_at_1(query, key, nnf) >= 0.99
    for item in range(3):
        alone = cocosnet_ops.match(query[item : item + 1], key[item : item + 1], 6, exact=False)
        assert torch.equal(alone[0], nnf[item : item + 1]) and torch.equal(alone[1], scores[item : item + 1])


def test_the_same_seed_gives_the_same_result_at_any_thread_count(smooth_pair):
    query, key = smooth_pair
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            for seed in (0, 0, 5):
                results.append(cocosnet_ops.match(query, key, 8, coarse=None, seed=seed))
    finally:
        torch.set_num_threads(threads)
    for index, (nnf, scores) in enumerate(results):
        want = results[index % 3]
        assert torch.equal(nnf, want[0]) and torch.equal(scores, want[1])
    assert not torch.equal(results[0][0], results[2][0])  # another seed, another random start


@pytest.mark.parametrize("neighbours", ["shared", "self"])
def test_neighbour_rounds_never_lose_a_better_match(smooth_pair, neighbours):
    query, key = smooth_pair
    without = cocosnet_ops.match(query, key, 8, exact=False, neighbours=None)
    with_rounds = cocosnet_ops.match(query, key, 8, exact=False, neighbours=neighbours, rounds=2)
    check_nnf(*with_rounds, query, key, 8)
    assert (with_rounds[1] >= without[1]).all()


def test_small_maps_fall_back_to_exact_knn():
    g = torch.Generator().manual_seed(2)
    query, key = deformed_pair(g, 2, 8, (20, 24), (18, 22))
    exact = cocosnet_ops.exact_knn(query, key, 5)
    for found in (
        cocosnet_ops.match(query, key, 5),
        cocosnet_ops.match(query, key, 5, coarse=0, exact=False),
    ):
        assert torch.equal(found[0], exact[0]) and torch.equal(found[1], exact[1])


def test_coarse_level_choice():
    level = match_module._coarse_level
    assert level("auto", (64, 64), (64, 64), 16, True) == 0
    assert level("auto", (64, 64), (64, 64), 16, False) == 1
    assert level("auto", (256, 256), (256, 256), 16, True) == 1
    assert level("auto", (512, 512), (512, 512), 16, True) == 2
    assert level("auto", (100, 30), (1024, 1024), 16, True) == 2
    assert level("auto", (3, 3), (3, 5), 8, False) is None  # level 1 has fewer than k key pixels
    assert level(None, (64, 64), (64, 64), 16, True) is None
    assert level(3, (64, 64), (64, 64), 16, True) == 3


def test_random_start_and_patches():
    g = torch.Generator().manual_seed(3)
    query, key = deformed_pair(g, 1, 8, (48, 40), (40, 48))
    nnf, scores = cocosnet_ops.match(query, key, 6, coarse=None)
    check_nnf(nnf, scores, query, key, 6)
    assert recall_at_1(query, key, nnf) >= 0.99
    nnf, scores = cocosnet_ops.match(query, key, 6, patch_size=3, exact=False)
    check_nnf(nnf, scores, query, key, 6, patch_size=3)
    assert recall_at_1(query, key, nnf, patch_size=3) >= 0.99
    exact = cocosnet_ops.match(query, key, 6, patch_size=3, coarse=0)
    assert recall_at_1(query, key, exact[0], patch_size=3) == 1


def test_torch_backend_and_half_precision():
    g = torch.Generator().manual_seed(4)
    query, key = deformed_pair(g, 1, 8, (24, 20), (20, 24))
    nnf, scores = cocosnet_ops.match(query, key, 4, exact=False, rounds=1, backend="torch")
    check_nnf(nnf, scores, query, key, 4)
    assert recall_at_1(query, key, nnf) >= 0.95
    nnf, scores = cocosnet_ops.match(query.half(), key.half(), 4, exact=False)
    assert scores.dtype == torch.float32 and nnf.shape == (1, 4, 24, 20)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(k=0), ValueError, "k: expected an int in [1, "),
        (dict(k=10_000), ValueError, "k: expected an int in [1, 1024]"),
        (dict(k=2.0), TypeError, "k: expected an int"),
        (dict(iters=-1), ValueError, "iters"),
        (dict(finest_iters=-1), ValueError, "finest_iters"),
        (dict(rounds=-1), ValueError, "rounds"),
        (dict(coarse="fine"), ValueError, "coarse: expected 'auto'"),
        (dict(coarse=40), ValueError, "coarse: expected an int in [0, "),
        (dict(coarse=5), ValueError, "coarse: level 5 leaves 1 key pixels"),
        (dict(neighbours="spatial"), ValueError, "neighbours: expected one of"),
        (dict(patch_size=2), ValueError, "patch_size: expected an odd size"),
        (dict(exact=1), TypeError, "exact: expected a bool"),
        (dict(seed=-1), ValueError, "seed"),
        (dict(backend="gpu"), ValueError, "backend: expected one of"),
    ],
)
def test_bad_arguments_are_named(smooth_pair, kwargs, error, words):
    query, key = smooth_pair[0][..., :32, :32], smooth_pair[1][..., :32, :32]
    with pytest.raises(error) as raised:
        cocosnet_ops.match(query, key, **kwargs)
    assert words in str(raised.value)


def test_bad_maps_are_named(smooth_pair):
    query, key = smooth_pair
    with pytest.raises(ValueError, match="query: expected a 4-D tensor"):
        cocosnet_ops.match(query[0], key)
    with pytest.raises(TypeError, match="key: expected a floating-point tensor"):
        cocosnet_ops.match(query, key.int())
    with pytest.raises(ValueError, match="key: 2 channels do not match"):
        cocosnet_ops.match(query, key[:, :2])
    with pytest.raises(ValueError, match="key: batch 2 does not match"):
        cocosnet_ops.match(query, key.expand(2, -1, -1, -1))


def test_torch_compile_fullgraph_matches_eager(smooth_pair):
    query, key = (t[..., :40, :48].float().contiguous() for t in smooth_pair)

    def search(query, key):
        return cocosnet_ops.match(query, key, 4, exact=False, rounds=2)

    compiled = torch.compile(search, fullgraph=True, backend="aot_eager")
    got, want = compiled(query, key), search(query, key)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


# ----------------------------------------------------------------------------- share_matches


def share_case(seed, patch_size, repeats=False):
    g = torch.Generator().manual_seed(seed)
    B, C, Hq, Wq, Hk, Wk, k = 2, 4, 5, 7, 6, 5, 6
    fq, fk = integer_features(g, B, C, Hq, Wq), integer_features(g, B, C, Hk, Wk)
    nnf, scores = cocosnet_ops.patch_match(fq, fk, k, 2, patch_size=patch_size, seed=seed)
    if repeats:  # a list holding an index twice: the first copy counts, the pixel is topped up
        nnf = nnf.clone()
        nnf[:, 1] = nnf[:, 0]
        scores = reference.patch_scores(fq, fk, nnf, patch_size)
    neighbours = torch.randint(-2, Hq * Wq, (B, 3, Hq, Wq), generator=g, dtype=torch.int32)
    return fq, fk, nnf, scores, neighbours


@pytest.mark.parametrize(
    "seed, patch_size, repeats", [(0, 1, False), (1, 3, False), (2, 1, True), (3, 3, True)]
)
def test_share_matches_cpu_equals_reference_and_evaluate_candidates(seed, patch_size, repeats):
    fq, fk, nnf, scores, neighbours = share_case(seed, patch_size, repeats)
    cpu = cocosnet_ops.share_matches(fq, fk, nnf, scores, neighbours, 4, patch_size, backend="cpu")
    ref = cocosnet_ops.share_matches(fq, fk, nnf, scores, neighbours, 4, patch_size, backend="torch")
    assert torch.equal(cpu[0], ref[0]) and torch.equal(cpu[1], ref[1])
    if not repeats:
        shared = cocosnet_ops.nnf.neighbour_matches(nnf, neighbours.clamp(min=0), 4)
        shared = torch.where(neighbours.repeat_interleave(4, 1) >= 0, shared, -1)
        want = cocosnet_ops.evaluate_candidates(fq, fk, torch.cat([nnf, shared], 1), 6, patch_size)
        assert torch.equal(cpu[0], want[0]) and torch.equal(cpu[1], want[1])


def test_share_matches_keeps_the_given_scores():
    fq, fk, nnf, scores, neighbours = share_case(4, 1)
    raised = scores + 100  # the own matches now outrank every neighbour's
    out = cocosnet_ops.share_matches(fq, fk, nnf, raised, neighbours, backend="cpu")
    assert torch.equal(out[0], nnf) and torch.equal(out[1], raised)


def test_share_matches_bad_arguments_are_named():
    fq, fk, nnf, scores, neighbours = share_case(5, 1)
    share = cocosnet_ops.share_matches
    with pytest.raises(TypeError, match="neighbours: expected dtype torch.int32"):
        share(fq, fk, nnf, scores, neighbours.long())
    with pytest.raises(ValueError, match="neighbours: entries must be flat query indices < 35"):
        share(fq, fk, nnf, scores, neighbours + 40)
    with pytest.raises(ValueError, match="neighbours: expected shape"):
        share(fq, fk, nnf, scores, neighbours[:, :, :2])
    with pytest.raises(ValueError, match="scores: expected shape"):
        share(fq, fk, nnf, scores[:, :2], neighbours)
    with pytest.raises(ValueError, match="top: expected an int in"):
        share(fq, fk, nnf, scores, neighbours, top=7)
    with pytest.raises(ValueError, match="nnf: entries must be flat key indices"):
        share(fq, fk, nnf + 30, scores, neighbours)
    with pytest.raises(ValueError, match="backend: 'triton' has no kernel for share_matches"):
        share(fq, fk, nnf, scores, neighbours, backend="triton")


def test_opcheck_of_the_ops_inside():
    fq, fk, nnf, scores, neighbours = share_case(6, 1)
    ops = torch.ops.cocosnet_ops
    coarse = cocosnet_ops.exact_knn(fq[..., ::2, ::2], fk[..., ::2, ::2], 3)[0]
    cases = [
        (ops.share_matches.default, (fq, fk, nnf, scores, neighbours, 4, 1)),
        (ops.share_matches.default, (fq, fk, nnf, scores, neighbours, 6, 3)),
        (ops.exact_knn.default, (fq, fk, 4)),
        (ops.nnf_upsample.default, (coarse, [3, 3], [6, 5], [5, 7], 2, 1)),
        (ops.patch_match.default, (fq, fk, 4, 2, nnf, 1, [1], True, 0)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


def test_share_matches_is_not_differentiable():
    """A search op: no gradient flows (as for patch_match and evaluate_candidates), so there is
    nothing for gradcheck to check; the outputs are plain tensors even for inputs that need one."""
    fq, fk, nnf, scores, neighbours = share_case(7, 1)
    fq, fk = fq.double().requires_grad_(), fk.double().requires_grad_()
    for backend in ("cpu", "torch"):
        out = cocosnet_ops.share_matches(fq, fk, nnf, scores.double(), neighbours, backend=backend)
        assert not out[0].requires_grad and not out[1].requires_grad


# ----------------------------------------------------------------------------- CUDA


@pytest.mark.cuda
@pytest.mark.parametrize(
    "seed, patch_size, repeats", [(0, 1, False), (1, 3, False), (2, 1, True), (3, 3, True)]
)
def test_share_matches_cuda_equals_cpu_and_reference(seed, patch_size, repeats):
    """The same per-pixel code (csrc/patch_match.h) on integer-valued features: bitwise equal."""
    fq, fk, nnf, scores, neighbours = share_case(seed, patch_size, repeats)
    cuda = torch.device("cuda")
    args = (nnf.to(cuda), scores.to(cuda), neighbours.to(cuda), 4, patch_size)
    got = cocosnet_ops.share_matches(fq.to(cuda), fk.to(cuda), *args, backend="cuda")
    ref = cocosnet_ops.share_matches(fq, fk, nnf, scores, neighbours, 4, patch_size, backend="torch")
    cpu = cocosnet_ops.share_matches(fq, fk, nnf, scores, neighbours, 4, patch_size, backend="cpu")
    assert got[0].device.type == "cuda"
    assert torch.equal(got[0].cpu(), ref[0]) and torch.equal(got[1].cpu(), ref[1])
    assert torch.equal(got[0].cpu(), cpu[0]) and torch.equal(got[1].cpu(), cpu[1])


@pytest.mark.cuda
def test_match_on_cuda(smooth_pair):
    """On a GPU every op of the search runs its CUDA kernel; the result keeps the contract and
    the recall."""
    query, key = (t.float().expand(2, -1, -1, -1).contiguous() for t in smooth_pair)
    nnf, scores = cocosnet_ops.match(query.cuda(), key.cuda(), 8, exact=False)
    assert nnf.device.type == "cuda"
    nnf, scores = nnf.cpu(), scores.cpu()
    check_nnf(nnf, scores, query, key, 8)
    assert recall_at_1(query, key, nnf) >= 0.99
    cpu = cocosnet_ops.match(query, key, 8, exact=False)
    assert recall_at_1(query, key, cpu[0]) >= 0.99
