"""The Triton kernels as torch.library ops in the ``cocosnet_ops_triton`` namespace.

Each op mirrors the ``cocosnet_ops`` op of the same name (same arguments and results); the
public functions in ``cocosnet_ops/ops.py`` validate the arguments and route
``backend="triton"`` here. On a GPU the ops are ``torch.library.triton_op``s, so torch.compile
sees the kernels inside them. Under the interpreter (``TRITON_INTERPRET=1``) ``@triton.jit``
gives interpreted functions that torch cannot trace, so there they are plain custom ops, opaque
to torch.compile; both kinds have the fake kernels and autograd registered below.
"""

import torch
import triton
from torch import Tensor
from triton.runtime.jit import JITFunction

from ..reference import SEARCH_ANCHORS, STREAM_SEARCH_X, STREAM_SEARCH_Y, scale_shift, search_radii
from . import gather, search

NAMESPACE = "cocosnet_ops_triton"
INTERPRETED = not isinstance(search.initial_topk_kernel, JITFunction)
_define = torch.library.custom_op if INTERPRETED else torch.library.triton_op
_launch = torch.library.wrap_triton

# Elements of one (pixels x channels) tile per program on a GPU: enough work per program, few
# enough registers per thread at the default four warps.
TILE_ELEMENTS = 512
# Under the interpreter every program is a Python loop over numpy arrays: fewer, larger ones.
INTERPRETER_BLOCK = 1024


