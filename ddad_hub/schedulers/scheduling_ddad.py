"""DDAD's conditioned DDIM scheduler.

A DDIM update in which every step's noise estimate is pulled toward the input image itself (the target ``y``), so
the reconstruction keeps the part's nominal look (DDAD, Mousakhan et al., arXiv 2305.15956, eq. 6-8).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

TimestepLike = int | torch.Tensor


@dataclass
class DDADSchedulerOutput(BaseOutput):
    """Output of :meth:`DDADScheduler.step`.

    Args:
        prev_sample: ``x_{t_prev}``, the input of the next denoising step.
        pred_original_sample: the conditioned estimate of the clean image, ``x0_hat``. After the last step this is
            the reconstruction.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


class DDADScheduler(SchedulerMixin, ConfigMixin):
    """Conditioned DDIM sampling from a part-way noised input, as DDAD and D3AD use it.

    The forward process is the DDPM one: ``T`` steps with linear betas, ``abar_t = prod_{s<=t} (1 - beta_s)``.
    Reconstruction starts at step ``T'`` (``start_step``) and visits ``T' - skip, ..., skip, 0``; each step applies

        y_t   = sqrt(abar_t) y + sqrt(1 - abar_t) e
        e_hat = e - w sqrt(1 - abar_t) (y_t - x_t)

    before an ordinary DDIM update with ``e_hat`` and stochasticity ``eta``. With ``w = 0`` it is plain DDIM.
    """

    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        start_step: int = 250,
        skip: int = 25,
        eta: float = 1.0,
        w: float = 0.0,
    ):
        if beta_schedule == "linear":
            self.betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
        elif beta_schedule == "scaled_linear":
            self.betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
        else:
            raise ValueError(f"beta_schedule must be 'linear' or 'scaled_linear', got {beta_schedule!r}")
        # float64 for the cumulative product; gathered values are cast to the sample's dtype at use.
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)
        self.init_noise_sigma = 1.0
        self.set_timesteps(start_step=start_step, skip=skip)

    # ------------------------------------------------------------------ schedule
    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        start_step: int | None = None,
        skip: int | None = None,
    ) -> None:
        """Choose the start step ``T'`` and the stride between visited steps.

        ``num_inference_steps`` is accepted for diffusers compatibility: given alone, it sets ``skip`` so that the
        run from ``start_step`` takes that many steps.
        """
        start_step = self.config.start_step if start_step is None else int(start_step)
        if skip is None:
            skip = max(1, start_step // num_inference_steps) if num_inference_steps else self.config.skip
        skip = int(skip)
        if not 0 < start_step < self.config.num_train_timesteps:
            raise ValueError(f"start_step must be in 1..{self.config.num_train_timesteps - 1}, got {start_step}")
        if not 0 < skip <= start_step:
            raise ValueError(f"skip must be in 1..start_step ({start_step}), got {skip}")
        self.start_step = start_step
        self.skip = skip
        self.timesteps = torch.arange(start_step - skip, -1, -skip, device=device, dtype=torch.long)
        if self.timesteps[-1] != 0:  # always end on t = 0 so the last estimate is a clean image
            self.timesteps = torch.cat([self.timesteps, torch.zeros(1, dtype=torch.long, device=device)])
        self.num_inference_steps = len(self.timesteps)

    def _abar(self, t: TimestepLike, like: torch.Tensor) -> torch.Tensor:
        """``abar_t`` broadcastable against ``like``; ``t = -1`` (after the last step) gives 1."""
        t = torch.as_tensor(t, device=self.alphas_cumprod.device).long()
        padded = torch.cat([torch.ones(1, dtype=self.alphas_cumprod.dtype), self.alphas_cumprod])
        a = padded[(t + 1).clamp(min=0)]
        a = a.to(device=like.device, dtype=like.dtype)
        return a.reshape(-1, *([1] * (like.ndim - 1))) if a.ndim else a

    # ------------------------------------------------------------------ start points
    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: TimestepLike) -> torch.Tensor:
        """The forward process ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`` (training and DDAD's start)."""
        a = self._abar(timesteps, original_samples)
        return a.sqrt() * original_samples + (1 - a).sqrt() * noise

    def scale_noise_free(self, original_samples: torch.Tensor, timesteps: TimestepLike) -> torch.Tensor:
        """D3AD's noise-free start ``x_t = sqrt(abar_t) x0``."""
        return self._abar(timesteps, original_samples).sqrt() * original_samples

    # ------------------------------------------------------------------ the update
    def step(
        self,
        model_output: torch.Tensor,
        timestep: TimestepLike,
        sample: torch.Tensor,
        target: torch.Tensor | None = None,
        w: float | None = None,
        eta: float | None = None,
        prev_timestep: TimestepLike | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> DDADSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One conditioned DDIM step from ``timestep`` to ``prev_timestep`` (default ``timestep - skip``).

        Args:
            model_output: the U-Net's noise estimate ``e`` at ``sample``.
            timestep: the current step ``t`` (an int, or one per sample).
            sample: ``x_t``.
            target: the conditioning image ``y`` (clean, same space as ``sample``). Required when ``w != 0``.
            w: conditioning weight; ``None`` takes the config's.
            eta: stochasticity, 0 (deterministic DDIM) to 1; ``None`` takes the config's.
            generator / variance_noise: the source of the fresh noise ``n'`` (only drawn when it is used).
        """
        w = self.config.w if w is None else w
        eta = self.config.eta if eta is None else eta
        if prev_timestep is None:
            prev_timestep = torch.as_tensor(timestep) - self.skip
        e = model_output
        a_t = self._abar(timestep, sample)
        a_prev = self._abar(prev_timestep, sample)

        if w != 0:
            if target is None:
                raise ValueError("step() needs the conditioning `target` when w != 0")
            y_t = a_t.sqrt() * target + (1 - a_t).sqrt() * e
            e = e - w * (1 - a_t).sqrt() * (y_t - sample)

        x0 = (sample - (1 - a_t).sqrt() * e) / a_t.sqrt()
        c1 = eta * ((1 - a_t / a_prev) * (1 - a_prev) / (1 - a_t)).clamp(min=0).sqrt()
        c2 = (1 - a_prev - c1**2).clamp(min=0).sqrt()
        prev = a_prev.sqrt() * x0 + c2 * e
        if eta > 0:
            if variance_noise is None:
                variance_noise = randn_tensor(
                    sample.shape, generator=generator, device=sample.device, dtype=sample.dtype
                )
            prev = prev + c1 * variance_noise

        if not return_dict:
            return prev, x0
        return DDADSchedulerOutput(prev_sample=prev, pred_original_sample=x0)

    def __len__(self) -> int:
        return self.config.num_train_timesteps
