"""Malformed inputs must raise a clear ValueError/TypeError naming the argument; valid but
unusual inputs (views, channels_last, half precision, extreme k, 1x1 maps, batches, unequal
query/key sizes) must give the reference's result. Nothing may raise anything else."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import cocosnet_ops as co
from cocosnet_ops import reference as ref

B, C, HQ, WQ, HK, WK, CV = 1, 4, 5, 6, 7, 3, 3
KEY_PIXELS = HK * WK


@pytest.fixture(scope="module")
def inp(feats, values):
    """A valid set of inputs; each malformed case breaks exactly one thing in it."""
    gen = torch.Generator().manual_seed(7)
    return SimpleNamespace(
        fq=feats(B, C, HQ, WQ, seed=1),
        fk=feats(B, C, HK, WK, seed=2),
        v=values(B, CV, HK, WK, seed=3),
        nnf=torch.randint(0, KEY_PIXELS, (B, 2, HQ, WQ), generator=gen).int(),
        coords=torch.rand(B, 2, HQ, WQ, 2, generator=gen) * 2,
        coarse=torch.randint(0, 4, (B, 2, 2, 3), generator=gen).int(),
    )


def _int_map(value, shape=(B, 2, HQ, WQ)):
    return torch.full(shape, value, dtype=torch.int32)


def _bounded(backend, x, max_radius):
    return co.patch_match(x.fq, x.fk, k=2, init=x.nnf, max_radius=max_radius, backend=backend)


META = torch.device("meta")

# (id, call(backend, inputs), expected exception type, argument the message must start with)
# The project's convention is "argument: what was expected, what was given".
CASES = [
    # ---------------------------------------------------------------- patch_match
    ("pm-query-rank3", lambda b, x: co.patch_match(x.fq[0], x.fk, k=2, backend=b), ValueError, "query"),
    ("pm-key-rank5", lambda b, x: co.patch_match(x.fq, x.fk[None], k=2, backend=b), ValueError, "key"),
    ("pm-query-int", lambda b, x: co.patch_match(x.fq.long(), x.fk, k=2, backend=b), TypeError, "query"),
    ("pm-key-bool", lambda b, x: co.patch_match(x.fq, x.fk > 0, k=2, backend=b), TypeError, "key"),
    ("pm-key-f64-mix", lambda b, x: co.patch_match(x.fq, x.fk.double(), k=2, backend=b), TypeError, "key"),
    ("pm-key-meta", lambda b, x: co.patch_match(x.fq, x.fk.to(META), k=2, backend=b), ValueError, "key"),
    ("pm-query-list", lambda b, x: co.patch_match(x.fq.tolist(), x.fk, k=2, backend=b), TypeError, "query"),
    ("pm-key-ndarray", lambda b, x: co.patch_match(x.fq, x.fk.numpy(), k=2, backend=b), TypeError, "key"),
    ("pm-batch", lambda b, x: co.patch_match(x.fq, x.fk.expand(2, -1, -1, -1), k=2, backend=b), ValueError,
     "key"),
    ("pm-channels", lambda b, x: co.patch_match(x.fq, x.fk[:, :3], k=2, backend=b), ValueError, "key"),
    ("pm-query-h0", lambda b, x: co.patch_match(x.fq[:, :, :0], x.fk, k=2, backend=b), ValueError, "query"),
    ("pm-key-w0", lambda b, x: co.patch_match(x.fq, x.fk[..., :0], k=2, backend=b), ValueError, "key"),
    ("pm-c0", lambda b, x: co.patch_match(x.fq[:, :0], x.fk[:, :0], k=2, backend=b), ValueError, "query"),
    ("pm-k-too-big", lambda b, x: co.patch_match(x.fq, x.fk, k=KEY_PIXELS + 1, backend=b), ValueError, "k"),
    ("pm-k-0", lambda b, x: co.patch_match(x.fq, x.fk, k=0, backend=b), ValueError, "k"),
    ("pm-k-neg", lambda b, x: co.patch_match(x.fq, x.fk, k=-3, backend=b), ValueError, "k"),
    ("pm-k-float", lambda b, x: co.patch_match(x.fq, x.fk, k=2.0, backend=b), TypeError, "k"),
    ("pm-k-bool", lambda b, x: co.patch_match(x.fq, x.fk, k=True, backend=b), TypeError, "k"),
    ("pm-k-huge", lambda b, x: co.patch_match(x.fq, x.fk, k=2**40, backend=b), ValueError, "k"),
    ("pm-patch-even", lambda b, x: co.patch_match(x.fq, x.fk, k=2, patch_size=2, backend=b), ValueError,
     "patch_size"),
    ("pm-patch-0", lambda b, x: co.patch_match(x.fq, x.fk, k=2, patch_size=0, backend=b), ValueError,
     "patch_size"),
    ("pm-patch-neg", lambda b, x: co.patch_match(x.fq, x.fk, k=2, patch_size=-3, backend=b), ValueError,
     "patch_size"),
    ("pm-patch-float", lambda b, x: co.patch_match(x.fq, x.fk, k=2, patch_size=3.0, backend=b), TypeError,
     "patch_size"),
    ("pm-iters-neg", lambda b, x: co.patch_match(x.fq, x.fk, k=2, iters=-1, backend=b), ValueError, "iters"),
    ("pm-seed-neg", lambda b, x: co.patch_match(x.fq, x.fk, k=2, seed=-1, backend=b), ValueError, "seed"),
    ("pm-seed-2**32", lambda b, x: co.patch_match(x.fq, x.fk, k=2, seed=2**32, backend=b), ValueError,
     "seed"),
    ("pm-random-search-int", lambda b, x: co.patch_match(x.fq, x.fk, k=2, random_search=1, backend=b),
     TypeError, "random_search"),
    ("pm-jump-0", lambda b, x: co.patch_match(x.fq, x.fk, k=2, jump=[2, 0], backend=b), ValueError, "jump"),
    ("pm-jump-neg", lambda b, x: co.patch_match(x.fq, x.fk, k=2, jump=[-2], backend=b), ValueError, "jump"),
    ("pm-jump-empty", lambda b, x: co.patch_match(x.fq, x.fk, k=2, iters=2, jump=[], backend=b), ValueError,
     "jump"),
    ("pm-jump-str", lambda b, x: co.patch_match(x.fq, x.fk, k=2, jump="21", backend=b), TypeError, "jump"),
    ("pm-jump-int", lambda b, x: co.patch_match(x.fq, x.fk, k=2, jump=4, backend=b), TypeError, "jump"),
    ("pm-jump-float", lambda b, x: co.patch_match(x.fq, x.fk, k=2, jump=[1.5], backend=b), TypeError, "jump"),
    ("pm-jump-tensor", lambda b, x: co.patch_match(x.fq, x.fk, k=2, jump=torch.tensor([2, 1]), backend=b),
     TypeError, "jump"),
    ("pm-init-float", lambda b, x: co.patch_match(x.fq, x.fk, k=2, init=x.nnf.float(), backend=b), TypeError,
     "init"),
    ("pm-init-int64", lambda b, x: co.patch_match(x.fq, x.fk, k=2, init=x.nnf.long(), backend=b), TypeError,
     "init"),
    ("pm-init-list", lambda b, x: co.patch_match(x.fq, x.fk, k=2, init=x.nnf.tolist(), backend=b), TypeError,
     "init"),
    ("pm-init-rank3", lambda b, x: co.patch_match(x.fq, x.fk, k=2, init=x.nnf[0], backend=b), ValueError,
     "init"),
    ("pm-init-spatial", lambda b, x: co.patch_match(x.fq, x.fk, k=2, init=x.nnf[..., 1:], backend=b),
     ValueError, "init"),
    ("pm-init-batch", lambda b, x: co.patch_match(x.fq, x.fk, k=2, init=x.nnf.expand(2, -1, -1, -1),
                                                  backend=b), ValueError, "init"),
    ("pm-init-too-big", lambda b, x: co.patch_match(x.fq, x.fk, k=2, init=_int_map(KEY_PIXELS), backend=b),
     ValueError, "init"),
    ("pm-init-meta", lambda b, x: co.patch_match(x.fq, x.fk, k=2, init=x.nnf.to(META), backend=b),
     ValueError, "init"),
    ("pm-max-radius-neg", lambda b, x: _bounded(b, x, -1), ValueError, "max_radius"),
    ("pm-max-radius-huge", lambda b, x: _bounded(b, x, 2**31), ValueError, "max_radius"),
    ("pm-max-radius-float", lambda b, x: _bounded(b, x, 2.0), TypeError, "max_radius"),
    ("pm-max-radius-bool", lambda b, x: _bounded(b, x, True), TypeError, "max_radius"),
    ("pm-max-radius-tensor", lambda b, x: _bounded(b, x, torch.tensor(2)), TypeError, "max_radius"),
    ("pm-max-radius-no-init", lambda b, x: co.patch_match(x.fq, x.fk, k=2, max_radius=2, backend=b),
     ValueError, "max_radius"),
    # ---------------------------------------------------------------- evaluate_candidates
    ("ec-cand-int64", lambda b, x: co.evaluate_candidates(x.fq, x.fk, x.nnf.long(), 2, backend=b), TypeError,
     "candidates"),
    ("ec-cand-float", lambda b, x: co.evaluate_candidates(x.fq, x.fk, x.nnf.float(), 2, backend=b), TypeError,
     "candidates"),
    ("ec-cand-none", lambda b, x: co.evaluate_candidates(x.fq, x.fk, None, 2, backend=b), TypeError,
     "candidates"),
    ("ec-cand-rank3", lambda b, x: co.evaluate_candidates(x.fq, x.fk, x.nnf[0], 2, backend=b), ValueError,
     "candidates"),
    ("ec-cand-spatial", lambda b, x: co.evaluate_candidates(x.fq, x.fk, x.nnf[:, :, 1:], 2, backend=b),
     ValueError, "candidates"),
    ("ec-cand-too-big", lambda b, x: co.evaluate_candidates(x.fq, x.fk, _int_map(KEY_PIXELS), 2, backend=b),
     ValueError, "candidates"),
    ("ec-cand-meta", lambda b, x: co.evaluate_candidates(x.fq, x.fk, x.nnf.to(META), 2, backend=b),
     ValueError, "candidates"),
    ("ec-k-too-big", lambda b, x: co.evaluate_candidates(x.fq, x.fk, x.nnf, KEY_PIXELS + 1, backend=b),
     ValueError, "k"),
    ("ec-k-0", lambda b, x: co.evaluate_candidates(x.fq, x.fk, x.nnf, 0, backend=b), ValueError, "k"),
    ("ec-patch-even", lambda b, x: co.evaluate_candidates(x.fq, x.fk, x.nnf, 2, patch_size=4, backend=b),
     ValueError, "patch_size"),
    ("ec-query-int", lambda b, x: co.evaluate_candidates(x.fq.int(), x.fk, x.nnf, 2, backend=b), TypeError,
     "query"),
    ("ec-channels", lambda b, x: co.evaluate_candidates(x.fq, x.fk[:, 1:], x.nnf, 2, backend=b), ValueError,
     "key"),
    # ---------------------------------------------------------------- nnf_upsample
    ("up-nnf-float", lambda b, x: co.nnf_upsample(x.coarse.float(), (4, 6), (4, 6), backend=b), TypeError,
     "nnf"),
    ("up-nnf-int64", lambda b, x: co.nnf_upsample(x.coarse.long(), (4, 6), (4, 6), backend=b), TypeError,
     "nnf"),
    ("up-nnf-ndarray", lambda b, x: co.nnf_upsample(x.coarse.numpy(), (4, 6), (4, 6), backend=b), TypeError,
     "nnf"),
    ("up-nnf-rank3", lambda b, x: co.nnf_upsample(x.coarse[0], (4, 6), (4, 6), backend=b), ValueError, "nnf"),
    ("up-nnf-h0", lambda b, x: co.nnf_upsample(x.coarse[:, :, :0], (4, 6), (4, 6), backend=b), ValueError,
     "nnf"),
    ("up-nnf-neg", lambda b, x: co.nnf_upsample(_int_map(-1, (1, 1, 2, 3)), (4, 6), (4, 6), backend=b),
     ValueError, "nnf"),
    ("up-nnf-too-big", lambda b, x: co.nnf_upsample(_int_map(6, (1, 1, 2, 3)), (4, 6), (4, 6), backend=b),
     ValueError, "nnf"),
    ("up-key-size-len1", lambda b, x: co.nnf_upsample(x.coarse, (4,), (4, 6), backend=b), TypeError,
     "key_size"),
    ("up-key-size-str", lambda b, x: co.nnf_upsample(x.coarse, "46", (4, 6), backend=b), TypeError,
     "key_size"),
    ("up-key-size-0", lambda b, x: co.nnf_upsample(x.coarse, (0, 6), (4, 6), backend=b), ValueError,
     "key_size"),
    ("up-query-size-float", lambda b, x: co.nnf_upsample(x.coarse, (4, 6), (4.0, 6), backend=b), TypeError,
     "query_size"),
    ("up-key-pixels", lambda b, x: co.nnf_upsample(x.coarse, (2**16, 2**16), (4, 6), coarse_key_size=(2, 3),
                                                   backend=b), ValueError, "key_size"),
    ("up-query-pixels", lambda b, x: co.nnf_upsample(x.coarse, (4, 6), (2**15, 2**15 + 1),
                                                     coarse_key_size=(2, 3), backend=b),
     ValueError, "query_size"),
    ("up-query-smaller", lambda b, x: co.nnf_upsample(x.coarse, (4, 6), (1, 6), coarse_key_size=(2, 3),
                                                      backend=b), ValueError, "query_size"),
    ("up-coarse-uninferable", lambda b, x: co.nnf_upsample(x.coarse, (5, 6), (4, 6), backend=b), ValueError,
     "coarse_key_size"),
    ("up-coarse-bad", lambda b, x: co.nnf_upsample(x.coarse, (4, 6), (4, 6), coarse_key_size=(2, 0),
                                                   backend=b), ValueError, "coarse_key_size"),
    ("up-window-0", lambda b, x: co.nnf_upsample(x.coarse, (4, 6), (4, 6), window=0, backend=b), ValueError,
     "window"),
    ("up-dilation-neg", lambda b, x: co.nnf_upsample(x.coarse, (4, 6), (4, 6), dilation=-1, backend=b),
     ValueError, "dilation"),
    # ---------------------------------------------------------------- exact_knn
    ("knn-k-too-big", lambda b, x: co.exact_knn(x.fq, x.fk, KEY_PIXELS + 1, backend=b), ValueError, "k"),
    ("knn-k-0", lambda b, x: co.exact_knn(x.fq, x.fk, 0, backend=b), ValueError, "k"),
    ("knn-k-none", lambda b, x: co.exact_knn(x.fq, x.fk, None, backend=b), TypeError, "k"),
    ("knn-query-rank2", lambda b, x: co.exact_knn(x.fq[0, 0], x.fk, 1, backend=b), ValueError, "query"),
    ("knn-key-complex", lambda b, x: co.exact_knn(x.fq, x.fk.cfloat(), 1, backend=b), TypeError, "key"),
    ("knn-key-meta", lambda b, x: co.exact_knn(x.fq, x.fk.to(META), 1, backend=b), ValueError, "key"),
    ("knn-batch", lambda b, x: co.exact_knn(x.fq.expand(3, -1, -1, -1), x.fk, 1, backend=b), ValueError,
     "key"),
    ("knn-key-h0", lambda b, x: co.exact_knn(x.fq, x.fk[:, :, :0], 1, backend=b), ValueError, "key"),
    # ---------------------------------------------------------------- weighted_gather
    ("wg-nnf-int64", lambda b, x: co.weighted_gather(x.fq, x.fk, x.v, x.nnf.long(), 0.1, backend=b),
     TypeError, "nnf"),
    ("wg-nnf-float", lambda b, x: co.weighted_gather(x.fq, x.fk, x.v, x.nnf.float(), 0.1, backend=b),
     TypeError, "nnf"),
    ("wg-nnf-list", lambda b, x: co.weighted_gather(x.fq, x.fk, x.v, x.nnf.tolist(), 0.1, backend=b),
     TypeError, "nnf"),
    ("wg-nnf-rank5", lambda b, x: co.weighted_gather(x.fq, x.fk, x.v, x.nnf[..., None], 0.1, backend=b),
     ValueError, "nnf"),
    ("wg-nnf-spatial", lambda b, x: co.weighted_gather(x.fq, x.fk, x.v, x.nnf[:, :, :-1], 0.1, backend=b),
     ValueError, "nnf"),
    ("wg-nnf-batch", lambda b, x: co.weighted_gather(x.fq, x.fk, x.v, x.nnf.expand(2, -1, -1, -1), 0.1,
                                                     backend=b), ValueError, "nnf"),
    ("wg-nnf-k0", lambda b, x: co.weighted_gather(x.fq, x.fk, x.v, x.nnf[:, :0], 0.1, backend=b), ValueError,
     "nnf"),
    ("wg-nnf-negative", lambda b, x: co.weighted_gather(x.fq, x.fk, x.v, _int_map(-1), 0.1, backend=b),
     ValueError, "nnf"),
    ("wg-nnf-int32-min", lambda b, x: co.weighted_gather(x.fq, x.fk, x.v, _int_map(-(2**31)), 0.1, backend=b),
     ValueError, "nnf"),
    ("wg-nnf-eq-pixels", lambda b, x: co.weighted_gather(x.fq, x.fk, x.v, _int_map(KEY_PIXELS), 0.1,
                                                         backend=b), ValueError, "nnf"),
    ("wg-nnf-int32-max", lambda b, x: co.weighted_gather(x.fq, x.fk, x.v, _int_map(2**31 - 1), 0.1,
                                                         backend=b), ValueError, "nnf"),
    ("wg-nnf-meta", lambda b, x: co.weighted_gather(x.fq, x.fk, x.v, x.nnf.to(META), 0.1, backend=b),
     ValueError, "nnf"),
    ("wg-value-spatial", lambda b, x: co.weighted_gather(x.fq, x.fk, x.v[..., 1:], x.nnf, 0.1, backend=b),
     ValueError, "value"),
    ("wg-value-batch", lambda b, x: co.weighted_gather(x.fq, x.fk, x.v.expand(2, -1, -1, -1), x.nnf, 0.1,
                                                       backend=b), ValueError, "value"),
    ("wg-value-int", lambda b, x: co.weighted_gather(x.fq, x.fk, x.v.int(), x.nnf, 0.1, backend=b), TypeError,
     "value"),
    ("wg-value-meta", lambda b, x: co.weighted_gather(x.fq, x.fk, x.v.to(META), x.nnf, 0.1, backend=b),
     ValueError, "value"),
    ("wg-value-c0", lambda b, x: co.weighted_gather(x.fq, x.fk, x.v[:, :0], x.nnf, 0.1, backend=b),
     ValueError, "value"),
    ("wg-key-meta", lambda b, x: co.weighted_gather(x.fq, x.fk.to(META), x.v, x.nnf, 0.1, backend=b),
     ValueError, "key"),
    ("wg-channels", lambda b, x: co.weighted_gather(x.fq[:, :2], x.fk, x.v, x.nnf, 0.1, backend=b),
     ValueError, "key"),
    ("wg-temp-nan", lambda b, x: co.weighted_gather(x.fq, x.fk, x.v, x.nnf, math.nan, backend=b), ValueError,
     "temperature"),
    ("wg-temp-inf", lambda b, x: co.weighted_gather(x.fq, x.fk, x.v, x.nnf, math.inf, backend=b), ValueError,
     "temperature"),
    ("wg-temp-neg-inf", lambda b, x: co.weighted_gather(x.fq, x.fk, x.v, x.nnf, -math.inf, backend=b),
     ValueError, "temperature"),
    ("wg-temp-0", lambda b, x: co.weighted_gather(x.fq, x.fk, x.v, x.nnf, 0.0, backend=b), ValueError,
     "temperature"),
    ("wg-temp-neg", lambda b, x: co.weighted_gather(x.fq, x.fk, x.v, x.nnf, -0.1, backend=b), ValueError,
     "temperature"),
    ("wg-temp-str", lambda b, x: co.weighted_gather(x.fq, x.fk, x.v, x.nnf, "0.1", backend=b), TypeError,
     "temperature"),
    ("wg-temp-none", lambda b, x: co.weighted_gather(x.fq, x.fk, x.v, x.nnf, None, backend=b), TypeError,
     "temperature"),
    ("wg-temp-tensor", lambda b, x: co.weighted_gather(x.fq, x.fk, x.v, x.nnf, torch.tensor(0.1), backend=b),
     TypeError, "temperature"),
    # ---------------------------------------------------------------- bilinear_weighted_gather
    ("bw-coords-rank4", lambda b, x: co.bilinear_weighted_gather(x.fq, x.fk, x.v, x.coords[..., 0], 0.1,
                                                                 backend=b), ValueError, "coords"),
    ("bw-coords-last3", lambda b, x: co.bilinear_weighted_gather(
        x.fq, x.fk, x.v, torch.cat([x.coords, x.coords[..., :1]], -1), 0.1, backend=b), ValueError, "coords"),
    ("bw-coords-spatial", lambda b, x: co.bilinear_weighted_gather(x.fq, x.fk, x.v, x.coords[:, :, 1:], 0.1,
                                                                   backend=b), ValueError, "coords"),
    ("bw-coords-batch", lambda b, x: co.bilinear_weighted_gather(
        x.fq, x.fk, x.v, x.coords.expand(2, -1, -1, -1, -1), 0.1, backend=b), ValueError, "coords"),
    ("bw-coords-k0", lambda b, x: co.bilinear_weighted_gather(x.fq, x.fk, x.v, x.coords[:, :0], 0.1,
                                                              backend=b), ValueError, "coords"),
    ("bw-coords-int", lambda b, x: co.bilinear_weighted_gather(x.fq, x.fk, x.v, x.coords.int(), 0.1,
                                                               backend=b), TypeError, "coords"),
    ("bw-coords-ndarray", lambda b, x: co.bilinear_weighted_gather(x.fq, x.fk, x.v, x.coords.numpy(), 0.1,
                                                                   backend=b), TypeError, "coords"),
    ("bw-coords-meta", lambda b, x: co.bilinear_weighted_gather(x.fq, x.fk, x.v, x.coords.to(META), 0.1,
                                                                backend=b), ValueError, "coords"),
    ("bw-value-spatial", lambda b, x: co.bilinear_weighted_gather(x.fq, x.fk, x.v[:, :, 1:], x.coords, 0.1,
                                                                  backend=b), ValueError, "value"),
    ("bw-temp-nan", lambda b, x: co.bilinear_weighted_gather(x.fq, x.fk, x.v, x.coords, math.nan, backend=b),
     ValueError, "temperature"),
    ("bw-temp-0", lambda b, x: co.bilinear_weighted_gather(x.fq, x.fk, x.v, x.coords, 0, backend=b),
     ValueError, "temperature"),
    ("bw-query-f16-mix", lambda b, x: co.bilinear_weighted_gather(x.fq.half(), x.fk, x.v, x.coords, 0.1,
                                                                  backend=b), TypeError, "key"),
    # ---------------------------------------------------------------- bilinear_scores
    ("bs-query-rank3", lambda b, x: co.bilinear_scores(x.fq[0], x.fk, x.coords, backend=b), ValueError,
     "query"),
    ("bs-channels", lambda b, x: co.bilinear_scores(x.fq, x.fk[:, :2], x.coords, backend=b), ValueError,
     "key"),
    ("bs-coords-rank4", lambda b, x: co.bilinear_scores(x.fq, x.fk, x.coords[..., 0], backend=b), ValueError,
     "coords"),
    ("bs-coords-spatial", lambda b, x: co.bilinear_scores(x.fq, x.fk, x.coords[:, :, :, 1:], backend=b),
     ValueError, "coords"),
    ("bs-coords-k0", lambda b, x: co.bilinear_scores(x.fq, x.fk, x.coords[:, :0], backend=b), ValueError,
     "coords"),
    ("bs-coords-int", lambda b, x: co.bilinear_scores(x.fq, x.fk, x.coords.long(), backend=b), TypeError,
     "coords"),
    ("bs-coords-list", lambda b, x: co.bilinear_scores(x.fq, x.fk, x.coords.tolist(), backend=b), TypeError,
     "coords"),
    ("bs-coords-meta", lambda b, x: co.bilinear_scores(x.fq, x.fk, x.coords.to(META), backend=b), ValueError,
     "coords"),
    ("bs-coords-nan", lambda b, x: co.bilinear_scores(x.fq, x.fk, x.coords * math.nan, backend=b), ValueError,
     "coords"),
    ("bs-patch-even", lambda b, x: co.bilinear_scores(x.fq, x.fk, x.coords, 2, backend=b), ValueError,
     "patch_size"),
    ("bs-patch-0", lambda b, x: co.bilinear_scores(x.fq, x.fk, x.coords, 0, backend=b), ValueError,
     "patch_size"),
    ("bs-patch-huge", lambda b, x: co.bilinear_scores(x.fq, x.fk, x.coords, 2**31 + 1, backend=b), ValueError,
     "patch_size"),
    ("bs-patch-float", lambda b, x: co.bilinear_scores(x.fq, x.fk, x.coords, 3.0, backend=b), TypeError,
     "patch_size"),
    # ---------------------------------------------------------------- dense_warp
    ("dw-query-rank3", lambda b, x: co.dense_warp(x.fq[0], x.fk, x.v, 0.1, backend=b), ValueError, "query"),
    ("dw-channels", lambda b, x: co.dense_warp(x.fq, x.fk[:, :1], x.v, 0.1, backend=b), ValueError, "key"),
    ("dw-value-spatial", lambda b, x: co.dense_warp(x.fq, x.fk, x.v[:, :, :, :2], 0.1, backend=b), ValueError,
     "value"),
    ("dw-value-query-size", lambda b, x: co.dense_warp(x.fq, x.fk, torch.zeros(B, CV, HQ, WQ), 0.1,
                                                       backend=b), ValueError, "value"),
    ("dw-value-meta", lambda b, x: co.dense_warp(x.fq, x.fk, x.v.to(META), 0.1, backend=b), ValueError,
     "value"),
    ("dw-temp-nan", lambda b, x: co.dense_warp(x.fq, x.fk, x.v, math.nan, backend=b), ValueError,
     "temperature"),
    ("dw-temp-neg-zero", lambda b, x: co.dense_warp(x.fq, x.fk, x.v, -0.0, backend=b), ValueError,
     "temperature"),
    ("dw-cycle-int", lambda b, x: co.dense_warp(x.fq, x.fk, x.v, 0.1, cycle=1, backend=b), TypeError,
     "cycle"),
    ("dw-cycle-none", lambda b, x: co.dense_warp(x.fq, x.fk, x.v, 0.1, cycle=None, backend=b), TypeError,
     "cycle"),
]


OPS = torch.ops.cocosnet_ops
GRAD = torch.zeros(B, CV, HQ, WQ)

# The compiled ops called directly, past the Python checks: what could overflow the kernels' int
# arithmetic or read out of bounds is checked again in C++, with the same wording.
# (id, call(inputs), expected exception type, argument the message must start with)
DIRECT_CASES = [
    ("pm-patch-huge", lambda x: OPS.patch_match(x.fq, x.fk, 2, 1, None, 2**31 - 1, [1], True, 0), ValueError,
     "patch_size"),
    ("pm-patch-33", lambda x: OPS.patch_match(x.fq, x.fk, 2, 1, None, 33, [1], True, 0), ValueError,
     "patch_size"),
    ("pm-patch-even", lambda x: OPS.patch_match(x.fq, x.fk, 2, 1, None, 2, [1], True, 0), ValueError,
     "patch_size"),
    ("pm-k-huge", lambda x: OPS.patch_match(x.fq, x.fk, 2**40, 1, None, 1, [1], True, 0), ValueError, "k"),
    ("pm-iters-2**16", lambda x: OPS.patch_match(x.fq, x.fk, 2, 2**16, None, 1, [1], True, 0), ValueError,
     "iters"),
    ("pm-seed-2**32", lambda x: OPS.patch_match(x.fq, x.fk, 2, 1, None, 1, [1], True, 2**32), ValueError,
     "seed"),
    ("pm-jump-huge", lambda x: OPS.patch_match(x.fq, x.fk, 2, 1, None, 1, [2**40], True, 0), ValueError,
     "jump"),
    ("pm-jump-2**31", lambda x: OPS.patch_match(x.fq, x.fk, 2, 1, None, 1, [1, 2**31], True, 0), ValueError,
     "jump"),
    ("pm-init-too-big", lambda x: OPS.patch_match(x.fq, x.fk, 2, 1, _int_map(KEY_PIXELS), 1, [1], True, 0),
     ValueError, "candidates"),
    ("pm-max-radius-neg", lambda x: OPS.patch_match(x.fq, x.fk, 2, 1, x.nnf, 1, [1], True, 0, -1), ValueError,
     "max_radius"),
    ("pm-max-radius-2**31", lambda x: OPS.patch_match(x.fq, x.fk, 2, 1, x.nnf, 1, [1], True, 0, 2**31),
     ValueError, "max_radius"),
    ("pm-max-radius-no-init", lambda x: OPS.patch_match(x.fq, x.fk, 2, 1, None, 1, [1], True, 0, 2),
     ValueError, "max_radius"),
    ("ec-patch-huge", lambda x: OPS.evaluate_candidates(x.fq, x.fk, x.nnf, 2, 2**33 + 1), ValueError,
     "patch_size"),
    ("up-window-huge", lambda x: OPS.nnf_upsample(x.coarse, [2, 3], [4, 6], [4, 6], 2**20, 1), ValueError,
     "window"),
    ("up-dilation-huge", lambda x: OPS.nnf_upsample(x.coarse, [2, 3], [4, 6], [4, 6], 4, 2**40), ValueError,
     "dilation"),
    ("up-dilation-2**31", lambda x: OPS.nnf_upsample(x.coarse, [2, 3], [4, 6], [4, 6], 4, 2**31 - 1),
     ValueError, "dilation"),
    ("up-key-size-huge", lambda x: OPS.nnf_upsample(x.coarse, [2, 3], [2**31 + 4, 6], [4, 6], 4, 2),
     ValueError, "key_size"),
    ("up-key-pixels", lambda x: OPS.nnf_upsample(x.coarse, [2, 3], [2**16, 2**16], [4, 6], 4, 2), ValueError,
     "key_size"),
    ("up-query-size-0", lambda x: OPS.nnf_upsample(x.coarse, [2, 3], [4, 6], [0, 6], 4, 2), ValueError,
     "query_size"),
    ("up-coarse-size-3", lambda x: OPS.nnf_upsample(x.coarse, [2, 3, 1], [4, 6], [4, 6], 4, 2), ValueError,
     "coarse_key_size"),
    ("wg-temp-tiny", lambda x: OPS.weighted_gather(x.fq, x.fk, x.v, x.nnf, 1e-300), ValueError,
     "temperature"),
    ("wg-back-nnf-too-big", lambda x: OPS.weighted_gather_backward(GRAD, x.fq, x.fk, x.v, _int_map(10**9),
                                                                   0.1), ValueError, "nnf"),
    ("wg-back-nnf-negative", lambda x: OPS.weighted_gather_backward(GRAD, x.fq, x.fk, x.v, _int_map(-1), 0.1),
     ValueError, "nnf"),
    ("wg-back-grad-shape", lambda x: OPS.weighted_gather_backward(GRAD[..., :2], x.fq, x.fk, x.v, x.nnf, 0.1),
     ValueError, "grad_out"),
    ("wg-back-grad-dtype", lambda x: OPS.weighted_gather_backward(GRAD.double(), x.fq, x.fk, x.v, x.nnf, 0.1),
     TypeError, "grad_out"),
    ("wg-back-value", lambda x: OPS.weighted_gather_backward(GRAD, x.fq, x.fk, x.v[..., :1], x.nnf, 0.1),
     ValueError, "value"),
    ("bw-back-coords-shape", lambda x: OPS.bilinear_weighted_gather_backward(GRAD, x.fq, x.fk, x.v,
                                                                            x.coords[:, :, :2], 0.1),
     ValueError, "coords"),
    ("bw-back-grad-shape", lambda x: OPS.bilinear_weighted_gather_backward(GRAD[:, :1], x.fq, x.fk, x.v,
                                                                          x.coords, 0.1),
     ValueError, "grad_out"),
    ("bw-back-temp-0", lambda x: OPS.bilinear_weighted_gather_backward(GRAD, x.fq, x.fk, x.v, x.coords, 0.0),
     ValueError, "temperature"),
    ("dw-back-logsumexp", lambda x: OPS.dense_warp_backward(GRAD, x.fq, x.fk, x.v, GRAD, torch.zeros(1, 1, 3),
                                                            0.1), ValueError, "logsumexp"),
    ("dw-back-out", lambda x: OPS.dense_warp_backward(GRAD, x.fq, x.fk, x.v, GRAD[..., :3],
                                                      torch.zeros(1, 1, HQ * WQ), 0.1), ValueError, "out"),
    ("dw-back-key", lambda x: OPS.dense_warp_backward(GRAD, x.fq, x.fk[:, :2], x.v, GRAD,
                                                      torch.zeros(1, 1, HQ * WQ), 0.1), ValueError, "key"),
]


@pytest.mark.skipif(not co.HAS_COMPILED, reason="cocosnet_ops._C is not built")
@pytest.mark.parametrize(
    ("call", "error", "arg"), [c[1:] for c in DIRECT_CASES], ids=[c[0] for c in DIRECT_CASES]
)
def test_compiled_ops_check_what_could_crash_them(call, error, arg, inp):
    with pytest.raises(error, match=rf"^{arg}\b"):
        call(inp)


@pytest.mark.parametrize(("call", "error", "arg"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_input_raises_clear_error(call, error, arg, backend, inp):
    """Exactly the expected exception type, with a message that starts with the argument name."""
    with pytest.raises(error, match=rf"^{arg}\b") as info:
        call(backend, inp)
    assert type(info.value) is error


BACKEND_CALLS = {
    "patch_match": lambda x, b: co.patch_match(x.fq, x.fk, k=2, iters=1, backend=b),
    "evaluate_candidates": lambda x, b: co.evaluate_candidates(x.fq, x.fk, x.nnf, 2, backend=b),
    "nnf_upsample": lambda x, b: co.nnf_upsample(x.coarse, (4, 6), (4, 6), backend=b),
    "exact_knn": lambda x, b: co.exact_knn(x.fq, x.fk, 2, backend=b),
    "weighted_gather": lambda x, b: co.weighted_gather(x.fq, x.fk, x.v, x.nnf, 0.1, backend=b),
    "bilinear_weighted_gather": lambda x, b: co.bilinear_weighted_gather(x.fq, x.fk, x.v, x.coords, 0.1,
                                                                         backend=b),
    "bilinear_scores": lambda x, b: co.bilinear_scores(x.fq, x.fk, x.coords, 3, backend=b),
    "dense_warp": lambda x, b: co.dense_warp(x.fq, x.fk, x.v, 0.1, backend=b),
}


@pytest.mark.parametrize("op", sorted(BACKEND_CALLS))
def test_backend_argument_is_documented(op):
    assert "``backend``: None chooses by device" in getattr(co, op).__doc__


@pytest.mark.parametrize("op", sorted(BACKEND_CALLS))
@pytest.mark.parametrize("bad", ["gpu", "CPU", "", 3, ["torch"]])
def test_bad_backend_name(op, bad, inp):
    with pytest.raises(ValueError, match=r"^backend\b"):
        BACKEND_CALLS[op](inp, bad)


@pytest.mark.parametrize("op", sorted(BACKEND_CALLS))
def test_backend_unavailable_for_device(op, inp):
    """cuda kernels cannot run on CPU tensors; asking for them is an error, not a silent fallback."""
    with pytest.raises(ValueError, match=r"^backend\b"):
        BACKEND_CALLS[op](inp, "cuda")
    if not co.HAS_COMPILED:
        with pytest.raises(ValueError, match=r"^backend\b"):
            BACKEND_CALLS[op](inp, "cpu")


@pytest.mark.parametrize("op", sorted(BACKEND_CALLS))
def test_default_backend_matches_explicit(op, inp, backends):
    """backend=None picks the compiled CPU kernels when built, else the reference; same result."""
    default = BACKEND_CALLS[op](inp, None)
    explicit = BACKEND_CALLS[op](inp, backends[-1])
    torch.testing.assert_close(default, explicit, rtol=0, atol=0)


def test_nan_coords_are_rejected(backend, inp):
    """A NaN coordinate is a clear error naming coords, before any backend runs."""
    coords = inp.coords.clone()
    coords[0, 0, 1, 2, 0] = math.nan
    with pytest.raises(ValueError, match=r"^coords\b"):
        co.bilinear_weighted_gather(inp.fq, inp.fk, inp.v, coords, 0.1, backend=backend)


@pytest.mark.skipif(not co.HAS_COMPILED, reason="cocosnet_ops._C is not built")
def test_kernel_samples_nan_coords_at_zero(inp):
    """The compiled op itself (reachable without the Python checks) reads a NaN coordinate as 0,
    never as an index outside the map; the other pixels are unaffected."""
    coords = inp.coords.clone()
    coords[0, 0, 1, 2, 0] = math.nan
    coords[0, 1, 3, 4, 1] = math.nan
    out = torch.ops.cocosnet_ops.bilinear_weighted_gather(inp.fq, inp.fk, inp.v, coords, 0.1)
    expected = ref.bilinear_weighted_gather(inp.fq, inp.fk, inp.v, torch.nan_to_num(coords, nan=0.0), 0.1)
    torch.testing.assert_close(out, expected)


def test_nan_scores_rank_last(backend, int_feats):
    """A key pixel with a NaN feature has NaN scores, which rank below every number (as -inf):
    the kernels' ranking of them, through every search op that scores candidates."""
    fq, fk = int_feats(1, 3, 4, 5, seed=1), int_feats(1, 3, 3, 4, seed=2)
    poisoned = [2, 7]
    fk.view(1, 3, 12)[0, 1, poisoned] = math.nan
    every = torch.arange(12, dtype=torch.int32).view(1, 12, 1, 1).expand(1, 12, 4, 5).contiguous()
    results = {
        "evaluate_candidates": co.evaluate_candidates(fq, fk, every, 12, backend=backend),
        "exact_knn": co.exact_knn(fq, fk, 12, backend=backend),
        "patch_match": co.patch_match(fq, fk, k=12, iters=1, backend=backend),
    }
    last = torch.tensor(poisoned, dtype=torch.int32).view(1, 2, 1, 1)
    for name, (nnf, scores) in results.items():
        assert (nnf[:, -2:] == last).all(), name
        assert torch.isfinite(scores[:, :-2]).all() and (scores[:, -2:] == -math.inf).all(), name
        assert torch.equal(nnf[:, :-2], results["exact_knn"][0][:, :-2]), name


