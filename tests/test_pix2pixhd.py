"""pix2pixHD: instance edges, instance-wise pooling, the synthetic scenes, the stages of the recipe."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import data
from data.synthetic_scenes import CLASSES, INSTANCE_STRIDE, make_scene
from models import instance_edges
from models.feature_encoder import FeatureEncoder, instance_mean
from models.pix2pixhd import Pix2PixHD, Pix2PixHDLossWeights, Pix2PixHDOptions

TINY = Pix2PixHDOptions(
    label_nc=4, ngf=4, nef=4, n_downsample_E=2, n_downsample_global=2, n_blocks_global=1,
    n_blocks_local=1, ndf=4, num_D=1, n_layers_D=2, loss_weights=Pix2PixHDLossWeights(vgg=0.0),
)


def test_instance_edges_of_a_hand_made_map():
    instance = torch.tensor([
        [0, 0, 0, 0, 0],
        [0, 7, 7, 0, 0],
        [0, 7, 7, 0, 3],
        [0, 0, 0, 0, 3],
    ])[None, None]
    expected = torch.tensor([
        [0, 1, 1, 0, 0],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
        [0, 1, 1, 1, 1],
    ])[None, None].float()
    assert torch.equal(instance_edges(instance), expected)


def reference_instance_mean(features: torch.Tensor, instance: torch.Tensor) -> torch.Tensor:
    """Masks and means, one (sample, instance) at a time."""
    out = torch.empty_like(features)
    for b in range(features.shape[0]):
        for value in instance[b].unique():
            mask = instance[b, 0] == value
            out[b][:, mask] = features[b][:, mask].mean(dim=1, keepdim=True)
    return out


def random_instances(batch: int = 2, size: tuple[int, int] = (6, 7), ids: int = 4) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, ids, (batch, 1, *size), generator=generator).float() * 1000


def test_instance_mean_matches_the_reference_forward_and_backward():
    instance = random_instances()
    features = torch.randn(2, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    out = instance_mean(features, instance)
    expected = reference_instance_mean(features, instance)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    weights = torch.randn_like(out)
    (grad,) = torch.autograd.grad((out * weights).sum(), features)
    (expected_grad,) = torch.autograd.grad((expected * weights).sum(), features)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda f: instance_mean(f, instance), (features,))


def test_every_pixel_of_an_instance_gets_the_same_feature_and_samples_stay_apart():
    instance = random_instances(batch=2)
    instance[1] = instance[0]  # the same ids in both samples: still four instances each
    features = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    features[1] += 10
    out = instance_mean(features, instance)
    for b in range(2):
        for value in instance[b].unique():
            inside = out[b][:, instance[b, 0] == value]
            assert torch.equal(inside, inside[:, :1].expand_as(inside))
    assert (out[1] > 5).all() and (out[0] < 5).all()


@pytest.mark.parametrize("bad", ["shape", "fraction"])
def test_instance_mean_names_bad_instance_maps(bad):
    features = torch.randn(1, 2, 4, 4)
    instance = torch.zeros(1, 1, 4, 5) if bad == "shape" else torch.full((1, 1, 4, 4), 0.5)
    with pytest.raises(ValueError, match="instance"):
        instance_mean(features, instance)


def test_feature_encoder_output_is_constant_per_instance():
    encoder = FeatureEncoder(3, 3, nef=4, n_downsample=2)
    instance = torch.zeros(1, 1, 16, 16)
    instance[..., 4:10, 2:12] = 1001
    out = encoder(torch.rand(1, 3, 16, 16) * 2 - 1, instance)
    assert out.shape == (1, 3, 16, 16)
    assert out[..., 4:10, 2:12].flatten(2).std(dim=2).max() == 0
    assert not torch.equal(out[..., 0, 0], out[..., 5, 5])


def test_scenes_know_their_classes_instances_and_styles():
    scene = make_scene(0, "train", 3, (64, 64))
    label, instance, styles = scene["label"], scene["instance"], scene["styles"]
    for value in set(instance.flatten().tolist()) - {0}:
        mask = instance == value
        assert (label[mask] == value // INSTANCE_STRIDE).all()  # the id holds the class
        assert len(set(styles[mask].tolist())) == 1  # one style per object
    assert ((label == 0) == (instance == 0)).all()
    dataset = data.build_dataset("synthetic_scenes", "train", size=32, length=2)
    item = dataset[0]
    assert item["label"].shape == (len(CLASSES), 32, 32) and item["instance"].shape == (1, 32, 32)
    assert torch.equal(item["label"].sum(0), torch.ones(32, 32))
    assert torch.equal(item["image"], dataset[0]["image"])  # a function of (seed, split, index)
    with pytest.raises(ValueError, match="length"):
        data.build_dataset("synthetic_scenes", "train", length=0)


def test_styles_vary_within_a_class_over_the_scenes():
    seen: dict[int, set[int]] = {}
    for index in range(20):
        scene = make_scene(0, "train", index, (32, 32))
        for cls, style in zip(scene["label"].flatten(), scene["styles"].flatten(), strict=True):
            seen.setdefault(int(cls), set()).add(int(style))
    assert all(len(seen[cls]) == 3 for cls in range(1, len(CLASSES)))


def trainable(model: Pix2PixHD, prefix: str) -> set[bool]:
    return {p.requires_grad for n, p in model.named_parameters() if n.startswith(prefix)}


def test_stages_train_their_parts():
    model = Pix2PixHD(TINY)
    model.set_stage("global")
    assert trainable(model, "generator.enhancers") == {False}
    assert trainable(model, "generator.global_") == {True} and trainable(model, "encoder.") == {True}
    model.set_stage("local_fixed")
    assert trainable(model, "generator.global_") == {False} and trainable(model, "encoder.") == {False}
    assert trainable(model, "generator.enhancers") == {True}
    model.set_stage("local")
    assert trainable(model, "generator.global_generator.") == {True}
    assert trainable(model, "generator.global_output.") == {False}
    assert trainable(model, "discriminator.") == {True}
    with pytest.raises(ValueError, match="stage"):
        model.set_stage("fine")


def test_losses_and_output_sizes_per_stage():
    model = Pix2PixHD(dataclasses.replace(TINY, loss_weights=Pix2PixHDLossWeights()))  # random VGG19
    dataset = data.build_dataset("synthetic_scenes", "train", size=32, length=2)
    batch = torch.utils.data.default_collate([dataset[0], dataset[1]])
    for stage, side in (("global", 16), ("local", 32)):
        model.set_stage(stage)
        losses = model.losses(batch)
        assert losses.image.shape == (2, 3, side, side)
        assert set(losses.generator) == {"gan", "gan_feature", "vgg"} and torch.isfinite(losses.total)
    with pytest.raises(ValueError, match="features"):
        model(batch["label"], batch["instance"])
