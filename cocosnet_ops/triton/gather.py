"""Triton kernels of weighted_gather and bilinear_weighted_gather, forward and backward.

The arithmetic is the per-pixel code of ``csrc/patch_match.h`` (weighted_gather_pixel,
bilinear_gather_pixel and their backward): a softmax over the K candidates' inner products,
shifted by the maximum before dividing by the temperature. One program handles BLOCK query
pixels, numbered over the whole batch; channels run along the second axis of each tile. The
query, grad_out and output maps are (B, C, H, W), read and written pixel-contiguously per
channel; key and value are channels-last (B, Hk, Wk, C), so a candidate's row is contiguous.

The backward computes each query pixel's gradients (query, coordinates) in its program and
scatters the key and value gradients to the candidates' key pixels, either with atomic adds
into channels-last buffers (``ATOMIC``), or, when torch's deterministic algorithms are enabled,
by storing each (pixel, candidate) entry's coefficients so that ``scatter_rows_kernel`` can
sum every key pixel's entries in a fixed order.
"""

import triton
import triton.language as tl


@triton.jit
def _tile(K, BLOCK: tl.constexpr, KB: tl.constexpr, dtype: tl.constexpr):
    """Per-candidate values of BLOCK pixels: slot numbers, the slots in use, a -inf tile."""
    slots = tl.arange(0, KB)
    return slots, slots < K, tl.zeros([BLOCK, KB], dtype=dtype) + float("-inf")


@triton.jit
def _pixels(B, C, Cv, Hq, Wq, BLOCK: tl.constexpr, CB: tl.constexpr, CVB: tl.constexpr):
    """This program's query pixels over the whole batch: whether each exists, its batch item
    and position, and the offsets of its channels in (B, C, Hq, Wq) and (B, Cv, Hq, Wq) maps."""
    P = Hq * Wq
    g = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    pixel_ok = g < B * P
    b = g // P
    p = g - b * P
    chan = tl.arange(0, CB)
    vchan = tl.arange(0, CVB)
    q_offsets = (b * C * P + p)[:, None] + chan.to(tl.int64)[None, :] * P
    v_offsets = (b * Cv * P + p)[:, None] + vchan.to(tl.int64)[None, :] * P
    q_mask = pixel_ok[:, None] & (chan < C)[None, :]
    v_mask = pixel_ok[:, None] & (vchan < Cv)[None, :]
    return pixel_ok, b, p, chan, vchan, q_offsets, v_offsets, q_mask, v_mask


@triton.jit
def _rows(base, row, width, chan, mask):
    """Offsets of rows ``row`` (BLOCK,) of a channels-last map ``width`` wide, and their mask."""
    return base + (row * width)[:, None] + chan[None, :], mask & (chan < width)[None, :]


@triton.jit
def _clamped(index, key_pixels):
    """An NNF entry forced into the key map: the public functions check NNFs, and this keeps a
    direct call of the op with a bad one from reading outside the map."""
    return tl.minimum(tl.maximum(index, 0), key_pixels - 1)


@triton.jit
def _softmax(logits, in_use, temperature):
    """softmax over the slots in use of (logit - max) / temperature, zero in the others."""
    top = tl.max(logits, axis=1)
    e = tl.where(in_use[None, :], tl.exp((logits - top[:, None]) / temperature), 0.0)
    return e / tl.sum(e, axis=1)[:, None]


@triton.jit
def _slot(tile, slots, i):
    """Column ``i`` of a (BLOCK, KB) tile."""
    return tl.sum(tl.where(slots[None, :] == i, tile, 0.0), axis=1)


@triton.jit
def bilinear(x, y, Hk, Wk):
    """The Bilinear struct of patch_match.h: the four corners (flat key indices), the weights
    wx, wy, and whether each coordinate was inside the map (so has a gradient)."""
    moves_x = (x >= 0) & (x <= Wk - 1)
    moves_y = (y >= 0) & (y <= Hk - 1)
    # A NaN coordinate lands on 0 instead of indexing out of the map.
    x = tl.where(x >= 0, tl.where(x <= Wk - 1, x, Wk - 1), 0)
    y = tl.where(y >= 0, tl.where(y <= Hk - 1, y, Hk - 1), 0)
    x0 = x.to(tl.int32)
    y0 = y.to(tl.int32)
    x1 = tl.minimum(x0 + 1, Wk - 1)
    y1 = tl.minimum(y0 + 1, Hk - 1)
    wx = x - x0
    wy = y - y0
    return y0 * Wk + x0, y0 * Wk + x1, y1 * Wk + x0, y1 * Wk + x1, wx, wy, moves_x, moves_y