def test_infinite_and_far_coords_are_clamped(backend, inp):
    """Coordinates beyond the map (even +-inf) sample the border, like the clamped finite ones."""
    far = inp.coords.clone()
    far[..., 0] = torch.tensor([math.inf, -1e30]).view(1, 2, 1, 1)
    far[..., 1] = torch.tensor([-math.inf, 1e30]).view(1, 2, 1, 1)
    border = far.clone()
    border[..., 0] = border[..., 0].clamp(0, WK - 1)
    border[..., 1] = border[..., 1].clamp(0, HK - 1)
    out = co.bilinear_weighted_gather(inp.fq, inp.fk, inp.v, far, 0.1, backend=backend)
    expected = ref.bilinear_weighted_gather(inp.fq, inp.fk, inp.v, border, 0.1)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("jump", [[2**30], [2**31], [2**31 + 3, 1], [2**62], [2**63], [4, 2**64]])
def test_huge_jump_is_rejected_or_harmless(jump, backend, inp):
    """Steps up to 2**30 are accepted and only propose out-of-map neighbours: the result equals
    the reference's; larger ones (which would overflow the kernels' int offsets) are rejected."""
    if max(jump) > 2**30:
        with pytest.raises(ValueError, match=r"^jump\b"):
            co.patch_match(inp.fq, inp.fk, k=3, iters=2, jump=jump, backend=backend)
        return
    nnf, scores = co.patch_match(inp.fq, inp.fk, k=3, iters=2, jump=jump, backend=backend)
    same_effect = [min(j, 10**6) for j in jump]  # any step beyond the map only finds the outside
    exp_nnf, exp_scores = ref.patch_match(inp.fq, inp.fk, 3, 2, None, 1, same_effect, True, 0)
    assert torch.equal(nnf, exp_nnf)
    torch.testing.assert_close(scores, exp_scores)


