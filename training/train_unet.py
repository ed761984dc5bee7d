"""Train DDAD's denoising U-Net on one category's nominal images (epsilon prediction).

    accelerate launch training/train_unet.py --data ../shared/data/mvtec_ad_256/transistor --output-dir runs/transistor

Presets (``--preset cpu|cpu_latent|paper``) hold every setting; flags override single values. With ``--vae`` (an
``AutoencoderKL`` folder from ``train_vae.py``, or a Hub id such as ``stabilityai/sd-vae-ft-mse``) the U-Net learns
the autoencoder's scaled latents instead of pixels, for D3AD's latent space (the ``cpu_latent`` preset).

The run is resumable: checkpoints are written atomically every ``checkpoint_every`` steps and ``--resume``
continues from the newest one, with the same batches it would have drawn. It ends by assembling a ``DDADPipeline``
folder in ``--output-dir``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from accelerate.utils import broadcast_object_list, set_seed
from diffusers.training_utils import EMAModel

from ddad_hub.checkpointing import resume, save_checkpoint
from ddad_hub.cli import run
from ddad_hub.data import categories_label, check_held_out, find_categories, load_images, read_size, split_categories
from ddad_hub.distributed import finish, make_accelerator
from ddad_hub.models.autoencoder import encode_images, latent_factor, load_vae
from ddad_hub.models.unet import build_unet, check_resolution
from ddad_hub.presets import PRESETS, load_preset
from ddad_hub.recipe import finalize_run
from ddad_hub.schedulers import DDADScheduler
from ddad_hub.training import StopOnInterrupt, TrainingProgress, epsilon_loss, sample_batch, stop_if_diverged


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, nargs="+",
                   help="MVTec-layout category folders (with train/good), or parent folders of categories; several "
                        "categories are one nominal set (the multi-class U-Net)")
    p.add_argument("--output-dir", required=True, help="where checkpoints and the final pipeline go")
    p.add_argument("--preset", default="cpu", help=f"{' or '.join(PRESETS)}, or a preset .json file")
    p.add_argument("--category", default=None, help="category name for the paper's settings (default: folder name)")
    p.add_argument("--resolution", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--learning-rate", type=float, default=None)
    p.add_argument("--epochs", type=int, default=None, help="stop after this many passes over the data")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps")
    p.add_argument("--max-minutes", type=float, default=None, help="stop after this much training time")
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--snapshot-minutes", type=float, default=None,
                   help="also keep a checkpoint in <output-dir>/snapshots every this many training minutes")
    p.add_argument("--mixed-precision", default=None, choices=["auto", "no", "bf16", "fp16"],
                   help="default: the preset's, 'auto' (bf16 where the hardware does bf16 natively)")
    p.add_argument("--vae", default=None,
                   help="an AutoencoderKL folder or Hub id: train on its latents (needed by presets with a 'vae')")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per process (default: the cores split between processes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output-dir")
    p.add_argument("--no-finalize", action="store_true", help="skip building the pipeline folder at the end")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    categories = find_categories(args.data)
    data = next(iter(categories.values())) if len(categories) == 1 else ", ".join(map(str, categories.values()))
    category = args.category or categories_label(categories)
    preset = load_preset(
        args.preset,
        category,
        resolution=args.resolution,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        epochs=args.epochs,
        max_minutes=args.max_minutes,
        checkpoint_every=args.checkpoint_every,
        mixed_precision=args.mixed_precision,
    )
    accelerator = make_accelerator(preset["mixed_precision"], args.threads)
    out = Path(args.output_dir)
    ckpt_dir = out / "checkpoints"

    if "vae" in preset and not args.vae:
        raise SystemExit(f"preset {preset['name']!r} trains on autoencoder latents: train one first with "
                         f"training/train_vae.py and pass its folder with --vae")
    vae = load_vae(args.vae) if args.vae else None
    check_resolution(preset, latent_factor(vae.config) if vae is not None else 1)  # before minutes of loading
    train_paths, held_out, held_by_category = split_categories(categories, preset["holdout"], seed=args.seed)
    check_held_out(held_by_category, preset["holdout"])
    images = load_images(train_paths, preset["resolution"], read_size(preset))
    if vae is not None:  # the U-Net learns the latents; they are computed once
        preset["latent_resolution"] = preset["resolution"] // latent_factor(vae.config)
        images = encode_images(vae, images)
    steps_per_epoch = math.ceil(len(images) / (preset["batch_size"] * accelerator.num_processes))
    max_steps = args.max_steps
    if max_steps is None and preset.get("epochs"):
        max_steps = preset["epochs"] * steps_per_epoch
    budget_s = preset["max_minutes"] * 60 if preset.get("max_minutes") else None
    if max_steps is None and budget_s is None:
        raise SystemExit("set --epochs, --max-steps or --max-minutes: the run needs an end")

    set_seed(args.seed)  # the same initial weights in every process and on every run
    unet = build_unet(preset, in_channels=images.shape[1])
    optimizer = torch.optim.Adam(unet.parameters(), lr=preset["learning_rate"], weight_decay=preset["weight_decay"])
    ema = EMAModel(unet.parameters(), decay=preset["ema_decay"]) if preset.get("ema_decay") else None
    scheduler = DDADScheduler()

    step, elapsed = 0, 0.0
    shadow: dict[str, torch.Tensor] = {}  # the EMA's weights, restored with the U-Net (a damaged file alike)
    restorable = {"unet": unet, **({"ema": shadow} if ema is not None else {})}
    if restored := resume(ckpt_dir, restorable, optimizer, accelerator.print, args.resume, str(data),
                          lock=accelerator.is_main_process, seed=args.seed):
        state = restored[0]
        step, elapsed = state["step"], state["elapsed_seconds"]
        if ema is not None:
            ema.shadow_params = [shadow[name].clone() for name, _ in unet.named_parameters()]
            ema.optimization_step = state["ema_optimization_step"]

    unet, optimizer = accelerator.prepare(unet, optimizer)
    out.mkdir(parents=True, exist_ok=True)
    progress = TrainingProgress(step, elapsed, max_steps, out / "train_log.jsonl", "loss_per_pixel", "train U-Net",
                                is_main=accelerator.is_main_process)

    def checkpoint(directory: Path = ckpt_dir, keep: int = 2) -> None:
        if accelerator.is_main_process:
            plain = accelerator.unwrap_model(unet)
            modules: dict = {"unet": plain}
            state = {"elapsed_seconds": progress.elapsed, "preset": preset, "category": category, "seed": args.seed,
                     "data": str(data), "categories": [str(p) for p in categories.values()],
                     "processes": accelerator.num_processes, "vae": args.vae, "machine": accelerator.run_info}
            if ema is not None:
                names = [name for name, _ in plain.named_parameters()]
                modules["ema"] = dict(zip(names, ema.shadow_params))
                state["ema_optimization_step"] = ema.optimization_step
            save_checkpoint(directory, progress.step, modules, optimizer.optimizer if hasattr(optimizer, "optimizer")
                            else optimizer, state, keep=keep)
        accelerator.wait_for_everyone()

    unet.train()
    snapshot_s = args.snapshot_minutes * 60 if args.snapshot_minutes else None
    next_snapshot = (math.floor(elapsed / snapshot_s) + 1) * snapshot_s if snapshot_s else None
    with StopOnInterrupt() as stop:
        while True:
            step, elapsed = progress.step, progress.elapsed
            done = progress.reached(max_steps, budget_s) or stop.requested  # a signal: checkpoint this step, exit
            snap = next_snapshot is not None and elapsed >= next_snapshot
            done, snap = broadcast_object_list([done, snap])  # every process acts at the same step
            if snap:
                checkpoint(out / "snapshots", keep=0)
                next_snapshot += snapshot_s
                progress.restart_clock()
            if done:
                break
            x0, t, noise = sample_batch(
                images, step, preset["batch_size"], preset["max_train_timestep"], preset["shift_pixels"],
                args.seed, accelerator.process_index,
            )
            x0, t, noise = x0.to(accelerator.device), t.to(accelerator.device), noise.to(accelerator.device)
            with accelerator.autocast():
                loss = epsilon_loss(unet, scheduler, x0, t, noise)
            stop_if_diverged(accelerator, loss, progress.step)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.step(accelerator.unwrap_model(unet).parameters())
            progress.update(loss.item() / x0[0].numel())
            if progress.step % preset["checkpoint_every"] == 0:
                checkpoint()
                progress.restart_clock()  # checkpoint I/O does not count as training time
    progress.close()
    checkpoint()
    stop.exit_if_requested(progress.step, ckpt_dir, accelerator.print)
    step, elapsed = progress.step, progress.elapsed
    accelerator.print(f"trained {step} steps in {elapsed / 60:.2f} min")

    if accelerator.is_main_process and not args.no_finalize:
        final_unet = accelerator.unwrap_model(unet)
        if ema is not None:
            ema.copy_to(final_unet.parameters())
        finalize_run(
            out, final_unet.eval().float(), preset, data, held_out,
            training={"steps": step, "minutes": round(elapsed / 60, 2), "seed": args.seed, **accelerator.run_info},
            train_paths=train_paths, vae=vae, category=category,
        )
    finish(accelerator)
    return out


if __name__ == "__main__":
    run(main)
