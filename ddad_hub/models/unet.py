"""The denoising U-Net: a diffusers ``UNet2DModel`` sized by a preset."""

from __future__ import annotations

import json
from pathlib import Path

from diffusers import AutoencoderKL, UNet2DModel
from safetensors.torch import load_file

from ..presets import fill_preset
from .autoencoder import load_vae


def check_resolution(preset: dict, latent_factor: int = 1) -> None:
    """Refuse a resolution the U-Net cannot halve often enough (or, in latent space, that the autoencoder cannot
    shrink exactly): diffusers would only fail at the first forward pass, with a tensor-size error."""
    resolution, halvings = preset["resolution"], len(preset["unet"]["block_out_channels"]) - 1
    multiple = latent_factor * 2**halvings
    if resolution % multiple:
        lower = max(multiple, resolution // multiple * multiple)
        space = f" (latents {latent_factor}x smaller, then halved {halvings} times)" if latent_factor > 1 else (
            f" (halved {halvings} times)")
        raise ValueError(f"preset {preset.get('name')!r}: resolution {resolution} does not fit its U-Net{space}: it "
                         f"must be a multiple of {multiple}, e.g. {lower} or {lower + multiple}")


def build_unet(preset: dict, in_channels: int = 3) -> UNet2DModel:
    """An untrained epsilon-prediction U-Net at the preset's resolution (``in_channels`` = 4 for VAE latents)."""
    spec = preset["unet"]
    size = preset.get("latent_resolution") or preset["resolution"]
    check_resolution(preset, preset["resolution"] // size)
    return UNet2DModel(
        sample_size=size,
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
