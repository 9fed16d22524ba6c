"""The CoCosNet v2 networks: shapes, sizes, correspondence semantics, training losses, DDP."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

import cocosnet_ops
from cocosnet_ops.nnf import nnf_to_coords
from models import CoCosNet, CoCosNetOptions, Correspondence, TrainingStep
from models.alignment import AlignmentUNet
from models.correspondence import query_positions_in_key
from models.normalization import SPADE, SynchronizedBatchNorm2d, positional_norm, synchronize_batch_norms

LABEL_NC = 4
# (label height, width), (exemplar height, width): square, then non-square with a different exemplar.
SIZES = [((64, 64), (64, 64)), ((128, 96), (96, 128))]
SIZE_IDS = ["64x64", "128x96-exemplar96x128"]


def tiny_options(**overrides) -> CoCosNetOptions:
    """Small widths: these tests are about behaviour, not capacity."""
    base = dict(
        label_nc=LABEL_NC,
        nef=8,
        match_nc=8,
        spade_nc=16,
        ngf=8,
        ndf=8,
        k=4,
        patch_match_iters=2,
        upsample_matches=2,
        gru_iters=2,
    )
    base.update(overrides)
    return CoCosNetOptions(**base)


def tiny_correspondence(**overrides) -> Correspondence:
    base = dict(nef=8, match_nc=8, spade_nc=16, k=4, iters=2, upsample_matches=2, gru_iters=2)
    base.update(overrides)
    return Correspondence(LABEL_NC, **base)


def make_batch(label_size, exemplar_size, batch=2, seed=0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)

    def label(size):
        # One-hot maps of smooth random blobs, so that features have structure to match.
        logits = F.interpolate(
            torch.randn(batch, LABEL_NC, size[0] // 8, size[1] // 8, generator=gen), size=size
        )
        return F.one_hot(logits.argmax(1), LABEL_NC).permute(0, 3, 1, 2).float()

    def image(size):
        return torch.rand(batch, 3, *size, generator=gen) * 2 - 1

    return {
        "label": label(label_size),
        "image": image(label_size),
        "exemplar": image(exemplar_size),
        "exemplar_label": label(exemplar_size),
    }


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


@pytest.mark.parametrize(("label_size", "exemplar_size"), SIZES, ids=SIZE_IDS)
def test_forward_shapes(label_size, exemplar_size):
    model = CoCosNet(tiny_options()).eval()
    batch = make_batch(label_size, exemplar_size)
    with torch.no_grad():
        out = model(batch["label"], batch["exemplar"], batch["exemplar_label"])
    h, w = label_size
    he, we = exemplar_size
    assert out.image.shape == (2, 3, h, w)
    assert out.image.abs().max() <= 1
    assert out.cycle_warp is None  # only computed in training mode
    for level, (warp, nnf) in enumerate(zip(out.warps, out.nnfs, strict=True)):
        scale = 2 ** (3 - level)
        assert warp.shape == (2, 3, h // scale, w // scale)
        assert nnf.dtype == torch.int32 and nnf.shape == (2, 4, h // scale, w // scale)
        assert 0 <= nnf.min() and nnf.max() < (he // scale) * (we // scale)
    assert out.coords[0] is None
    for level in (1, 2, 3):
        scale = 2 ** (3 - level)
        assert out.coords[level].shape == (2, 4, h // scale, w // scale, 2)


@pytest.mark.parametrize(("label_size", "exemplar_size"), SIZES, ids=SIZE_IDS)
def test_training_losses_forward_backward(label_size, exemplar_size):
    model = CoCosNet(tiny_options()).train()
    losses = model.losses(make_batch(label_size, exemplar_size))
    expected_g = {"alignment", "warp", "cycle", "gan", "gan_feature", "vgg", "perceptual", "contextual"}
    assert set(losses.generator) == expected_g
    assert set(losses.discriminator) == {"fake", "real"}
    for name, value in {**losses.generator, **losses.discriminator}.items():
        assert value.dim() == 0 and torch.isfinite(value), name
    he, we = exemplar_size
    assert losses.translation.cycle_warp.shape == (2, 3, he // 8, we // 8)
    losses.total.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    missing = [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    assert all(p.grad is None for p in model.vgg.parameters())


def test_generator_terms_leave_discriminator_alone_and_vice_versa():
    model = CoCosNet(tiny_options()).train()
    losses = model.losses(make_batch((64, 64), (64, 64)))
    sum(losses.generator.values()).backward(retain_graph=True)
    assert all(p.grad is None for p in model.discriminator.parameters())
    assert all(p.grad is not None for p in model.generator.parameters())
    model.zero_grad(set_to_none=True)
    sum(losses.discriminator.values()).backward()
    assert all(p.grad is not None for p in model.discriminator.parameters())
    assert all(p.grad is None for p in model.generator.parameters())
    assert all(p.grad is None for p in model.correspondence.parameters())


def test_self_ref_weights_select_the_warp_loss_samples():
    # Evaluation mode: fixed PatchMatch seeds and no spectral-norm updates between the calls.
    model = CoCosNet(tiny_options()).eval()
    batch = make_batch((64, 64), (64, 64))
    both = model.losses({**batch, "self_ref": torch.tensor([1.0, 1.0])}).generator["warp"]
    first = model.losses({**batch, "self_ref": torch.tensor([1.0, 0.0])}).generator["warp"]
    second = model.losses({**batch, "self_ref": torch.tensor([0.0, 1.0])}).generator["warp"]
    assert not torch.allclose(first, second)
    torch.testing.assert_close(both, (first + second) / 2)


def test_training_under_autocast():
    model = CoCosNet(tiny_options()).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model.losses(make_batch((64, 64), (64, 64)))
    for name, value in {**losses.generator, **losses.discriminator}.items():
        assert value.dtype == torch.float32 and torch.isfinite(value), name
    losses.total.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_pix2pixhd_generator_option_trains():
    options = tiny_options(generator="pix2pixhd", pix2pixhd_ngf=4, n_blocks_global=1, n_blocks_local=1)
    model = CoCosNet(options).train()
    losses = model.losses(make_batch((64, 64), (64, 64)))
    losses.total.backward()
    assert losses.translation.image.shape == (2, 3, 64, 64)
    assert all(p.grad is not None for p in model.generator.parameters())


def test_instance_edges_channel():
    model = CoCosNet(tiny_options(instance_edges=True)).train()
    assert model.discriminator.discriminators[0].layers[0][0].in_channels == LABEL_NC + 1 + 3
    batch = make_batch((64, 64), (64, 64))
    with pytest.raises(ValueError, match="instance"):
        model.losses(batch)
    instance = torch.zeros(2, 1, 64, 64)
    instance[:, :, :, 32:] = 1
    d_input = model.discriminator_input(batch["label"], batch["image"], instance)
    assert d_input.shape == (2, LABEL_NC + 4, 64, 64)
    assert d_input[:, LABEL_NC, :, 31:33].eq(1).all() and d_input[:, LABEL_NC].sum() == 2 * 2 * 64
    model.losses({**batch, "instance": instance}).total.backward()


def test_ddp_find_unused_parameters_false(tmp_path):
    """Two steps under DistributedDataParallel(find_unused_parameters=False): a parameter without a
    gradient in the first step would make the second step raise."""
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
    )
    try:
        model = CoCosNet(tiny_options()).train()
        step = DistributedDataParallel(TrainingStep(model), find_unused_parameters=False)
        batch = make_batch((64, 64), (64, 64))
        for _ in range(2):
            model.zero_grad(set_to_none=True)
            step(batch).total.backward()
            without = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
            assert not without
    finally:
        torch.distributed.destroy_process_group()


def test_eval_forward_does_not_depend_on_the_global_generator():
    """Inference repeats: evaluation fixes PatchMatch's random-search seeds per level, where
    training draws them from torch's generator (the control: there, another global seed gives
    other matches, and the same seed the same ones)."""
    model = CoCosNet(tiny_options())
    # A forward in training mode also moves the spectral norms' power iterations: start alike.
    state = {name: t.clone() for name, t in model.state_dict().items()}
    batch = make_batch((64, 64), (64, 64))
    inputs = (batch["label"], batch["exemplar"], batch["exemplar_label"])

    def nnfs_after_seeding(seed: int) -> list[torch.Tensor]:
        model.load_state_dict(state)
        torch.manual_seed(seed)
        with torch.no_grad():
            return model(*inputs).nnfs

    def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
        return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))

    model.eval()
    assert same(nnfs_after_seeding(1), nnfs_after_seeding(2))
    model.train()
    assert same(nnfs_after_seeding(1), nnfs_after_seeding(1))
    assert not same(nnfs_after_seeding(1), nnfs_after_seeding(2))


# ----------------------------------------------------------------------------- correspondence


@pytest.mark.parametrize(("label_size", "exemplar_size"), [((40, 24), (24, 48)), ((64, 64), (32, 32))])
def test_correspondence_any_size_divisible_by_8(label_size, exemplar_size):
    corr = tiny_correspondence().train()
    batch = make_batch(label_size, exemplar_size)
    out = corr(batch["label"], batch["exemplar"], batch["exemplar_label"])
    assert out.warps[-1].shape == (2, 3, *label_size)
    assert out.cycle_warp.shape == (2, 3, exemplar_size[0] // 8, exemplar_size[1] // 8)
    sum(w.mean() for w in out.warps).backward()


def test_correspondence_rejects_sizes_not_divisible_by_8():
    corr = tiny_correspondence()
    batch = make_batch((64, 64), (64, 64))
    with pytest.raises(ValueError, match="divisible by 8"):
        corr(batch["label"][..., :60], batch["exemplar"], batch["exemplar_label"])


def test_level0_is_the_dense_warp_and_level1_searches_from_it(same_matches):
    corr = tiny_correspondence().eval()
    batch = make_batch((64, 64), (64, 64))
    with torch.no_grad():
        out = corr(batch["label"], batch["exemplar"], batch["exemplar_label"], cycle=True)
    fq, fk = out.features.query[0], out.features.key[0]
    pooled = F.avg_pool2d(batch["exemplar"], 8)
    # The dense warp, written out: softmax over all exemplar pixels of the cosine / temperature.
    logits = torch.einsum("bcn,bcm->bnm", fq.flatten(2), fk.flatten(2)) / 0.01
    expected = torch.einsum("bnm,bcm->bcn", logits.softmax(2), pooled.flatten(2)).view_as(out.warps[0])
    torch.testing.assert_close(out.warps[0], expected, rtol=1e-4, atol=1e-5)
    back = torch.einsum("bmn,bcn->bcm", logits.transpose(1, 2).softmax(2), expected.flatten(2))
    torch.testing.assert_close(out.cycle_warp, back.view_as(out.cycle_warp), rtol=1e-4, atol=1e-5)
    top = logits.topk(4, dim=2).indices.transpose(1, 2).reshape(2, 4, 8, 8).int()
    same_matches(out.nnfs[0], top, fq, fk)  # both from matmuls: equal up to near-ties


def test_dense_levels_warp_every_level_by_the_exact_softmax(same_matches):
    """dense_levels (a dense warm-up sets all 4): each of those levels is dense_warp of its own
    features and values, its matches exact_knn's, with no search window and no GRU."""
    corr = tiny_correspondence().eval()
    corr.dense_levels = 4
    batch = make_batch((64, 48), (48, 64))
    with torch.no_grad():
        out = corr(batch["label"], batch["exemplar"], batch["exemplar_label"])
    for level, scale in enumerate((8, 4, 2, 1)):
        fq, fk = out.features.query[level], out.features.key[level]
        value = F.avg_pool2d(batch["exemplar"], scale) if scale > 1 else batch["exemplar"]
        torch.testing.assert_close(out.warps[level], cocosnet_ops.dense_warp(fq, fk, value, 0.01))
        same_matches(out.nnfs[level], cocosnet_ops.exact_knn(fq, fk, 4)[0], fq, fk)
    assert out.inits == [None] * 4 and out.coords == [None] * 4
    for bad in (0, 5, 2.0, True):
        with pytest.raises(ValueError, match="dense_levels"):
            corr.dense_levels = bad


