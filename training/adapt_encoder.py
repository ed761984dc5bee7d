"""DDAD's domain adaptation of the feature encoder, on a trained pipeline (method.md, section 1).

    accelerate launch training/adapt_encoder.py --pipeline runs/transistor/pipeline \
        --data ../shared/data/mvtec_ad_256/transistor --output-dir runs/transistor/adapted

Each batch of nominal training images is split into targets ``y`` and inputs ``x'``; the frozen U-Net reconstructs
``x'`` conditioned on ``y`` (``w_DA = 3``) and the encoder ``phi_hat`` learns

    L = sum_l [1 - cos(phi_hat_l(r), phi_hat_l(y))]
        + lambda sum_l [1 - cos(phi_hat_l(y), phi_l(y))] + lambda sum_l [1 - cos(phi_hat_l(r), phi_l(r))]

with the frozen pretrained ``phi``. The adapted pipeline is re-calibrated on the held-out nominal images and saved.
Checkpoints are written atomically each epoch, and on Ctrl-C at the step reached; ``--resume`` continues from the
newest, with the batches the run would have drawn.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate.utils import broadcast_object_list
from tqdm.auto import tqdm

from ddad_hub import DDADPipeline
from ddad_hub.checkpointing import resume, save_checkpoint
from ddad_hub.cli import run
from ddad_hub.data import held_out_split, load_images
from ddad_hub.distributed import make_accelerator
from ddad_hub.model_card import discard_test_results, write_model_card
from ddad_hub.model_info import check_same_product, check_single_product, training_record
from ddad_hub.presets import fill_preset
from ddad_hub.recipe import fit_d3ad, fit_fused_mode, memory_options, recalibrate
from ddad_hub.training import StopOnInterrupt


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", required=True, help="a trained DDADPipeline folder")
    p.add_argument("--data", required=True, help="the category folder it was trained on")
    p.add_argument("--output-dir", required=True, help="where the adapted pipeline (and checkpoints) go")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8, help="images per step, split into targets and inputs")
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--lam", type=float, default=0.1, help="weight of the two terms that keep phi_hat near phi")
    p.add_argument("--w-da", type=float, default=3.0, help="conditioning weight of the reconstructions")
    p.add_argument("--mixed-precision", default="auto", choices=["auto", "no", "bf16", "fp16"],
                   help="'auto': bf16 where the hardware does bf16 natively, else fp32")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per process (default: the cores split between processes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    return p.parse_args(argv)


def cosine_loss(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """Sum over layers of ``1 - cos`` between each image's flattened feature maps, averaged over the batch."""
    return sum((1 - F.cosine_similarity(x.flatten(1).float(), y.flatten(1).float(), dim=1)).mean()
               for x, y in zip(a, b))


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    info = training_record(args.pipeline, required=False)  # a wrong folder is refused before anything loads
    check_single_product(args.pipeline, info, "adapt_encoder.py adapts one product's pipeline (its memory and "
                         "thresholds are refitted from one category folder)")
    check_same_product(args.pipeline, args.data)
    accelerator = make_accelerator(args.mixed_precision, args.threads)
    pipe = DDADPipeline.from_pretrained(args.pipeline)
    pipe.set_progress_bar_config(disable=True)
    train_paths, held_paths = held_out_split(args.data, info.get("held_out_nominal", []))
    images = load_images(train_paths, pipe.sample_size[0], pipe.read_hw[0])

    frozen = pipe.feature_encoder.eval().requires_grad_(False)
    encoder = copy.deepcopy(frozen).requires_grad_(True)
    encoder.eval()  # batch-norm statistics stay those of ImageNet; only the weights adapt
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=args.learning_rate)
    out = Path(args.output_dir)
    ckpt_dir = out / "checkpoints"
    start_epoch, start_step, partial_loss, history = 0, 0, 0.0, []
    if restored := resume(ckpt_dir, {"encoder": encoder}, optimizer, accelerator.print, args.resume, str(args.data),
                          lock=accelerator.is_main_process):
        start_epoch, history = restored[0]["epoch"], restored[0]["history"]
        start_step, partial_loss = restored[0].get("step_in_epoch", 0), restored[0].get("partial_loss", 0.0)
    encoder, optimizer = accelerator.prepare(encoder, optimizer)

    half = max(1, args.batch_size // 2)
    steps = math.ceil(images.shape[0] / (2 * half * accelerator.num_processes))

    def checkpoint(epochs_done: int, step_in_epoch: int = 0, loss_so_far: float = 0.0) -> None:
        if accelerator.is_main_process:  # named by steps over all epochs, so a mid-epoch one sorts in its place
            save_checkpoint(ckpt_dir, epochs_done * steps + step_in_epoch,
                            {"encoder": accelerator.unwrap_model(encoder)},
                            optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer,
                            {"epoch": epochs_done, "step_in_epoch": step_in_epoch, "partial_loss": loss_so_far,
                             "history": history, "data": str(args.data)})
        accelerator.wait_for_everyone()

    with StopOnInterrupt() as stop:
        for epoch in range(start_epoch, args.epochs):
            g = torch.Generator().manual_seed(args.seed * 7919 + epoch)
            order = torch.randperm(images.shape[0], generator=g)
            shard = order[accelerator.process_index :: accelerator.num_processes]
            first = start_step if epoch == start_epoch else 0  # a run resumed mid-epoch skips the steps it took
            total = partial_loss if epoch == start_epoch else 0.0
            bar = tqdm(range(first, steps), initial=first, total=steps, desc=f"adapt encoder, epoch {epoch + 1}/"
                       f"{args.epochs}", disable=not accelerator.is_local_main_process)
            for step in bar:
                if broadcast_object_list([stop.requested])[0]:  # a Ctrl-C: keep the steps of this epoch, then exit
                    bar.close()
                    checkpoint(epoch, step, total)
                    stop.exit_if_requested(epoch * steps + step, ckpt_dir, accelerator.print)
                idx = shard[step * 2 * half : (step + 1) * 2 * half]
                if len(idx) < 2:
                    continue
                n = len(idx) // 2
                y, x_in = images[idx[:n]], images[idx[n : 2 * n]]
                gens = [torch.Generator().manual_seed(args.seed * 1_000_003 + epoch * 10_007 + step * 31 + i)
                        for i in range(n)]
                r = pipe.reconstruct(x_in, target=y, w=args.w_da, generator=gens, show_progress=False)
                y_m, r_m = pipe.resize_to_map(y), pipe.resize_to_map(r)
                with torch.no_grad():
                    ref_y, ref_r = frozen(y_m), frozen(r_m)
                with accelerator.autocast():  # one forward pass, as distributed data parallel expects
                    feats = encoder(torch.cat([y_m, r_m]))
                f_y, f_r = [f[:n] for f in feats], [f[n:] for f in feats]
                loss = cosine_loss(f_r, f_y) + args.lam * (cosine_loss(f_y, ref_y) + cosine_loss(f_r, ref_r))
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                total += loss.item()
                bar.set_postfix(loss=f"{loss.item():.4f}")
            history.append({"epoch": epoch + 1, "mean_loss": total / max(1, steps)})
            accelerator.print(f"epoch {epoch + 1}: mean loss {history[-1]['mean_loss']:.4f}")
            checkpoint(epoch + 1)
        if broadcast_object_list([stop.requested])[0]:  # a Ctrl-C in the last step: its epoch's checkpoint is written
            stop.exit_if_requested(args.epochs * steps, ckpt_dir, accelerator.print)

    folder = out / "pipeline"
    if accelerator.is_main_process:
        pipe.feature_encoder = accelerator.unwrap_model(encoder).eval().requires_grad_(False)
        held_images = load_images(held_paths, pipe.map_hw[0]) if held_paths else None
        held_ids = None
        if pipe.feature_memory is not None and held_images is not None:  # its bank holds the old features
            # refitted with the recipe's memory settings (bank cap, input normalisation...), as training fitted it
            options = memory_options(fill_preset(info["preset"])) if "preset" in info else None
            options = options or {"coreset_ratio": info.get("d3ad", {}).get("coreset_ratio", 0.02)}
            info["d3ad"] = fit_d3ad(pipe, load_images(train_paths, pipe.map_hw[0]), held_images,
                                    t_max_grid=[pipe.config.d3ad_t_max], **options)
            held_ids = info["d3ad"]["memory"]["held_out_ids"]
            if pipe.config.fused_base:  # the memory and the encoder changed, so did fused mode's statistics
                info.update(fit_fused_mode(pipe, held_images, info["d3ad"]["memory"]))  # and all modes' objectives
        calibration = recalibrate(pipe, held_images, held_ids, nominal_unet_size=load_images(
            held_paths, pipe.sample_size[0], pipe.read_hw[0])) if held_images is not None else {}
        pipe.save_pretrained(folder)
        discard_test_results(folder)  # an adaptation run again into the same --output-dir
        info["adaptation"] = {"epochs": len(history), "lambda": args.lam, "w_da": args.w_da,
                              "learning_rate": args.learning_rate, "history": history, "calibration": calibration}
        (folder / "training_info.json").write_text(json.dumps(info, indent=2, default=str))
        if "preset" in info:
            write_model_card(folder)
        accelerator.print(f"adapted pipeline written to {folder}")
    accelerator.wait_for_everyone()
    return folder


if __name__ == "__main__":
    run(main)