@triton.jit
def blend(c0, c1, c2, c3, wx, wy):
    top = c0 * (1 - wx) + c1 * wx
    bottom = c2 * (1 - wx) + c3 * wx
    return top * (1 - wy) + bottom * wy


@triton.jit
def dot_rows(tile, base, row, width, chan, mask):
    """Inner products of each pixel's ``tile`` row with row ``row`` of a channels-last map."""
    offsets, row_mask = _rows(base, row, width, chan, mask)
    return tl.sum(tile * tl.load(offsets, mask=row_mask, other=0.0), axis=1)


# ----------------------------------------------------------------------------- weighted_gather


@triton.jit
def weighted_gather_kernel(
    query, key, value, nnf, temperature, out, B, C, Cv, Hq, Wq, key_pixels, K,
    BLOCK: tl.constexpr, CB: tl.constexpr, CVB: tl.constexpr, KB: tl.constexpr,
):
    pixel_ok, b, p, chan, vchan, q_offsets, v_offsets, q_mask, v_mask = _pixels(
        B, C, Cv, Hq, Wq, BLOCK, CB, CVB
    )
    P = Hq * Wq
    q_tile = tl.load(query + q_offsets, mask=q_mask, other=0.0)
    slots, in_use, logits = _tile(K, BLOCK, KB, q_tile.dtype)
    nnf += b * K * P + p
    key_row = b * key_pixels
    for i in range(K):
        row = key_row + _clamped(tl.load(nnf + i * P, mask=pixel_ok, other=0), key_pixels)
        logit = dot_rows(q_tile, key, row, C, chan, pixel_ok[:, None])
        logits = tl.where(slots[None, :] == i, logit[:, None], logits)
    weights = _softmax(logits, in_use, tl.load(temperature))
    acc = tl.zeros([BLOCK, CVB], dtype=q_tile.dtype)
    for i in range(K):
        row = key_row + _clamped(tl.load(nnf + i * P, mask=pixel_ok, other=0), key_pixels)
        offsets, mask = _rows(value, row, Cv, vchan, pixel_ok[:, None])
        acc += _slot(weights, slots, i)[:, None] * tl.load(offsets, mask=mask, other=0.0)
    tl.store(out + v_offsets, acc, mask=v_mask)


@triton.jit
def weighted_gather_backward_kernel(
    grad_out, query, key, value, nnf, temperature, grad_query, grad_key, grad_value, key_coef, value_coef,
    B, C, Cv, Hq, Wq, key_pixels, K,
    ATOMIC: tl.constexpr, BLOCK: tl.constexpr, CB: tl.constexpr, CVB: tl.constexpr, KB: tl.constexpr,
):
    """Query gradient of each pixel; the key and value gradients of its candidates are added
    with atomics into channels-last ``grad_key``/``grad_value`` (ATOMIC), or their coefficients
    are stored to ``key_coef``/``value_coef`` (B, K, Hq, Wq) for scatter_rows_kernel."""
    pixel_ok, b, p, chan, vchan, q_offsets, v_offsets, q_mask, v_mask = _pixels(
        B, C, Cv, Hq, Wq, BLOCK, CB, CVB
    )
    P = Hq * Wq
    q_tile = tl.load(query + q_offsets, mask=q_mask, other=0.0)
    g_tile = tl.load(grad_out + v_offsets, mask=v_mask, other=0.0)
    slots, in_use, logits = _tile(K, BLOCK, KB, q_tile.dtype)
    value_dots = tl.zeros_like(logits)
    entry = b * K * P + p
    key_row = b * key_pixels
    for i in range(K):
        row = key_row + _clamped(tl.load(nnf + entry + i * P, mask=pixel_ok, other=0), key_pixels)
        logit = dot_rows(q_tile, key, row, C, chan, pixel_ok[:, None])
        value_dot = dot_rows(g_tile, value, row, Cv, vchan, pixel_ok[:, None])
        logits = tl.where(slots[None, :] == i, logit[:, None], logits)
        value_dots = tl.where(slots[None, :] == i, value_dot[:, None], value_dots)
    temp = tl.load(temperature)
    weights = _softmax(logits, in_use, temp)
    mean_grad = tl.sum(weights * value_dots, axis=1)
    logit_grads = weights * (value_dots - mean_grad[:, None]) / temp
    acc = tl.zeros([BLOCK, CB], dtype=q_tile.dtype)
    for i in range(K):
        row = key_row + _clamped(tl.load(nnf + entry + i * P, mask=pixel_ok, other=0), key_pixels)
        logit_grad = _slot(logit_grads, slots, i)
        weight = _slot(weights, slots, i)
        key_offsets, key_mask = _rows(key, row, C, chan, pixel_ok[:, None])
        acc += logit_grad[:, None] * tl.load(key_offsets, mask=key_mask, other=0.0)
        if ATOMIC:
            offsets, mask = _rows(grad_key, row, C, chan, pixel_ok[:, None])
            tl.atomic_add(offsets, logit_grad[:, None] * q_tile, mask=mask, sem="relaxed")
            offsets, mask = _rows(grad_value, row, Cv, vchan, pixel_ok[:, None])
            tl.atomic_add(offsets, weight[:, None] * g_tile, mask=mask, sem="relaxed")
        else:
            tl.store(key_coef + entry + i * P, logit_grad, mask=pixel_ok)
            tl.store(value_coef + entry + i * P, weight, mask=pixel_ok)
    tl.store(grad_query + q_offsets, acc, mask=q_mask)


