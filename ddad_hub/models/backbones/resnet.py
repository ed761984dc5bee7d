"""ResNet and Wide ResNet in plain torch, with torchvision's parameter names.

Parameter names match torchvision's (and timm's ``*.tv_in1k``) state dicts, so ImageNet weights from the Hub load
strictly. ``stage_outputs`` yields the feature map after each stage, so a caller can stop early.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch: int, ch: int, stride: int = 1, width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(ch, ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(ch)
        self.downsample = _downsample(in_ch, ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_ch: int, ch: int, stride: int = 1, width: int = 64):
        super().__init__()
        mid = int(ch * width / 64)  # wide variants widen only the 3x3 convolution
        out_ch = ch * self.expansion
        self.conv1 = nn.Conv2d(in_ch, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_ch, out_ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _downsample(in_ch: int, out_ch: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and in_ch == out_ch:
        return None
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))


# name -> (block type, blocks per stage, width of the 3x3 convolutions)
RESNET_SPECS: dict[str, tuple[type[nn.Module], tuple[int, int, int, int], int]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2), 64),
    "resnet34": (BasicBlock, (3, 4, 6, 3), 64),
    "resnet50": (Bottleneck, (3, 4, 6, 3), 64),
    "wide_resnet50_2": (Bottleneck, (3, 4, 6, 3), 128),
    "wide_resnet101_2": (Bottleneck, (3, 4, 23, 3), 128),
}


class ResNet(nn.Module):
    """ImageNet ResNet; stage ``k`` (1..4) ends at stride ``2**(k+1)``."""

    def __init__(self, name: str, num_classes: int = 1000):
        super().__init__()
        if name not in RESNET_SPECS:
            raise ValueError(f"unknown ResNet {name!r}; choose from {sorted(RESNET_SPECS)}")
        block, depths, width = RESNET_SPECS[name]
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_ch = 64
        for i, (depth, ch) in enumerate(zip(depths, (64, 128, 256, 512))):
            layers = []
            for j in range(depth):
                layers.append(block(in_ch, ch, stride=2 if (j == 0 and i > 0) else 1, width=width))
                in_ch = ch * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        self.stage_strides = {1: 4, 2: 8, 3: 16, 4: 32}

    def stage_channels(self, stage: int) -> int:
        layer = getattr(self, f"layer{stage}")
        last = layer[-1]
        return (last.bn3 if hasattr(last, "bn3") else last.bn2).num_features

    def truncate(self, last_stage: int) -> None:
        """Drop everything after ``last_stage`` (the classifier included) to save memory and file size."""
        for stage in range(last_stage + 1, 5):
            delattr(self, f"layer{stage}")
        del self.avgpool, self.fc

    def stage_outputs(self, x: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in range(1, 5):
            layer = getattr(self, f"layer{stage}", None)
            if layer is None:
                return
            x = layer(x)
            yield stage, x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *_, (_, x) = self.stage_outputs(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))