@pytest.mark.parametrize("dilation", [1000, 2**20, 2**24, 2**24 + 1, 2**30, 2**31 - 1, 2**40])
def test_huge_dilation_is_rejected_or_clamped(dilation, backend):
    """Dilations up to 2**24 (window 64 times that still fits an int) clamp to the border, as
    computed here with Python ints, which cannot overflow; larger ones are rejected."""
    coarse = torch.randint(0, 20, (1, 2, 4, 5), generator=torch.Generator().manual_seed(0)).int()
    if dilation > 2**24:
        with pytest.raises(ValueError, match=r"^dilation\b"):
            co.nnf_upsample(coarse, (4, 5), (4, 5), window=4, dilation=dilation, backend=backend)
        return
    got = co.nnf_upsample(coarse, (4, 5), (4, 5), window=4, dilation=dilation, backend=backend)
    for m in range(2):
        for y in range(4):
            for x in range(5):
                my, mx = divmod(int(coarse[0, m, y, x]), 5)
                for i in range(4):
                    for j in range(4):
                        gy = min(max(my + (i - 1) * dilation, 0), 3)
                        gx = min(max(mx + (j - 1) * dilation, 0), 4)
                        assert int(got[0, m * 16 + i * 4 + j, y, x]) == gy * 5 + gx


