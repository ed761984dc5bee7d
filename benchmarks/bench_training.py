"""Training throughput of a preset's U-Net step (images per second), fp32 against bf16 autocast.

Prints the CPU and whether it has native bf16; bf16 is measured only where it is native (elsewhere torch emulates
it at about a twentieth of fp32's speed) unless ``--all-precisions`` is given. The "auto" row is what the training
scripts choose on this machine by default.

    python benchmarks/bench_training.py --output benchmarks/results/training
    python benchmarks/bench_training.py --preset cpu_latent --output benchmarks/results/training_latent

The step is the training script's own (``ddad_hub.training``): sample a batch, noise it, epsilon loss, backward,
Adam step. For a latent preset the U-Net learns latents, and the autoencoder's step (``train_vae.py``'s: random
crops, L1 + KL, backward, AdamW) is measured too. Median over ``--steps`` steps after warm-up.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from results_io import write_results

from ddad_hub.hardware import has_native_bf16, machine_summary, resolve_mixed_precision
from ddad_hub.models.autoencoder import build_vae
from ddad_hub.models.unet import build_unet
from ddad_hub.presets import load_preset
from ddad_hub.schedulers import DDADScheduler
from ddad_hub.training import AutoencoderObjective, autoencoder_loss, epsilon_loss, sample_batch, sample_crops


def _timed_steps(step_fn, dtype: torch.dtype | None, steps: int, batch: int, warmup: int = 3) -> dict:
    times, cpu_times = [], []
    for step in range(warmup + steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        with torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext():
            loss = step_fn(step)
        loss.backward()
        step_fn.optimizer.step()
        step_fn.optimizer.zero_grad(set_to_none=True)
        if step >= warmup:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    med = statistics.median(times)
    # CPU seconds per step barely move when other work shares the machine (with one thread they are the step's cost)
    return {"seconds_per_step": med, "images_per_second": batch / med, "spread": [min(times), max(times)],
            "cpu_seconds_per_step": statistics.median(cpu_times)}


def measure(preset: dict, dtype: torch.dtype | None, steps: int) -> dict:
    """The U-Net step, on images or (for a latent preset) on latents of the preset's size."""
    torch.manual_seed(0)
    latent = "vae" in preset
    channels = preset["vae"]["latent_channels"] if latent else 3
    unet = build_unet(preset, in_channels=channels).train()
    scheduler = DDADScheduler()
    size = preset["latent_resolution"] if latent else preset["resolution"]
    data = torch.randn(64, channels, size, size) if latent else torch.rand(64, 3, size, size) * 2 - 1

    def step_fn(step: int) -> torch.Tensor:
        x0, t, noise = sample_batch(data, step, preset["batch_size"], preset["max_train_timestep"],
                                    preset["shift_pixels"], 0, 0)
        return epsilon_loss(unet, scheduler, x0, t, noise)

    step_fn.optimizer = torch.optim.Adam(unet.parameters(), lr=preset["learning_rate"],
                                         weight_decay=preset["weight_decay"])
    return _timed_steps(step_fn, dtype, steps, preset["batch_size"])


def measure_vae(preset: dict, dtype: torch.dtype | None, steps: int) -> dict:
    """The autoencoder step of a latent preset ("images" are its training crops)."""
    torch.manual_seed(0)
    spec = preset["vae"]
    vae = build_vae(preset).train()
    objective = AutoencoderObjective(vae)
    size = preset["resolution"]
    images = torch.rand(64, 3, size, size) * 2 - 1

    def step_fn(step: int) -> torch.Tensor:
        x, g = sample_crops(images, step, spec["batch_size"], spec["crop"], 0, 0)
        return autoencoder_loss(objective, x, spec["kl_weight"], generator=g)[0]

    step_fn.optimizer = torch.optim.AdamW(vae.parameters(), lr=spec["learning_rate"], weight_decay=0.0)
    return _timed_steps(step_fn, dtype, steps, spec["batch_size"])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--quick", action="store_true")
    p.add_argument("--all-precisions", action="store_true", help="also time bf16 where it is emulated (slow)")
    p.add_argument("--output", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    preset = load_preset(args.preset)
    steps = 3 if args.quick else args.steps
    precisions = [("fp32", None)]
    if has_native_bf16() or args.all_precisions:
        precisions.append(("bf16", torch.bfloat16))
    rows = {name: measure(preset, dtype, steps) for name, dtype in precisions}
    if "vae" in preset:
        rows.update({f"autoencoder {name}": measure_vae(preset, dtype, steps) for name, dtype in precisions})
        what = (f"U-Net on {preset['latent_resolution']} px latents, batch {preset['batch_size']}; autoencoder on "
                f"{preset['vae']['crop']} px crops, batch {preset['vae']['batch_size']}")
    else:
        what = f"{preset['resolution']} px, batch {preset['batch_size']}"
    auto = resolve_mixed_precision("auto")
    lines = [f"Training step of the `{args.preset}` preset ({what}, {args.threads} thread(s)).", "",
             f"Machine: {machine_summary(args.threads)}. The training scripts' default `--mixed-precision auto` "
             f"resolves to `{auto}` here.", "",
             "| step | s/step (median) | images/s | min-max s/step | CPU s/step (median) |", "|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['seconds_per_step']:.3f} | {r['images_per_second']:.1f} | "
                     f"{r['spread'][0]:.3f}-{r['spread'][1]:.3f} | {r['cpu_seconds_per_step']:.3f} |")
    for part in ("", "autoencoder "):
        if f"{part}bf16" in rows:
            wall = rows[f"{part}bf16"]["images_per_second"] / rows[f"{part}fp32"]["images_per_second"]
            cpu = rows[f"{part}fp32"]["cpu_seconds_per_step"] / rows[f"{part}bf16"]["cpu_seconds_per_step"]
            lines.append(f"\nbf16 / fp32 speed of the {part or 'U-Net '}step: {wall:.2f}x in wall time, "
                         f"{cpu:.2f}x in CPU time")
    text = "\n".join(lines)
    print(text)
    if args.output:
        write_results(args.output, {"machine": machine_summary(args.threads), "auto": auto, "rows": rows}, text)


if __name__ == "__main__":
    main()
