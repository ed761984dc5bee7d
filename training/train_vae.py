"""Train the small KL autoencoder whose latent space D3AD mode diffuses in, on one category's nominal images.

    accelerate launch training/train_vae.py --data ../shared/data/mvtec_ad_256/transistor \
        --output-dir runs/transistor-latent --preset cpu_latent

The preset's ``vae`` entry sizes the model and the run. It trains on random crops (``vae.crop``; cheaper steps) with
an L1 loss and a small KL term. The model has no attention, but its group norms take statistics over what they
see, so a crop is not exactly a piece of a whole image: the script reports the error on whole images at the end
(on transistor, 64 px crops of 128 px images: 0.038 whole against 0.047 on crops after 250 steps). At the
end the latent scale (``1 / std`` of the nominal latents) is fitted and the model is saved as a diffusers
``AutoencoderKL`` folder, ``<output-dir>/vae``, which ``train_unet.py --vae`` takes. Online users can pass a
pretrained one instead (e.g. ``stabilityai/sd-vae-ft-mse``, an 8x autoencoder). Checkpoints are written atomically;
``--resume`` continues from the newest one with the same batches.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from accelerate.utils import broadcast_object_list, set_seed

from ddad_hub.checkpointing import resume, save_checkpoint
from ddad_hub.cli import run
from ddad_hub.data import categories_label, find_categories, load_images, read_size, split_categories
from ddad_hub.distributed import finish, make_accelerator
from ddad_hub.models.autoencoder import build_vae, fit_scaling_factor
from ddad_hub.presets import PRESETS, load_preset, preset_section
from ddad_hub.training import (
    AutoencoderObjective,
    StopOnInterrupt,
    TrainingProgress,
    autoencoder_loss,
    sample_crops,
    stop_if_diverged,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, nargs="+",
                   help="MVTec-layout category folders (with train/good), or parent folders of categories; several "
                        "categories are trained on as one nominal set")
    p.add_argument("--output-dir", required=True, help="where checkpoints and the autoencoder (vae/) go")
    p.add_argument("--preset", default="cpu_latent", help=f"one of {PRESETS} with a 'vae' entry, or a .json file")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--max-minutes", type=float, default=None, help="default: the preset's vae.max_minutes")
    p.add_argument("--mixed-precision", default=None, choices=["auto", "no", "bf16", "fp16"],
                   help="default: the preset's, 'auto' (bf16 where the hardware does bf16 natively)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per process (default: the cores split between processes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output-dir")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    categories = find_categories(args.data)
    data = ", ".join(str(p) for p in categories.values())
    preset = load_preset(args.preset, categories_label(categories), mixed_precision=args.mixed_precision)
    spec = preset_section(preset, "vae", "cpu_latent", args.max_minutes)
    accelerator = make_accelerator(preset["mixed_precision"], args.threads)
    out = Path(args.output_dir)
    ckpt_dir = out / "vae_checkpoints"

    # The same split as train_unet.py, so the held-out images stay unseen by every component.
    train_paths, _, _ = split_categories(categories, preset["holdout"], seed=args.seed)
    images = load_images(train_paths, preset["resolution"], read_size(preset))
    max_steps = args.max_steps
    budget_s = spec["max_minutes"] * 60 if spec.get("max_minutes") else None
    if max_steps is None and budget_s is None:
        raise SystemExit("set --max-steps or --max-minutes: the run needs an end")

    set_seed(args.seed)
    vae = build_vae(preset)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=spec["learning_rate"], weight_decay=0.0)
    step, elapsed = 0, 0.0
    if restored := resume(ckpt_dir, {"vae": vae}, optimizer, accelerator.print, args.resume, str(data),
                          lock=accelerator.is_main_process, seed=args.seed):
        step, elapsed = restored[0]["step"], restored[0]["elapsed_seconds"]
    objective, optimizer = accelerator.prepare(AutoencoderObjective(vae), optimizer)
    out.mkdir(parents=True, exist_ok=True)
    progress = TrainingProgress(step, elapsed, max_steps, out / "vae_log.jsonl", "l1", "train VAE",
                                is_main=accelerator.is_main_process)

    def checkpoint() -> None:
        if accelerator.is_main_process:
            state = {"elapsed_seconds": progress.elapsed, "preset": preset, "seed": args.seed, "data": str(data)}
            plain_opt = optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer
            save_checkpoint(ckpt_dir, progress.step, {"vae": vae}, plain_opt, state)
        accelerator.wait_for_everyone()

    objective.train()
    with StopOnInterrupt() as stop:
        while True:
            done = progress.reached(max_steps, budget_s) or stop.requested  # a signal: checkpoint this step, exit
            if broadcast_object_list([done])[0]:
                break
            x, g = sample_crops(images, progress.step, spec["batch_size"], spec["crop"], args.seed,
                                accelerator.process_index)
            with accelerator.autocast():
                loss, l1 = autoencoder_loss(objective, x.to(accelerator.device), spec["kl_weight"], generator=g)
            stop_if_diverged(accelerator, loss, progress.step)  # the whole loss: its KL term too
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            progress.update(l1.item())
            if progress.step % spec["checkpoint_every"] == 0:
                checkpoint()
                progress.restart_clock()
    progress.close()
    checkpoint()
    stop.exit_if_requested(progress.step, ckpt_dir, accelerator.print)
    step, elapsed = progress.step, progress.elapsed
    accelerator.print(f"trained {step} steps in {elapsed / 60:.2f} min")

    if accelerator.is_main_process:
        final = vae.eval().float()
        final.register_to_config(scaling_factor=fit_scaling_factor(final, images))
        final.save_pretrained(out / "vae", safe_serialization=True)
        with torch.no_grad():
            sample = images[: min(16, len(images))]
            error = (final(sample).sample - sample).abs().mean().item()
        info = {"steps": step, "minutes": round(elapsed / 60, 2), "l1_train_images": error,
                "scaling_factor": final.config.scaling_factor, "preset": preset["name"], **accelerator.run_info,
                "params": f"{sum(p.numel() for p in final.parameters()) / 1e6:.1f}M"}
        (out / "vae" / "training_info.json").write_text(json.dumps(info, indent=2))
        accelerator.print(f"autoencoder written to {out / 'vae'}: L1 {error:.4f} on whole training images "
                          f"(range [-1, 1]), scaling factor {final.config.scaling_factor:.4f}")
    finish(accelerator)
    return out / "vae"


if __name__ == "__main__":
    run(main)