@pytest.mark.skipif(not co.HAS_COMPILED, reason="cocosnet_ops._C is not built")
def test_long_maps_do_not_overflow_the_kernels_int_arithmetic(int_feats):
    """On 1 x 50000 maps, a jump-flood step times a map side and a cell offset times two map sides
    pass 2**31: the kernels compute them in 64 bits, like the reference's Python ints."""
    width = 50_000
    fq, fk = int_feats(1, 1, 1, width, seed=1), int_feats(1, 1, 1, width, seed=2)
    got = co.patch_match(fq, fk, k=1, iters=2, jump=[30_000, 1], random_search=False, backend="cpu")
    _assert_search_equal(got, ref.patch_match(fq, fk, 1, 2, None, 1, [30_000, 1], False, 0))
    coarse = torch.tensor([[[[1, 0]]]], dtype=torch.int32)
    got = co.nnf_upsample(coarse, (1, width), (1, width), window=2, dilation=3, backend="cpu")
    assert torch.equal(got, ref.nnf_upsample(coarse, (1, width), (1, width), 2, 3))


GPU_INDEX_CHECKS = """
import torch, cocosnet_ops as co
gen = torch.Generator().manual_seed(0)
fq, fk, v = (torch.randn(s, generator=gen).cuda() for s in ([1, 4, 5, 6], [1, 4, 7, 3], [1, 3, 7, 3]))
nnf = torch.randint(0, 21, (1, 2, 5, 6), generator=gen, dtype=torch.int32).cuda()
coarse = torch.randint(0, 6, (1, 2, 2, 3), generator=gen, dtype=torch.int32).cuda()
torch.cuda.synchronize()
torch.cuda.set_sync_debug_mode("error")  # any host sync raises
co.weighted_gather(fq, fk, v, nnf, 0.1, backend="torch")
co.nnf_upsample(coarse, (4, 6), (4, 6), backend="torch")
torch.cuda.set_sync_debug_mode(0)
coarse[0, 0, 0, 0] = 6
co.nnf_upsample(coarse, (4, 6), (4, 6), backend="torch")
torch.cuda.synchronize()
"""


