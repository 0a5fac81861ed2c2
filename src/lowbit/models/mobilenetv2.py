"""MobileNetV2 (Sandler et al. 2018) with torchvision's module names (``features.*``,
``classifier.1``), and a CIFAR variant with a stride-1 stem and first downsampling removed."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lowbit.models.blocks import conv1x1, init_weights
from lowbit.models.registry import register_model

# (expansion t, output channels c, blocks n, stride s of the first block): Table 2 of the paper.
IMAGENET_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                   (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
# Five stride-2 layers would shrink 32x32 inputs to 1x1; the stem and stage 2 keep stride 1 (4x4).
CIFAR_STAGES = tuple((t, c, n, 1 if i == 1 else s) for i, (t, c, n, s) in
                     enumerate(IMAGENET_STAGES))


def make_divisible(channels: float, divisor: int = 8) -> int:
    """Round to the nearest multiple of ``divisor``, never losing more than 10%."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * channels else rounded


def conv_bn_relu6(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                  groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                  padding=kernel_size // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expand (skipped when t = 1), 3x3 depthwise, linear 1x1 projection; residual when
    the shape is kept."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = round(in_channels * expansion)
        layers = [conv_bn_relu6(in_channels, hidden, 1)] if expansion != 1 else []
        layers += [
            conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
            conv1x1(hidden, out_channels),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        width_mult: float = 1.0,
        stages: Sequence[tuple[int, int, int, int]] = IMAGENET_STAGES,
        stem_stride: int = 2,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        channels = make_divisible(32 * width_mult)
        features: list[nn.Module] = [conv_bn_relu6(in_channels, channels, 3, stem_stride)]
        for expansion, width, blocks, stride in stages:
            out_channels = make_divisible(width * width_mult)
            for i in range(blocks):
                features.append(InvertedResidual(channels, out_channels, stride if i == 0 else 1,
                                                 expansion))
                channels = out_channels
        last_channels = make_divisible(1280 * max(1.0, width_mult))
        features.append(conv_bn_relu6(channels, last_channels, 1))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last_channels, num_classes))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@register_model
def mobilenetv2(num_classes: int = 1000, in_channels: int = 3,
                width_mult: float = 1.0) -> nn.Module:
    return MobileNetV2(num_classes, in_channels, width_mult)


@register_model
def mobilenetv2_cifar(num_classes: int = 10, in_channels: int = 3,
                      width_mult: float = 1.0) -> nn.Module:
    return MobileNetV2(num_classes, in_channels, width_mult, CIFAR_STAGES, stem_stride=1)
