"""CoCosNet v2 networks built on the cocosnet_ops kernels.

>>> import torch
>>> from models import CoCosNet, CoCosNetOptions
>>> model = CoCosNet(CoCosNetOptions(label_nc=3, nef=8, match_nc=8, ngf=8, ndf=8, k=4)).eval()
>>> out = model(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64) * 2 - 1, torch.rand(1, 3, 64, 64))
>>> out.image.shape, [w.shape[-1] for w in out.warps]
(torch.Size([1, 3, 64, 64]), [8, 16, 32, 64])
"""

from .alignment import AlignedFeatures, AlignmentUNet, DomainAlignment
from .cocosnet import CoCosNet, CoCosNetOptions, LossWeights, TrainingLosses, TrainingStep, Translation
from .correspondence import Correspondence, CorrespondenceOutput
from .discriminator import MultiscaleDiscriminator, NLayerDiscriminator, instance_edges
from .feature_encoder import FeatureEncoder, instance_mean
from .generator import Pix2PixHDGenerator, SPADEGenerator, generator_input
from .gru import SepConvGRU, UpdateBlock
from .pix2pixhd import Pix2PixHD, Pix2PixHDLosses, Pix2PixHDLossWeights, Pix2PixHDOptions
from .vgg import VGG19, VGG19Features

__all__ = [
    "VGG19",
    "AlignedFeatures",
    "AlignmentUNet",
    "CoCosNet",
    "CoCosNetOptions",
    "Correspondence",
    "CorrespondenceOutput",
    "DomainAlignment",
    "FeatureEncoder",
    "LossWeights",
    "MultiscaleDiscriminator",
    "NLayerDiscriminator",
    "Pix2PixHD",
    "Pix2PixHDGenerator",
    "Pix2PixHDLossWeights",
    "Pix2PixHDLosses",
    "Pix2PixHDOptions",
    "SPADEGenerator",
    "SepConvGRU",
    "TrainingLosses",
    "TrainingStep",
    "Translation",
    "UpdateBlock",
    "VGG19Features",
    "generator_input",
    "instance_edges",
    "instance_mean",
]