# ----------------------------------------------------------------------------- bilinear_weighted_gather


@triton.jit
def bilinear_gather_kernel(
    query, key, value, coords, temperature, out, B, C, Cv, Hq, Wq, Hk, Wk, K,
    BLOCK: tl.constexpr, CB: tl.constexpr, CVB: tl.constexpr, KB: tl.constexpr,
):
    pixel_ok, b, p, chan, vchan, q_offsets, v_offsets, q_mask, v_mask = _pixels(
        B, C, Cv, Hq, Wq, BLOCK, CB, CVB
    )
    P = Hq * Wq
    q_tile = tl.load(query + q_offsets, mask=q_mask, other=0.0)
    slots, in_use, logits = _tile(K, BLOCK, KB, q_tile.dtype)
    xy = coords + (b * K * P + p) * 2
    key_row = b * Hk * Wk
    rows_ok = pixel_ok[:, None]
    for i in range(K):
        x = tl.load(xy + i * P * 2, mask=pixel_ok, other=0.0)
        y = tl.load(xy + i * P * 2 + 1, mask=pixel_ok, other=0.0)
        c0, c1, c2, c3, wx, wy, moves_x, moves_y = bilinear(x, y, Hk, Wk)
        logit = blend(
            dot_rows(q_tile, key, key_row + c0, C, chan, rows_ok),
            dot_rows(q_tile, key, key_row + c1, C, chan, rows_ok),
            dot_rows(q_tile, key, key_row + c2, C, chan, rows_ok),
            dot_rows(q_tile, key, key_row + c3, C, chan, rows_ok),
            wx, wy,
        )
        logits = tl.where(slots[None, :] == i, logit[:, None], logits)
    weights = _softmax(logits, in_use, tl.load(temperature))
    acc = tl.zeros([BLOCK, CVB], dtype=q_tile.dtype)
    for i in range(K):
        x = tl.load(xy + i * P * 2, mask=pixel_ok, other=0.0)
        y = tl.load(xy + i * P * 2 + 1, mask=pixel_ok, other=0.0)
        c0, c1, c2, c3, wx, wy, moves_x, moves_y = bilinear(x, y, Hk, Wk)
        weight = _slot(weights, slots, i)
        for n in tl.static_range(4):
            corner = c0 if n == 0 else (c1 if n == 1 else (c2 if n == 2 else c3))
            along_x = (1 - wx) if n % 2 == 0 else wx
            along_y = (1 - wy) if n < 2 else wy
            offsets, mask = _rows(value, key_row + corner, Cv, vchan, rows_ok)
            acc += (weight * (along_x * along_y))[:, None] * tl.load(offsets, mask=mask, other=0.0)
    tl.store(out + v_offsets, acc, mask=v_mask)


