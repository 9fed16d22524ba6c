"""Python side of the ops: input validation, backend choice, fake kernels and autograd.

The schemas live in ``csrc/schemas.h``; importing ``cocosnet_ops._C`` registers them together
with the CPU (and, when built, CUDA) kernels. This module adds what torch needs to trace and
differentiate them, and the public functions that check their arguments before dispatching.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import torch
from torch import Tensor

from . import reference
from . import triton as triton_kernels
from ._extension import load_compiled

# Importing _C registers the compiled kernels. Without it (not built, or built against another
# torch) the torch backend still works: load_compiled warns once and says how to rebuild.
_C, COMPILED_LOAD_ERROR = load_compiled()
HAS_COMPILED = _C is not None

BACKENDS = ("cuda", "triton", "cpu", "torch")
# Whether this build of _C has the CUDA kernels (FORCE_CUDA=1, or torch with CUDA and nvcc).
HAS_CUDA_KERNELS = HAS_COMPILED and torch._C._dispatch_has_kernel_for_dispatch_key(
    "cocosnet_ops::patch_match", "CUDA"
)
# The CUDA search kernels keep their top-K lists in fixed-size arrays of at most this many.
MAX_CUDA_K = 64
_HALF_DTYPES = (torch.float16, torch.bfloat16)
_FLOAT_DTYPES = (*_HALF_DTYPES, torch.float32, torch.float64)
_ops = torch.ops.cocosnet_ops
# The Triton kernels mirror the compiled ops in their own namespace (cocosnet_ops/triton/ops.py).
_triton_ops = torch.ops.cocosnet_ops_triton
# The ops this build has CUDA kernels for: automatic choice takes triton (or torch) for the rest.
_CUDA_KERNEL_OPS = frozenset(
    op
    for op in (
        "patch_match",
        "evaluate_candidates",
        "share_matches",
        "nnf_upsample",
        "exact_knn",
        "weighted_gather",
        "bilinear_weighted_gather",
        "bilinear_scores",
        "dense_warp",
    )
    if HAS_COMPILED and torch._C._dispatch_has_kernel_for_dispatch_key(f"cocosnet_ops::{op}", "CUDA")
)


# ----------------------------------------------------------------------------- validation


def _check_features(name: str, t: object) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 4:
        raise ValueError(f"{name}: expected a 4-D tensor (B, C, H, W), got shape {tuple(t.shape)}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name}: expected a floating-point tensor, got {t.dtype}")
    if t.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty tensor, got shape {tuple(t.shape)}")
    return t


def _check_pair(query: Tensor, key: Tensor, names: tuple[str, str] = ("query", "key")) -> None:
    _check_features(names[0], query)
    _check_features(names[1], key)
    if query.device != key.device:
        raise ValueError(f"{names[1]}: expected device {query.device} like {names[0]}, got {key.device}")
    if query.dtype != key.dtype:
        raise TypeError(f"{names[1]}: expected dtype {query.dtype} like {names[0]}, got {key.dtype}")
    if query.shape[0] != key.shape[0]:
        raise ValueError(f"{names[1]}: batch {key.shape[0]} does not match {names[0]} batch {query.shape[0]}")
    if query.shape[1] != key.shape[1]:
        raise ValueError(f"{names[1]}: {key.shape[1]} channels do not match {names[0]}'s {query.shape[1]}")


def _check_value(value: Tensor, key: Tensor) -> None:
    """Values may have another float dtype than the features (half features under autocast,
    float32 images): the op computes in the wider of the two and returns the value's dtype."""
    _check_features("value", value)
    if value.device != key.device:
        raise ValueError(f"value: expected device {key.device} like key, got {value.device}")
    if value.shape[0] != key.shape[0] or value.shape[2:] != key.shape[2:]:
        raise ValueError(
            f"value: expected shape (B={key.shape[0]}, Cv, {key.shape[2]}, {key.shape[3]}) to match "
            f"key, got {tuple(value.shape)}"
        )


def _type_name(x: object) -> str:
    kind = type(x)
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"


def _check_int(name: str, x: object, low: int, high: int | None = None) -> int:
    if isinstance(x, (bool, Tensor)) or not hasattr(type(x), "__index__"):
        raise TypeError(f"{name}: expected an int, got {_type_name(x)}")
    # A size under torch.compile with dynamic shapes is a SymInt (which Dynamo reports as an int):
    # compare it (a range guard), never convert it (that would specialise the graph to this size).
    if not isinstance(x, (int, torch.SymInt)):
        x = operator.index(x)
    if x < low or (high is not None and x > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name}: expected an int {bound}, got {x}")
    return x


MAX_PATCH_SIZE = 31
MAX_ITERS = 65535  # the iteration number is 16 bits of the random stream
MAX_SEED = 2**32 - 1
MAX_STEP = 2**30  # offsets and indices are int32 in the kernels
MAX_WINDOW = 64
MIN_TEMPERATURE = 1e-30


def _check_patch_size(patch_size: object) -> int:
    patch_size = _check_int("patch_size", patch_size, 1, MAX_PATCH_SIZE)
    if patch_size % 2 == 0:
        raise ValueError(f"patch_size: expected an odd size in [1, {MAX_PATCH_SIZE}], got {patch_size}")
    return patch_size


