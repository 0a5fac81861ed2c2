"""Pre-activation ResNet-32 for CIFAR-100 (He et al. 2016b), the model of UniQ Sec. 5.2.

As in the UniQ authors' code: the 1x1 downsample sees the pre-activated input
``relu(bn1(x))`` and has no BN; the stem is a bare conv; ``bn`` + ReLU close the network.
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.models.blocks import conv1x1, conv3x3, init_weights, make_stage
from lowbit.models.registry import register_model


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3, added to the (possibly projected) input."""

    expansion = 1

    def __init__(
        self, in_channels: int, width: int, stride: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = conv3x3(in_channels, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(x))
        identity = x if self.downsample is None else self.downsample(out)
        out = self.conv2(self.relu(self.bn2(self.conv1(out))))
        return out + identity


def preact_shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    return nn.Sequential(conv1x1(in_channels, out_channels, stride))


class PreActResNet(nn.Module):
    """``conv1``, stages ``layer1..3`` (16/32/64 channels), ``bn``-ReLU, average pool, ``fc``."""

    def __init__(self, depth: int, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = conv3x3(in_channels, 16)
        self.layer1, channels = make_stage(PreActBlock, 16, 16, n, 1, preact_shortcut)
        self.layer2, channels = make_stage(PreActBlock, channels, 32, n, 2, preact_shortcut)
        self.layer3, channels = make_stage(PreActBlock, channels, 64, n, 2, preact_shortcut)
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        x = self.relu(self.bn(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register_model
def preact_resnet32(num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    return PreActResNet(32, num_classes, in_channels)