def test_residual_matching_levels_carry_the_coarser_level():
    """matching_levels="residual": a finer level's matching features are its own projection plus
    the coarser level's features upsampled, centred and normalised."""
    corr = tiny_correspondence(matching_levels="residual").double().eval()  # no power iteration per call
    batch = {name: t.double() for name, t in make_batch((64, 48), (48, 64)).items()}
    with torch.no_grad():
        features = corr.alignment(batch["label"], batch["exemplar"], batch["exemplar_label"])
        label_features = corr.alignment.label_features(batch["label"])
    for level in range(1, 4):
        projected = corr.alignment.query_proj[level](label_features[level])
        coarser = F.interpolate(features.query[level - 1], size=projected.shape[-2:], mode="bilinear")
        summed = projected + coarser
        centred = summed - summed.mean(1, keepdim=True)
        torch.testing.assert_close(features.query[level], centred / centred.norm(dim=1, keepdim=True))
    own = tiny_correspondence().double().eval()
    own.load_state_dict(corr.state_dict())
    with torch.no_grad():
        plain = own.alignment(batch["label"], batch["exemplar"], batch["exemplar_label"])
    torch.testing.assert_close(plain.query[0], features.query[0])  # the coarsest level is its own
    assert not torch.allclose(plain.query[1], features.query[1])
    with pytest.raises(ValueError, match="matching_levels"):
        tiny_correspondence(matching_levels="pyramid")


