"""CIFAR ResNets: ResNet-20/32/44/56/110 (He et al. 2016, Sec. 4.2) and CoQuant's ResNet-18.

``shortcut="conv"`` (default) is a 1x1 conv + BN where the shape changes, as in the APoT
authors' ResNet-20 (whose checkpoints load into ``resnet20`` after dropping ``module.``);
``shortcut="pad"`` is the paper's parameter-free option A.
"""

from __future__ import annotations

from torch import nn

from lowbit.errors import LowbitError
from lowbit.models.blocks import BasicBlock, conv_bn_shortcut, shortcut_factory
from lowbit.models.registry import register_model
from lowbit.models.resnet import ResNet


def cifar_resnet(depth: int, num_classes: int, in_channels: int, shortcut: str) -> ResNet:
    """Depth 6n+2: three stages of n basic blocks with 16/32/64 channels."""
    if (depth - 2) % 6:
        raise LowbitError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
    n = (depth - 2) // 6
    return ResNet(BasicBlock, (n, n, n), (16, 32, 64), shortcut_factory(shortcut),
                  num_classes, in_channels)


@register_model
def resnet20(num_classes: int = 10, in_channels: int = 3, shortcut: str = "conv") -> nn.Module:
    return cifar_resnet(20, num_classes, in_channels, shortcut)


@register_model
def resnet32(num_classes: int = 10, in_channels: int = 3, shortcut: str = "conv") -> nn.Module:
    return cifar_resnet(32, num_classes, in_channels, shortcut)


@register_model
def resnet44(num_classes: int = 10, in_channels: int = 3, shortcut: str = "conv") -> nn.Module:
    return cifar_resnet(44, num_classes, in_channels, shortcut)


@register_model
def resnet56(num_classes: int = 10, in_channels: int = 3, shortcut: str = "conv") -> nn.Module:
    return cifar_resnet(56, num_classes, in_channels, shortcut)


@register_model
def resnet110(num_classes: int = 10, in_channels: int = 3, shortcut: str = "conv") -> nn.Module:
    return cifar_resnet(110, num_classes, in_channels, shortcut)


@register_model
def resnet18_cifar(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """ResNet-18 with a 3x3/1 stem and no max-pool (CoQuant's CIFAR-10 setup); keys equal
    torchvision's ``resnet18`` except ``conv1.weight``'s kernel size."""
    return ResNet(BasicBlock, (2, 2, 2, 2), (64, 128, 256, 512), conv_bn_shortcut,
                  num_classes, in_channels)
