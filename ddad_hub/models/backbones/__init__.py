"""ImageNet CNN backbones in plain torch (no torchvision or timm needed)."""

from torch import nn

from .efficientnet_lite import LITE_SPECS, EfficientNetLite
from .resnet import RESNET_SPECS, ResNet

BACKBONES = sorted([*LITE_SPECS, *RESNET_SPECS])


def build_backbone(name: str, padding: str = "same") -> nn.Module:
    """An untrained backbone by name; ``stage_strides`` maps its stage indices to output strides.

    ``padding`` matters only for EfficientNet-Lite (see :class:`EfficientNetLite`); ResNets pad as PyTorch does, as
    their ImageNet weights expect.
    """
    if name in LITE_SPECS:
        return EfficientNetLite(name, padding=padding)
    if name in RESNET_SPECS:
        return ResNet(name)
    raise ValueError(f"unknown backbone {name!r}; choose from {BACKBONES}")


__all__ = ["BACKBONES", "EfficientNetLite", "ResNet", "build_backbone"]
