"""Self-reference pairs with a known warp: the coordinate convention, the border, labels, the draws."""

import math

import pytest
import torch
import torch.nn.functional as F

from data.common import check_probability, correspondence_fields, random_affine, self_reference_pair

HEIGHT, WIDTH = 48, 64


def _sample(image: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear sample of (C, H, W) at pixel coordinates (2, H, W) (pixel centres at integers)."""
    height, width = image.shape[-2:]
    grid = torch.stack([coords[0] / (width - 1), coords[1] / (height - 1)], dim=-1) * 2 - 1
    return F.grid_sample(image[None], grid[None].to(image.dtype), align_corners=True)[0]


def _pixel_grid(height: int = HEIGHT, width: int = WIDTH) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(float(height)), torch.arange(float(width)), indexing="ij")
    return torch.stack([xs, ys]).double()


def _smooth_photo() -> torch.Tensor:
    """A float64 photo of slow waves in [-1, 1]: interpolation errors stay small, yet a wrong or
    missing warp is far off."""
    x, y = _pixel_grid()
    return torch.stack([torch.sin(x / 5 + y / 9), torch.cos(x / 7 - y / 4), torch.sin((x + 2 * y) / 11)])


def _one_hot_blocks(classes: int = 5, seed: int = 0) -> torch.Tensor:
    ids = torch.randint(0, classes, (HEIGHT // 8, WIDTH // 8), generator=torch.Generator().manual_seed(seed))
    ids = ids.repeat_interleave(8, 0).repeat_interleave(8, 1)
    return F.one_hot(ids, classes).permute(2, 0, 1).double()


def _draws(count: int, flip_probability: float = 0.5):
    generator = torch.Generator().manual_seed(7)
    return [random_affine((HEIGHT, WIDTH), flip_probability=flip_probability, generator=generator)
            for _ in range(count)]


@pytest.mark.parametrize("matrix", _draws(6), ids=lambda _: "draw")
def test_the_exemplar_sampled_at_the_coords_is_the_target(matrix):
    label = _one_hot_blocks()
    # Bilinear interpolation reproduces a linear ramp exactly: exact wherever the four exemplar pixels
    # read lie in the target's frame (two pixels in from its border at these scales).
    x, y = _pixel_grid()
    ramp = torch.stack([0.01 * x, 0.02 * y, 0.01 * x - 0.015 * y])
    pair = self_reference_pair(ramp, label, matrix)
    valid = pair.valid[0] > 0
    inner = torch.zeros_like(valid)
    inner[2:-2, 2:-2] = True
    assert (valid & inner).float().mean() > 0.5
    error = (_sample(pair.exemplar, pair.exemplar_coords) - ramp).abs().amax(dim=0)
    assert error[valid & inner].max() < 1e-9
    # Smooth waves: the error of interpolating twice, and of the reflection at the frame's border.
    photo = _smooth_photo()
    pair = self_reference_pair(photo, label, matrix)
    error = (_sample(pair.exemplar, pair.exemplar_coords) - photo).abs().amax(dim=0)
    assert error[valid & inner].max() < 0.04 and error[valid].max() < 0.25
    # the same check with the pixel grid instead of the coords: far off, so the one above can fail
    baseline = (_sample(pair.exemplar, _pixel_grid()) - photo).abs().amax(dim=0)[valid]
    assert baseline.mean() > 10 * error[valid].mean(), (baseline.mean(), error[valid].mean())


def test_a_quarter_turn_is_rot90_and_its_coords_are_the_rotated_grid():
    """An exact pixel permutation, checked without any sampling code: the convention's direction."""
    side = 32
    photo = torch.rand(3, side, side, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    label = F.one_hot(torch.randint(0, 4, (side, side)), 4).permute(2, 0, 1).float()
    centre = (side - 1) / 2
    # exemplar pixel = R (target pixel - centre) + centre, R = [[0, -1], [1, 0]]
    matrix = torch.tensor([[0.0, -1.0, 2 * centre], [1.0, 0.0, 0.0]], dtype=torch.float64)
    pair = self_reference_pair(photo, label, matrix)
    torch.testing.assert_close(pair.exemplar, torch.rot90(photo, -1, (1, 2)), rtol=0, atol=1e-12)
    assert torch.equal(pair.exemplar_label, torch.rot90(label, -1, (1, 2)))
    x, y = _pixel_grid(side, side)
    torch.testing.assert_close(pair.exemplar_coords, torch.stack([side - 1 - y, x]), rtol=0, atol=1e-12)
    assert (pair.valid == 1).all()
    # each target pixel's value is in the exemplar at its coords
    ex, ey = pair.exemplar_coords.round().long()
    torch.testing.assert_close(pair.exemplar[:, ey, ex], photo, rtol=0, atol=1e-12)


def test_identity_gives_the_pixel_grid_and_valid_everywhere():
    matrix = random_affine((HEIGHT, WIDTH), max_rotation=0, scale_range=(1, 1), max_shift=0)
    assert torch.equal(matrix, torch.tensor([[1.0, 0, 0], [0, 1, 0]], dtype=torch.float64))
    photo = torch.rand(3, HEIGHT, WIDTH)
    label = _one_hot_blocks().float()
    pair = self_reference_pair(photo, label, matrix)
    assert pair.exemplar_coords.dtype == pair.valid.dtype == torch.float32
    assert torch.equal(pair.exemplar_coords, _pixel_grid().float())
    assert pair.valid.shape == (1, HEIGHT, WIDTH) and (pair.valid == 1).all()
    torch.testing.assert_close(pair.exemplar, photo, rtol=0, atol=1e-5)
    assert torch.equal(pair.exemplar_label, label)


def test_shift_valid_at_the_border_and_reflection_beyond_it():
    photo = _smooth_photo()
    label = _one_hot_blocks()
    # target pixel (x, y) -> exemplar pixel (x + 3, y - 2)
    matrix = torch.tensor([[1.0, 0.0, 3.0], [0.0, 1.0, -2.0]], dtype=torch.float64)
    pair = self_reference_pair(photo, label, matrix)
    expected = torch.zeros(HEIGHT, WIDTH)
    expected[2:, :WIDTH - 3] = 1  # the rest of the target leaves the exemplar's frame
    assert torch.equal(pair.valid[0], expected.double())
    for exemplar, target in ((pair.exemplar, photo), (pair.exemplar_label, label)):
        inside = exemplar[:, :HEIGHT - 2, 3:]
        torch.testing.assert_close(inside, target[:, 2:, :WIDTH - 3], rtol=0, atol=1e-12)
        # beyond the target's frame: reflected about its border pixels (column -k shows column k)
        for column in range(3):
            torch.testing.assert_close(exemplar[:, :HEIGHT - 2, column], target[:, 2:, 3 - column],
                                       rtol=0, atol=1e-12)
        torch.testing.assert_close(exemplar[:, HEIGHT - 1, 3:], target[:, HEIGHT - 3, :WIDTH - 3],
                                   rtol=0, atol=1e-12)


@pytest.mark.parametrize("shift_x, shift_y", [(0.4, 0.7), (0.7, 0.4)])
def test_sub_pixel_shift_interpolates_the_photo_and_takes_the_nearest_label(shift_x, shift_y):
    photo, label = _smooth_photo(), _one_hot_blocks()
    # target pixel (x, y) -> exemplar pixel (x + shift_x, y + shift_y)
    matrix = torch.tensor([[1.0, 0.0, shift_x], [0.0, 1.0, shift_y]], dtype=torch.float64)
    pair = self_reference_pair(photo, label, matrix)
    # exemplar pixel (x, y) shows (x - shift_x, y - shift_y): the nearest target pixel is one up or left
    # where the shift is 0.7, the same pixel where it is 0.4
    left, up = int(shift_x > 0.5), int(shift_y > 0.5)
    assert torch.equal(pair.exemplar_label[:, 1:, 1:], label[:, 1 - up:HEIGHT - up, 1 - left:WIDTH - left])
    fx, fy = 1 - shift_x, 1 - shift_y  # weights of the pixel below and right of the sampled point
    expected = (fy * (fx * photo[:, 1:, 1:] + (1 - fx) * photo[:, 1:, :-1])
                + (1 - fy) * (fx * photo[:, :-1, 1:] + (1 - fx) * photo[:, :-1, :-1]))
    torch.testing.assert_close(pair.exemplar[:, 1:, 1:], expected, rtol=0, atol=1e-12)
    assert (pair.valid[0, :, -1] == 0).all() and (pair.valid[0, -1] == 0).all()
    assert (pair.valid[0, :-1, :-1] == 1).all()


def test_one_hot_stays_one_hot_and_aligned_with_the_photo():
    colours = torch.tensor([[-1, -1, -1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, -1]]).double()
    label = _one_hot_blocks()
    photo = torch.einsum("chw,ck->khw", label, colours)
    label[:, :8, :8] = 0  # don't care: no class
    for matrix in _draws(4):
        pair = self_reference_pair(photo, label, matrix)
        assert set(pair.exemplar_label.unique().tolist()) == {0.0, 1.0}
        assert set(pair.exemplar_label.sum(dim=0).unique().tolist()) <= {0.0, 1.0}
        cared = pair.exemplar_label.sum(dim=0) == 1
        painted = torch.einsum("chw,ck->khw", pair.exemplar_label, colours)
        # the photo's colour is its label's class colour but on the blended block edges
        close = (pair.exemplar - painted).abs().amax(dim=0) < 0.5
        assert close[cared].float().mean() > 0.8


def test_draws_are_seeded_five_per_call_and_bounded():
    a = random_affine((HEIGHT, WIDTH), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, random_affine((HEIGHT, WIDTH), generator=torch.Generator().manual_seed(3)))
    assert not torch.equal(a, random_affine((HEIGHT, WIDTH), generator=torch.Generator().manual_seed(4)))
    torch.manual_seed(5)  # the global generator by default, as the trainer seeds it per item
    b = random_affine((HEIGHT, WIDTH), flip_probability=1)
    after = torch.rand(())
    torch.manual_seed(5)
    assert torch.equal(b, random_affine((HEIGHT, WIDTH), flip_probability=1))
    torch.manual_seed(5)
    torch.rand(5, dtype=torch.float64)
    assert torch.equal(torch.rand(()), after)
    centre = torch.tensor([(WIDTH - 1) / 2, (HEIGHT - 1) / 2], dtype=torch.float64)
    angles, scales, mirrored = [], [], []
    for matrix in _draws(400):
        determinant = torch.linalg.det(matrix[:, :2]).item()
        scale = math.sqrt(abs(determinant))
        mirrored.append(determinant < 0)
        # a mirror negates the first column: undo it to read the rotation
        angles.append(math.degrees(math.atan2(matrix[1, 1].item(), matrix[0, 1].item()) - math.pi / 2))
        scales.append(scale)
        shift = matrix[:, :2] @ centre + matrix[:, 2] - centre
        assert abs(shift[0]) <= 0.1 * WIDTH and abs(shift[1]) <= 0.1 * HEIGHT
    assert 0.8 <= min(scales) < 0.82 and 1.18 < max(scales) <= 1.2
    assert -15 <= min(angles) < -14 and 14 < max(angles) <= 15
    assert 0.4 < sum(mirrored) / len(mirrored) < 0.6
    assert not any(torch.linalg.det(m[:, :2]) < 0 for m in _draws(50, flip_probability=0))


def test_correspondence_fields_of_an_item_without_a_known_warp_are_zeros():
    fields = correspondence_fields(None, (HEIGHT, WIDTH))
    assert fields["exemplar_coords"].shape == (2, HEIGHT, WIDTH)
    assert fields["valid"].shape == (1, HEIGHT, WIDTH)
    assert all(t.dtype == torch.float32 and not t.any() for t in fields.values())


@pytest.mark.parametrize("options", [
    {"max_rotation": -1}, {"max_rotation": float("nan")}, {"scale_range": (0, 1)},
    {"scale_range": (1.2, 0.8)}, {"scale_range": 1.0}, {"max_shift": -0.1}, {"flip_probability": 2},
    {"flip_probability": True},
])
def test_bad_bounds_are_named(options):
    with pytest.raises(ValueError, match=next(iter(options))):
        random_affine((HEIGHT, WIDTH), **options)


def test_bad_values_are_named():
    for value in (-0.1, 1.5, float("nan"), "0.5", True, None):
        with pytest.raises(ValueError, match="known_warp"):
            check_probability(value, "known_warp")
    assert check_probability(1, "known_warp") == 1.0
    photo, label = torch.zeros(3, 16, 16), torch.zeros(2, 16, 16)
    with pytest.raises(ValueError, match="label"):
        self_reference_pair(photo, torch.zeros(2, 16, 8), torch.eye(2, 3))
    with pytest.raises(ValueError, match="matrix"):
        self_reference_pair(photo, label, torch.eye(3))
