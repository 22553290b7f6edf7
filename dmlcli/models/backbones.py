"""Backbones ``G_k``: pixels in [0, 1] -> one value per class.

Every backbone starts with a :class:`Normalize` module, so callers always pass raw pixels
``x`` of shape ``[B, C, H, W]`` in [0, 1]. Table 1 of the paper: LeNet-5 for MNIST-like data,
ResNet-18 for CIFAR-10 and RESISC-45; a small CNN serves scikit-learn's 8x8 ``digits``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from dmlcli.errors import DmlError


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; ``x``: ``[B, C, H, W]`` in [0, 1]."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class SmallCNN(nn.Module):
    """Two conv layers and two linear layers for 8x8 images (``digits``)."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * (image_size // 2) ** 2, 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998) for 28x28 inputs, ReLU activations and max pooling."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int = 28) -> None:
        super().__init__()
        self.features = nn.Sequential(
            # relu(maxpool(x)) == maxpool(relu(x)); pooling first halves the ReLU work.
            nn.Conv2d(in_channels, 6, 5, padding=2),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Conv2d(6, 16, 5),
            nn.MaxPool2d(2),
            nn.ReLU(),
        )
        side = (image_size // 2 - 4) // 2
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * side * side, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016). ``shortcut`` names the projection: ``shortcut``
    (ours) or ``downsample`` (torchvision's, and the CIFAR ResNets of the ensemble-defense
    papers: DVERGE, TRS, GAL, ADP), so their checkpoints' keys match."""

    def __init__(self, cin: int, cout: int, stride: int, shortcut: str = "shortcut") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut_name = shortcut
        projection = nn.Sequential()
        if stride != 1 or cin != cout:
            projection = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )
        setattr(self, shortcut, projection)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + getattr(self, self.shortcut_name)(x))


class ResNet18(nn.Module):
    """ResNet-18 with the CIFAR stem (3x3 conv, no max-pool); any input size (global pooling)."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()
        )
        layers, cin = [], 64
        for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


class ResNet20(nn.Module):
    """ResNet-20 for 32x32 inputs (He et al. 2016, 3 stages of 3 blocks, 16-32-64 channels):
    the member of the CIFAR-10 ensemble defenses (DVERGE, TRS, GAL, ADP), with their parameter
    names (``conv1``, ``bn1``, ``layer1..3``, ``fc``), so their checkpoints load."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        cin = 16
        for i, (cout, stride) in enumerate([(16, 1), (32, 2), (64, 2)], start=1):
            blocks = [BasicBlock(c, cout, s, "downsample") for c, s in [(cin, stride), (cout, 1)]]
            blocks.append(BasicBlock(cout, cout, 1, "downsample"))
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
            cin = cout
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))


_BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "small-cnn": SmallCNN,
    "lenet5": LeNet5,
    "resnet18": ResNet18,
    "resnet20": ResNet20,
}


def list_backbones() -> list[str]:
    """Names accepted by :func:`create_backbone`."""
    return sorted(_BACKBONES)


def create_backbone(
    name: str,
    in_channels: int,
    num_classes: int,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> nn.Module:
    """Backbone ``name``: pixels ``[B, in_channels, S, S]`` in [0,1] -> ``[B, num_classes]``."""
    if name not in _BACKBONES:
        raise DmlError(f"unknown backbone {name!r}; choose one of {', '.join(list_backbones())}")
    net = _BACKBONES[name](in_channels, num_classes, image_size)
    return nn.Sequential(Normalize(mean, std), net)
