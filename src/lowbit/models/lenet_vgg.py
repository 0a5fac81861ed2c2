"""LeNet-5 (MNIST) and VGG-7 (CIFAR-10) as specified in SRQ + DropBits, Appendix F.

Following Rastegari et al. (2016), a max-pool sits right after its conv, before BN and ReLU.
BN follows every conv of VGG-7 but none of LeNet-5 (whose convs keep their bias instead).
No dropout: DropBits is the regularizer these models were trained with.
"""

from __future__ import annotations

from torch import nn

from lowbit.models.blocks import init_weights
from lowbit.models.registry import register_model


def conv_pool_bn_relu(in_channels: int, out_channels: int, kernel_size: int, padding: int,
                      pool: bool, batch_norm: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, kernel_size,
                                         padding=padding, bias=not batch_norm)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(nn.ReLU(inplace=True))
    return layers


def classifier(in_features: int, hidden: int, num_classes: int) -> list[nn.Module]:
    return [nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes)]


@register_model
def lenet5(num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> nn.Module:
    """32C5-MP2-64C5-MP2-512FC with unpadded convs: 28x28 -> 24 -> 12 -> 8 -> 4."""
    side = ((image_size - 4) // 2 - 4) // 2
    model = nn.Sequential(
        *conv_pool_bn_relu(in_channels, 32, 5, 0, pool=True, batch_norm=False),
        *conv_pool_bn_relu(32, 64, 5, 0, pool=True, batch_norm=False),
        *classifier(64 * side * side, 512, num_classes),
    )
    init_weights(model)
    return model


@register_model
def vgg7(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """2x128C3-MP2-2x256C3-MP2-2x512C3-MP2-1024FC with padded convs: 32x32 -> 4x4."""
    layers: list[nn.Module] = []
    channels = in_channels
    for width in (128, 256, 512):
        layers += conv_pool_bn_relu(channels, width, 3, 1, pool=False, batch_norm=True)
        layers += conv_pool_bn_relu(width, width, 3, 1, pool=True, batch_norm=True)
        channels = width
    side = image_size // 8
    model = nn.Sequential(*layers, *classifier(512 * side * side, 1024, num_classes))
    init_weights(model)
    return model