def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def _block(pixels: int, width: int) -> int:
    """Query pixels per program, for tiles ``width`` (a power of two) wide."""
    if INTERPRETED:
        return min(_pow2(pixels), INTERPRETER_BLOCK)
    return max(1, min(128, TILE_ELEMENTS // width, _pow2(pixels)))


def _channels_last(t: Tensor) -> Tensor:
    return t.permute(0, 2, 3, 1).contiguous()


# ----------------------------------------------------------------------------- search


def _initial_topk(
    query: Tensor, key_cl: Tensor, cand: Tensor | None, k: int, patch_size: int, seed: int
) -> tuple[Tensor, Tensor]:
    B, C, Hq, Wq = query.shape
    Hk, Wk = key_cl.shape[1:3]
    if cand is None:
        cand = torch.empty((B, 0, Hq, Wq), dtype=torch.int32, device=query.device)
    index = torch.empty((B, k, Hq, Wq), dtype=torch.int32, device=query.device)
    score = torch.empty((B, k, Hq, Wq), dtype=query.dtype, device=query.device)
    CB, KB = _pow2(C), _pow2(k)
    BLOCK = _block(B * Hq * Wq, max(CB, KB))
    grid = (triton.cdiv(B * Hq * Wq, BLOCK),)
    _launch(search.initial_topk_kernel)[grid](
        query, key_cl, cand, index, score, B, cand.shape[1], C, Hq, Wq, Hk, Wk, k, seed,
        RADIUS=patch_size // 2, BLOCK=BLOCK, CB=CB, KB=KB,
    )
    return index, score


@_define(f"{NAMESPACE}::patch_match", mutates_args=())
def patch_match(
    query: Tensor,
    key: Tensor,
    k: int,
    iters: int,
    init: Tensor | None,
    patch_size: int,
    jumps: list[int],
    random_search: bool,
    seed: int,
    max_radius: int | None = None,
) -> tuple[Tensor, Tensor]:
    B, C, Hq, Wq = query.shape
    Hk, Wk = key.shape[2:]
    key_cl = _channels_last(key)
    index, score = _initial_topk(query, key_cl, init, k, patch_size, seed)
    radii = search_radii(Hk, Wk, max_radius) if random_search else []
    # The kernel bisects each pixel's init candidates, sorted. It needs none unbounded: without
    # max_radius, without init candidates, or with a radius that spans the key map (every key
    # pixel lies that near every candidate, and the random-search radii start as unbounded).
    spans_key_map = max_radius is not None and max_radius >= max(Hk, Wk) - 1
    bounded = max_radius is not None and not spans_key_map and init is not None and init.shape[1] > 0
    window = init.sort(1).values if bounded else index.new_empty((B, 0, Hq, Wq))
    M = window.shape[1]
    CB, KB = _pow2(C), _pow2(k)
    BLOCK = _block(B * Hq * Wq, max(CB, KB))
    grid = (triton.cdiv(B * Hq * Wq, BLOCK),)
    next_index, next_score = torch.empty_like(index), torch.empty_like(score)
    for it in range(iters):
        step = jumps[min(it, len(jumps) - 1)] if jumps else 1
        _launch(search.patch_match_step_kernel)[grid](
            query, key_cl, index, score, next_index, next_score, window, M, max_radius if bounded else 0,
            B, C, Hq, Wq, Hk, Wk, k,
            step, scale_shift(step, Hk, Hq), scale_shift(step, Wk, Wq), min(k, SEARCH_ANCHORS),
            radii[0] if radii else 0, len(radii), seed, STREAM_SEARCH_Y | it, STREAM_SEARCH_X | it,
            RADIUS=patch_size // 2, BLOCK=BLOCK, CB=CB, KB=KB, BOUNDED=bounded, STEPS=M.bit_length(),
        )
        index, next_index = next_index, index
        score, next_score = next_score, score
    return index, score


@_define(f"{NAMESPACE}::evaluate_candidates", mutates_args=())
def evaluate_candidates(
    query: Tensor, key: Tensor, candidates: Tensor, k: int, patch_size: int
) -> tuple[Tensor, Tensor]:
    return _initial_topk(query, _channels_last(key), candidates, k, patch_size, 0)


@_define(f"{NAMESPACE}::bilinear_scores", mutates_args=())
def bilinear_scores(query: Tensor, key: Tensor, coords: Tensor, patch_size: int) -> Tensor:
    B, C, Hq, Wq = query.shape
    Hk, Wk = key.shape[2:]
    K = coords.shape[1]
    out = query.new_empty((B, K, Hq, Wq))
    CB = _pow2(C)
    BLOCK = _block(B * Hq * Wq, CB)
    _launch(search.bilinear_scores_kernel)[(triton.cdiv(B * Hq * Wq, BLOCK),)](
        query, _channels_last(key), coords, out, B, K, C, Hq, Wq, Hk, Wk,
        RADIUS=patch_size // 2, BLOCK=BLOCK, CB=CB,
    )
    return out


def _nnf_like(query: Tensor, k: int) -> tuple[Tensor, Tensor]:
    B, _, Hq, Wq = query.shape
    return query.new_empty((B, k, Hq, Wq), dtype=torch.int32), query.new_empty((B, k, Hq, Wq))


@patch_match.register_fake
def _(query, key, k, iters, init, patch_size, jumps, random_search, seed, max_radius=None):
    return _nnf_like(query, k)


@evaluate_candidates.register_fake
def _(query, key, candidates, k, patch_size):
    return _nnf_like(query, k)



@bilinear_scores.register_fake
def _(query, key, coords, patch_size):
    return query.new_empty(coords.shape[:4])


# ----------------------------------------------------------------------------- gathers


def _scalar(value: float, like: Tensor) -> Tensor:
    """A float argument as a one-element tensor of the computation's dtype: a Python float
    reaches a kernel as float32, which would round a float64 computation's temperature."""
    return torch.full((1,), value, dtype=like.dtype, device=like.device)


def _gather_shape(query: Tensor, value: Tensor, k: int) -> tuple[int, int, int, int, int, int, int, int]:
    """B, C, Cv, Hq, Wq and the channel, value-channel and candidate tile widths."""
    B, C, Hq, Wq = query.shape
    return B, C, value.shape[1], Hq, Wq, _pow2(C), _pow2(value.shape[1]), _pow2(k)


def _from_channels_last(t: Tensor) -> Tensor:
    return t.permute(0, 3, 1, 2).contiguous()


def _scatter_by_key(
    targets: Tensor,
    key_coef: Tensor,
    query: Tensor,
    value_coef: Tensor,
    grad_out: Tensor,
    key_size: tuple[int, int],
) -> tuple[Tensor, Tensor]:
    """The deterministic scatter: entry e of (B, J, Hq, Wq) adds key_coef[e] * query[pixel] to the
    key gradient and value_coef[e] * grad_out[pixel] to the value gradient at key pixel
    targets[e]. Entries are sorted by key pixel (stable, so in entry order within one) and each
    key pixel sums its run in that order."""
    B, J = targets.shape[:2]
    C, Cv = query.shape[1], grad_out.shape[1]
    Hk, Wk = key_size
    key_pixels = Hk * Wk
    batch = torch.arange(B, device=targets.device).view(B, 1) * key_pixels
    flat = (targets.reshape(B, -1).long() + batch).reshape(-1)
    order = torch.argsort(flat, stable=True)
    starts = torch.searchsorted(flat[order], torch.arange(B * key_pixels + 1, device=targets.device))
    grad_key = query.new_empty((B, C, Hk, Wk))
    grad_value = grad_out.new_empty((B, Cv, Hk, Wk))
    CB, CVB = _pow2(C), _pow2(Cv)
    BLOCK = _block(B * key_pixels, max(CB, CVB))
    _launch(gather.scatter_rows_kernel)[(triton.cdiv(B * key_pixels, BLOCK),)](
        order, starts, key_coef, query, grad_key, value_coef, grad_out, grad_value,
        B * key_pixels, key_pixels, C, Cv, J, query.shape[2] * query.shape[3],
        BLOCK=BLOCK, CB=CB, CVB=CVB,
    )
    return grad_key, grad_value


@_define(f"{NAMESPACE}::weighted_gather", mutates_args=())
def weighted_gather(query: Tensor, key: Tensor, value: Tensor, nnf: Tensor, temperature: float) -> Tensor:
    B, C, Cv, Hq, Wq, CB, CVB, KB = _gather_shape(query, value, nnf.shape[1])
    out = query.new_empty((B, Cv, Hq, Wq))
    BLOCK = _block(B * Hq * Wq, max(CB, CVB, KB))
    _launch(gather.weighted_gather_kernel)[(triton.cdiv(B * Hq * Wq, BLOCK),)](
        query, _channels_last(key), _channels_last(value), nnf, _scalar(temperature, query), out,
        B, C, Cv, Hq, Wq, key.shape[2] * key.shape[3], nnf.shape[1],
        BLOCK=BLOCK, CB=CB, CVB=CVB, KB=KB,
    )
    return out


@_define(f"{NAMESPACE}::weighted_gather_backward", mutates_args=())
def weighted_gather_backward(
    grad_out: Tensor, query: Tensor, key: Tensor, value: Tensor, nnf: Tensor, temperature: float
) -> tuple[Tensor, Tensor, Tensor]:
    B, C, Cv, Hq, Wq, CB, CVB, KB = _gather_shape(query, value, nnf.shape[1])
    key_cl, value_cl = _channels_last(key), _channels_last(value)
    grad_query = torch.empty_like(query)
    deterministic = torch.are_deterministic_algorithms_enabled()
    unused = query.new_empty(1)
    if deterministic:
        grad_key_cl = grad_value_cl = unused
        key_coef, value_coef = query.new_empty(nnf.shape), query.new_empty(nnf.shape)
    else:
        grad_key_cl, grad_value_cl = torch.zeros_like(key_cl), torch.zeros_like(value_cl)
        key_coef = value_coef = unused
    BLOCK = _block(B * Hq * Wq, max(CB, CVB, KB))
    _launch(gather.weighted_gather_backward_kernel)[(triton.cdiv(B * Hq * Wq, BLOCK),)](
        grad_out, query, key_cl, value_cl, nnf, _scalar(temperature, query), grad_query, grad_key_cl,
        grad_value_cl, key_coef, value_coef, B, C, Cv, Hq, Wq, key.shape[2] * key.shape[3], nnf.shape[1],
        ATOMIC=not deterministic, BLOCK=BLOCK, CB=CB, CVB=CVB, KB=KB,
    )
    if deterministic:
        grad_key, grad_value = _scatter_by_key(nnf, key_coef, query, value_coef, grad_out, key.shape[2:])
    else:
        grad_key, grad_value = _from_channels_last(grad_key_cl), _from_channels_last(grad_value_cl)
    return grad_query, grad_key, grad_value


@_define(f"{NAMESPACE}::bilinear_weighted_gather", mutates_args=())
def bilinear_weighted_gather(
    query: Tensor, key: Tensor, value: Tensor, coords: Tensor, temperature: float
) -> Tensor:
    B, C, Cv, Hq, Wq, CB, CVB, KB = _gather_shape(query, value, coords.shape[1])
    out = query.new_empty((B, Cv, Hq, Wq))
    BLOCK = _block(B * Hq * Wq, max(CB, CVB, KB))
    _launch(gather.bilinear_gather_kernel)[(triton.cdiv(B * Hq * Wq, BLOCK),)](
        query, _channels_last(key), _channels_last(value), coords, _scalar(temperature, query), out,
        B, C, Cv, Hq, Wq, key.shape[2], key.shape[3], coords.shape[1],
        BLOCK=BLOCK, CB=CB, CVB=CVB, KB=KB,
    )
    return out


@_define(f"{NAMESPACE}::bilinear_weighted_gather_backward", mutates_args=())
def bilinear_weighted_gather_backward(
    grad_out: Tensor, query: Tensor, key: Tensor, value: Tensor, coords: Tensor, temperature: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    K = coords.shape[1]
    B, C, Cv, Hq, Wq, CB, CVB, KB = _gather_shape(query, value, K)
    key_cl, value_cl = _channels_last(key), _channels_last(value)
    grad_query, grad_coords = torch.empty_like(query), torch.empty_like(coords)
    deterministic = torch.are_deterministic_algorithms_enabled()
    unused = query.new_empty(1)
    if deterministic:
        grad_key_cl = grad_value_cl = unused
        entries = (B, 4 * K, Hq, Wq)
        key_coef, value_coef = query.new_empty(entries), query.new_empty(entries)
        corners = torch.empty(entries, dtype=torch.int32, device=query.device)
    else:
        grad_key_cl, grad_value_cl = torch.zeros_like(key_cl), torch.zeros_like(value_cl)
        key_coef = value_coef = unused
        corners = torch.empty(1, dtype=torch.int32, device=query.device)
    BLOCK = _block(B * Hq * Wq, max(CB, CVB, KB))
    _launch(gather.bilinear_gather_backward_kernel)[(triton.cdiv(B * Hq * Wq, BLOCK),)](
        grad_out, query, key_cl, value_cl, coords, _scalar(temperature, query), grad_query, grad_key_cl,
        grad_value_cl, grad_coords, key_coef, value_coef, corners, B, C, Cv, Hq, Wq, key.shape[2],
        key.shape[3], K, ATOMIC=not deterministic, BLOCK=BLOCK, CB=CB, CVB=CVB, KB=KB,
    )
    if deterministic:
        grad_key, grad_value = _scatter_by_key(corners, key_coef, query, value_coef, grad_out, key.shape[2:])
    else:
        grad_key, grad_value = _from_channels_last(grad_key_cl), _from_channels_last(grad_value_cl)
    return grad_query, grad_key, grad_value, grad_coords


def _warp_like(query: Tensor, value: Tensor) -> Tensor:
    return query.new_empty((query.shape[0], value.shape[1], query.shape[2], query.shape[3]))


@weighted_gather.register_fake
def _(query, key, value, nnf, temperature):
    return _warp_like(query, value)


@bilinear_weighted_gather.register_fake
def _(query, key, value, coords, temperature):
    return _warp_like(query, value)


@weighted_gather_backward.register_fake
def _(grad_out, query, key, value, nnf, temperature):
    return torch.empty_like(query), torch.empty_like(key), torch.empty_like(value)


@bilinear_weighted_gather_backward.register_fake
def _(grad_out, query, key, value, coords, temperature):
    return torch.empty_like(query), torch.empty_like(key), torch.empty_like(value), torch.empty_like(coords)


def _save_inputs(ctx, inputs, output):
    *tensors, temperature = inputs
    ctx.save_for_backward(*tensors)
    ctx.temperature = temperature


def _weighted_gather_grad(ctx, grad):
    query, key, value, nnf = ctx.saved_tensors
    grads = weighted_gather_backward(grad.contiguous(), query, key, value, nnf, ctx.temperature)
    return *grads, None, None


def _bilinear_gather_grad(ctx, grad):
    query, key, value, coords = ctx.saved_tensors
    grads = bilinear_weighted_gather_backward(grad.contiguous(), query, key, value, coords, ctx.temperature)
    return *grads, None


weighted_gather.register_autograd(_weighted_gather_grad, setup_context=_save_inputs)
bilinear_weighted_gather.register_autograd(_bilinear_gather_grad, setup_context=_save_inputs)
