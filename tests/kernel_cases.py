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
