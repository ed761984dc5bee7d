"""DDAD's anomaly map: pixel distance plus feature cosine distance between an input and its reconstruction.

Every quantity is computed per image, so an image's map and score never depend on what else shares its batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, H, W) maps with a ``4 sigma`` radius and reflected borders."""
    if sigma <= 0:
        return maps
    radius = max(1, int(4 * sigma + 0.5))
    radius = min(radius, min(maps.shape[-2:]) - 1)  # reflect padding needs radius < size
    coords = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-(coords**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    x = maps.unsqueeze(1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    return x.squeeze(1)


def pixel_distance(images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """``D_p``: mean over channels of ``|x - r|``, shape (B, H, W)."""
    return (images - reconstructions).abs().mean(dim=1)


def latent_distance(latents: torch.Tensor, recon_latents: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """D3AD's latent distance: mean over channels of ``|z - z_r|``, upsampled bilinearly to ``size``."""
    return resize_maps(pixel_distance(latents.float(), recon_latents.float()), size)


def feature_distance(
    image_features: list[torch.Tensor], recon_features: list[torch.Tensor], size: tuple[int, int]
) -> torch.Tensor:
    """``D_f``: sum over layers of ``1 - cos`` between 3x3-averaged features, upsampled to ``size``."""
    total = None
    for fx, fr in zip(image_features, recon_features):
        fx = F.avg_pool2d(fx.float(), 3, stride=1, padding=1, count_include_pad=False)
        fr = F.avg_pool2d(fr.float(), 3, stride=1, padding=1, count_include_pad=False)
        d = 1 - F.cosine_similarity(fx, fr, dim=1)
        d = F.interpolate(d.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)
        total = d if total is None else total + d
    return total


def combine_maps(
    d_feature: torch.Tensor,
    d_pixel: torch.Tensor,
    v: float = 1.0,
    pixel_weight: float | None = None,
    blur_sigma: float = 4.0,
) -> torch.Tensor:
    """``A = D_f + v * s * D_p``, blurred.

    ``s`` is ``pixel_weight`` when it was calibrated on nominal images; otherwise each image's own
    ``max D_f / max D_p`` (the paper's batch-wide ratio, taken per image).
    """
    if pixel_weight is None:
        peak_f = d_feature.flatten(1).amax(dim=1)
        peak_p = d_pixel.flatten(1).amax(dim=1).clamp(min=1e-8)
        scale = (peak_f / peak_p).view(-1, 1, 1)
    else:
        scale = pixel_weight
    return gaussian_blur(d_feature + v * scale * d_pixel, blur_sigma)


def image_scores(maps: torch.Tensor) -> torch.Tensor:
    """An image's anomaly score: the maximum of its map."""
    return maps.flatten(1).amax(dim=1)


def resize_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (B, H, W) maps."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)



def map_statistics(maps: torch.Tensor) -> list[float]:
    """``[mean, std]`` over every pixel of nominal ``maps``: the scale a map is normalised with before fusing."""
    maps = torch.as_tensor(maps, dtype=torch.float64)
    return [float(maps.mean()), float(maps.std().clamp(min=1e-12))]


def normalize_map(maps: torch.Tensor, stats: list[float] | tuple[float, float]) -> torch.Tensor:
    """``(maps - mean) / std`` with a nominal ``[mean, std]``: how many nominal deviations a pixel stands out."""
    mean, std = stats
    return (maps - mean) / std


FUSION_RULES = ("sum", "max")


def check_fusion_rule(rule: str) -> None:
    """Raise a ``ValueError`` for a fusion rule :func:`fuse_maps` does not know."""
    if rule not in FUSION_RULES:
        raise ValueError(f"fusion rule must be one of {FUSION_RULES}, got {rule!r}")


def fuse_maps(
    recon_maps: torch.Tensor,
    memory_maps: torch.Tensor,
    recon_stats: list[float],
    memory_stats: list[float],
    rule: str = "sum",
    memory_weight: float = 0.5,
) -> torch.Tensor:
    """The fused map of a reconstruction map and a nearest-neighbour memory map, both normalised first.

    ``rule="sum"``: ``(1 - memory_weight) * z_recon + memory_weight * z_memory``; ``rule="max"``: the pixel-wise
    maximum of the two. Normalising puts both maps in units of their own nominal spread, so neither dominates by
    its scale; where the two normalised maps agree, the fused map equals them under every rule.
    """
    z_r = normalize_map(recon_maps, recon_stats)
    z_m = normalize_map(memory_maps, memory_stats)
    if rule == "sum":
        return (1 - memory_weight) * z_r + memory_weight * z_m
    check_fusion_rule(rule)
    return torch.maximum(z_r, z_m)
