"""VGG19 with torchvision's parameter names, and the frozen feature extractor the losses use.

Weights are never downloaded: pass the path of a local torchvision-format state_dict (for
example a saved ``torchvision.models.vgg19(weights="IMAGENET1K_V1").state_dict()``).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn

# torchvision's configuration "E": output widths of the 3x3 convolutions, "M" a 2x2 max pool.
VGG19_CONFIG = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    512,
    "M",
)
# Index in ``features`` of the ReLU after each named convolution.
RELU_INDEX = {"relu1_2": 3, "relu2_2": 8, "relu3_2": 13, "relu4_2": 22, "relu5_2": 31}
LOSS_LAYERS = ("relu1_2", "relu2_2", "relu3_2", "relu4_2", "relu5_2")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg19_layers(last: int | None = None, inplace: bool = True) -> list[nn.Module]:
    """torchvision's ``vgg19().features`` layers, up to and including index ``last``."""
    layers: list[nn.Module] = []
    in_nc = 3
    for item in VGG19_CONFIG:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_nc, item, kernel_size=3, padding=1), nn.ReLU(inplace=inplace)]
            in_nc = item
    return layers if last is None else layers[: last + 1]


class VGG19(nn.Module):
    """torchvision's VGG19 (without batch norm): ``features``, ``avgpool``, ``classifier``, so a
    torchvision state_dict loads with no missing or unexpected keys."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.features = nn.Sequential(*vgg19_layers())
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(4096, 4096),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def load_state_dict_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """A torchvision-format VGG19 state_dict from a local file, checked against :class:`VGG19`.

    Raises ``KeyError`` naming missing or unexpected keys and ``ValueError`` on a shape mismatch.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    with torch.device("meta"):
        expected = VGG19().state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise KeyError(
            f"{os.fspath(path)}: not a torchvision VGG19 state_dict; "
            f"missing {missing}, unexpected {unexpected}"
        )
    for name, tensor in expected.items():
        if state[name].shape != tensor.shape:
            raise ValueError(f"{name}: expected shape {tuple(tensor.shape)}, got {tuple(state[name].shape)}")
    return state


class VGG19Features(nn.Module):
    """Frozen VGG19 ``features`` up to relu5_2, returning the activations the losses compare.

    Takes images in [-1, 1] and applies torchvision's ImageNet normalisation. Parameter names
    are torchvision's (``features.0.weight`` ...). Without ``weights_path`` the weights are
    random: enough for tests, not for training.
    """

    def __init__(self, weights_path: str | os.PathLike | None = None, layers: tuple[str, ...] = LOSS_LAYERS):
        super().__init__()
        self.layers = layers
        # Not in place: the activations handed to the losses must not be overwritten.
        self.features = nn.Sequential(*vgg19_layers(max(RELU_INDEX[name] for name in layers), inplace=False))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        if weights_path is not None:
            state = load_state_dict_file(weights_path)
            own = self.state_dict()
            self.load_state_dict({name: state[name] for name in own})
        self.requires_grad_(False)

    def forward(self, image: Tensor) -> list[Tensor]:
        x = ((image + 1) / 2 - self.mean) / self.std
        wanted = {RELU_INDEX[name]: name for name in self.layers}
        outputs = {}
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in wanted:
                outputs[wanted[index]] = x
        return [outputs[name] for name in self.layers]
