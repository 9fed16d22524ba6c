"""pix2pixHD (Wang et al., 2018) as a model of its own: a label map (and its instances) to a photo,
without an exemplar, coarse to fine.

The generator is :class:`Pix2PixHDGenerator` (global generator + local enhancers) on the label,
the instance boundary map and the instance features of :class:`FeatureEncoder`; the
discriminator the multiscale PatchGAN on the label, the boundary map and the image; the losses
LSGAN, the discriminator's feature matching (x10) and the VGG feature matching (x10, when VGG19
weights are given).

The coarse-to-fine recipe is a sequence of stages (:data:`STAGES`, set by :meth:`set_stage`):
``global`` trains the global generator alone (with its own output block) on the input and the
target at the resolution the enhancers later give it; ``local_fixed`` trains the local enhancers
with the global generator and the encoder frozen; ``local`` trains everything but the global
output block, which the enhancers replace. Parameters out of a stage do not require gradients, so
DistributedDataParallel sees no unused parameter and the optimiser leaves them bitwise unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import functional_call

from . import losses as L
from .discriminator import MultiscaleDiscriminator, instance_edges
from .feature_encoder import FeatureEncoder
from .generator import Pix2PixHDGenerator, downsample
from .vgg import VGG19Features

STAGES = ("global", "local_fixed", "local")


@dataclass
class Pix2PixHDLossWeights:
    """Weights of the loss terms (pix2pixHD's: GAN 1, feature matching 10, VGG 10). The
    discriminator's two GAN terms are each ``gan / 2``, as pix2pixHD halves their sum."""

    gan: float = 1.0
    gan_feature: float = 10.0
    vgg: float = 10.0


@dataclass
class Pix2PixHDOptions:
    """Architecture and loss options. Defaults are pix2pixHD's Cityscapes 2048x1024 model's."""

    label_nc: int = 35
    # The instance boundary map as an input channel of G and D (needs batch["instance"]).
    instance_edges: bool = True
    # Instance features: channels of the encoder's output (0: no encoder), its width and depth.
    feat_nc: int = 3
    nef: int = 16
    n_downsample_E: int = 4
    # Generator: ngf is the finest local enhancer's width (the global generator's is
    # ngf * 2**n_local_enhancers); 0 local enhancers is the global generator alone.
    ngf: int = 32
    n_downsample_global: int = 4
    n_blocks_global: int = 9
    n_local_enhancers: int = 1
    n_blocks_local: int = 3
    # Discriminator (pix2pixHD's: instance norm, no spectral norm).
    ndf: int = 64
    num_D: int = 2
    n_layers_D: int = 3
    norm_D: str = "instance"
    gan_mode: str = "ls"
    vgg_weights: str | os.PathLike | None = None
    loss_weights: Pix2PixHDLossWeights = field(default_factory=Pix2PixHDLossWeights)


@dataclass
class Pix2PixHDLosses:
    """Weighted loss terms of one batch, as :class:`models.TrainingLosses` (one backward of
    ``total`` gives G's terms to G and E only and D's to D only), and the generated ``image`` (at
    the global generator's resolution in the global stage)."""

    generator: dict[str, Tensor]
    discriminator: dict[str, Tensor]
    image: Tensor

    @property
    def total(self) -> Tensor:
        return sum(self.generator.values()) + sum(self.discriminator.values())


class Pix2PixHD(nn.Module):
    """Label map (``label_nc`` channels), instance map (B, 1, H, W) and instance features to a photo
    in [-1, 1]. Sides divisible by ``2**(n_downsample_global + n_local_enhancers)`` and, with the
    encoder, by ``2**n_downsample_E``."""

    def __init__(self, options: Pix2PixHDOptions | None = None) -> None:
        super().__init__()
        options = options or Pix2PixHDOptions()
        if options.gan_mode not in L.GAN_MODES:
            raise ValueError(f"gan_mode: expected one of {L.GAN_MODES}, got {options.gan_mode!r}")
        self.options = options
        edges = int(options.instance_edges)
        self.generator = Pix2PixHDGenerator(
            options.label_nc + edges + options.feat_nc,
            ngf=options.ngf,
            n_downsample_global=options.n_downsample_global,
            n_blocks_global=options.n_blocks_global,
            n_local_enhancers=options.n_local_enhancers,
            n_blocks_local=options.n_blocks_local,
            global_head=True,
        )
        self.encoder = None
        if options.feat_nc:
            self.encoder = FeatureEncoder(3, options.feat_nc, options.nef, options.n_downsample_E)
        self.discriminator = MultiscaleDiscriminator(
            options.label_nc + edges + 3, options.ndf, options.n_layers_D, options.num_D, options.norm_D
        )
        # The frozen VGG19 only where its loss term is on (without weights it would be random).
        self.vgg = VGG19Features(options.vgg_weights) if options.loss_weights.vgg else None
        self.stage = ""
        self.set_stage("local" if options.n_local_enhancers else "global")

    def set_stage(self, stage: str) -> None:
        """Train the parts of ``stage`` (one of :data:`STAGES`) from now on: the others stop
        requiring gradients."""
        if stage not in STAGES:
            raise ValueError(f"stage: expected one of {STAGES}, got {stage!r}")
        if stage != "global" and not self.options.n_local_enhancers:
            raise ValueError(f"stage: {stage} needs local enhancers; this model has n_local_enhancers 0")
        self.stage = stage
        generator = self.generator
        generator.enhancers_down.requires_grad_(stage != "global")
        generator.enhancers_up.requires_grad_(stage != "global")
        generator.global_generator.requires_grad_(stage != "local_fixed")
        if hasattr(generator, "global_output"):
            generator.global_output.requires_grad_(stage == "global")
        if self.encoder is not None:
            self.encoder.requires_grad_(stage != "local_fixed")

    def encode(self, image: Tensor, instance: Tensor) -> Tensor:
        """The instance features of ``image``: every pixel holds the mean of its instance."""
        if self.encoder is None:
            raise ValueError("image: this model has no feature encoder (feat_nc 0)")
        return self.encoder(image, instance)

    def condition(
        self, label: Tensor, instance: Tensor | None = None, features: Tensor | None = None
    ) -> Tensor:
        """The discriminator's and (with ``features``) the generator's input: the label, the
        instance boundary map when enabled, the instance features when the model has an encoder."""
        parts = [label.float() if not label.is_floating_point() else label]
        if self.options.instance_edges:
            if instance is None:
                raise ValueError("instance: the model takes an instance edge map; got no instance map")
            parts.append(instance_edges(instance).to(parts[0].dtype))
        if features is not None:
            parts.append(features.to(parts[0].dtype))
        return torch.cat(parts, dim=1)

    def forward(
        self, label: Tensor, instance: Tensor | None = None, features: Tensor | None = None
    ) -> Tensor:
        """The photo of ``label``; ``features`` (B, feat_nc, H, W) the instance features (from
        :meth:`encode`, or cluster centres, see ``models.feature_clusters``), needed when the
        model has an encoder. In the global stage the photo is at the global generator's size."""
        if (features is None) != (self.encoder is None):
            raise ValueError(
                f"features: expected {self.options.feat_nc} channels of instance features"
                if features is None else "features: this model has no feature encoder (feat_nc 0)"
            )
        cond = self.condition(label, instance, features)
        if self.stage == "global":
            return self.generator.forward_global(self.to_global_size(cond))
        return self.generator(cond)

    def to_global_size(self, x: Tensor) -> Tensor:
        """``x`` at the global generator's resolution, pooled as the generator's input pyramid is."""
        for _ in range(self.options.n_local_enhancers):
            x = downsample(x)
        return x

    def losses(self, batch: Mapping[str, Tensor]) -> Pix2PixHDLosses:
        """All loss terms of a batch holding ``label``, ``image`` (the target) and, for the edges
        and the encoder, ``instance``."""
        label, real, instance = batch["label"], batch["image"], batch.get("instance")
        weights = self.options.loss_weights
        features = self.encode(real, instance) if self.encoder is not None else None
        fake = self(label, instance, features)
        d_cond = self.condition(label, instance)
        if self.stage == "global":
            d_cond, real = self.to_global_size(d_cond), self.to_global_size(real)
        real_input = torch.cat([d_cond, real.to(fake.dtype)], dim=1)
        fake_input = torch.cat([d_cond.to(fake.dtype), fake], dim=1)

        mode = self.options.gan_mode
        frozen = {name: p.detach() for name, p in self.discriminator.named_parameters()}
        pred = functional_call(self.discriminator, frozen, (torch.cat([fake_input, real_input]),))
        pred_fake, pred_real = L.split_fake_real(pred)
        g = {"gan": weights.gan * L.gan_loss(pred_fake, True, for_discriminator=False, mode=mode)}
        if weights.gan_feature:
            g["gan_feature"] = weights.gan_feature * L.discriminator_feature_matching(pred_fake, pred_real)
        if self.vgg is not None:
            with torch.no_grad():
                real_features = self.vgg(real)
            g["vgg"] = weights.vgg * L.vgg_feature_matching(self.vgg(fake), real_features)

        pred = self.discriminator(torch.cat([fake_input.detach(), real_input]))
        pred_fake, pred_real = L.split_fake_real(pred)
        d = {
            "fake": weights.gan / 2 * L.gan_loss(pred_fake, False, for_discriminator=True, mode=mode),
            "real": weights.gan / 2 * L.gan_loss(pred_real, True, for_discriminator=True, mode=mode),
        }
        return Pix2PixHDLosses(g, d, fake)
