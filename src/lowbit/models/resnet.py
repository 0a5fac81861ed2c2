"""ResNet (He et al. 2016) for both stems; submodule names follow torchvision."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lowbit.models.blocks import ShortcutFactory, conv3x3, init_weights, make_stage


class ResNet(nn.Module):
    """``conv1-bn1-relu-maxpool``, stages ``layer1..layerN``, global average pool, ``fc``.

    ``imagenet_stem``: 7x7/2 conv (64 channels) + 3x3/2 max-pool; otherwise a 3x3/1 conv with
    ``widths[0]`` channels and no pooling, as used for 32x32 images.
    """

    def __init__(
        self,
        block: type[nn.Module],
        depths: Sequence[int],
        widths: Sequence[int],
        shortcut: ShortcutFactory,
        num_classes: int,
        in_channels: int = 3,
        imagenet_stem: bool = False,
    ) -> None:
        super().__init__()
        if imagenet_stem:
            self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
        else:
            self.conv1 = conv3x3(in_channels, widths[0])
            self.maxpool = nn.Identity()
        channels = self.conv1.out_channels
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.stage_names = [f"layer{i + 1}" for i in range(len(depths))]
        for i, (name, depth, width) in enumerate(zip(self.stage_names, depths, widths)):
            stage, channels = make_stage(block, channels, width, depth, 1 if i == 0 else 2,
                                         shortcut)
            self.add_module(name, stage)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))
