"""The whole model under torch.compile: one graph in training and evaluation mode, shapes kept
dynamic (a second image size does not recompile) with the results and gradients of eager mode,
and a seed that ``patch_match`` reads as a tensor."""

from __future__ import annotations

import pytest
import torch
from test_models import make_batch, tiny_options

import cocosnet_ops
from models import CoCosNet, TrainingStep
from training import compile_workaround

# Non-square first: its height and width get separate symbols, which the square size then reuses.
# Both sides above 32 so that no generator level (1/32 of the image) has size 1: PyTorch treats a
# size-1 dimension as broadcastable, so a level of size 1 at one size but not the other recompiles.
SIZES = [(40, 56), (48, 48)]
TOLERANCE = 1e-4

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


def forward_and_gradients(
    model: torch.nn.Module, params: list[torch.nn.Parameter], batch: dict[str, torch.Tensor]
) -> list[torch.Tensor]:
    """The image, the warps, and the gradients of a loss on them w.r.t. the exemplar and ``params``."""
    out = model(*model_inputs(batch))
    weights = torch.linspace(-1, 1, out.image.numel(), dtype=out.image.dtype).view_as(out.image)
    loss = (out.image * weights).mean() + sum(warp.square().mean() for warp in out.warps)
    grads = torch.autograd.grad(loss, [batch["exemplar"], *params])
    return [out.image.detach(), *(warp.detach() for warp in out.warps), *grads]


def dynamic_batch(size: tuple[int, int], mark: bool) -> dict[str, torch.Tensor]:
    """A float64 batch whose exemplar requires grad, its image sizes marked dynamic if ``mark``.

    float64: the warps are softmaxes of matching scores at temperature 0.01, which turn float32
    rounding differences between compiled and eager kernels (~1e-6 in the scores) into ~1e-4 in the
    warps; in float64 anything above 1e-4 is a real difference. The tensors are marked in place,
    as ``mark_dynamic`` marks a tensor object and a copy (``.detach()``, ``.double()``) is static."""
    batch = {name: tensor.double() for name, tensor in make_batch(size, size).items()}
    batch["exemplar"].requires_grad_()
    if mark:
        for tensor in model_inputs(batch):
            torch._dynamo.mark_dynamic(tensor, (2, 3))
    return batch


@pytest.mark.parametrize(
    "compiler",
    [
        # Inductor's cold compilation of the model and its backward: 15-20 minutes on 2 cores.
        pytest.param("inductor", marks=pytest.mark.slow),
        # Dynamo and AOTAutograd without code generation: the same graphs and the same guards on
        # the sizes in a few minutes, so the default suite checks that sizes stay symbolic.
        "aot_eager",
    ],
)
def test_compiled_model_matches_eager_at_two_sizes_without_recompiling(compiler):
    compile_workaround.install()  # as train.py --compile does (see training/compile_workaround.py)
    model = CoCosNet(tiny_options()).double().eval()
    # Parameters the image and warps depend on (the discriminator and VGG only serve the losses).
    params = [p for name, p in model.named_parameters() if name.startswith(("correspondence.", "generator."))]
    compiled = torch.compile(model, backend=compiler)
    # Cold caches: a cached compilation of this model brings back a guard on the 1/16 level's sizes
    # (ceil(H/16) < ceil(W/16)) that a cold one does not add, and the second size would recompile.
    with torch.compiler.config.patch(force_disable_caches=True):
        for index, size in enumerate(SIZES):
            batch = dynamic_batch(size, mark=index == 0)  # sizes are symbols from the first call on
            with torch._dynamo.config.patch(error_on_recompile=index > 0):
                got = forward_and_gradients(compiled, params, batch)
            expected = forward_and_gradients(model, params, batch)
            assert len(got) == len(expected)
            for g, e in zip(got, expected, strict=True):
                torch.testing.assert_close(g, e, rtol=0, atol=TOLERANCE)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
