"""Face backbones by registry name: ``resnet27`` (Face-ResNet), ``resnet64`` (SphereFace-64), small ones.

Each maps (N, 3, H, W) normalised images to (N, dim) features (fc5, the face feature). PReLU activations
throughout as in the Caffe models; batch normalisation is on by default (``norm="bn"``) because it makes
the deep variants trainable at ordinary learning rates, and can be turned off (``norm="none"``) for the
original Caffe layout.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..registry import Registry

BACKBONES: Registry[nn.Module] = Registry("backbone")


def _norm(channels: int, norm: str) -> nn.Module:
    return nn.BatchNorm2d(channels) if norm == "bn" else nn.Identity()


def _conv(cin: int, cout: int, stride: int, norm: str) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=norm != "bn"), _norm(cout, norm), nn.PReLU(cout)
    )


class ResidualBlock(nn.Module):
    """Two 3x3 conv + PReLU layers with an identity shortcut (the Caffe face-ResNet unit)."""

    def __init__(self, channels: int, norm: str = "bn") -> None:
        super().__init__()
        self.body = nn.Sequential(_conv(channels, channels, 1, norm), _conv(channels, channels, 1, norm))

    def forward(self, x: Tensor) -> Tensor:
        """x + body(x)."""
        return x + self.body(x)


class FaceResNet(nn.Module):
    """A face CNN made of stages (optional entry conv, downsampling, residual blocks) and an fc5 feature."""

    def __init__(
        self,
        stages: list[tuple[int, int]],
        stem: int = 0,
        input_size: int = 128,
        dim: int = 512,
        downsample: str = "pool",
        norm: str = "bn",
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        if stem:
            layers.append(_conv(c, stem, 1, norm))
            c = stem
        size = input_size
        for width, blocks in stages:
            if downsample == "pool":
                layers += [_conv(c, width, 1, norm), nn.MaxPool2d(2, 2)]
            else:
                layers.append(_conv(c, width, 2, norm))
            size = (size + 1) // 2 if downsample != "pool" else size // 2
            c = width
            layers += [ResidualBlock(c, norm) for _ in range(blocks)]
        self.features = nn.Sequential(*layers)
        self.fc5 = nn.Linear(c * size * size, dim)
        self.dim = dim
        self.input_size = input_size

    def forward(self, x: Tensor) -> Tensor:
        """The fc5 face feature (not normalised)."""
        return self.fc5(torch.flatten(self.features(x), 1))


@BACKBONES.register("resnet27")
def resnet27(input_size: int = 128, dim: int = 512, norm: str = "bn", **_: object) -> FaceResNet:
    """Face-ResNet (caffe-face): conv32, conv64, pool, 1x64, conv128, pool, 2x128, conv256, pool, 5x256,
    conv512, pool, 3x512, fc5."""
    return FaceResNet(
        [(64, 1), (128, 2), (256, 5), (512, 3)],
        stem=32,
        input_size=input_size,
        dim=dim,
        downsample="pool",
        norm=norm,
    )


@BACKBONES.register("resnet64")
def resnet64(input_size: int = 128, dim: int = 512, norm: str = "bn", **_: object) -> FaceResNet:
    """SphereFace-64: stride-2 conv then 3, 8, 16, 3 residual units at 64, 128, 256, 512 channels; fc5."""
    return FaceResNet(
        [(64, 3), (128, 8), (256, 16), (512, 3)],
        input_size=input_size,
        dim=dim,
        downsample="stride",
        norm=norm,
    )


@BACKBONES.register("resnet20")
def resnet20(input_size: int = 128, dim: int = 512, norm: str = "bn", **_: object) -> FaceResNet:
    """SphereFace-20: 1, 2, 4, 1 residual units; a lighter variant for quick experiments."""
    return FaceResNet(
        [(64, 1), (128, 2), (256, 4), (512, 1)],
        input_size=input_size,
        dim=dim,
        downsample="stride",
        norm=norm,
    )


@BACKBONES.register("tiny")
def tiny(
    input_size: int = 32, dim: int = 32, norm: str = "bn", in_channels: int = 3, **_: object
) -> FaceResNet:
    """A two-stage CNN (16, 32 channels, one block each) for tests and small experiments."""
    return FaceResNet(
        [(16, 1), (32, 1)],
        input_size=input_size,
        dim=dim,
        downsample="stride",
        norm=norm,
        in_channels=in_channels,
    )


class MLP(nn.Module):
    """Two hidden layers with PReLU, for flat inputs such as scikit-learn's 8x8 digits."""

    def __init__(self, in_features: int = 64, hidden: int = 128, dim: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden),
            nn.PReLU(hidden),
            nn.Linear(hidden, hidden),
            nn.PReLU(hidden),
            nn.Linear(hidden, dim),
        )
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        """The feature of each flattened input."""
        return self.net(x)


@BACKBONES.register("mlp")
def mlp(in_features: int = 64, hidden: int = 128, dim: int = 32, **_: object) -> MLP:
    """The small MLP used for the digits experiment."""
    return MLP(in_features, hidden, dim)


def create_backbone(name: str, **kwargs: object) -> nn.Module:
    """The backbone registered as ``name``."""
    return BACKBONES.create(name, **kwargs)
