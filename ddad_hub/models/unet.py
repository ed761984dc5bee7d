"""The denoising U-Net: a diffusers ``UNet2DModel`` sized by a preset."""

from __future__ import annotations

from diffusers import UNet2DModel


def build_unet(preset: dict, in_channels: int = 3) -> UNet2DModel:
    """An untrained epsilon-prediction U-Net at the preset's resolution (``in_channels`` = 4 for VAE latents)."""
    spec = preset["unet"]
    return UNet2DModel(
        sample_size=preset.get("latent_resolution") or preset["resolution"],
        in_channels=in_channels,
        out_channels=in_channels,
        block_out_channels=tuple(spec["block_out_channels"]),
        layers_per_block=spec["layers_per_block"],
        down_block_types=tuple(spec["down_block_types"]),
        up_block_types=tuple(spec["up_block_types"]),
        norm_num_groups=spec["norm_num_groups"],
        attention_head_dim=spec["attention_head_dim"],
    )
