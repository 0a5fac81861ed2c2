"""Pre-activation ResNets (He et al. 2016b): ResNet-32 for CIFAR-100 (UniQ §5.2) and
ResNet-18/34 for ImageNet (UniQ §5.1: "For ResNets, we use the pre-activation version").

As in the UniQ authors' code and PytorchCV's ``preresnet18/34`` (UniQ's float starts, 71.57 /
75.11 top-1): each block is BN-ReLU-conv3x3-BN-ReLU-conv3x3 added to its input; the 1x1
downsample sees the pre-activated input ``relu(bn1(x))`` and has no BN; ``bn`` + ReLU close the
network. The CIFAR stem is a bare conv; the ImageNet stem is torchvision's (7x7/2 conv, BN,
ReLU, 3x3/2 max-pool). State-dict keys follow torchvision's naming: ``conv1``, ``bn1`` (ImageNet
stem), ``layerN.i.{bn1, conv1, bn2, conv2, downsample.0}``, ``bn``, ``fc``
(``lowbit.convert.pytorchcv`` renames PytorchCV's).
"""

from __future__ import annotations

from collections.abc import Sequence

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
    """Stem, stages ``layer1..layerN`` of ``PreActBlock``, ``bn``-ReLU, average pool, ``fc``.

    ``imagenet_stem``: ``conv1`` 7x7/2 (64 channels), ``bn1``, ReLU, 3x3/2 max-pool; otherwise
    a bare 3x3 ``conv1`` with ``widths[0]`` channels (32x32 images).
    """

    def __init__(
        self,
        depths: Sequence[int],
        widths: Sequence[int],
        num_classes: int,
        in_channels: int = 3,
        imagenet_stem: bool = False,
    ) -> None:
        super().__init__()
        if imagenet_stem:
            self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
            self.bn1: nn.Module = nn.BatchNorm2d(64)
            self.stem: nn.Module = nn.Sequential(
                nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1)
            )
        else:
            self.conv1 = conv3x3(in_channels, widths[0])
            self.bn1, self.stem = nn.Identity(), nn.Identity()
        channels = self.conv1.out_channels
        self.stage_names = [f"layer{i + 1}" for i in range(len(depths))]
        for i, (name, depth, width) in enumerate(zip(self.stage_names, depths, widths)):
            stage, channels = make_stage(PreActBlock, channels, width, depth, 1 if i == 0 else 2,
                                         preact_shortcut)
            self.add_module(name, stage)
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(self.bn1(self.conv1(x)))
        for name in self.stage_names:
            x = getattr(self, name)(x)
        x = self.relu(self.bn(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register_model
def preact_resnet32(num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    return PreActResNet((5, 5, 5), (16, 32, 64), num_classes, in_channels)


@register_model
def preact_resnet18(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    return PreActResNet((2, 2, 2, 2), (64, 128, 256, 512), num_classes, in_channels,
                        imagenet_stem=True)


@register_model
def preact_resnet34(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    return PreActResNet((3, 4, 6, 3), (64, 128, 256, 512), num_classes, in_channels,
                        imagenet_stem=True)
