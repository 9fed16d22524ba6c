"""The whole model under torch.compile: one graph in training and evaluation mode, and a seed
that ``patch_match`` reads as a tensor."""

from __future__ import annotations

import pytest
import torch
from test_models import make_batch, tiny_options

import cocosnet_ops
from models import CoCosNet, TrainingStep

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


@pytest.fixture(autouse=True)
def _fresh_compiler():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    torch.manual_seed(0)
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_patch_match_reads_a_tensor_seed_like_an_int(backend):
    query, key = torch.randn(1, 8, 12, 10), torch.randn(1, 8, 9, 11)
    expected = cocosnet_ops.patch_match(query, key, k=4, iters=2, seed=123456789, backend=backend)
    got = cocosnet_ops.patch_match(query, key, k=4, iters=2, seed=torch.tensor(123456789), backend=backend)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    other = cocosnet_ops.patch_match(query, key, k=4, iters=2, seed=torch.tensor([7]), backend=backend)
    assert not torch.equal(other[0], expected[0])


@pytest.mark.parametrize(
    ("seed", "error"),
    [
        (torch.tensor(1.0), TypeError),
        (torch.tensor(True), TypeError),
        (torch.tensor([1, 2]), ValueError),
        (torch.tensor(-1), ValueError),
        (torch.tensor(2**32), ValueError),
    ],
)
def test_patch_match_rejects_bad_tensor_seeds(seed, error):
    query = torch.randn(1, 4, 6, 6)
    with pytest.raises(error, match="seed"):
        cocosnet_ops.patch_match(query, query, k=2, iters=1, seed=seed)


def model_inputs(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return batch["label"], batch["exemplar"], batch["exemplar_label"]


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_forward_is_one_graph(mode):
    model = CoCosNet(tiny_options()).train(mode == "train")
    explanation = torch._dynamo.explain(model)(*model_inputs(make_batch((32, 32), (32, 32))))
    assert explanation.graph_break_count == 0, [r.reason for r in explanation.break_reasons]
    assert explanation.graph_count == 1


def test_training_step_losses_are_one_graph():
    step = TrainingStep(CoCosNet(tiny_options()).train())
    explanation = torch._dynamo.explain(step)(make_batch((32, 32), (32, 32)))
    assert explanation.graph_break_count == 0, [r.reason for r in explanation.break_reasons]
    assert explanation.graph_count == 1
