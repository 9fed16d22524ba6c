"""The compiled exact_knn against the reference across its tiles: query row blocks, key column
tiles, a top k that fills over several tiles, ties to the lower index and NaN ranking last."""

from __future__ import annotations

import pytest
import torch

import cocosnet_ops
from cocosnet_ops import reference

pytestmark = pytest.mark.skipif(not cocosnet_ops.HAS_COMPILED, reason="cocosnet_ops._C is not built")

# Query 300 pixels (several row blocks), key 1200 pixels (more than one column tile).
QUERY, KEY = (20, 15), (40, 30)


def integer_features(seed, dtype, *shape):
    """Small integers: exact inner products whatever the summation order, and many ties."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-2, 3, shape, generator=g).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [1, 16, 1100, 1200])
def test_equals_reference_with_ties_across_tiles(dtype, k):
    fq = integer_features(1, dtype, 2, 3, *QUERY)
    fk = integer_features(2, dtype, 2, 3, *KEY)
    nnf, scores = cocosnet_ops.exact_knn(fq, fk, k, backend="cpu")
    ref_nnf, ref_scores = reference.exact_knn(fq, fk, k)
    assert nnf.dtype == torch.int32 and scores.dtype == dtype
    assert torch.equal(nnf, ref_nnf)
    assert torch.equal(scores, ref_scores)


def test_nan_ranks_last_with_ties_to_the_lower_index():
    fq = integer_features(3, torch.float32, 1, 4, *QUERY)
    fk = integer_features(4, torch.float32, 1, 4, *KEY)
    fk[0, 1, 5:9] = float("nan")  # NaN scores against every query pixel for key pixels 5..8
    fk[0, 2, 30, :] = float("nan")
    fq[0, 0, 3, 4] = float("nan")  # one query pixel whose every score is NaN
    for k in (8, 1200):
        nnf, scores = cocosnet_ops.exact_knn(fq, fk, k, backend="cpu")
        ref_nnf, ref_scores = reference.exact_knn(fq, fk, k)
        assert torch.equal(nnf, ref_nnf) and torch.equal(scores, ref_scores)
    assert nnf[0, :, 3, 4].tolist() == list(range(1200))
    assert scores[0, :, 3, 4].eq(float("-inf")).all()


def test_float_features_agree_with_the_reference_within_rounding():
    g = torch.Generator().manual_seed(5)
    fq = torch.nn.functional.normalize(torch.randn(2, 24, *QUERY, generator=g), dim=1)
    fk = torch.nn.functional.normalize(torch.randn(2, 24, *KEY, generator=g), dim=1)
    nnf, scores = cocosnet_ops.exact_knn(fq, fk, 16, backend="cpu")
    ref_nnf, ref_scores = reference.exact_knn(fq, fk, 16)
    torch.testing.assert_close(scores, ref_scores, rtol=0, atol=1e-6)
    # Indices differ at most where two scores are within rounding of each other.
    assert (nnf != ref_nnf).float().mean() < 0.01
    torch.testing.assert_close(reference.patch_scores(fq, fk, nnf), scores, rtol=0, atol=1e-6)
    assert bool((scores[:, :-1] >= scores[:, 1:]).all())