def _check_temperature(temperature: object) -> float:
    if isinstance(temperature, (bool, Tensor)) or not hasattr(type(temperature), "__float__"):
        raise TypeError(f"temperature: expected a float, got {_type_name(temperature)}")
    temperature = float(temperature)
    # Comparisons rather than math.isfinite, which torch.compile cannot trace on a symbolic float.
    if not MIN_TEMPERATURE <= temperature < math.inf:
        raise ValueError(f"temperature: expected a finite value >= {MIN_TEMPERATURE}, got {temperature}")
    return temperature


def _inspectable(t: Tensor) -> bool:
    """Whether values may be checked: not while tracing, not on the meta device."""
    return not torch.compiler.is_compiling() and t.device.type != "meta"


def _assert_on_device(t: Tensor, holds: Tensor, message: str) -> bool:
    """Value checks read CPU tensors back and raise ValueError; on a GPU that read would be a host
    sync per op, so there a device-side assert reports ``message`` instead (the kernels clamp
    indices, so nothing is read out of bounds before it fires). Returns whether it asserted."""
    if t.device.type == "cpu":
        return False
    torch._assert_async(holds, message)
    return True


def _check_index_map(
    name: str, t: object, query: Tensor, key_pixels: int, candidates: bool = False
) -> Tensor:
    """An int32 (B, K, Hq, Wq) map of flat key indices matching ``query``, checked to lie in
    [0, key_pixels). ``candidates``: entries < 0 mean 'no candidate' and K may be 0."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {_type_name(t)}")
    if t.dtype != torch.int32:
        raise TypeError(f"{name}: expected dtype torch.int32 (flat key indices), got {t.dtype}")
    if t.dim() != 4 or t.shape[0] != query.shape[0] or t.shape[2:] != query.shape[2:]:
        raise ValueError(
            f"{name}: expected shape (B={query.shape[0]}, K, {query.shape[2]}, {query.shape[3]}), "
            f"got {tuple(t.shape)}"
        )
    if t.device != query.device:
        raise ValueError(f"{name}: expected device {query.device}, got {t.device}")
    if not candidates and t.shape[1] < 1:
        raise ValueError(f"{name}: expected at least one candidate per pixel, got K=0")
    if _inspectable(t) and t.numel():
        allowed = f"< {key_pixels} (or < 0 for none)" if candidates else f"in [0, {key_pixels})"
        inside = (t < key_pixels) if candidates else (t >= 0) & (t < key_pixels)
        if _assert_on_device(t, inside.all(), f"{name}: entries must be flat key indices {allowed}"):
            return t
        low, high = (int(x) for x in torch.aminmax(t))
        if high >= key_pixels or (low < 0 and not candidates):
            raise ValueError(
                f"{name}: entries must be flat key indices {allowed}, got values in [{low}, {high}]"
            )
    return t


def _check_coords(coords: object, query: Tensor) -> Tensor:
    """Continuous (x, y) key positions (B, K, Hq, Wq, 2) matching ``query``, none NaN."""
    if not isinstance(coords, Tensor):
        raise TypeError(f"coords: expected a torch.Tensor, got {type(coords).__name__}")
    if coords.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"coords: expected a floating-point tensor of (x, y) positions, got {coords.dtype}")
    if (
        coords.dim() != 5
        or coords.shape[0] != query.shape[0]
        or coords.shape[2:4] != query.shape[2:]
        or coords.shape[4] != 2
        or coords.shape[1] < 1
    ):
        raise ValueError(
            f"coords: expected shape (B={query.shape[0]}, K, {query.shape[2]}, {query.shape[3]}, 2), "
            f"got {tuple(coords.shape)}"
        )
    if coords.device != query.device:
        raise ValueError(f"coords: expected device {query.device}, got {coords.device}")
    if _inspectable(coords):
        no_nan, message = torch.isnan(coords).logical_not().all(), "coords: expected no NaN positions"
        if not _assert_on_device(coords, no_nan, message) and not no_nan:
            raise ValueError(message)
    return coords


def _choose_backend(backend: str | None, device: torch.device, op: str) -> str:
    if backend is None:
        if device.type == "cuda":
            if op in _CUDA_KERNEL_OPS:
                return "cuda"
            if op in triton_kernels.OPS and not triton_kernels.unavailable(device.type):
                return "triton"
            return "torch"
        return "cpu" if HAS_COMPILED and device.type == "cpu" else "torch"
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS} or None, got {backend!r}")
    if backend == "cpu" and (device.type != "cpu" or not HAS_COMPILED):
        why = "the extension cocosnet_ops._C is not built" if not HAS_COMPILED else f"tensors are on {device}"
        raise ValueError(f"backend: 'cpu' is not available here ({why})")
    if backend == "cuda" and (device.type != "cuda" or not HAS_CUDA_KERNELS):
        why = (
            f"tensors are on {device}"
            if device.type != "cuda"
            else "cocosnet_ops._C was built without CUDA kernels; rebuild with FORCE_CUDA=1"
        )
        raise ValueError(f"backend: 'cuda' is not available here ({why})")
    if backend == "triton":
        if op not in triton_kernels.OPS:
            raise ValueError(f"backend: 'triton' has no kernel for {op}; use 'cuda', 'cpu' or 'torch'")
        why = triton_kernels.unavailable(device.type)
        if why:
            raise ValueError(f"backend: 'triton' is not available here ({why})")
    return backend


def _kernels(chosen: str) -> torch._ops._OpNamespace:
    """The ops of a kernel backend: the Triton ones take the same arguments as the compiled."""
    return _triton_ops if chosen == "triton" else _ops


def _check_cuda_k(k: int, chosen: str) -> None:
    if chosen == "cuda" and k > MAX_CUDA_K:
        raise ValueError(f"k: the CUDA search kernels keep at most {MAX_CUDA_K} matches per pixel, got {k}")


def _as_float(t: Tensor) -> Tensor:
    """Half-precision inputs are computed in float32: the kernels take float32 and float64."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _contiguous(t: Tensor) -> Tensor:
    return _as_float(t).contiguous()


