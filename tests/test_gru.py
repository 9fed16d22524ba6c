"""The ConvGRU refinement: the cell's arithmetic, its outputs, and that the warp loss trains it."""

from __future__ import annotations

import pytest
import torch

from models import Correspondence, SepConvGRU, UpdateBlock
from models.gru import CandidateEncoder
from models.losses import warp_loss

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def test_sep_conv_gru_with_zero_weights_halves_the_state_twice():
    # z = r = sigmoid(0) = 1/2 and q = tanh(0) = 0: each of the two passes gives h / 2.
    gru = SepConvGRU(hidden_nc=3, input_nc=2)
    for p in gru.parameters():
        torch.nn.init.zeros_(p)
    h = torch.randn(2, 3, 5, 7)
    torch.testing.assert_close(gru(h, torch.randn(2, 2, 5, 7)), h / 4)


def test_sep_conv_gru_is_separable():
    """A change at one pixel reaches its row and column neighbours (1x5 then 5x1 convolutions),
    and only those within the two passes' reach."""
    gru = SepConvGRU(hidden_nc=4, input_nc=2)
    h = torch.zeros(1, 4, 11, 11)
    x = torch.zeros(1, 2, 11, 11)
    base = gru(h, x)
    x[0, :, 5, 5] = 1.0
    changed = (gru(h, x) - base).abs().sum(1)[0] > 0
    assert changed[5, 5] and changed[5, 3] and changed[3, 5] and changed[3, 3]
    assert not changed[5, 0] and not changed[0, 5] and not changed[2, 2]


def test_update_block_outputs_bounded_deltas():
    block = UpdateBlock(k=4, feature_nc=6, hidden_nc=8, input_nc=16, max_delta=0.5)
    with torch.no_grad():
        block.head.conv2.weight.mul_(1000)  # saturate the tanh
    hidden = block.initial_state(torch.randn(2, 6, 5, 7), torch.randn(2, 6, 5, 7))
    assert hidden.shape == (2, 8, 5, 7)
    hidden, delta = block(hidden, torch.randn(2, 4, 5, 7), torch.randn(2, 8, 5, 7))
    assert hidden.shape == (2, 8, 5, 7) and delta.shape == (2, 4, 5, 7, 2)
    assert delta.abs().max() <= 0.5 and delta.abs().max() > 0.4


def test_update_block_reads_candidate_k_as_x_then_y():
    """Delta channel i is candidate i's dx, channel k + i its dy."""
    block = UpdateBlock(k=2, feature_nc=3, hidden_nc=4, input_nc=8)
    conv = block.head.conv2
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    _, delta = block(torch.zeros(1, 4, 3, 3), torch.zeros(1, 2, 3, 3), torch.zeros(1, 4, 3, 3))
    expected = torch.tanh(torch.tensor([[0.1, 0.3], [0.2, 0.4]]))
    torch.testing.assert_close(delta[0, :, 1, 1], expected)


def test_candidate_encoder_needs_room_for_the_offsets():
    with pytest.raises(ValueError, match="out_nc"):
        CandidateEncoder(k=16, out_nc=32)


@pytest.mark.parametrize(("label_size", "exemplar_size"), [((64, 64), (64, 64)), ((128, 96), (96, 128))])
def test_every_gru_parameter_learns_from_the_warp_loss(label_size, exemplar_size):
    torch.manual_seed(0)
    corr = Correspondence(3, nef=8, match_nc=8, spade_nc=16, k=4, iters=2, upsample_matches=2, gru_iters=2)
    gen = torch.Generator().manual_seed(0)
    label = torch.rand(2, 3, *label_size, generator=gen)
    exemplar = torch.rand(2, 3, *exemplar_size, generator=gen) * 2 - 1
    out = corr(label, exemplar, torch.rand(2, 3, *exemplar_size, generator=gen))
    target = torch.rand(2, 3, *label_size, generator=gen) * 2 - 1
    warp_loss(out.warps, target).backward()
    assert corr.update is not None
    for name, p in corr.update.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, name
