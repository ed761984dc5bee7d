"""The U-Net's training step, shared by the training script and the throughput benchmark."""

from __future__ import annotations

import torch
from diffusers import UNet2DModel

from .schedulers.scheduling_ddad import DDADScheduler


def sample_batch(
    images: torch.Tensor, step: int, batch_size: int, max_t: int, shift: int, seed: int, rank: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batch, timesteps and noise of one step, a pure function of (seed, step, rank) so resuming repeats it."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step * 97 + rank)
    idx = torch.randint(0, images.shape[0], (batch_size,), generator=g)
    x0 = images[idx]
    if shift > 0:  # small random translations: nominal parts never sit at exactly the same pixel
        dx, dy = torch.randint(-shift, shift + 1, (2,), generator=g).tolist()
        x0 = torch.roll(x0, shifts=(dy, dx), dims=(2, 3))
    t = torch.randint(0, max_t, (batch_size,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    return x0, t, noise


def epsilon_loss(
    unet: UNet2DModel, scheduler: DDADScheduler, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """DDPM's epsilon objective; like the reference, squared errors are summed over pixels and averaged over
    the batch. Call it under the autocast context you train with."""
    noisy = scheduler.add_noise(x0, noise, t)
    pred = unet(noisy.contiguous(memory_format=torch.channels_last), t).sample
    return (pred.float() - noise).pow(2).sum(dim=(1, 2, 3)).mean()
