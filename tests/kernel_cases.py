"""Feature makers and search cases shared by the kernel tests of every backend (cpu, cuda,
triton), so each backend is checked on the same inputs."""

import torch


def integer_features(generator, *shape, dtype=torch.float32):
    """Small integers as floats: inner products are exact in any order, so ranks must agree bitwise."""
    return torch.randint(-3, 4, shape, generator=generator).to(dtype)


def unit_features(generator, *shape, dtype=torch.float32):
    return torch.nn.functional.normalize(torch.randn(*shape, generator=generator, dtype=dtype), dim=1)


SEARCH_CASES = [
    # (B, C, Hq, Wq, Hk, Wk, k, iters, patch_size, random_search, seed)
    (1, 4, 8, 8, 8, 8, 4, 3, 1, True, 0),
    (2, 5, 9, 11, 8, 13, 6, 4, 1, True, 7),
    (2, 3, 12, 7, 5, 16, 8, 5, 3, True, 123),
    (1, 9, 6, 10, 10, 6, 3, 2, 1, False, 0),
    (1, 2, 3, 4, 2, 3, 6, 2, 3, True, 1),  # k equals the key pixel count
    (2, 16, 16, 16, 12, 20, 16, 5, 1, True, 99),
]


def init_with_holes(generator, B, M, Hq, Wq, key_pixels, hole_rate=0.1):
    """Init candidates (B, M, Hq, Wq) for a bounded search: random key indices with holes (-1),
    and pixel (0, 0) without any, so the unbounded case is exercised too."""
    init = torch.randint(0, key_pixels, (B, M, Hq, Wq), generator=generator, dtype=torch.int32)
    init = torch.where(torch.rand(init.shape, generator=generator) < hole_rate, -1, init)
    init[..., 0, 0] = -1
    return init


def check_within_bound(nnf, init, key_width, max_radius, k):
    """Every match of a pixel with a valid init candidate lies within Chebyshev distance
    max_radius of one of them, except for the random top-ups of a pixel with fewer than k
    distinct ones: at most that shortfall of its matches may lie farther."""
    if init.shape[1] == 0:  # no pixel has an init candidate: all are unbounded
        return
    valid = (init >= 0).unsqueeze(1)
    near = (nnf.long() // key_width).unsqueeze(2), (nnf.long() % key_width).unsqueeze(2)
    given = (init.long() // key_width).unsqueeze(1), (init.long() % key_width).unsqueeze(1)
    distance = torch.maximum((near[0] - given[0]).abs(), (near[1] - given[1]).abs())
    nearest = torch.where(valid, distance, torch.full_like(distance, 2**40)).amin(2)
    ordered = torch.where(init >= 0, init, -1).sort(1).values
    next_value = (ordered[:, 1:] != ordered[:, :-1]) & (ordered[:, 1:] >= 0)
    distinct = (ordered[:, 0] >= 0).long() + next_value.sum(1)
    has_init = (init >= 0).any(1)
    far = (nearest > max_radius).sum(1)
    shortfall = (k - distinct).clamp(min=0)
    assert (far[has_init] <= shortfall[has_init]).all(), "a match outside max_radius of every init candidate"
