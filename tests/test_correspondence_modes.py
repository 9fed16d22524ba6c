"""The two orders of PatchMatch and GRU in the correspondence: interleaved (the paper's) and after."""

from __future__ import annotations

import pytest
import torch
from test_models import LABEL_NC, make_batch, tiny_options

import cocosnet_ops
from cocosnet_ops.nnf import coords_to_nnf, nnf_to_coords
from models import CoCosNet, Correspondence
from models.losses import warp_loss

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def correspondence(**overrides) -> Correspondence:
    base = dict(nef=8, match_nc=8, spade_nc=16, k=4, iters=2, upsample_matches=2, gru_iters=2)
    base.update(overrides)
    torch.manual_seed(0)
    return Correspondence(LABEL_NC, **base)


def run(corr: Correspondence, size=(32, 32), seed=0):
    batch = make_batch(size, size, seed=seed)
    return batch, corr(batch["label"], batch["exemplar"], batch["exemplar_label"])


class Recorder:
    """Wraps ``cocosnet_ops.patch_match`` and the GRU update block, logging their calls in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, corr: Correspondence) -> None:
        self.events: list[tuple[str, dict]] = []
        search = cocosnet_ops.patch_match

        def patch_match(*args, **kwargs):
            nnf, scores = search(*args, **kwargs)
            self.events.append(("search", {"init": kwargs["init"], "iters": kwargs["iters"], "nnf": nnf}))
            return nnf, scores

        update = corr.update.forward

        def forward(hidden, scores, offsets):
            hidden, delta = update(hidden, scores, offsets)
            self.events.append(("gru", {"delta": delta.detach()}))
            return hidden, delta

        monkeypatch.setattr(cocosnet_ops, "patch_match", patch_match)
        monkeypatch.setattr(corr.update, "forward", forward)


@pytest.mark.parametrize("mode", ["interleaved", "after"])
def test_both_orders_train_every_gru_parameter(mode):
    corr = correspondence(gru_mode=mode).train()
    batch, out = run(corr)
    warp_loss(out.warps, batch["image"]).backward()
    for name, p in corr.update.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, name
    for level in (1, 2, 3):
        assert out.coords[level].requires_grad


def test_interleaved_searches_once_per_iteration_from_the_moved_matches(monkeypatch):
    corr = correspondence(iters=3, gru_iters=2, gru_mode="interleaved").eval()
    with torch.no_grad():
        corr.update.head.conv2.weight.mul_(100)  # moves of about a pixel, so rounding changes matches
    recorder = Recorder(monkeypatch, corr)
    with torch.no_grad():
        _, out = run(corr)
    kinds = [kind for kind, _ in recorder.events]
    # Per level: one plain iteration, then (one search iteration, one GRU step) twice.
    assert kinds == ["search", "search", "gru", "search", "gru"] * 3
    for level in (1, 2, 3):
        events = [data for _, data in recorder.events[5 * (level - 1) : 5 * level]]
        assert [events[i]["iters"] for i in (0, 1, 3)] == [1, 1, 1]
        key_size = tuple(out.features.key[level].shape[-2:])
        assert torch.equal(events[1]["init"], events[0]["nnf"])
        moved = nnf_to_coords(events[1]["nnf"], key_size) + events[2]["delta"]
        assert torch.equal(events[3]["init"], coords_to_nnf(moved, key_size))
        assert not torch.equal(events[3]["init"], events[1]["nnf"])  # the GRU did move some
        assert torch.equal(out.nnfs[level], events[3]["nnf"])
        final = nnf_to_coords(events[3]["nnf"], key_size) + events[4]["delta"]
        torch.testing.assert_close(out.coords[level], final, rtol=0, atol=0)


def test_after_searches_all_iterations_then_refines(monkeypatch):
    corr = correspondence(iters=3, gru_iters=2, gru_mode="after").eval()
    recorder = Recorder(monkeypatch, corr)
    with torch.no_grad():
        run(corr)
    assert [kind for kind, _ in recorder.events] == ["search", "gru", "gru"] * 3
    assert [data["iters"] for kind, data in recorder.events if kind == "search"] == [3, 3, 3]


def test_the_two_orders_give_different_matches():
    outs = []
    for mode in ("interleaved", "after"):
        with torch.no_grad():
            outs.append(run(correspondence(gru_mode=mode).eval())[1])
    assert not torch.equal(outs[0].coords[-1], outs[1].coords[-1])


def test_reference_mode_ignores_the_gru_mode():
    outs = []
    for mode in ("interleaved", "after"):
        corr = correspondence(reference_mode=True, gru_mode=mode, gru_iters=5).eval()
        assert corr.update is None
        with torch.no_grad():
            outs.append(run(corr)[1])
    for a, b in zip(outs[0].nnfs, outs[1].nnfs, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(outs[0].warps, outs[1].warps, strict=True):
        assert torch.equal(a, b)


def test_invalid_gru_options_are_named():
    with pytest.raises(ValueError, match="gru_mode"):
        correspondence(gru_mode="before")
    with pytest.raises(ValueError, match="gru_iters"):
        correspondence(iters=2, gru_iters=3, gru_mode="interleaved")
    correspondence(iters=2, gru_iters=3, gru_mode="after")


def test_options_reach_the_correspondence():
    model = CoCosNet(tiny_options(gru_mode="after", gru_max_delta=0.25))
    assert model.correspondence.gru_mode == "after"
    assert model.correspondence.update.head.max_delta == 0.25
