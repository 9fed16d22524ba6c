"""Tests of cocosnet_ops.nnf: index/coordinate/offset round trips, flow images, reconstruction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cocosnet_ops
from cocosnet_ops import nnf as nnf_utils


def random_nnf(batch: int, k: int, query_size: tuple[int, int], key_size: tuple[int, int], seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    pixels = key_size[0] * key_size[1]
    return torch.randint(0, pixels, (batch, k, *query_size), generator=generator, dtype=torch.int32)


SIZES = [((4, 4), (4, 4)), ((3, 5), (7, 2)), ((6, 4), (3, 9)), ((1, 1), (5, 3))]


def test_index_to_xy_known_example():
    nnf = torch.tensor([[[[0, 2], [3, 5]]]], dtype=torch.int32)  # key map 2 rows x 3 columns
    xy = nnf_utils.index_to_xy(nnf, (2, 3))
    assert xy.dtype == torch.int64
    assert xy[0, 0].tolist() == [[[0, 0], [2, 0]], [[0, 1], [2, 1]]]


@pytest.mark.parametrize("query_size,key_size", SIZES)
def test_index_xy_round_trip(query_size, key_size):
    nnf = random_nnf(2, 3, query_size, key_size)
    xy = nnf_utils.index_to_xy(nnf, key_size)
    assert xy.shape == (2, 3, *query_size, 2)
    assert (xy[..., 0] < key_size[1]).all() and (xy[..., 1] < key_size[0]).all()
    back = nnf_utils.xy_to_index(xy, key_size)
    assert back.dtype == torch.int32
    assert torch.equal(back, nnf)


def test_xy_to_index_clamps_outside_points():
    xy = torch.tensor([-3, 1, 9, 1, 1, -1, 2, 7]).view(1, 4, 1, 1, 2)
    assert nnf_utils.xy_to_index(xy, (3, 4)).flatten().tolist() == [4, 7, 1, 10]


@pytest.mark.parametrize("query_size,key_size", SIZES)
def test_offsets_round_trip(query_size, key_size):
    nnf = random_nnf(2, 4, query_size, key_size, seed=1)
    offsets = nnf_utils.nnf_to_offsets(nnf, key_size)
    assert offsets.shape == (2, 4, *query_size, 2)
    assert torch.equal(nnf_utils.offsets_to_nnf(offsets, key_size), nnf)


def test_identity_nnf_has_zero_offsets():
    H, W = 3, 5
    identity = torch.arange(H * W, dtype=torch.int32).view(1, 1, H, W)
    assert not nnf_utils.nnf_to_offsets(identity, (H, W)).any()


def test_offsets_between_maps_of_different_sizes_are_in_key_pixels():
    # Query 2x2, key 4x6: the anchor of query pixel (x, y) is (3x, 2y).
    key_size = (4, 6)
    anchors = torch.tensor([[0, 3], [12, 15]], dtype=torch.int32).view(1, 1, 2, 2)
    assert not nnf_utils.nnf_to_offsets(anchors, key_size).any()
    one_right_two_down = anchors + 2 * 6 + 1
    offsets = nnf_utils.nnf_to_offsets(one_right_two_down.clamp(max=23), key_size)
    assert offsets[0, 0, 0, 0].tolist() == [1, 2]
    assert offsets[0, 0, 0, 1].tolist() == [1, 2]


def test_offsets_to_nnf_clamps_to_the_key_map():
    offsets = torch.tensor([[-5, 0], [0, 9]]).view(1, 2, 1, 1, 2)
    assert nnf_utils.offsets_to_nnf(offsets, (3, 3)).flatten().tolist() == [0, 6]


@pytest.mark.parametrize("query_size,key_size", SIZES)
def test_coords_round_trip(query_size, key_size):
    nnf = random_nnf(1, 5, query_size, key_size, seed=2)
    coords = nnf_utils.nnf_to_coords(nnf, key_size)
    assert coords.dtype == torch.float32 and coords.shape == (1, 5, *query_size, 2)
    assert torch.equal(nnf_utils.coords_to_nnf(coords, key_size), nnf)
    jitter = torch.rand(coords.shape, generator=torch.Generator().manual_seed(3)) * 0.98 - 0.49
    assert torch.equal(nnf_utils.coords_to_nnf(coords + jitter, key_size), nnf)


def test_coords_to_nnf_rounds_half_up_and_clamps():
    coords = torch.tensor([[0.5, 0.49], [-7.0, 1.5], [2.6, 99.0], [float("nan"), 1.0]]).view(1, 4, 1, 1, 2)
    assert nnf_utils.coords_to_nnf(coords, (3, 3)).flatten().tolist() == [1, 6, 8, 3]


def test_coords_sample_the_pixels_the_nnf_names():
    generator = torch.Generator().manual_seed(4)
    fq = F.normalize(torch.randn(1, 8, 5, 6, generator=generator), dim=1)
    fk = F.normalize(torch.randn(1, 8, 7, 4, generator=generator), dim=1)
    value = torch.rand(1, 3, 7, 4, generator=generator)
    nnf, _ = cocosnet_ops.exact_knn(fq, fk, 4)
    coords = nnf_utils.nnf_to_coords(nnf, (7, 4))
    by_index = cocosnet_ops.weighted_gather(fq, fk, value, nnf, 0.1)
    by_coords = cocosnet_ops.bilinear_weighted_gather(fq, fk, value, coords, 0.1)
    torch.testing.assert_close(by_coords, by_index)


def test_invalid_inputs_raise_clear_errors():
    nnf = random_nnf(1, 1, (2, 2), (2, 2))
    with pytest.raises(TypeError, match="nnf"):
        nnf_utils.index_to_xy(nnf.float(), (2, 2))
    with pytest.raises(ValueError, match="nnf"):
        nnf_utils.index_to_xy(nnf + 4, (2, 2))
    with pytest.raises(ValueError, match="key_size"):
        nnf_utils.index_to_xy(nnf, (2,))
    with pytest.raises(TypeError, match="coords"):
        nnf_utils.coords_to_nnf(torch.zeros(1, 1, 2, 2, 2, dtype=torch.int64), (2, 2))
    with pytest.raises(ValueError, match="offsets"):
        nnf_utils.offsets_to_nnf(torch.zeros(1, 2, 2, 2, dtype=torch.int64), (2, 2))
    with pytest.raises(ValueError, match="rank"):
        nnf_utils.nnf_to_flow_image(nnf, (2, 2), rank=1)


# ----------------------------------------------------------------------------- neighbours' matches


def test_neighbour_matches_known_example():
    nnf = torch.arange(12, dtype=torch.int32).view(1, 3, 2, 2)  # match m of pixel p: 4 * m + p
    neighbours = torch.tensor([[[[3, 0], [1, 2]], [[1, 1], [1, 1]]]], dtype=torch.int32)
    candidates = nnf_utils.neighbour_matches(nnf, neighbours, top=2)
    assert candidates.dtype == torch.int32 and candidates.shape == (1, 4, 2, 2)
    assert candidates[0, :, 0, 0].tolist() == [3, 7, 1, 5]  # pixel 3's two best, then pixel 1's
    assert candidates[0, :, 1, 1].tolist() == [2, 6, 1, 5]


def test_neighbour_matches_follow_each_batch_item():
    nnf = random_nnf(3, 4, (5, 6), (7, 3), seed=1)
    neighbours = random_nnf(3, 2, (5, 6), (5, 6), seed=2)
    candidates = nnf_utils.neighbour_matches(nnf, neighbours)
    flat_nnf, flat_neighbours = nnf.flatten(2), neighbours.flatten(2)
    for b in range(3):
        for pixel in (0, 7, 29):
            expected = [
                flat_nnf[b, m, flat_neighbours[b, n, pixel]].item() for n in range(2) for m in range(4)
            ]
            assert candidates[b].flatten(1)[:, pixel].tolist() == expected


def test_neighbour_matches_let_similar_query_pixels_share_their_best_match():
    """Query pixels 0 and 3 are alike and only pixel 0 has found their best key pixel: one round of
    evaluate_candidates over the neighbours' matches gives it to pixel 3."""
    query = torch.tensor([1.0, 0.0, 0.0, 0.99, -1.0, 0.0, 0.0, 0.14]).view(1, 2, 2, 2)
    query = F.normalize(query, dim=1)
    key = F.normalize(torch.tensor([[0.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 1.0]]).view(1, 2, 2, 2), dim=1)
    key[0, :, 1, 1] = torch.tensor([0.0, 1.0])
    key[0, :, 0, 0] = F.normalize(torch.tensor([1.0, 0.1]), dim=0)
    nnf = torch.tensor([0, 1, 2, 1], dtype=torch.int32).view(1, 1, 2, 2)
    neighbours = torch.tensor([3, 2, 1, 0], dtype=torch.int32).view(1, 1, 2, 2)
    candidates = torch.cat([nnf, nnf_utils.neighbour_matches(nnf, neighbours)], dim=1)
    better, scores = cocosnet_ops.evaluate_candidates(query, key, candidates, 1)
    assert better[0, 0, 1, 1].item() == 0
    assert scores[0, 0, 1, 1] > (query[0, :, 1, 1] * key[0, :, 0, 1]).sum()