@pytest.mark.cuda
def test_index_checks_on_a_gpu_assert_on_the_device_without_a_host_sync():
    """On a GPU the range checks go through a device-side assert, not a read-back per op. (In a
    fresh interpreter: a device-side assert leaves the CUDA context unusable.)"""
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-c", GPU_INDEX_CHECKS]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=root)
    assert done.returncode != 0
    assert "nnf: entries must be flat indices into the 2x3 coarse key map" in done.stderr
    assert "called a synchronizing CUDA operation" not in done.stderr


# ============================================================================ valid but unusual


def _assert_search_equal(got, expected):
    """Search results: identical indices, scores within float tolerance."""
    assert got[0].dtype == torch.int32
    assert torch.equal(got[0], expected[0])
    torch.testing.assert_close(got[1], expected[1].to(got[1].dtype))


def _transposed(t):
    """The same values as ``t`` stored with H and W swapped: a non-contiguous view."""
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)


def _strided(t):
    """The same values as ``t`` as a view into a larger tensor (every other channel)."""
    big = torch.zeros(t.shape[0], 2 * t.shape[1], *t.shape[2:], dtype=t.dtype)
    big[:, ::2] = t
    return big[:, ::2]


LAYOUTS = {
    "transposed": _transposed,
    "strided": _strided,
    "channels_last": lambda t: t.contiguous(memory_format=torch.channels_last),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layouts_search_ops(layout, backend, int_feats):
    """Non-contiguous and channels_last inputs give the reference's result on contiguous ones."""
    fq, fk = int_feats(2, 5, 6, 7, seed=11), int_feats(2, 5, 8, 5, seed=12)
    lq, lk = LAYOUTS[layout](fq), LAYOUTS[layout](fk)
    assert torch.equal(lq, fq) and not lq.is_contiguous()
    _assert_search_equal(co.patch_match(lq, lk, k=4, iters=3, patch_size=3, backend=backend),
                         ref.patch_match(fq, fk, 4, 3, None, 3, None, True, 0))
    _assert_search_equal(co.exact_knn(lq, lk, 5, backend=backend), ref.exact_knn(fq, fk, 5))
    cand = torch.randint(-1, 40, (2, 9, 6, 7), generator=torch.Generator().manual_seed(3)).int()
    _assert_search_equal(co.evaluate_candidates(lq, lk, cand, 3, backend=backend),
                         ref.evaluate_candidates(fq, fk, cand, 3))
    _assert_search_equal(co.patch_match(lq, lk, k=3, iters=1, init=cand[:, ::2], backend=backend),
                         ref.patch_match(fq, fk, 3, 1, cand[:, ::2].contiguous(), 1, None, True, 0))


@pytest.mark.parametrize("which", ["candidates", "init", "exact_knn-as-init"])
def test_noncontiguous_candidates_and_init(which, backend, int_feats):
    """Non-contiguous int32 candidate maps are valid input like any other view (exact_knn's own
    output, the documented coarsest-level init, can be one)."""
    fq, fk = int_feats(2, 5, 6, 7, seed=11), int_feats(2, 5, 8, 5, seed=12)
    cand = torch.randint(-1, 40, (2, 9, 7, 6), generator=torch.Generator().manual_seed(3)).int()
    view = cand.transpose(-1, -2)
    assert not view.is_contiguous()
    if which == "candidates":
        got = co.evaluate_candidates(fq, fk, view, 3, backend=backend)
        expected = ref.evaluate_candidates(fq, fk, view.contiguous(), 3)
    elif which == "init":
        got = co.patch_match(fq, fk, k=3, iters=2, init=view[:, ::2], backend=backend)
        expected = ref.patch_match(fq, fk, 3, 2, view[:, ::2].contiguous())
    else:
        row = fq[:, :, :1]  # one query row: the (B, k, 1, W) knn map is a non-contiguous view
        init = co.exact_knn(row, fk, 3, backend="torch")[0]
        got = co.patch_match(row, fk, k=3, iters=1, init=init, backend=backend)
        expected = ref.patch_match(row, fk, 3, 1, init.contiguous())
    _assert_search_equal(got, expected)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layouts_warp_ops(layout, backend, feats, values):
    fq, fk, v = feats(2, 4, 5, 6, seed=1), feats(2, 4, 7, 4, seed=2), values(2, 3, 7, 4, seed=3)
    lq, lk, lv = (LAYOUTS[layout](t) for t in (fq, fk, v))
    gen = torch.Generator().manual_seed(5)
    nnf = torch.randint(0, 28, (2, 6, 3, 5), generator=gen).int().permute(0, 2, 3, 1)  # a permuted view
    assert not nnf.is_contiguous()
    coords = torch.rand(2, 5, 6, 3, 2, generator=gen).permute(0, 3, 1, 2, 4) * 5
    assert coords.shape == (2, 3, 5, 6, 2) and not coords.is_contiguous()
    torch.testing.assert_close(co.weighted_gather(lq, lk, lv, nnf, 0.05, backend=backend),
                               ref.weighted_gather(fq, fk, v, nnf.contiguous(), 0.05))
    torch.testing.assert_close(co.bilinear_weighted_gather(lq, lk, lv, coords, 0.05, backend=backend),
                               ref.bilinear_weighted_gather(fq, fk, v, coords.contiguous(), 0.05))
    warp, back = co.dense_warp(lq, lk, lv, 0.05, cycle=True, backend=backend)
    exp_warp, exp_back = ref.dense_warp(fq, fk, v, 0.05, cycle=True)
    torch.testing.assert_close(warp, exp_warp)
    torch.testing.assert_close(back, exp_back)


def test_layout_nnf_upsample(backend):
    coarse = torch.randint(0, 12, (2, 3, 4, 3), generator=torch.Generator().manual_seed(0)).int()
    view = coarse.transpose(-1, -2).contiguous().transpose(-1, -2)
    got = co.nnf_upsample(view, (6, 8), (8, 6), window=3, dilation=1, backend=backend)
    assert torch.equal(got, ref.nnf_upsample(coarse, (6, 8), (8, 6), 3, 1))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_search_is_float32(dtype, backend, feats, same_matches):
    """Half inputs are computed in float32: the same as converting them first (exact_knn's
    matmul may round differently from the reference's: indices equal up to near-ties)."""
    fq, fk = feats(1, 6, 6, 5, seed=1, dtype=dtype), feats(1, 6, 5, 7, seed=2, dtype=dtype)
    f32 = fq.float(), fk.float()
    got, expected = co.patch_match(fq, fk, k=3, iters=2, backend=backend), ref.patch_match(*f32, 3, 2)
    assert got[1].dtype == torch.float32
    _assert_search_equal(got, expected)
    got, expected = co.exact_knn(fq, fk, 3, backend=backend), ref.exact_knn(*f32, 3)
    assert got[1].dtype == torch.float32
    same_matches(got[0], expected[0], *f32)
    torch.testing.assert_close(got[1], expected[1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_warps(dtype, backend, feats, values):
    """Warps of half inputs are computed in float32 and returned in the value's dtype."""
    fq, fk, v = feats(1, 6, 6, 5, seed=1), feats(1, 6, 5, 7, seed=2), values(1, 3, 5, 7, seed=3)
    hq, hk, hv = fq.to(dtype), fk.to(dtype), v.to(dtype)
    f32 = hq.float(), hk.float(), hv.float()
    nnf = torch.randint(0, 35, (1, 4, 6, 5), generator=torch.Generator().manual_seed(0)).int()
    coords = torch.rand(1, 4, 6, 5, 2, generator=torch.Generator().manual_seed(1)) * 4
    tol = {"rtol": 1e-2, "atol": 1e-2}
    cases = [
        (co.weighted_gather(hq, hk, hv, nnf, 0.1, backend=backend), ref.weighted_gather(*f32, nnf, 0.1)),
        (co.bilinear_weighted_gather(hq, hk, hv, coords.to(dtype), 0.1, backend=backend),
         ref.bilinear_weighted_gather(*f32, coords.to(dtype).float(), 0.1)),
        (co.dense_warp(hq, hk, hv, 0.1, backend=backend), ref.dense_warp(*f32, 0.1)),
    ]
    for got, expected in cases:
        assert got.dtype == dtype
        torch.testing.assert_close(got.float(), expected, **tol)


def test_k_equals_key_pixels(backend, int_feats):
    """k = Hk*Wk: every key pixel exactly once per query pixel, ranked like exact_knn."""
    fq, fk = int_feats(2, 3, 4, 5, seed=3), int_feats(2, 3, 3, 4, seed=4)
    kk = 12
    knn = co.exact_knn(fq, fk, kk, backend=backend)
    _assert_search_equal(knn, ref.exact_knn(fq, fk, kk))
    pm = co.patch_match(fq, fk, k=kk, iters=2, backend=backend)
    every = torch.arange(kk, dtype=torch.int32).view(1, kk, 1, 1).expand_as(pm[0])
    assert torch.equal(pm[0].sort(1).values, every)
    _assert_search_equal(pm, knn)  # all candidates present, so the ranking is exact
    cand = torch.full((2, 1, 4, 5), -1, dtype=torch.int32)
    ev = co.evaluate_candidates(fq, fk, cand, kk, backend=backend)
    _assert_search_equal(ev, knn)


def test_one_by_one_maps(backend, feats, values):
    fq, fk, v = feats(2, 3, 1, 1, seed=1), feats(2, 3, 1, 1, seed=2), values(2, 2, 1, 1, seed=3)
    nnf, scores = co.patch_match(fq, fk, k=1, iters=3, patch_size=3, backend=backend)
    assert nnf.shape == (2, 1, 1, 1) and (nnf == 0).all()
    torch.testing.assert_close(scores, (fq * fk).sum(1, keepdim=True) / 9)
    nnf, scores = co.exact_knn(fq, fk, 1, backend=backend)
    torch.testing.assert_close(scores, (fq * fk).sum(1, keepdim=True))
    zero = torch.zeros(2, 1, 1, 1, dtype=torch.int32)
    # One candidate gets the whole softmax weight: the warp is the value itself.
    torch.testing.assert_close(co.weighted_gather(fq, fk, v, zero, 0.01, backend=backend), v)
    torch.testing.assert_close(
        co.bilinear_weighted_gather(fq, fk, v, torch.zeros(2, 1, 1, 1, 2), 0.01, backend=backend), v)
    warp, back = co.dense_warp(fq, fk, v, 0.01, cycle=True, backend=backend)
    torch.testing.assert_close(warp, v)
    torch.testing.assert_close(back, v)
    up = co.nnf_upsample(zero, (1, 1), (1, 1), backend=backend)
    assert up.shape == (2, 16, 1, 1) and (up == 0).all()


def test_batch_items_are_independent(backend, feats, values, same_matches):
    """Deterministic ops on a batch equal the ops on each item (exact_knn's matmul may round
    differently at another batch size: indices equal up to near-ties)."""
    fq, fk, v = feats(3, 4, 5, 6, seed=1), feats(3, 4, 6, 4, seed=2), values(3, 2, 6, 4, seed=3)
    gen = torch.Generator().manual_seed(4)
    nnf = torch.randint(0, 24, (3, 3, 5, 6), generator=gen).int()
    coords = torch.rand(3, 3, 5, 6, 2, generator=gen) * 3
    # Holes and repeats, so that pixels are topped up with random draws: those are numbered by
    # the pixel's place in its own map, the same for every batch item.
    cand = torch.randint(-12, 24, (3, 8, 5, 6), generator=gen).int()
    batched_knn = co.exact_knn(fq, fk, 4, backend=backend)
    batched = [
        *co.evaluate_candidates(fq, fk, cand, 5, backend=backend),
        *co.patch_match(fq, fk, k=3, iters=2, init=cand, backend=backend),
        co.weighted_gather(fq, fk, v, nnf, 0.1, backend=backend),
        co.bilinear_weighted_gather(fq, fk, v, coords, 0.1, backend=backend),
        co.dense_warp(fq, fk, v, 0.1, backend=backend),
    ]
    for i in range(3):
        s = slice(i, i + 1)
        knn = co.exact_knn(fq[s], fk[s], 4, backend=backend)
        same_matches(batched_knn[0][s], knn[0], fq[s], fk[s])
        torch.testing.assert_close(batched_knn[1][s], knn[1])
        single = [
            *co.evaluate_candidates(fq[s], fk[s], cand[s], 5, backend=backend),
            *co.patch_match(fq[s], fk[s], k=3, iters=2, init=cand[s], backend=backend),
            co.weighted_gather(fq[s], fk[s], v[s], nnf[s], 0.1, backend=backend),
            co.bilinear_weighted_gather(fq[s], fk[s], v[s], coords[s], 0.1, backend=backend),
            co.dense_warp(fq[s], fk[s], v[s], 0.1, backend=backend),
        ]
        for whole, one in zip(batched, single, strict=True):
            torch.testing.assert_close(whole[s], one)


@pytest.mark.parametrize(("q_size", "k_size"), [((5, 9), (8, 4)), ((9, 4), (3, 11)), ((7, 7), (2, 3))])
def test_query_and_key_of_different_sizes(q_size, k_size, backend, int_feats, values):
    fq, fk = int_feats(1, 4, *q_size, seed=1), int_feats(1, 4, *k_size, seed=2)
    v = values(1, 3, *k_size, seed=3)
    kp = k_size[0] * k_size[1]
    k = min(4, kp)
    _assert_search_equal(co.patch_match(fq, fk, k=k, iters=3, patch_size=3, seed=5, backend=backend),
                         ref.patch_match(fq, fk, k, 3, None, 3, None, True, 5))
    knn = co.exact_knn(fq, fk, k, backend=backend)
    _assert_search_equal(knn, ref.exact_knn(fq, fk, k))
    assert int(knn[0].max()) < kp
    torch.testing.assert_close(co.weighted_gather(fq / 4, fk / 4, v, knn[0], 0.5, backend=backend),
                               ref.weighted_gather(fq / 4, fk / 4, v, knn[0], 0.5))
    warp, back = co.dense_warp(fq / 4, fk / 4, v, 0.5, cycle=True, backend=backend)
    assert warp.shape == (1, 3, *q_size) and back.shape == (1, 3, *k_size)


def test_nnf_upsample_unequal_sizes(backend):
    """Coarse 3x2 query / 2x4 key NNF up to a 6x4 query / 4x8 key level, and a non-integer ratio."""
    coarse = torch.randint(0, 8, (2, 2, 3, 2), generator=torch.Generator().manual_seed(1)).int()
    got = co.nnf_upsample(coarse, (4, 8), (6, 4), backend=backend)
    assert got.shape == (2, 32, 6, 4)
    assert torch.equal(got, ref.nnf_upsample(coarse, (4, 8), (6, 4), 4, 2))
    got = co.nnf_upsample(coarse, (5, 7), (7, 5), window=3, dilation=0, coarse_key_size=(2, 4),
                          backend=backend)
    assert torch.equal(got, ref.nnf_upsample(coarse, (5, 7), (7, 5), 3, 0, (2, 4)))
    assert int(got.min()) >= 0 and int(got.max()) < 35


def test_init_entries_below_zero_are_ignored(backend, int_feats):
    """init entries < 0 mean 'no candidate' (any negative value), not an index."""
    fq, fk = int_feats(1, 3, 4, 4, seed=1), int_feats(1, 3, 4, 4, seed=2)
    init = torch.full((1, 3, 4, 4), -(2**31), dtype=torch.int32)
    init[:, 1] = -1
    got = co.patch_match(fq, fk, k=2, iters=0, init=init, backend=backend)
    _assert_search_equal(got, co.patch_match(fq, fk, k=2, iters=0, backend=backend))


# ============================================================================ fixed edge cases


def test_search_outputs_do_not_track_gradients(backend, inp):
    """The search is not differentiable: its outputs must not pretend to carry a gradient."""
    fq = inp.fq.clone().requires_grad_()
    for nnf, scores in (
        co.patch_match(fq, inp.fk, k=2, iters=1, backend=backend),
        co.exact_knn(fq, inp.fk, 2, backend=backend),
        co.evaluate_candidates(fq, inp.fk, inp.nnf, 2, backend=backend),
    ):
        assert not nnf.requires_grad and not scores.requires_grad


def test_tiny_temperature_gives_the_arg_max(backend, inp):
    """T -> 0 is the hard arg-max, not inf - inf."""
    out = co.weighted_gather(inp.fq, inp.fk, inp.v, inp.nnf, 1e-30, backend=backend)
    dots = (inp.fq.unsqueeze(2) * ref.gather_pixels(inp.fk, inp.nnf)).sum(1)
    best = inp.nnf.gather(1, dots.argmax(1, keepdim=True))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref.gather_pixels(inp.v, best)[:, :, 0])
    with pytest.raises(ValueError, match=r"^temperature"):
        co.weighted_gather(inp.fq, inp.fk, inp.v, inp.nnf, 1e-31, backend=backend)


def test_numpy_scalars_are_accepted(backend, inp):
    """Integer arguments may come from numpy, as they often do in data pipelines."""
    got = co.patch_match(inp.fq, inp.fk, k=np.int64(2), iters=np.int32(1), seed=np.uint32(3), backend=backend)
    want = co.patch_match(inp.fq, inp.fk, k=2, iters=1, seed=3, backend=backend)
    assert torch.equal(got[0], want[0])
    assert torch.equal(_bounded(backend, inp, np.int64(1))[0], _bounded(backend, inp, 1)[0])
    got = co.exact_knn(inp.fq, inp.fk, np.int64(2), backend=backend)
    assert torch.equal(got[0], co.exact_knn(inp.fq, inp.fk, 2, backend=backend)[0])
    out = co.weighted_gather(inp.fq, inp.fk, inp.v, inp.nnf, np.float32(0.5), backend=backend)
    torch.testing.assert_close(out, co.weighted_gather(inp.fq, inp.fk, inp.v, inp.nnf, 0.5, backend=backend))


def test_meta_tensors_give_shapes():
    """On the meta device the value checks are skipped and the reference computes shapes."""
    fq, fk, v = (torch.empty(1, 4, 5, 6, device=META), torch.empty(1, 4, 7, 3, device=META),
                 torch.empty(1, 3, 7, 3, device=META))
    nnf = torch.empty(1, 2, 5, 6, dtype=torch.int32, device=META)
    assert co.weighted_gather(fq, fk, v, nnf, 0.1).shape == (1, 3, 5, 6)


def test_values_may_have_a_wider_dtype_than_features(backend, inp):
    """Half features (autocast) with float32 images: computed in float32, returned as the values."""
    out = co.weighted_gather(inp.fq.half(), inp.fk.half(), inp.v, inp.nnf, 0.5, backend=backend)
    assert out.dtype == torch.float32
    want = ref.weighted_gather(inp.fq.half().float(), inp.fk.half().float(), inp.v, inp.nnf, 0.5)
    torch.testing.assert_close(out, want)
    out = co.dense_warp(inp.fq, inp.fk, inp.v.double(), 0.5, backend=backend)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref.attention_warp(inp.fq.double(), inp.fk.double(), inp.v.double(), 0.5))