def test_matching_features_are_centred_and_unit_norm():
    corr = tiny_correspondence()
    batch = make_batch((64, 64), (64, 64))
    features = corr.alignment(batch["label"], batch["exemplar"], batch["exemplar_label"])
    for f in features.query + features.key:
        assert f.shape[1] == 8
        torch.testing.assert_close(f.mean(1), torch.zeros_like(f[:, 0]), rtol=0, atol=1e-6)
        torch.testing.assert_close(f.norm(dim=1), torch.ones_like(f[:, 0]), rtol=0, atol=1e-5)
    assert [f.shape[-1] for f in features.query] == [8, 16, 32, 64]


def test_reference_mode_is_plain_patch_match_with_integer_warps():
    corr = tiny_correspondence(reference_mode=True).eval()
    assert corr.update is None and not any("update" in n for n, _ in corr.named_parameters())
    batch = make_batch((64, 64), (64, 64))
    with torch.no_grad():
        out = corr(batch["label"], batch["exemplar"], batch["exemplar_label"])
    assert out.coords == [None] * 4
    for level in (1, 2, 3):
        fq, fk = out.features.query[level], out.features.key[level]
        value = F.avg_pool2d(batch["exemplar"], 2 ** (3 - level))
        expected = cocosnet_ops.weighted_gather(fq, fk, value, out.nnfs[level], 0.01, backend="torch")
        torch.testing.assert_close(out.warps[level], expected)
        # Without random search, PatchMatch from the previous level's best match is what ran.
        coarse = out.nnfs[level - 1][:, :1].contiguous()
        init = cocosnet_ops.nnf_upsample(coarse, fk.shape[-2:], fq.shape[-2:], backend="torch")
        nnf, _ = cocosnet_ops.patch_match(
            fq, fk, k=4, iters=2, init=init, random_search=False, seed=level, backend="torch"
        )
        assert torch.equal(nnf, out.nnfs[level])


