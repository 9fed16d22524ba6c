"""The whole CoCosNet v2 model: correspondence, generator, discriminator, losses."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields

import torch
from torch import Tensor, nn
from torch.func import functional_call

from . import losses as L
from .alignment import AlignedFeatures
from .correspondence import Correspondence
from .discriminator import MultiscaleDiscriminator, instance_edges
from .generator import Pix2PixHDGenerator, SPADEGenerator, generator_input
from .vgg import VGG19Features

GENERATORS = ("spade", "pix2pixhd")


@dataclass
class LossWeights:
    """Weights of the generator-side loss terms (the public training recipe's values) and of the
    discriminator's GAN terms (``gan``). A weight of 0 drops its term."""

    alignment: float = 10.0
    warp: float = 500.0
    cycle: float = 1.0
    gan: float = 10.0
    gan_feature: float = 10.0
    vgg: float = 10.0
    perceptual: float = 0.001
    contextual: float = 10.0
    # Cross-entropy of every level's matching toward the true correspondence, where the batch
    # has it (``exemplar_coords``); not in the public recipe.
    correspondence: float = 0.0


@dataclass
class CoCosNetOptions:
    """Architecture and loss options. Defaults are the public DeepFashionHD 512x512 model's."""

    label_nc: int = 20
    # SPADE layers (alignment decoders and SPADE generator): parameter-free norm, hidden width.
    norm: str = "pono"
    spade_nc: int = 128
    # Domain alignment and correspondence.
    nef: int = 32
    match_nc: int = 32
    k: int = 16
    patch_match_iters: int = 5
    patch_size: int = 1
    # Each finer level starts from window x window candidates, dilation apart, around the coarser
    # level's best upsample_matches matches; search_radius (None: unbounded) keeps its search
    # within that many exemplar pixels of them.
    upsample_matches: int = 4
    upsample_window: int = 4
    upsample_dilation: int = 2
    search_radius: int | None = None
    # How a finer level's matching features involve the coarser levels' (own, or residual: plus
    # the coarser level's, upsampled; see DomainAlignment).
    matching_levels: str = "own"
    gru_iters: int = 3
    # "interleaved": a GRU step after each of the last gru_iters PatchMatch iterations (the
    # paper's order); "after": all PatchMatch iterations, then the GRU steps.
    gru_mode: str = "interleaved"
    # The largest move of a candidate per GRU step, in pixels of the level's exemplar map.
    gru_max_delta: float = 1.0
    # Widths of the GRU's state and of its candidate encoder (which must exceed 2k).
    gru_hidden_nc: int = 32
    gru_input_nc: int = 64
    temperature: float = 0.01
    reference_mode: bool = False
    # Query pixels per sample and level that the correspondence loss scores against every
    # exemplar pixel (drawn among the pixels visible in both images).
    correspondence_samples: int = 256
    # Generator: "spade" (width ngf) or "pix2pixhd" (finest width pix2pixhd_ngf).
    generator: str = "spade"
    ngf: int = 64
    pix2pixhd_ngf: int = 32
    n_local_enhancers: int = 1
    n_blocks_global: int = 9
    n_blocks_local: int = 3
    # Discriminator; instance_edges adds the edge map of batch["instance"] as an input channel.
    ndf: int = 64
    num_D: int = 2
    n_layers_D: int = 3
    instance_edges: bool = False
    # Losses.
    gan_mode: str = "hinge"
    vgg_weights: str | os.PathLike | None = None
    loss_weights: LossWeights = field(default_factory=LossWeights)


@dataclass
class Translation:
    """A translated image and how it was made, coarsest level first (see ``CorrespondenceOutput``)."""

    image: Tensor
    warps: list[Tensor]
    nnfs: list[Tensor]
    coords: list[Tensor | None]
    cycle_warp: Tensor | None
    features: AlignedFeatures
    inits: list[Tensor | None]


@dataclass
class TrainingLosses:
    """Weighted loss terms of one batch.

    ``generator`` terms reach only the correspondence and the generator (the discriminator is
    applied with detached parameters); ``discriminator`` terms only the discriminator (the fake
    image is detached). So one backward of ``total`` gives both sides their own gradients, as
    alternating G and D steps on the same batch would, and every trainable parameter gets one.
    """

    generator: dict[str, Tensor]
    discriminator: dict[str, Tensor]
    translation: Translation

    @property
    def total(self) -> Tensor:
        return sum(self.generator.values()) + sum(self.discriminator.values())


class CoCosNet(nn.Module):
    """Exemplar-based image translation: a label map and an exemplar photo in, a photo out.

    Images are in [-1, 1]; label maps have ``label_nc`` channels; sides divisible by 8 (the
    pix2pixHD generator needs ``2**(3 + n_local_enhancers)``); the exemplar may differ in size.
    """

    def __init__(self, options: CoCosNetOptions | None = None) -> None:
        super().__init__()
        options = options or CoCosNetOptions()
        if options.generator not in GENERATORS:
            raise ValueError(f"generator: expected one of {GENERATORS}, got {options.generator!r}")
        if options.gan_mode not in L.GAN_MODES:
            raise ValueError(f"gan_mode: expected one of {L.GAN_MODES}, got {options.gan_mode!r}")
        self.options = options
        self.correspondence = Correspondence(
            options.label_nc,
            nef=options.nef,
            match_nc=options.match_nc,
            norm=options.norm,
            spade_nc=options.spade_nc,
            k=options.k,
            iters=options.patch_match_iters,
            patch_size=options.patch_size,
            temperature=options.temperature,
            upsample_matches=options.upsample_matches,
            window=options.upsample_window,
            dilation=options.upsample_dilation,
            search_radius=options.search_radius,
            matching_levels=options.matching_levels,
            gru_iters=options.gru_iters,
            gru_hidden_nc=options.gru_hidden_nc,
            gru_input_nc=options.gru_input_nc,
            max_delta=options.gru_max_delta,
            reference_mode=options.reference_mode,
            gru_mode=options.gru_mode,
        )
        cond_nc = 4 * 3 + options.label_nc
        if options.generator == "spade":
            self.generator = SPADEGenerator(cond_nc, options.ngf, options.norm, spade_nc=options.spade_nc)
        else:
            self.generator = Pix2PixHDGenerator(
                cond_nc,
                ngf=options.pix2pixhd_ngf,
                n_blocks_global=options.n_blocks_global,
                n_local_enhancers=options.n_local_enhancers,
                n_blocks_local=options.n_blocks_local,
            )
        d_in = options.label_nc + int(options.instance_edges) + 3
        self.discriminator = MultiscaleDiscriminator(d_in, options.ndf, options.n_layers_D, options.num_D)
        self.vgg = VGG19Features(options.vgg_weights)

    @classmethod
    def from_public(
        cls,
        corr: str | os.PathLike | Mapping[str, Tensor],
        generator: str | os.PathLike | Mapping[str, Tensor] | None = None,
        discriminator: str | os.PathLike | Mapping[str, Tensor] | None = None,
        **options,
    ) -> CoCosNet:
        """The model with the public CoCosNet v2 weights, in eval mode: ``corr`` is a file written
        by ``python -m models.public_checkpoints`` (alone), or the public ``latest_net_Corr.pth``
        with ``generator`` (``latest_net_G.pth``) and optionally ``discriminator``
        (``latest_net_D.pth``). ``options``: other ``CoCosNetOptions`` fields (the widths are
        read from the tensors). See ``models.public_checkpoints``."""
        # Imported here, not with the package: `python -m models.public_checkpoints` would otherwise
        # find itself imported before it runs (runpy warns so on every start).
        from .public_checkpoints import load_public, read_public

        unknown = sorted(set(options) - {f.name for f in fields(CoCosNetOptions)})
        if unknown:
            raise TypeError(f"options: unknown CoCosNetOptions fields {unknown}")
        converted = read_public(corr, generator, discriminator)
        model = cls(CoCosNetOptions(**{**converted.options, **options}))
        load_public(model, converted)
        return model.eval()

    def forward(
        self,
        label: Tensor,
        exemplar: Tensor,
        exemplar_label: Tensor,
        carried: Callable[[int, Tensor], Tensor] | None = None,
    ) -> Translation:
        """The translation of ``label``; ``carried``: more candidates per searched level (video,
        see ``Correspondence.forward``)."""
        corr = self.correspondence(label, exemplar, exemplar_label, carried=carried)
        image = self.generator(generator_input(label, corr.warps))
        return Translation(
            image, corr.warps, corr.nnfs, corr.coords, corr.cycle_warp, corr.features, corr.inits
        )

    def discriminator_input(self, label: Tensor, image: Tensor, instance: Tensor | None = None) -> Tensor:
        """What the discriminator judges: the label, the instance edge map when enabled, the image."""
        parts = [label.to(image.dtype)]
        if self.options.instance_edges:
            if instance is None:
                raise ValueError(
                    "instance: the discriminator takes an instance edge map; the batch has no 'instance'"
                )
            parts.append(instance_edges(instance).to(image.dtype))
        return torch.cat([*parts, image], dim=1)

    def losses(self, batch: Mapping[str, Tensor]) -> TrainingLosses:
        """All loss terms of a training batch.

        ``batch`` holds ``label`` (B, label_nc, H, W), ``image`` (the ground truth, B, 3, H, W),
        ``exemplar`` (B, 3, He, We), ``exemplar_label`` (B, label_nc, He, We), optionally
        ``instance`` (B, 1, H, W) instance ids and ``self_ref`` (B,) weights of the samples whose
        exemplar shows the same subject as the ground truth (the warp loss applies to those; all
        samples when absent).
        """
        label, real = batch["label"], batch["image"]
        exemplar, exemplar_label = batch["exemplar"], batch["exemplar_label"]
        weights = self.options.loss_weights
        out = self(label, exemplar, exemplar_label)
        fake = out.image

        g: dict[str, Tensor] = {}
        if weights.alignment:
            image_features = self.correspondence.alignment.image_features(real, label)
            g["alignment"] = weights.alignment * L.alignment_loss(out.features.label_features, image_features)
        if weights.warp:
            g["warp"] = weights.warp * L.warp_loss(out.warps, real, batch.get("self_ref"))
        if weights.cycle and out.cycle_warp is not None:
            g["cycle"] = weights.cycle * L.cycle_loss(out.cycle_warp, exemplar)
        if weights.correspondence and "exemplar_coords" in batch:
            g["correspondence"] = weights.correspondence * L.correspondence_loss(
                out.features.query, out.features.key, batch["exemplar_coords"], batch["valid"],
                tuple(exemplar.shape[-2:]), self.options.temperature, self.options.correspondence_samples,
            )

        instance = batch.get("instance")
        real_input = self.discriminator_input(label, real, instance)
        fake_input = self.discriminator_input(label, fake, instance)
        frozen = {name: p.detach() for name, p in self.discriminator.named_parameters()}
        pred = functional_call(self.discriminator, frozen, (torch.cat([fake_input, real_input]),))
        pred_fake, pred_real = L.split_fake_real(pred)
        g["gan"] = weights.gan * L.gan_loss(
            pred_fake, True, for_discriminator=False, mode=self.options.gan_mode
        )
        if weights.gan_feature:
            g["gan_feature"] = weights.gan_feature * L.discriminator_feature_matching(pred_fake, pred_real)

        fake_features = self.vgg(fake)
        with torch.no_grad():
            real_features = self.vgg(real)
            exemplar_features = self.vgg(exemplar)
        if weights.vgg:
            g["vgg"] = weights.vgg * L.vgg_feature_matching(fake_features, real_features)
        if weights.perceptual:
            g["perceptual"] = weights.perceptual * L.perceptual_loss(fake_features, real_features)
        if weights.contextual:
            g["contextual"] = weights.contextual * L.exemplar_contextual_loss(
                fake_features, exemplar_features
            )

        pred = self.discriminator(torch.cat([fake_input.detach(), real_input]))
        pred_fake, pred_real = L.split_fake_real(pred)
        mode = self.options.gan_mode
        d = {
            "fake": weights.gan * L.gan_loss(pred_fake, False, for_discriminator=True, mode=mode),
            "real": weights.gan * L.gan_loss(pred_real, True, for_discriminator=True, mode=mode),
        }
        return TrainingLosses(g, d, out)


class TrainingStep(nn.Module):
    """``model.losses(batch)`` as a ``forward``, for ``DistributedDataParallel`` (which synchronises
    the gradients of what runs through ``forward``): wrap this, not the model."""

    def __init__(self, model: CoCosNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Mapping[str, Tensor]) -> TrainingLosses:
        return self.model.losses(batch)
