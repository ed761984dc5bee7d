"""The denoising U-Net: a diffusers ``UNet2DModel`` sized by a preset."""

from __future__ import annotations

import json
from pathlib import Path

from diffusers import AutoencoderKL, UNet2DModel
from safetensors.torch import load_file

from ..presets import fill_preset
from .autoencoder import load_vae


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


def unet_from_checkpoint(ckpt: str | Path, vae_path: str | None = None) -> tuple[UNet2DModel, AutoencoderKL | None,
                                                                                 dict, dict]:
    """(U-Net, its autoencoder or None, the run's state, its preset) from a ``train_unet.py`` checkpoint folder.

    The U-Net gets the EMA weights when the run kept them. ``vae_path`` overrides the autoencoder the run used.
    """
    ckpt = Path(ckpt)
    state = json.loads((ckpt / "state.json").read_text())
    preset = fill_preset(state["preset"])
    vae_path = vae_path or state.get("vae")
    vae = load_vae(vae_path) if vae_path else None
    unet = build_unet(preset, in_channels=vae.config.latent_channels if vae is not None else 3)
    weights = ckpt / ("ema.safetensors" if (ckpt / "ema.safetensors").exists() else "unet.safetensors")
    unet.load_state_dict(load_file(str(weights)))
    return unet.eval(), vae, state, preset