def test_batch_samples_do_not_mix():
    """A sample's result depends only on its own inputs: replacing the other sample of the batch
    leaves it bitwise unchanged (same shapes, so every kernel does the same arithmetic on it),
    random search and GRU included. Alone, its features are those of the batched run up to the
    rounding of batched convolutions, which depends on the processor and the batch size; the
    NNFs downstream may flip at near-ties under such rounding, so they are not compared there."""
    corr = tiny_correspondence().eval()
    batch = make_batch((64, 48), (48, 64))
    other = make_batch((64, 48), (48, 64), seed=1)
    swapped = {name: torch.cat([t[:1], other[name][1:]]) for name, t in batch.items()}
    inputs = ("label", "exemplar", "exemplar_label")
    with torch.no_grad():
        both = corr(*(batch[n] for n in inputs))
        changed = corr(*(swapped[n] for n in inputs))
        alone = corr(*(batch[n][:1] for n in inputs))
    for level in range(4):
        assert torch.equal(both.nnfs[level][:1], changed.nnfs[level][:1])
        assert torch.equal(both.warps[level][:1], changed.warps[level][:1])
        assert not torch.equal(both.nnfs[level][1:], changed.nnfs[level][1:])  # the other one did change
        for side in ("query", "key"):
            batched, single = getattr(both.features, side)[level], getattr(alone.features, side)[level]
            torch.testing.assert_close(batched[:1], single, rtol=1e-4, atol=1e-5)


