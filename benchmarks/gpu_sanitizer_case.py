"""A small run of every CUDA kernel, for compute-sanitizer (memcheck, racecheck) in gpu_check.sh:
the search with init, patches and random search, the upsampling, both gathers forward and
backward on the atomic and the deterministic paths, exact_knn and dense_warp. Non-square maps
of different sizes, batch 2, so every index computation is exercised."""

import torch
import torch.nn.functional as F

import cocosnet_ops


def main() -> None:
    torch.manual_seed(0)
    device = torch.device("cuda")
    query = F.normalize(torch.randn(2, 16, 23, 17, device=device), dim=1).requires_grad_()
    key = F.normalize(torch.randn(2, 16, 19, 29, device=device), dim=1).requires_grad_()
    value = torch.rand(2, 3, 19, 29, device=device).requires_grad_()
    coarse, _ = cocosnet_ops.exact_knn(F.avg_pool2d(query, 2), F.avg_pool2d(key, 2), k=4)
    init = cocosnet_ops.nnf_upsample(coarse, key_size=(19, 29), query_size=(23, 17), coarse_key_size=(9, 14))
    nnf, _ = cocosnet_ops.patch_match(query, key, k=8, iters=3, init=init, patch_size=3)
    cocosnet_ops.evaluate_candidates(query, key, init, k=5)
    coords = cocosnet_ops.nnf.nnf_to_coords(nnf, (19, 29)) + 0.3 * torch.randn(*nnf.shape, 2, device=device)
    coords.requires_grad_()
    for deterministic in (False, True):
        torch.use_deterministic_algorithms(deterministic)
        warp = cocosnet_ops.weighted_gather(query, key, value, nnf, temperature=0.05)
        moved = cocosnet_ops.bilinear_weighted_gather(query, key, value, coords, temperature=0.05)
        (warp.square().sum() + moved.square().sum()).backward()
    torch.use_deterministic_algorithms(False)
    cocosnet_ops.dense_warp(query, key, value, temperature=0.05, cycle=True)[1].sum().backward()
    torch.cuda.synchronize()
    print("sanitizer case done")


if __name__ == "__main__":
    main()
