"""Train DiAD's semantic-guided network and the denoiser's up path on several categories' nominal images.

    accelerate launch training/train_diad.py --pipeline runs/multi/pipeline \
        --data ../shared/data/mvtec_ad_256/transistor ../shared/data/mvtec_ad_256/bottle \
               ../shared/data/mvtec3d_256/tire ../shared/data/mtd/magnetic_tile \
        --output-dir runs/multi-diad --preset cpu_diad

``--pipeline`` is the multi-class latent ``DDADPipeline`` that ``train_unet.py --vae`` made on the same categories
(its U-Net plays the role of Stable Diffusion's pretrained weights in DiAD); ``--unet-run`` takes that run's newest
checkpoint instead, so DiAD can train while the baseline pipeline is still being calibrated. Its input layers,
down path and middle block stay frozen; a copy of them becomes the SG network, which trains with the U-Net's up
path on the epsilon loss at every timestep (DiAD rebuilds from full noise). Checkpoints are atomic; ``--resume``
continues with the same batches (and, once the budget is spent, only finalises again). At the end a
``DiADPipeline`` is saved to ``<output-dir>/pipeline``, calibrated by ``ddad_hub.recipe.finalize_diad`` on the
held-out nominal images of all categories: DiAD's threshold and, when the preset fits a feature memory (its
"memory" entry), fused mode (DiAD's map plus the memory's), the default mode and per-product thresholds.
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate.utils import broadcast_object_list, set_seed
from diffusers import AutoencoderKL, UNet2DModel

from ddad_hub.checkpointing import latest_checkpoint, resume, save_checkpoint
from ddad_hub.cli import run
from ddad_hub.data import (
    categories_label,
    check_held_out,
    find_categories,
    load_images,
    nominal_id,
    read_size,
    split_categories,
)
from ddad_hub.distributed import finish, make_accelerator
from ddad_hub.model_card import discard_test_results, write_diad_model_card
from ddad_hub.models.autoencoder import encode_images, latent_factor
from ddad_hub.models.feature_encoder import FeatureEncoder
from ddad_hub.models.semantic_guided import GuidedDenoiser, SemanticGuidedNetwork
from ddad_hub.models.unet import unet_from_checkpoint
from ddad_hub.pipelines.loading import load_pipeline
from ddad_hub.pipelines.pipeline_diad import DiADPipeline
from ddad_hub.presets import PRESETS, load_preset, preset_section
from ddad_hub.recipe import autoencoder_info, finalize_diad, synthetic_defects
from ddad_hub.schedulers import DDADScheduler
from ddad_hub.training import StopOnInterrupt, TrainingProgress, epsilon_loss, sample_batch, stop_if_diverged


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    base = p.add_mutually_exclusive_group(required=True)
    base.add_argument("--pipeline", help="the multi-class latent DDADPipeline folder (U-Net + vae)")
    base.add_argument("--unet-run", help="or a train_unet.py output folder: its newest checkpoint (EMA weights)")
    p.add_argument("--data", required=True, nargs="+", help="category folders, or parent folders of categories")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--preset", default="cpu_diad", help=f"one of {PRESETS} with a 'diad' entry, or a .json file")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--max-minutes", type=float, default=None, help="default: the preset's diad.max_minutes")
    p.add_argument("--mixed-precision", default=None, choices=["auto", "no", "bf16", "fp16"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output-dir")
    p.add_argument("--guidance-defects", type=float, default=None,
                   help="share of training images whose guidance image gets a synthetic defect while the target "
                        "latent stays clean (default: the preset's diad.guidance_defects, 0 = DiAD as published)")
    return p.parse_args(argv)


def pack(latents: torch.Tensor, images: torch.Tensor, scale: int) -> torch.Tensor:
    """Latents and their images as one tensor on the latent grid (images pixel-unshuffled into channels), so
    :func:`sample_batch` draws matching pairs as a pure function of the step."""
    size = tuple(s * scale for s in latents.shape[-2:])
    if tuple(images.shape[-2:]) != size:
        images = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
    return torch.cat([latents, F.pixel_unshuffle(images, scale)], dim=1)


def unpack(batch: torch.Tensor, latent_channels: int, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    return batch[:, :latent_channels], F.pixel_shuffle(batch[:, latent_channels:], scale)


def corrupt_guidance(images: torch.Tensor, share: float, seed: int) -> torch.Tensor:
    """A copy of the guidance ``images`` in which about ``share`` of them carry one of the recipe's synthetic
    defects, as a pure function of ``seed``.

    Trained on clean images only, the SG network can learn to pass its input, defects included, through to the
    denoiser (``benchmarks/diad_diagnostic.py`` measures it). With a defective guidance image and the clean latent
    as target, copying a defect costs loss. An option of this project; DiAD trains on clean images.
    """
    if share <= 0:
        return images
    broken, _ = synthetic_defects(images.detach().float().cpu(), seed=seed)
    pick = torch.rand(images.shape[0], generator=torch.Generator().manual_seed(seed)) < share
    return torch.where(pick.view(-1, 1, 1, 1).to(images.device), broken.to(images.device, images.dtype), images)


def load_base(args: argparse.Namespace) -> tuple[UNet2DModel, AutoencoderKL, str]:
    """The pretrained denoiser and its autoencoder, from a pipeline folder or a train_unet.py run."""
    if args.pipeline:
        base = load_pipeline(args.pipeline)
        unet, vae, source = base.unet, base.vae, args.pipeline
    else:
        ckpt = latest_checkpoint(Path(args.unet_run) / "checkpoints")
        if ckpt is None:
            raise SystemExit(f"no checkpoint in {args.unet_run}/checkpoints")
        unet, vae, _, _ = unet_from_checkpoint(ckpt)
        source = str(ckpt)
    if vae is None:
        raise SystemExit(f"{source} has no autoencoder: DiAD here works on latents (train_unet.py --vae)")
    return unet.float(), vae, source


def build_diad(vae: AutoencoderKL, sg_network: SemanticGuidedNetwork, unet: UNet2DModel, preset: dict) -> DiADPipeline:
    """A DiADPipeline from the trained networks and the base pipeline's autoencoder, with the preset's settings."""
    spec = preset["diad"]
    encoder = FeatureEncoder.from_imagenet(preset["feature_backbone"], tuple(spec["feature_strides"]))
    scheduler = DDADScheduler(start_step=spec["start_step"], skip=spec["skip"], eta=0.0, w=0.0)
    return DiADPipeline(unet=unet, sg_network=sg_network, scheduler=scheduler, feature_encoder=encoder, vae=vae,
                        map_size=preset.get("map_size"), blur_sigma=spec.get("blur_sigma", 4.0), seed=0)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    categories = find_categories(args.data)
    preset = load_preset(args.preset, categories_label(categories), mixed_precision=args.mixed_precision)
    spec = preset_section(preset, "diad", "cpu_diad", args.max_minutes)
    if args.guidance_defects is not None:
        spec["guidance_defects"] = args.guidance_defects
    guidance_defects = float(spec.get("guidance_defects", 0.0))
    accelerator = make_accelerator(preset["mixed_precision"], args.threads)
    out = Path(args.output_dir)
    ckpt_dir = out / "diad_checkpoints"

    unet, vae, source = load_base(args)
    side = unet.config.sample_size  # an int, or (height, width)
    h, w = (side, side) if isinstance(side, int) else tuple(side)
    base_h, base_w = h * latent_factor(vae.config), w * latent_factor(vae.config)  # the image size the base runs at
    if (base_h, base_w) != (preset["resolution"],) * 2:
        shown = f"{base_h}" if base_h == base_w else f"{base_h}x{base_w}"
        raise SystemExit(f"preset {preset['name']!r} trains at {preset['resolution']} px, but {source} works at "
                         f"{shown} px: the SG network would learn another size than the pipeline runs at"
                         + (f"; pass a preset .json file with \"resolution\": {base_h}" if base_h == base_w else
                            " (DiAD here trains square images)"))
    # the same split as train_vae.py / train_unet.py: held-out images stay unseen by every component
    train_paths, held_out, held_by_category = split_categories(categories, preset["holdout"], seed=args.seed)
    check_held_out(held_by_category, preset["holdout"])
    images = load_images(train_paths, preset["resolution"], read_size(preset))
    latents = encode_images(vae, images)

    set_seed(args.seed)
    sg = SemanticGuidedNetwork.from_unet(unet, hint_channels=tuple(spec["sg_hint_channels"]),
                                         hint_strides=tuple(spec["sg_hint_strides"]))
    scale = sg.hint_scale()
    batches = pack(latents, images, scale)
    model = GuidedDenoiser(unet, sg)
    trainable = model.freeze_encoder_half()
    optimizer = torch.optim.AdamW(trainable, lr=spec["learning_rate"], weight_decay=0.0)
    scheduler = DDADScheduler()
    max_steps = args.max_steps
    budget_s = spec["max_minutes"] * 60 if spec.get("max_minutes") else None
    if max_steps is None and budget_s is None:
        raise SystemExit("set --max-steps or --max-minutes: the run needs an end")

    step, elapsed = 0, 0.0
    if restored := resume(ckpt_dir, {"unet": unet, "sg_network": sg}, optimizer, accelerator.print, args.resume,
                          ", ".join(map(str, categories.values())), lock=accelerator.is_main_process, seed=args.seed):
        step, elapsed = restored[0]["step"], restored[0]["elapsed_seconds"]
    model, optimizer = accelerator.prepare(model, optimizer)
    out.mkdir(parents=True, exist_ok=True)
    progress = TrainingProgress(step, elapsed, max_steps, out / "diad_log.jsonl", "loss_per_latent", "train DiAD",
                                is_main=accelerator.is_main_process)

    def checkpoint() -> None:
        if accelerator.is_main_process:
            state = {"elapsed_seconds": progress.elapsed, "preset": preset, "seed": args.seed,
                     "categories": {k: str(v) for k, v in categories.items()}, "base": source,
                     "data": ", ".join(map(str, categories.values()))}
            plain_opt = optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer
            save_checkpoint(ckpt_dir, progress.step, {"unet": unet, "sg_network": sg}, plain_opt, state)
        accelerator.wait_for_everyone()

    model.train()
    latent_channels = latents.shape[1]
    with StopOnInterrupt() as stop:
        while True:
            done = progress.reached(max_steps, budget_s) or stop.requested  # a signal: checkpoint this step, exit
            if broadcast_object_list([done])[0]:
                break
            batch, t, noise = sample_batch(batches, progress.step, spec["batch_size"],
                                           scheduler.config.num_train_timesteps, 0, args.seed,
                                           accelerator.process_index)
            x0, hint = unpack(batch.to(accelerator.device), latent_channels, scale)
            hint = corrupt_guidance(hint, guidance_defects, seed=(args.seed * 1_000_003 + progress.step) * 17
                                    + accelerator.process_index)
            noise = noise[:, :latent_channels].to(accelerator.device)
            with accelerator.autocast():
                loss = epsilon_loss(functools.partial(model, image=hint), scheduler, x0, t.to(accelerator.device),
                                    noise)
            stop_if_diverged(accelerator, loss, progress.step)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            progress.update(loss.item() / x0[0].numel())
            if progress.step % spec["checkpoint_every"] == 0:
                checkpoint()
                progress.restart_clock()
    progress.close()
    checkpoint()
    stop.exit_if_requested(progress.step, ckpt_dir, accelerator.print)
    accelerator.print(f"trained {progress.step} steps in {progress.minutes:.1f} min")

    if accelerator.is_main_process:
        pipe = build_diad(vae, sg.eval().float(), unet.eval().float(), preset)
        pipe.set_progress_bar_config(disable=True)
        fitted = finalize_diad(pipe, train_paths, held_out, preset)
        folder = out / "pipeline"
        pipe.save_pretrained(folder)
        discard_test_results(folder)  # a finished run finalised again (--resume): the old results measured another
        info = {
            "preset": preset, "category": categories_label(categories),
            "categories": {k: str(v) for k, v in categories.items()}, "data": ", ".join(map(str, categories.values())),
            "held_out_nominal": [nominal_id(p) for p in held_out], "base_denoiser": source,
            "training": {"steps": progress.step, "minutes": round(progress.minutes, 2), "seed": args.seed,
                         "guidance_defects": guidance_defects, **accelerator.run_info},
            "sg_params": f"{sum(p.numel() for p in sg.parameters()) / 1e6:.1f}M",
            "unet_params": f"{sum(p.numel() for p in unet.parameters()) / 1e6:.1f}M",
            "autoencoder": autoencoder_info(vae), **fitted,
        }
        (folder / "training_info.json").write_text(json.dumps(info, indent=2, default=str))
        write_diad_model_card(folder)
        accelerator.print(f"DiAD pipeline written to {folder}; default mode {pipe.config.mode}")
    finish(accelerator)
    return out / "pipeline"


if __name__ == "__main__":
    run(main)