def test_gru_moves_the_candidates_off_the_integer_grid():
    corr = tiny_correspondence().eval()
    batch = make_batch((64, 64), (64, 64))
    with torch.no_grad():
        out = corr(batch["label"], batch["exemplar"], batch["exemplar_label"])
    for level in (1, 2, 3):
        start = nnf_to_coords(out.nnfs[level], out.features.key[level].shape[-2:])
        moved = (out.coords[level] - start).abs()
        assert moved.max() > 0 and moved.max() <= corr.gru_iters * 1.0 + 1e-6


def test_query_positions_in_key():
    x, y = query_positions_in_key((2, 4), (4, 8), torch.device("cpu"))
    assert x.flatten().tolist() == [0.5, 2.5, 4.5, 6.5] and y.flatten().tolist() == [0.5, 2.5]


# ----------------------------------------------------------------------------- building blocks


def test_alignment_unet_levels():
    unet = AlignmentUNet(LABEL_NC, nef=4, spade_nc=8)
    outputs = unet(torch.rand(2, LABEL_NC, 32, 48))
    assert [tuple(o.shape[1:]) for o in outputs] == [(16, 4, 6), (16, 8, 12), (8, 16, 24), (4, 32, 48)]


def test_positional_norm_normalises_each_pixel():
    x = torch.randn(2, 6, 5, 7) * 3 + 2
    y = positional_norm(x)
    torch.testing.assert_close(y.mean(1), torch.zeros(2, 5, 7), rtol=0, atol=1e-5)
    torch.testing.assert_close(y.var(1), torch.ones(2, 5, 7), rtol=0, atol=1e-3)


@pytest.mark.parametrize("norm", ["instance", "batch", "pono"])
def test_spade_modulates_the_normalised_input(norm):
    spade = SPADE(6, 3, norm=norm, hidden_nc=8)
    torch.nn.init.zeros_(spade.mlp_gamma.weight)
    torch.nn.init.zeros_(spade.mlp_beta.weight)
    torch.nn.init.constant_(spade.mlp_gamma.bias, 1.0)  # scale 1 + 1 = 2
    torch.nn.init.constant_(spade.mlp_beta.bias, 0.5)
    x = torch.randn(2, 6, 8, 8) * 3 + 1
    out = spade(x, torch.rand(2, 3, 4, 4))
    normalised = {
        "instance": F.instance_norm(x),
        "batch": F.batch_norm(x, None, None, training=True),
        "pono": positional_norm(x),
    }[norm]
    torch.testing.assert_close(out, 2 * normalised + 0.5, rtol=1e-4, atol=1e-4)
    assert not any(p.shape == (6,) for p in spade.param_free_norm.parameters())


def batch_norm_case() -> dict[str, torch.Tensor]:
    """A float64 batch of 4 far from zero mean, an upstream gradient, and affine parameters."""
    gen = torch.Generator().manual_seed(7)
    return {
        "input": torch.randn(4, 3, 5, 6, generator=gen, dtype=torch.float64) * 2 + 30,
        "upstream": torch.randn(4, 3, 5, 6, generator=gen, dtype=torch.float64),
        "weight": torch.rand(3, generator=gen, dtype=torch.float64) + 0.5,
        "bias": torch.randn(3, generator=gen, dtype=torch.float64),
    }


