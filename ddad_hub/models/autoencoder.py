"""The latent space of D3AD mode: a diffusers ``AutoencoderKL`` sized by a preset, and its latent scale."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from diffusers import AutoencoderKL


def build_vae(preset: dict) -> AutoencoderKL:
    """An untrained KL autoencoder at the preset's image resolution.

    Each block after the first halves the resolution, so ``len(block_out_channels) = 3`` gives 4x smaller latents
    (128 px -> 32 x 32 x 4). The mid-block has no attention, so the model is nearly local and can train on crops
    (only its group norms see the whole input).
    """
    spec = preset["vae"]
    depth = len(spec["block_out_channels"])
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * depth,
        up_block_types=("UpDecoderBlock2D",) * depth,
        block_out_channels=tuple(spec["block_out_channels"]),
        layers_per_block=spec["layers_per_block"],
        latent_channels=spec["latent_channels"],
        norm_num_groups=spec["norm_num_groups"],
        sample_size=preset["resolution"],
        mid_block_add_attention=False,
    )


def latent_factor(config) -> int:
    """How many image pixels one latent pixel spans per side, from an ``AutoencoderKL``'s config (or the dict
    of its ``config.json``)."""
    return 2 ** (len(config["block_out_channels"]) - 1)


def load_vae(name_or_path: str | os.PathLike) -> AutoencoderKL:
    """An ``AutoencoderKL`` from a folder (safetensors only) or a Hub repo id, ready for inference.

    A folder whose ``vae/`` subfolder holds the autoencoder (``train_vae.py``'s output folder, a pipeline folder)
    is read from there; a folder of another model is refused by name.
    """
    path = os.fspath(name_or_path)
    looks_local = os.path.exists(path) or path.count("/") != 1 or path.startswith((".", "/", "~"))
    if looks_local:
        folder = Path(path)
        if not (folder / "config.json").is_file() and (folder / "vae" / "config.json").is_file():
            folder = folder / "vae"
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not an autoencoder folder (no config.json); train one with "
                                    "training/train_vae.py, or pass a Hub repo id such as stabilityai/sd-vae-ft-mse")
        try:
            kind = json.loads((folder / "config.json").read_text()).get("_class_name")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
            raise ValueError(f"{folder / 'config.json'} is damaged: not a JSON object ({err})") from err
        if kind != "AutoencoderKL":
            raise ValueError(f"{folder} holds a {kind or 'model of unknown class'}, not an AutoencoderKL: pass the "
                             "folder train_vae.py wrote (<output-dir>/vae) or an autoencoder's Hub repo id")
        path = os.fspath(folder)
    return AutoencoderKL.from_pretrained(path, use_safetensors=True).eval().requires_grad_(False)


def to_latents(vae: AutoencoderKL, images: torch.Tensor, scaled: bool = True) -> torch.Tensor:
    """The latents the diffusion model sees: posterior means of images in [-1, 1], shifted and scaled by the
    model's ``shift_factor`` (set by some Hub autoencoders) and ``scaling_factor`` unless ``scaled=False``."""
    latents = vae.encode(images.contiguous(memory_format=torch.channels_last)).latent_dist.mean.float()
    if not scaled:
        return latents
    return (latents - (vae.config.get("shift_factor") or 0.0)) * vae.config.scaling_factor


def from_latents(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`to_latents`: decoded images in [-1, 1]."""
    images = vae.decode(latents / vae.config.scaling_factor + (vae.config.get("shift_factor") or 0.0)).sample
    return images.float().clamp(-1, 1)


@torch.no_grad()
def encode_images(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 16, scaled: bool = True) -> torch.Tensor:
    """:func:`to_latents` in batches."""
    return torch.cat([to_latents(vae, images[s : s + batch_size], scaled) for s in range(0, len(images), batch_size)])


def fit_scaling_factor(vae: AutoencoderKL, images: torch.Tensor) -> float:
    """``1 / std`` of the latents of nominal images, so the diffusion model sees unit-variance latents.

    Stable Diffusion's 0.18215 was found the same way for its own autoencoder.
    """
    return float(1.0 / encode_images(vae, images, scaled=False).std().clamp(min=1e-6))