@triton.jit
def bilinear_gather_backward_kernel(
    grad_out, query, key, value, coords, temperature, grad_query, grad_key, grad_value, grad_coords,
    key_coef, value_coef, corners, B, C, Cv, Hq, Wq, Hk, Wk, K,
    ATOMIC: tl.constexpr, BLOCK: tl.constexpr, CB: tl.constexpr, CVB: tl.constexpr, KB: tl.constexpr,
):
    """Query and coordinate gradients of each pixel; the key and value gradients of the four
    corners of each candidate are added with atomics (ATOMIC) or their coefficients and key
    indices stored to ``key_coef``/``value_coef``/``corners`` (B, 4K, Hq, Wq), entry 4i + n
    for corner n of candidate i, for scatter_rows_kernel."""
    pixel_ok, b, p, chan, vchan, q_offsets, v_offsets, q_mask, v_mask = _pixels(
        B, C, Cv, Hq, Wq, BLOCK, CB, CVB
    )
    P = Hq * Wq
    q_tile = tl.load(query + q_offsets, mask=q_mask, other=0.0)
    g_tile = tl.load(grad_out + v_offsets, mask=v_mask, other=0.0)
    slots, in_use, logits = _tile(K, BLOCK, KB, q_tile.dtype)
    value_dots = tl.zeros_like(logits)
    key_dx = tl.zeros_like(logits)
    key_dy = tl.zeros_like(logits)
    value_dx = tl.zeros_like(logits)
    value_dy = tl.zeros_like(logits)
    xy = coords + (b * K * P + p) * 2
    key_row = b * Hk * Wk
    rows_ok = pixel_ok[:, None]
    for i in range(K):
        x = tl.load(xy + i * P * 2, mask=pixel_ok, other=0.0)
        y = tl.load(xy + i * P * 2 + 1, mask=pixel_ok, other=0.0)
        c0, c1, c2, c3, wx, wy, moves_x, moves_y = bilinear(x, y, Hk, Wk)
        k0 = dot_rows(q_tile, key, key_row + c0, C, chan, rows_ok)
        k1 = dot_rows(q_tile, key, key_row + c1, C, chan, rows_ok)
        k2 = dot_rows(q_tile, key, key_row + c2, C, chan, rows_ok)
        k3 = dot_rows(q_tile, key, key_row + c3, C, chan, rows_ok)
        v0 = dot_rows(g_tile, value, key_row + c0, Cv, vchan, rows_ok)
        v1 = dot_rows(g_tile, value, key_row + c1, Cv, vchan, rows_ok)
        v2 = dot_rows(g_tile, value, key_row + c2, Cv, vchan, rows_ok)
        v3 = dot_rows(g_tile, value, key_row + c3, Cv, vchan, rows_ok)
        here = slots[None, :] == i
        logits = tl.where(here, blend(k0, k1, k2, k3, wx, wy)[:, None], logits)
        value_dots = tl.where(here, blend(v0, v1, v2, v3, wx, wy)[:, None], value_dots)
        # d<query, key(x, y)>/dx, /dy and the same for <grad_out, value(x, y)>; zero where clamped.
        dkx = tl.where(moves_x, (k1 - k0) * (1 - wy) + (k3 - k2) * wy, 0.0)
        dky = tl.where(moves_y, (k2 - k0) * (1 - wx) + (k3 - k1) * wx, 0.0)
        dvx = tl.where(moves_x, (v1 - v0) * (1 - wy) + (v3 - v2) * wy, 0.0)
        dvy = tl.where(moves_y, (v2 - v0) * (1 - wx) + (v3 - v1) * wx, 0.0)
        key_dx = tl.where(here, dkx[:, None], key_dx)
        key_dy = tl.where(here, dky[:, None], key_dy)
        value_dx = tl.where(here, dvx[:, None], value_dx)
        value_dy = tl.where(here, dvy[:, None], value_dy)
    temp = tl.load(temperature)
    weights = _softmax(logits, in_use, temp)
    mean_grad = tl.sum(weights * value_dots, axis=1)
    logit_grads = weights * (value_dots - mean_grad[:, None]) / temp
    tl.store(grad_coords + (b * K * P + p)[:, None] * 2 + slots.to(tl.int64)[None, :] * P * 2,
             logit_grads * key_dx + weights * value_dx, mask=rows_ok & in_use[None, :])
    tl.store(grad_coords + (b * K * P + p)[:, None] * 2 + slots.to(tl.int64)[None, :] * P * 2 + 1,
             logit_grads * key_dy + weights * value_dy, mask=rows_ok & in_use[None, :])
    acc = tl.zeros([BLOCK, CB], dtype=q_tile.dtype)
    entry = b * 4 * K * P + p
    for i in range(K):
        x = tl.load(xy + i * P * 2, mask=pixel_ok, other=0.0)
        y = tl.load(xy + i * P * 2 + 1, mask=pixel_ok, other=0.0)
        c0, c1, c2, c3, wx, wy, moves_x, moves_y = bilinear(x, y, Hk, Wk)
        logit_grad = _slot(logit_grads, slots, i)
        weight = _slot(weights, slots, i)
        for n in tl.static_range(4):
            corner = c0 if n == 0 else (c1 if n == 1 else (c2 if n == 2 else c3))
            along_x = (1 - wx) if n % 2 == 0 else wx
            along_y = (1 - wy) if n < 2 else wy
            key_c = logit_grad * (along_x * along_y)
            value_c = weight * (along_x * along_y)
            key_offsets, key_mask = _rows(key, key_row + corner, C, chan, rows_ok)
            acc += key_c[:, None] * tl.load(key_offsets, mask=key_mask, other=0.0)
            if ATOMIC:
                offsets, mask = _rows(grad_key, key_row + corner, C, chan, rows_ok)
                tl.atomic_add(offsets, key_c[:, None] * q_tile, mask=mask, sem="relaxed")
                offsets, mask = _rows(grad_value, key_row + corner, Cv, vchan, rows_ok)
                tl.atomic_add(offsets, value_c[:, None] * g_tile, mask=mask, sem="relaxed")
            else:
                at = entry + (4 * i + n) * P
                tl.store(key_coef + at, key_c, mask=pixel_ok)
                tl.store(value_coef + at, value_c, mask=pixel_ok)
                tl.store(corners + at, corner, mask=pixel_ok)
    tl.store(grad_query + q_offsets, acc, mask=q_mask)