def batch_norm_pass(norm: torch.nn.BatchNorm2d, case: dict[str, torch.Tensor], rows: slice) -> dict:
    """Two training forwards of ``case``'s rows and a backward of the second: output, gradients and
    running statistics."""
    with torch.no_grad():
        norm.weight.copy_(case["weight"])
        norm.bias.copy_(case["bias"])
    x = case["input"][rows].clone().requires_grad_()
    norm(x * 0.5)
    out = norm(x)
    (out * case["upstream"][rows]).sum().backward()
    return {
        "out": out.detach(), "input_grad": x.grad, "weight_grad": norm.weight.grad,
        "bias_grad": norm.bias.grad, "running_mean": norm.running_mean, "running_var": norm.running_var,
    }


def synchronized_batch_norm_rank(rank: int, world_size: int, folder: Path) -> None:
    """One process of the two in the synchronized batch-norm test: half the batch each."""
    torch.set_num_threads(1)
    rendezvous = f"file://{folder / 'rendezvous'}"
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=world_size)
    try:
        norm = synchronize_batch_norms(torch.nn.BatchNorm2d(3, dtype=torch.float64))
        assert type(norm) is SynchronizedBatchNorm2d
        share = 4 // world_size
        result = batch_norm_pass(norm, batch_norm_case(), slice(rank * share, (rank + 1) * share))
        torch.save(result, folder / f"rank{rank}.pt")
        dist.barrier()  # neither leaves the group while the other still uses it
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_synchronized_batch_norm_over_two_processes_is_batch_norm_of_the_whole_batch(tmp_path):
    """Two gloo processes with two samples each against nn.BatchNorm2d on all four: outputs,
    running statistics and gradients, including the input gradient that reaches each sample
    through the other process's statistics (each process backpropagates only its own half)."""
    torch.multiprocessing.spawn(synchronized_batch_norm_rank, args=(2, tmp_path), nprocs=2)
    case = batch_norm_case()
    whole = batch_norm_pass(torch.nn.BatchNorm2d(3, dtype=torch.float64), case, slice(None))
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]

    def assert_close(actual: torch.Tensor, expected: torch.Tensor, name: str) -> None:
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-12, msg=lambda m: f"{name}: {m}")

    for name in ("out", "input_grad"):
        assert_close(torch.cat([r[name] for r in ranks]), whole[name], name)
    for name in ("weight_grad", "bias_grad"):  # DDP sums these over the processes (then averages)
        assert_close(ranks[0][name] + ranks[1][name], whole[name], name)
    for name in ("running_mean", "running_var"):
        for result in ranks:
            assert_close(result[name], whole[name], name)
    # Statistics of only its own half would give a visibly different output.
    half = F.batch_norm(case["input"][:2], None, None, case["weight"], case["bias"], training=True)
    assert (half - whole["out"][:2]).abs().max() > 1e-2


def test_synchronize_batch_norms_keeps_state_and_mode():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.Sequential(torch.nn.BatchNorm2d(4)))
    with torch.no_grad():
        model[1][0].running_mean.fill_(2.0)
        model[1][0].weight.fill_(3.0)
    model.eval()
    x = torch.randn(2, 3, 4, 4)
    before = model(x)
    assert synchronize_batch_norms(model) is model
    assert type(model[1][0]) is SynchronizedBatchNorm2d and not model[1][0].training
    # In evaluation it uses the running statistics, without any process group.
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)


def test_unknown_options_are_rejected():
    with pytest.raises(ValueError, match="norm"):
        SPADE(4, 3, norm="group")
    with pytest.raises(ValueError, match="generator"):
        CoCosNet(dataclasses.replace(tiny_options(), generator="unet"))
    with pytest.raises(ValueError, match="gan_mode"):
        CoCosNet(dataclasses.replace(tiny_options(), gan_mode="wgan"))
    with pytest.raises(ValueError, match="upsample_matches"):
        tiny_correspondence(upsample_matches=5)
