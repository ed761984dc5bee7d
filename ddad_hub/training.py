"""Training steps of the U-Net and the autoencoder, and the progress bookkeeping their scripts share."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from pathlib import Path

import torch
from diffusers import UNet2DModel
from tqdm.auto import tqdm

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


def sample_crops(
    images: torch.Tensor, step: int, batch_size: int, crop: int, seed: int, rank: int
) -> tuple[torch.Tensor, torch.Generator]:
    """A batch of random square crops, a pure function of (seed, step, rank) like :func:`sample_batch`, and the
    generator it came from, to draw the step's remaining randomness (the posterior sample) from."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step * 97 + rank)
    n, _, h, w = images.shape
    crop = min(crop, h, w)
    idx = torch.randint(0, n, (batch_size,), generator=g).tolist()
    ys = torch.randint(0, h - crop + 1, (batch_size,), generator=g).tolist()
    xs = torch.randint(0, w - crop + 1, (batch_size,), generator=g).tolist()
    return torch.stack([images[i, :, y : y + crop, x : x + crop] for i, y, x in zip(idx, ys, xs)]), g


class AutoencoderObjective(torch.nn.Module):
    """The autoencoder's training pass as one ``forward`` (what distributed data parallel wraps and syncs):
    encode, sample the posterior, decode. Returns the reconstruction and each input's KL term."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.vae.encode(x.contiguous(memory_format=torch.channels_last)).latent_dist
        return self.vae.decode(posterior.sample(generator=generator)).sample, posterior.kl()


def autoencoder_loss(
    objective: AutoencoderObjective, x: torch.Tensor, kl_weight: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, L1 reconstruction error): mean absolute error of a sampled reconstruction plus a small KL term
    (per image pixel, so ``kl_weight`` does not depend on the crop size). Call it under your autocast context."""
    reconstruction, kl = objective(x, generator=generator)
    l1 = (reconstruction.float() - x).abs().mean()
    return l1 + kl_weight * kl.float().mean() / x[0].numel(), l1


class TrainingProgress:
    """Counts steps and training time, shows a smoothed loss on a progress bar and appends it to a JSONL log.

    Time spent outside steps (checkpoint I/O) is not training time: call :meth:`restart_clock` after it.
    """

    def __init__(self, step: int, elapsed: float, total: int | None, log_file: Path, metric: str, desc: str,
                 is_main: bool = True, log_every: int = 50):
        self.step, self.elapsed, self.metric = step, elapsed, metric
        self.log_file, self.is_main, self.log_every = log_file, is_main, log_every
        self.running: float | None = None
        self.bar = tqdm(total=total, initial=step, disable=not is_main, desc=desc)
        self.restart_clock()

    @property
    def minutes(self) -> float:
        return self.elapsed / 60

    def restart_clock(self) -> None:
        self._last = time.perf_counter()

    def reached(self, max_steps: int | None, budget_s: float | None) -> bool:
        """Whether the run is at its end: ``max_steps`` steps or ``budget_s`` seconds of training (``None``: no
        such limit)."""
        return (max_steps is not None and self.step >= max_steps) or (budget_s is not None and self.elapsed >= budget_s)

    def update(self, value: float) -> None:
        """Record one finished step whose loss (or other metric) was ``value``."""
        self.step += 1
        now = time.perf_counter()
        self.elapsed += now - self._last
        self._last = now
        self.running = value if self.running is None else 0.98 * self.running + 0.02 * value
        self.bar.update(1)
        if self.step % 10 == 0:
            self.bar.set_postfix({self.metric: f"{self.running:.4f}", "minutes": f"{self.minutes:.1f}"})
        if self.is_main and self.step % self.log_every == 0:
            with open(self.log_file, "a") as f:
                f.write(json.dumps({"step": self.step, self.metric: self.running, "minutes": self.minutes}) + "\n")

    def close(self) -> None:
        self.bar.close()


def stop_if_diverged(accelerator, loss: torch.Tensor, step: int) -> None:
    """End the run, on every process at once, when the loss of any process is NaN or infinite: before the optimizer
    step spreads it into the weights, and so before a checkpoint of NaN weights could replace the good ones."""
    bad = (~torch.isfinite(loss.detach().float())).float().reshape(1)
    if accelerator.reduce(bad, reduction="sum").item() > 0:
        raise SystemExit(f"the loss became {loss.item()} at step {step + 1}: training diverged; the checkpoints before "
                         "it are kept (--resume continues from the newest); try a lower learning rate (the preset's "
                         "learning_rate) or fp32 (--mixed-precision no)")


class StopOnInterrupt:
    """Turns the first Ctrl-C (SIGINT) or SIGTERM (``kill``, ``timeout``, a cluster pre-empting the job) into a
    request to stop at the next step boundary, where the training script writes a checkpoint and exits (130 after
    SIGINT, 143 after SIGTERM, as a shell reports them), so ``--resume`` loses nothing; a second signal stops at once.

    Use as a context manager around the training loop and add :attr:`requested` to its end condition. A signal the
    process was started ignoring stays ignored (a shell starts background jobs ignoring SIGINT), as Python itself
    does. Outside the main thread (where Python cannot install signal handlers) it does nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)

    def __enter__(self) -> StopOnInterrupt:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                current = signal.getsignal(sig)
                if current is not None and current is not signal.SIG_IGN:  # None: a handler set outside Python
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:  # the second signal: at once, as the signal would without this handler
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)
        self.requested, self.signum = True, signum
        print(f"\n{signal.Signals(signum).name}: stopping after this step to write a checkpoint (send it again to "
              "stop at once, losing the steps since the last checkpoint)", file=sys.stderr, flush=True)

    def exit_if_requested(self, step: int, checkpoint_dir: Path, log=print) -> None:
        """After the loop: end the script with the way to continue, if the run stopped on a signal."""
        if self.requested:
            log(f"interrupted at step {step}: checkpoint written to {checkpoint_dir}; run the same command with "
                "--resume to continue")
            raise SystemExit(self.exit_code)