# ----------------------------------------------------------------------------- deterministic scatter


@triton.jit
def scatter_rows_kernel(
    order, starts, key_coef, query, grad_key, value_coef, grad_out, grad_value,
    key_rows, key_pixels, C, Cv, J, P,
    BLOCK: tl.constexpr, CB: tl.constexpr, CVB: tl.constexpr,
):
    """For each of BLOCK key pixels (numbered over the batch): the sum, in the order ``order``
    lists them, of its entries' key_coef * query pixel and value_coef * grad_out pixel, written
    to (B, C, Hk, Wk) ``grad_key`` and (B, Cv, Hk, Wk) ``grad_value``. Entries are numbered
    over (B, J, Hq, Wq) (J per query pixel); ``starts`` (B * key_pixels + 1) is where each key
    pixel's run begins in ``order``."""
    kp = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    key_ok = kp < key_rows
    start = tl.load(starts + kp, mask=key_ok, other=0)
    count = (tl.load(starts + kp + 1, mask=key_ok, other=0) - start).to(tl.int32)
    chan = tl.arange(0, CB)
    vchan = tl.arange(0, CVB)
    chan_ok = chan < C
    vchan_ok = vchan < Cv
    key_acc = tl.zeros([BLOCK, CB], dtype=grad_key.dtype.element_ty)
    value_acc = tl.zeros([BLOCK, CVB], dtype=grad_value.dtype.element_ty)
    for j in range(tl.max(count, axis=0)):
        has = key_ok & (j < count)
        e = tl.load(order + start + j, mask=has, other=0)
        b = e // (J * P)
        p = e % P
        # The rows are read unmasked by `has` (entry 0 stands in) and dropped by a select: a 2-D
        # load masked by `has` fails to compile in Triton 3.6 (layout conversion pass).
        q_rows = tl.load(query + (b * C * P + p)[:, None] + chan.to(tl.int64)[None, :] * P,
                         mask=chan_ok[None, :], other=0.0)
        g_rows = tl.load(grad_out + (b * Cv * P + p)[:, None] + vchan.to(tl.int64)[None, :] * P,
                         mask=vchan_ok[None, :], other=0.0)
        key_c = tl.load(key_coef + e, mask=has, other=0.0)
        value_c = tl.load(value_coef + e, mask=has, other=0.0)
        key_acc += tl.where(has[:, None], key_c[:, None] * q_rows, 0.0)
        value_acc += tl.where(has[:, None], value_c[:, None] * g_rows, 0.0)
    kb = kp // key_pixels
    kq = kp - kb * key_pixels
    key_offsets = (kb * C * key_pixels + kq)[:, None] + chan.to(tl.int64)[None, :] * key_pixels
    value_offsets = (kb * Cv * key_pixels + kq)[:, None] + vchan.to(tl.int64)[None, :] * key_pixels
    tl.store(grad_key + key_offsets, key_acc, mask=key_ok[:, None] & chan_ok[None, :])
    tl.store(grad_value + value_offsets, value_acc, mask=key_ok[:, None] & vchan_ok[None, :])
