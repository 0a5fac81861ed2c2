"""ImageNet ResNet-18/34/50 whose state dicts match torchvision's key for key, shape for shape,
so its pretrained weights load with ``strict=True`` (SRQ and UniQ fine-tune from them)."""

from __future__ import annotations

from torch import nn

from lowbit.models.blocks import BasicBlock, Bottleneck, conv_bn_shortcut
from lowbit.models.registry import register_model
from lowbit.models.resnet import ResNet

WIDTHS = (64, 128, 256, 512)


@register_model
def resnet18(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    return ResNet(BasicBlock, (2, 2, 2, 2), WIDTHS, conv_bn_shortcut, num_classes, in_channels,
                  imagenet_stem=True)


@register_model
def resnet34(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    return ResNet(BasicBlock, (3, 4, 6, 3), WIDTHS, conv_bn_shortcut, num_classes, in_channels,
                  imagenet_stem=True)


@register_model
def resnet50(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    return ResNet(Bottleneck, (3, 4, 6, 3), WIDTHS, conv_bn_shortcut, num_classes, in_channels,
                  imagenet_stem=True)