def _warp_inputs(query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Features and values in one computation dtype: the wider of theirs, at least float32."""
    dtype = torch.promote_types(_as_float(query).dtype, _as_float(value).dtype)
    return query.to(dtype).contiguous(), key.to(dtype).contiguous(), value.to(dtype).contiguous()


def _search_input(t: Tensor) -> Tensor:
    """Search results are not differentiable: cut the features from the graph up front."""
    return _contiguous(t.detach())


# ----------------------------------------------------------------------------- public ops


def patch_match(
    query: Tensor,
    key: Tensor,
    k: int = 16,
    iters: int = 5,
    init: Tensor | None = None,
    patch_size: int = 1,
    jump: Sequence[int] | None = None,
    random_search: bool = True,
    seed: int | Tensor = 0,
    max_radius: int | None = None,
    *,
    score_dtype: torch.dtype | None = None,
    backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """Approximate top-``k`` matches of every query pixel among the key pixels.

    Scores are inner products (cosine on L2-normalised features), averaged over a
    ``patch_size`` square window. Returns ``(nnf, scores)``: int32 (B, k, Hq, Wq) flat key
    indices ``row * Wk + col`` and their scores, best first, no index twice per pixel.

    ``init`` (int32 (B, M, Hq, Wq), entries < 0 ignored) seeds the search, e.g. from
    ``nnf_upsample``; missing candidates are drawn at random. ``jump`` gives the propagation
    step of each iteration (default: halving from up to 8, ending at 1). The result depends
    only on the inputs and ``seed``, never on thread count or scheduling. Not differentiable.

    ``seed`` is an int in [0, 2**32 - 1], or a one-element integer tensor holding one (e.g. drawn
    with ``torch.randint``): the op reads a tensor seed when it runs, so a seed drawn inside a
    ``torch.compile`` region stays in the graph instead of breaking it (a CPU tensor avoids a
    device sync).

    ``max_radius`` (an int in [0, 2**30], needs ``init``) makes the search refine its init
    instead of searching the whole key map: a candidate counts for a pixel only when it lies
    within Chebyshev distance ``max_radius`` (in key pixels) of at least one of that pixel's
    init candidates. Propagated and random-search candidates outside are skipped, and the
    random-search radii start at ``max_radius`` when that is below half the key map's larger
    side. The init candidates themselves always count; so do the random ones that top up a
    pixel with fewer than ``k`` distinct init candidates, until better ones inside the bound
    replace them. A pixel without any valid init candidate has nothing to be near and searches
    unbounded (so holes in ``init`` fill in from their neighbours). ``max_radius=0`` gives the
    top-``k`` of the init candidates; a radius at least the key map's larger side gives the
    unbounded search. None (the default): no bound. The kernels keep a sorted copy of ``init``
    and bisect it for every candidate.

    Half-precision features (float16, bfloat16) are scored in float32; the CUDA kernels read
    them as they are, the other backends from a float32 copy (the same values: both widen
    exactly). ``score_dtype`` (``torch.float16`` or ``torch.bfloat16``) makes the search read a
    copy of both maps in that dtype (on a GPU, half the bytes per candidate), still summing in
    float32; the k matches found are then scored again from the features as given and sorted,
    so the scores returned are those of float32 (or float64) features. What rounding changes is
    which candidates the search keeps on the way. None (the default): the features' own dtype.

    ``backend``: None chooses by device (the compiled kernels where built, on a GPU else the
    Triton ones, else ``"torch"``, the pure-PyTorch reference); one of ``BACKENDS`` forces it,
    or raises ValueError where it cannot run.
    """
    _check_pair(query, key)
    key_pixels = key.shape[2] * key.shape[3]
    _check_int("k", k, 1, key_pixels)
    iters = _check_int("iters", iters, 0, MAX_ITERS)
    patch_size = _check_patch_size(patch_size)
    if isinstance(seed, Tensor):
        _check_seed_tensor(seed)
    else:
        seed = _check_int("seed", seed, 0, MAX_SEED)
    if not isinstance(random_search, bool):
        raise TypeError(f"random_search: expected a bool, got {_type_name(random_search)}")
    if jump is None:
        steps = reference.default_jumps(query.shape[2], query.shape[3], iters)
    else:
        if isinstance(jump, (str, bytes)) or not isinstance(jump, Sequence):
            raise TypeError(f"jump: expected a sequence of ints, got {type(jump).__name__}")
        # A step beyond the map only looks outside it: any larger one behaves the same.
        steps = [_check_int("jump", s, 1, MAX_STEP) for s in jump]
        if iters > 0 and not steps:
            raise ValueError("jump: expected at least one step when iters > 0")
    if max_radius is not None:
        max_radius = _check_int("max_radius", max_radius, 0, MAX_STEP)
        if init is None:
            raise ValueError("max_radius: bounds the search around the init candidates, so needs init")
    if init is not None:
        _check_index_map("init", init, query, key_pixels, candidates=True)
    if score_dtype is not None and score_dtype not in _HALF_DTYPES:
        raise TypeError(f"score_dtype: expected None, torch.float16 or torch.bfloat16, got {score_dtype!r}")
    chosen = _choose_backend(backend, query.device, "patch_match")
    _check_cuda_k(k, chosen)
    rescore = score_dtype is not None and query.dtype != score_dtype
    searched = (query.to(score_dtype), key.to(score_dtype)) if rescore else (query, key)
    # The CUDA kernels read half-precision features as they are; the others take float32.
    searched_query, searched_key = (
        (t.detach().contiguous() if chosen == "cuda" else _search_input(t)) for t in searched
    )
    init = init.contiguous() if init is not None else None
    search = _patch_match_tensor_seed if isinstance(seed, Tensor) else _patch_match_int_seed
    nnf, scores = search(
        searched_query,
        searched_key,
        k,
        iters,
        init,
        patch_size,
        steps,
        random_search,
        seed,
        chosen,
        max_radius,
    )
    if not rescore:
        return nnf, scores
    # The k distinct matches found, scored from the features as given and sorted again.
    return evaluate_candidates(query, key, nnf, k, patch_size, backend=chosen)


def _patch_match_int_seed(
    query: Tensor,
    key: Tensor,
    k: int,
    iters: int,
    init: Tensor | None,
    patch_size: int,
    jumps: list[int],
    random_search: bool,
    seed: int,
    backend: str,
    max_radius: int | None = None,
) -> tuple[Tensor, Tensor]:
    args = (query, key, k, iters, init, patch_size, jumps, random_search, seed, max_radius)
    if backend == "torch":
        return reference.patch_match(*args)
    return _kernels(backend).patch_match(*args)


def _search_result_like(query: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """patch_match's (nnf, scores) for these features: half-precision ones score in float32."""
    B, _, Hq, Wq = query.shape
    dtype = torch.float32 if query.dtype in _HALF_DTYPES else query.dtype
    return query.new_empty((B, k, Hq, Wq), dtype=torch.int32), query.new_empty((B, k, Hq, Wq), dtype=dtype)


def _check_seed_tensor(seed: Tensor) -> None:
    if seed.dtype.is_floating_point or seed.dtype.is_complex or seed.dtype == torch.bool:
        raise TypeError(f"seed: expected an int or an integer tensor, got a {seed.dtype} tensor")
    if seed.numel() != 1:
        raise ValueError(f"seed: expected a one-element tensor, got shape {tuple(seed.shape)}")


@torch.library.custom_op("cocosnet_ops_traced::patch_match", mutates_args=())
def _patch_match_tensor_seed(
    query: Tensor,
    key: Tensor,
    k: int,
    iters: int,
    init: Tensor | None,
    patch_size: int,
    jumps: list[int],
    random_search: bool,
    seed: Tensor,
    backend: str,
    max_radius: int | None = None,
) -> tuple[Tensor, Tensor]:
    """``patch_match`` with its seed in a tensor. An opaque op to torch.compile, so reading the
    seed here happens when the compiled graph runs, not while it is traced."""
    value = int(seed.reshape(()))
    if not 0 <= value <= MAX_SEED:
        raise ValueError(f"seed: expected a value in [0, {MAX_SEED}], got {value}")
    return _patch_match_int_seed(
        query, key, k, iters, init, patch_size, jumps, random_search, value, backend, max_radius
    )


@_patch_match_tensor_seed.register_fake
def _(query, key, k, iters, init, patch_size, jumps, random_search, seed, backend, max_radius=None):
    return _search_result_like(query, k)


def evaluate_candidates(
    query: Tensor,
    key: Tensor,
    candidates: Tensor,
    k: int,
    patch_size: int = 1,
    *,
    backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """Score M candidate key indices per pixel (int32 (B, M, Hq, Wq), < 0 for none) and keep the
    best ``k`` distinct ones, as ``(nnf, scores)``. A pixel with fewer than k distinct
    candidates is topped up with deterministic random ones.

    ``backend``: None chooses by device (the compiled kernels where built, on a GPU else the
    Triton ones, else ``"torch"``, the pure-PyTorch reference); one of ``BACKENDS`` forces it,
    or raises ValueError where it cannot run.
    """
    _check_pair(query, key)
    key_pixels = key.shape[2] * key.shape[3]
    _check_int("k", k, 1, key_pixels)
    _check_patch_size(patch_size)
    _check_index_map("candidates", candidates, query, key_pixels, candidates=True)
    chosen = _choose_backend(backend, query.device, "evaluate_candidates")
    _check_cuda_k(k, chosen)
    query, key, candidates = _search_input(query), _search_input(key), candidates.contiguous()
    if chosen == "torch":
        return reference.evaluate_candidates(query, key, candidates, k, patch_size)
    return _kernels(chosen).evaluate_candidates(query, key, candidates, k, patch_size)


def share_matches(
    query: Tensor,
    key: Tensor,
    nnf: Tensor,
    scores: Tensor,
    neighbours: Tensor,
    top: int | None = None,
    patch_size: int = 1,
    *,
    backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """Let every query pixel's matches compete with those of other query pixels, its neighbours.

    ``nnf`` and ``scores`` (B, K, Hq, Wq) are the matches and scores of a search (any of the
    search ops); ``neighbours`` int32 (B, M, Hq, Wq) names M query pixels per pixel as flat
    query indices ``row * Wq + col`` (entries < 0 mean none). Returns ``(nnf, scores)``: the
    best K distinct of each pixel's own matches, which keep the scores given, and the first
    ``top`` (default K) matches of each of its neighbours, scored afresh. The same as
    ``evaluate_candidates(query, key, torch.cat([nnf, cocosnet_ops.nnf.neighbour_matches(nnf,
    neighbours, top)], 1), K, patch_size)`` when ``scores`` are what this backend scores ``nnf``,
    without building the candidates or rescoring ``nnf``. Not differentiable.

    ``backend``: None chooses by device (the compiled kernels where built, else ``"torch"``,
    the pure-PyTorch reference); one of ``BACKENDS`` forces it, or raises ValueError where it
    cannot run.
    """
    _check_pair(query, key)
    key_pixels = key.shape[2] * key.shape[3]
    _check_index_map("nnf", nnf, query, key_pixels)
    if not isinstance(scores, Tensor) or not scores.dtype.is_floating_point:
        raise TypeError(f"scores: expected a floating-point tensor, got {_type_name(scores)}")
    if scores.shape != nnf.shape or scores.device != nnf.device:
        raise ValueError(
            f"scores: expected shape {tuple(nnf.shape)} on {nnf.device} like nnf, got "
            f"{tuple(scores.shape)} on {scores.device}"
        )
    _check_neighbours(neighbours, query)
    k = nnf.shape[1]
    top = k if top is None else _check_int("top", top, 1, k)
    patch_size = _check_patch_size(patch_size)
    chosen = _choose_backend(backend, query.device, "share_matches")
    _check_cuda_k(k, chosen)
    query, key = _search_input(query), _search_input(key)
    scores = scores.detach().to(query.dtype).contiguous()
    if chosen == "torch":
        return reference.share_matches(query, key, nnf, scores, neighbours, top, patch_size)
    return _ops.share_matches(query, key, nnf.contiguous(), scores, neighbours.contiguous(), top, patch_size)


def _check_neighbours(neighbours: object, query: Tensor) -> None:
    """int32 (B, M, Hq, Wq) flat query indices, < 0 for none."""
    if not isinstance(neighbours, Tensor):
        raise TypeError(f"neighbours: expected a torch.Tensor, got {_type_name(neighbours)}")
    if neighbours.dtype != torch.int32:
        raise TypeError(
            f"neighbours: expected dtype torch.int32 (flat query indices), got {neighbours.dtype}"
        )
    B, _, Hq, Wq = query.shape
    if neighbours.dim() != 4 or neighbours.shape[0] != B or neighbours.shape[2:] != query.shape[2:]:
        raise ValueError(f"neighbours: expected shape (B={B}, M, {Hq}, {Wq}), got {tuple(neighbours.shape)}")
    if neighbours.device != query.device:
        raise ValueError(f"neighbours: expected device {query.device}, got {neighbours.device}")
    if _inspectable(neighbours) and neighbours.numel():
        message = f"neighbours: entries must be flat query indices < {Hq * Wq} (or < 0 for none)"
        inside = neighbours < Hq * Wq
        if not _assert_on_device(neighbours, inside.all(), message) and not bool(inside.all()):
            raise ValueError(f"{message}, got values up to {int(neighbours.max())}")


def _check_size(name: str, size: object) -> tuple[int, int]:
    if isinstance(size, torch.Size):
        size = tuple(size)
    if not isinstance(size, (tuple, list)) or len(size) != 2:
        raise TypeError(f"{name}: expected a pair (height, width), got {size!r}")
    height, width = _check_int(f"{name}[0]", size[0], 1), _check_int(f"{name}[1]", size[1], 1)
    if height * width > MAX_STEP:
        raise ValueError(
            f"{name}: {height} x {width} pixels are too many for int32 indices (at most {MAX_STEP})"
        )
    return height, width


def nnf_upsample(
    nnf: Tensor,
    key_size: Sequence[int],
    query_size: Sequence[int],
    window: int = 4,
    dilation: int = 2,
    coarse_key_size: Sequence[int] | None = None,
    *,
    backend: str | None = None,
) -> Tensor:
    """Candidates int32 (B, K * window**2, Hq, Wq) for a finer level from a coarser NNF.

    Each fine pixel takes the K matches of its coarse pixel, maps them into the fine key map
    (``key_size``), and spreads a ``window`` x ``window`` grid of offsets
    ``(i - (window - 1) // 2) * dilation`` around each, clamped to the map. The coarse key map
    size defaults to ``key_size`` scaled like the query map. Feed the result to
    ``patch_match(init=...)`` or ``evaluate_candidates``.

    ``backend``: None chooses by device (the compiled kernels where built, else ``"torch"``,
    the pure-PyTorch reference); one of ``BACKENDS`` forces it, or raises ValueError where it
    cannot run.
    """
    if not isinstance(nnf, Tensor):
        raise TypeError(f"nnf: expected a torch.Tensor, got {type(nnf).__name__}")
    if nnf.dtype != torch.int32:
        raise TypeError(f"nnf: expected dtype torch.int32 (flat key indices), got {nnf.dtype}")
    if nnf.dim() != 4 or nnf.numel() == 0:
        raise ValueError(f"nnf: expected a non-empty 4-D tensor (B, K, H, W), got shape {tuple(nnf.shape)}")
    key_size = _check_size("key_size", key_size)
    query_size = _check_size("query_size", query_size)
    window = _check_int("window", window, 1, MAX_WINDOW)
    dilation = _check_int("dilation", dilation, 0, MAX_STEP // MAX_WINDOW)
    if coarse_key_size is None:
        coarse = reference.coarse_key_size_for(nnf.shape[2:], key_size, query_size)
    else:
        coarse = _check_size("coarse_key_size", coarse_key_size)
    if query_size[0] < nnf.shape[2] or query_size[1] < nnf.shape[3]:
        raise ValueError(f"query_size: {query_size} is smaller than the coarse NNF's {tuple(nnf.shape[2:])}")
    if _inspectable(nnf):
        # Formatted only here: formatting a symbolic size while tracing would specialise it.
        coarse_pixels = coarse[0] * coarse[1]
        message = f"nnf: entries must be flat indices into the {coarse[0]}x{coarse[1]} coarse key map"
        if not _assert_on_device(nnf, ((nnf >= 0) & (nnf < coarse_pixels)).all(), message):
            low, high = (int(x) for x in torch.aminmax(nnf))
            if low < 0 or high >= coarse_pixels:
                raise ValueError(f"{message}, got values in [{low}, {high}]")
    chosen = _choose_backend(backend, nnf.device, "nnf_upsample")
    if chosen == "torch":
        return reference.nnf_upsample(nnf, key_size, query_size, window, dilation, coarse)
    return _nnf_upsample_symbolic_sizes(
        nnf.contiguous(), list(coarse), list(key_size), list(query_size), window, dilation
    )


@torch.library.custom_op("cocosnet_ops_traced::nnf_upsample", mutates_args=())
def _nnf_upsample_symbolic_sizes(
    nnf: Tensor,
    coarse_key_size: list[int],
    key_size: list[int],
    query_size: list[int],
    window: int,
    dilation: int,
) -> Tensor:
    """The compiled ``nnf_upsample`` behind a schema of symbolic sizes: its own takes ``int[]``,
    which would specialise a graph traced with dynamic shapes to the sizes of the first call."""
    return _ops.nnf_upsample(nnf, coarse_key_size, key_size, query_size, window, dilation)


@_nnf_upsample_symbolic_sizes.register_fake
def _(nnf, coarse_key_size, key_size, query_size, window, dilation):
    B, K = nnf.shape[:2]
    return nnf.new_empty((B, K * window * window, query_size[0], query_size[1]))


def exact_knn(query: Tensor, key: Tensor, k: int, *, backend: str | None = None) -> tuple[Tensor, Tensor]:
    """Exact top-``k`` key pixels by inner product, ties to the lower index, as ``(nnf, scores)``.

    Computed in chunks of query pixels so memory stays bounded whatever the map sizes. The
    scores come from a vendor matmul, whose last bits depend on the processor, the thread count
    and the batch size; so may the order of candidates whose scores tie within that rounding.

    ``backend``: None chooses by device (the compiled kernels where built, else ``"torch"``,
    the pure-PyTorch reference); one of ``BACKENDS`` forces it, or raises ValueError where it
    cannot run.
    """
    _check_pair(query, key)
    _check_int("k", k, 1, key.shape[2] * key.shape[3])
    chosen = _choose_backend(backend, query.device, "exact_knn")
    query, key = _search_input(query), _search_input(key)
    if chosen == "torch":
        return reference.exact_knn(query, key, k)
    return _ops.exact_knn(query, key, k)


def weighted_gather(
    query: Tensor, key: Tensor, value: Tensor, nnf: Tensor, temperature: float, *, backend: str | None = None
) -> Tensor:
    """out[p] = sum_k softmax_k(<query[p], key[nnf[p, k]]> / temperature) * value[nnf[p, k]].

    Fused: never builds the (B, K, C, Hq, Wq) gathered features. Differentiable in query, key
    and value; ``nnf`` is int32 (B, K, Hq, Wq) from ``patch_match`` or ``exact_knn``.

    ``backend``: None chooses by device (the compiled kernels where built, on a GPU else the
    Triton ones, else ``"torch"``, the pure-PyTorch reference); one of ``BACKENDS`` forces it,
    or raises ValueError where it cannot run.
    """
    _check_pair(query, key)
    _check_value(value, key)
    _check_index_map("nnf", nnf, query, key.shape[2] * key.shape[3])
    temperature = _check_temperature(temperature)
    chosen = _choose_backend(backend, query.device, "weighted_gather")
    dtype = value.dtype
    query, key, value = _warp_inputs(query, key, value)
    if chosen == "torch":
        return reference.weighted_gather(query, key, value, nnf, temperature).to(dtype)
    return _kernels(chosen).weighted_gather(query, key, value, nnf.contiguous(), temperature).to(dtype)


def bilinear_weighted_gather(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    coords: Tensor,
    temperature: float,
    *,
    backend: str | None = None,
) -> Tensor:
    """``weighted_gather`` at continuous key coordinates ``coords`` (B, K, Hq, Wq, 2), given as
    (x, y) in key pixels and sampled bilinearly (clamped to the map). Differentiable in query,
    key, value and coords, so a network that moves the coordinates gets gradients.

    ``backend``: None chooses by device (the compiled kernels where built, on a GPU else the
    Triton ones, else ``"torch"``, the pure-PyTorch reference); one of ``BACKENDS`` forces it,
    or raises ValueError where it cannot run.
    """
    _check_pair(query, key)
    _check_value(value, key)
    _check_coords(coords, query)
    temperature = _check_temperature(temperature)
    chosen = _choose_backend(backend, query.device, "bilinear_weighted_gather")
    dtype = value.dtype
    query, key, value = _warp_inputs(query, key, value)
    coords = coords.to(query.dtype).contiguous()
    if chosen == "torch":
        return reference.bilinear_weighted_gather(query, key, value, coords, temperature).to(dtype)
    return _kernels(chosen).bilinear_weighted_gather(query, key, value, coords, temperature).to(dtype)


def bilinear_scores(
    query: Tensor, key: Tensor, coords: Tensor, patch_size: int = 1, *, backend: str | None = None
) -> Tensor:
    """The (patch) scores (B, K, Hq, Wq) of every query pixel at K continuous key coordinates
    ``coords`` (B, K, Hq, Wq, 2), given as (x, y) in key pixels like ``bilinear_weighted_gather``.

    The score is the mean over the ``patch_size`` square window of the inner products of the
    query features at p + d with the key features sampled bilinearly at coords + d. The centre
    term is sampled border-clamped like ``bilinear_weighted_gather`` (at ``patch_size=1`` the
    score is the inner product that gather turns into a logit); an off-centre term counts when p + d
    is inside the query map and coords + d inside [0, Wk - 1] x [0, Hk - 1]. At integer
    coordinates inside the key map this is the score ``patch_match`` gives that match.
    What a network that moves the candidates sees; not differentiable (a search-side op).
    Scores are in the features' dtype (float32 for half-precision features, like
    ``patch_match``); NaN features give NaN scores.

    ``backend``: None chooses by device (the compiled kernels where built, on a GPU else the
    Triton ones, else ``"torch"``, the pure-PyTorch reference); one of ``BACKENDS`` forces it,
    or raises ValueError where it cannot run.
    """
    _check_pair(query, key)
    _check_coords(coords, query)
    patch_size = _check_patch_size(patch_size)
    chosen = _choose_backend(backend, query.device, "bilinear_scores")
    query, key = _search_input(query), _search_input(key)
    coords = coords.detach().to(query.dtype).contiguous()
    if chosen == "torch":
        return reference.bilinear_scores(query, key, coords, patch_size)
    return _kernels(chosen).bilinear_scores(query, key, coords, patch_size)


def dense_warp(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    temperature: float,
    cycle: bool = False,
    *,
    backend: str | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """The exact softmax warp over every key pixel (CoCosNet v1), memory-efficient.

    Returns the warp (B, Cv, Hq, Wq); with ``cycle=True`` also the warp of that result back
    onto the key map (B, Cv, Hk, Wk), for the cycle loss. Differentiable in all inputs. A vendor
    attention kernel computes it: results agree within rounding, not bitwise, across processors,
    thread counts and batch sizes.

    ``backend``: None chooses by device (the compiled kernels where built, else ``"torch"``,
    the pure-PyTorch reference); one of ``BACKENDS`` forces it, or raises ValueError where it
    cannot run.
    """
    _check_pair(query, key)
    _check_value(value, key)
    temperature = _check_temperature(temperature)
    if not isinstance(cycle, bool):
        raise TypeError(f"cycle: expected a bool, got {_type_name(cycle)}")
    chosen = _choose_backend(backend, query.device, "dense_warp")
    dtype = value.dtype
    query, key, value = _warp_inputs(query, key, value)

    def compiled_warp(q: Tensor, k: Tensor, v: Tensor, t: float) -> Tensor:
        return _ops.dense_warp(q, k, v, t)[0]

    one_way = reference.attention_warp if chosen == "torch" else compiled_warp
    result = reference.dense_warp(query, key, value, temperature, cycle, one_way)  # the cycle: one definition
    return tuple(t.to(dtype) for t in result) if cycle else result.to(dtype)


# ----------------------------------------------------------------------------- registration
# Fake kernels (shapes only, for torch.compile and meta tensors) and autograd of the compiled ops.


def _register_compiled_ops() -> None:
    lib = "cocosnet_ops::"

    def nnf_like(query: Tensor, k: int) -> tuple[Tensor, Tensor]:
        B, _, Hq, Wq = query.shape
        return query.new_empty((B, k, Hq, Wq), dtype=torch.int32), query.new_empty((B, k, Hq, Wq))

    @torch.library.register_fake(lib + "patch_match")
    def _(query, key, k, iters, init, patch_size, jumps, random_search, seed, max_radius=None):
        return _search_result_like(query, k)

    @torch.library.register_fake(lib + "evaluate_candidates")
    def _(query, key, candidates, k, patch_size):
        return nnf_like(query, k)

    @torch.library.register_fake(lib + "share_matches")
    def _(query, key, nnf, scores, neighbours, top, patch_size):
        return nnf_like(query, nnf.shape[1])

    @torch.library.register_fake(lib + "exact_knn")
    def _(query, key, k):
        return nnf_like(query, k)

    @torch.library.register_fake(lib + "nnf_upsample")
    def _(nnf, coarse_key_size, key_size, query_size, window, dilation):
        B, K = nnf.shape[:2]
        return nnf.new_empty((B, K * window * window, query_size[0], query_size[1]))

    @torch.library.register_fake(lib + "weighted_gather")
    def _(query, key, value, nnf, temperature):
        return query.new_empty((query.shape[0], value.shape[1], query.shape[2], query.shape[3]))

    @torch.library.register_fake(lib + "weighted_gather_backward")
    def _(grad_out, query, key, value, nnf, temperature):
        return torch.empty_like(query), torch.empty_like(key), torch.empty_like(value)

    @torch.library.register_fake(lib + "bilinear_weighted_gather")
    def _(query, key, value, coords, temperature):
        return query.new_empty((query.shape[0], value.shape[1], query.shape[2], query.shape[3]))

    @torch.library.register_fake(lib + "bilinear_weighted_gather_backward")
    def _(grad_out, query, key, value, coords, temperature):
        return (
            torch.empty_like(query),
            torch.empty_like(key),
            torch.empty_like(value),
            torch.empty_like(coords),
        )

    @torch.library.register_fake(lib + "bilinear_scores")
    def _(query, key, coords, patch_size):
        return query.new_empty(coords.shape[:4])

    @torch.library.register_fake(lib + "dense_warp")
    def _(query, key, value, temperature):
        B, _, Hq, Wq = query.shape
        return query.new_empty((B, value.shape[1], Hq, Wq)), query.new_empty((B, 1, Hq * Wq))

    @torch.library.register_fake(lib + "dense_warp_backward")
    def _(grad_out, query, key, value, out, logsumexp, temperature):
        return torch.empty_like(query), torch.empty_like(key), torch.empty_like(value)

    def save_inputs(ctx, inputs, output):
        *tensors, temperature = inputs
        ctx.save_for_backward(*tensors)
        ctx.temperature = temperature

    def weighted_gather_backward(ctx, grad):
        query, key, value, nnf = ctx.saved_tensors
        grads = _ops.weighted_gather_backward(grad.contiguous(), query, key, value, nnf, ctx.temperature)
        return *grads, None, None

    def bilinear_gather_backward(ctx, grad):
        query, key, value, coords = ctx.saved_tensors
        grads = _ops.bilinear_weighted_gather_backward(
            grad.contiguous(), query, key, value, coords, ctx.temperature
        )
        return *grads, None

    def dense_warp_setup(ctx, inputs, output):
        query, key, value, temperature = inputs
        out, logsumexp = output
        ctx.mark_non_differentiable(logsumexp)
        ctx.save_for_backward(query, key, value, out, logsumexp)
        ctx.temperature = temperature

    def dense_warp_backward(ctx, grad, _grad_logsumexp):
        query, key, value, out, logsumexp = ctx.saved_tensors
        grads = _ops.dense_warp_backward(
            grad.contiguous(), query, key, value, out, logsumexp, ctx.temperature
        )
        return *grads, None

    torch.library.register_autograd(
        lib + "weighted_gather", weighted_gather_backward, setup_context=save_inputs
    )
    torch.library.register_autograd(
        lib + "bilinear_weighted_gather", bilinear_gather_backward, setup_context=save_inputs
    )
    torch.library.register_autograd(lib + "dense_warp", dense_warp_backward, setup_context=dense_warp_setup)


if HAS_COMPILED:
    _register_compiled_ops()