def test_neighbour_matches_reject_bad_inputs():
    nnf = random_nnf(1, 2, (2, 3), (4, 4))
    neighbours = random_nnf(1, 1, (2, 3), (2, 3))
    with pytest.raises(TypeError, match="neighbours"):
        nnf_utils.neighbour_matches(nnf, neighbours.float())
    with pytest.raises(TypeError, match="nnf"):
        nnf_utils.neighbour_matches([0], neighbours)
    with pytest.raises(ValueError, match="neighbours"):
        nnf_utils.neighbour_matches(nnf, neighbours[:, :, :1])
    with pytest.raises(ValueError, match="neighbours"):
        nnf_utils.neighbour_matches(nnf, neighbours + 6)
    with pytest.raises(ValueError, match="neighbours"):
        nnf_utils.neighbour_matches(nnf, neighbours - 7)
    with pytest.raises(ValueError, match="top"):
        nnf_utils.neighbour_matches(nnf, neighbours, top=3)
    with pytest.raises(ValueError, match="top"):
        nnf_utils.neighbour_matches(nnf, neighbours, top=0)


# ----------------------------------------------------------------------------- flow images


def test_flow_to_color_shape_dtype_and_zero_flow_is_white():
    flow = torch.zeros(2, 5, 7, 2)
    image = nnf_utils.flow_to_color(flow)
    assert image.shape == (2, 5, 7, 3) and image.dtype == np.uint8
    assert (image == 255).all()


