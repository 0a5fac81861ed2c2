"""Building blocks shared by the zoo: conv helpers, residual blocks, shortcuts, stages, init."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.errors import LowbitError

# Builds the shortcut of a block that changes shape: (in_channels, out_channels, stride).
ShortcutFactory = Callable[[int, int, int], nn.Module]


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal convs (fan-out, as torchvision), BN to identity, zero conv biases."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class ZeroPadShortcut(nn.Module):
    """Option A of He et al. (2016): subsample, then zero-pad the new channels (no parameters)."""

    def __init__(self, extra_channels: int, stride: int) -> None:
        super().__init__()
        self.extra_channels = extra_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        before = self.extra_channels // 2
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, before, self.extra_channels - before))


def conv_bn_shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """Option B: 1x1 conv + BN (torchvision's and the APoT authors' ``downsample.0/1``)."""
    return nn.Sequential(conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))


def pad_shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    return ZeroPadShortcut(out_channels - in_channels, stride)


SHORTCUTS: dict[str, ShortcutFactory] = {"conv": conv_bn_shortcut, "pad": pad_shortcut}


def shortcut_factory(kind: str) -> ShortcutFactory:
    if kind not in SHORTCUTS:
        raise LowbitError(f"unknown shortcut {kind!r}; use one of: {', '.join(SHORTCUTS)}")
    return SHORTCUTS[kind]


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN; ReLU after the sum (He et al. 2016, Fig. 2)."""

    expansion = 1

    def __init__(
        self, in_channels: int, width: int, stride: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(width, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride, as torchvision's "v1.5"), 1x1 expand by 4."""

    expansion = 4

    def __init__(
        self, in_channels: int, width: int, stride: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = conv1x1(in_channels, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, width * self.expansion)
        self.bn3 = nn.BatchNorm2d(width * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def make_stage(
    block: type[nn.Module], in_channels: int, width: int, depth: int, stride: int,
    shortcut: ShortcutFactory,
) -> tuple[nn.Sequential, int]:
    """``depth`` blocks; the first changes stride / channels (with ``shortcut`` where the shape
    changes). Returns the stage and its output channel count."""
    out_channels = width * block.expansion
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = shortcut(in_channels, out_channels, stride)
    blocks = [block(in_channels, width, stride, downsample)]
    blocks += [block(out_channels, width) for _ in range(depth - 1)]
    return nn.Sequential(*blocks), out_channels