def test_flow_to_color_directions():
    flow = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.5, 0.0]])
    image = nnf_utils.flow_to_color(flow, max_magnitude=1.0)
    assert image[0].tolist() == [255, 0, 0]  # +x: red, fully saturated
    assert image[1].tolist() == [0, 255, 255]  # -x: cyan
    np.testing.assert_allclose(image[2], [128, 255, 0], atol=1)  # +y: hue 90 degrees, yellow-green
    np.testing.assert_allclose(image[3], [255, 128, 128], atol=1)  # half the magnitude: half saturated


def test_nnf_to_flow_image():
    H, W = 4, 6
    identity = torch.arange(H * W, dtype=torch.int32).view(1, 1, H, W)
    shifted = torch.cat([identity, (identity + 1).clamp(max=H * W - 1)], dim=1)
    best = nnf_utils.nnf_to_flow_image(shifted, (H, W), rank=0)
    assert best.shape == (1, H, W, 3) and best.dtype == np.uint8
    assert (best == 255).all()
    second = nnf_utils.nnf_to_flow_image(shifted, (H, W), rank=1, max_magnitude=1.0)
    assert second[0, 0, 0].tolist() == [255, 0, 0]


# ----------------------------------------------------------------------------- reconstruction


def shifted_nnf(H: int, W: int, dx: int, dy: int) -> torch.Tensor:
    """NNF matching query pixel (x, y) to key pixel (x + dx, y + dy), clamped."""
    y, x = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    xy = torch.stack([x + dx, y + dy], dim=-1).view(1, 1, H, W, 2)
    return nnf_utils.xy_to_index(xy, (H, W))


def test_top1_reconstruction_of_a_shifted_image():
    image = torch.rand(2, 3, 6, 9, generator=torch.Generator().manual_seed(5))
    nnf = shifted_nnf(6, 9, dx=2, dy=-1).expand(2, -1, -1, -1)
    rebuilt = nnf_utils.reconstruct(image, nnf)
    expected = torch.roll(image, shifts=(1, -2), dims=(2, 3))
    torch.testing.assert_close(rebuilt[:, :, 1:, :-2], expected[:, :, 1:, :-2])


def test_reconstruction_recovers_a_shifted_image_from_matches():
    generator = torch.Generator().manual_seed(6)
    key = F.normalize(torch.randn(1, 16, 8, 10, generator=generator), dim=1)
    image = torch.rand(1, 3, 8, 10, generator=generator)
    query = torch.roll(key, shifts=(2, -3), dims=(2, 3))  # query(x, y) = key(x + 3, y - 2)
    nnf, scores = cocosnet_ops.exact_knn(query, key, 4)
    rebuilt = nnf_utils.reconstruct(image, nnf)
    torch.testing.assert_close(rebuilt, torch.roll(image, shifts=(2, -3), dims=(2, 3)))
    soft = nnf_utils.reconstruct(image, nnf, scores, temperature=1e-3)
    torch.testing.assert_close(soft, rebuilt, atol=1e-4, rtol=0)


def test_softmax_reconstruction_equals_weighted_gather():
    generator = torch.Generator().manual_seed(7)
    fq = F.normalize(torch.randn(2, 8, 5, 7, generator=generator), dim=1)
    fk = F.normalize(torch.randn(2, 8, 6, 4, generator=generator), dim=1)
    value = torch.rand(2, 3, 6, 4, generator=generator)
    nnf, scores = cocosnet_ops.patch_match(fq, fk, k=5, iters=2)
    expected = cocosnet_ops.weighted_gather(fq, fk, value, nnf, 0.05)
    torch.testing.assert_close(nnf_utils.reconstruct(value, nnf, scores, temperature=0.05), expected)


def test_softmax_reconstruction_is_differentiable():
    value = torch.rand(1, 3, 4, 4, requires_grad=True)
    scores = torch.randn(1, 2, 3, 3, requires_grad=True)
    nnf = random_nnf(1, 2, (3, 3), (4, 4))
    nnf_utils.reconstruct(value, nnf, scores, temperature=0.5).sum().backward()
    assert value.grad is not None and scores.grad is not None
    assert scores.grad.abs().sum() > 0
