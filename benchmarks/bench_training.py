"""Training throughput of a preset's U-Net step (images per second), fp32 against bf16 autocast.

    python benchmarks/bench_training.py --output benchmarks/results/training

The step is the training script's own (``ddad_hub.training``): sample a batch, noise it, epsilon loss, backward,
Adam step. Median over ``--steps`` steps after warm-up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path

import torch

from ddad_hub.models.unet import build_unet
from ddad_hub.presets import load_preset
from ddad_hub.schedulers import DDADScheduler
from ddad_hub.training import epsilon_loss, sample_batch


def measure(preset: dict, dtype: torch.dtype | None, steps: int, warmup: int = 3) -> dict:
    torch.manual_seed(0)
    unet = build_unet(preset).train()
    opt = torch.optim.Adam(unet.parameters(), lr=preset["learning_rate"], weight_decay=preset["weight_decay"])
    scheduler = DDADScheduler()
    size = preset["resolution"]
    images = torch.rand(64, 3, size, size) * 2 - 1
    times = []
    for step in range(warmup + steps):
        x0, t, noise = sample_batch(images, step, preset["batch_size"], preset["max_train_timestep"],
                                    preset["shift_pixels"], 0, 0)
        start = time.perf_counter()
        ctx = torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with ctx:
            loss = epsilon_loss(unet, scheduler, x0, t, noise)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    med = statistics.median(times)
    return {"seconds_per_step": med, "images_per_second": preset["batch_size"] / med,
            "spread": [min(times), max(times)]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--quick", action="store_true")
    p.add_argument("--output", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    preset = load_preset(args.preset)
    steps = 3 if args.quick else args.steps
    rows = {name: measure(preset, dtype, steps) for name, dtype in (("fp32", None), ("bf16", torch.bfloat16))}
    lines = [f"Training step of the `{args.preset}` preset ({preset['resolution']} px, batch {preset['batch_size']}, "
             f"{args.threads} thread(s)):", "", "| precision | s/step (median) | images/s | min-max s/step |",
             "|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['seconds_per_step']:.3f} | {r['images_per_second']:.1f} | "
                     f"{r['spread'][0]:.3f}-{r['spread'][1]:.3f} |")
    ratio = rows["bf16"]["images_per_second"] / rows["fp32"]["images_per_second"]
    lines.append(f"\nbf16 / fp32 throughput: {ratio:.2f}x")
    text = "\n".join(lines)
    print(text)
    if args.output:
        stem = Path(args.output)
        stem.parent.mkdir(parents=True, exist_ok=True)
        stem.with_suffix(".json").write_text(json.dumps(rows, indent=2))
        stem.with_suffix(".md").write_text(text + "\n")


if __name__ == "__main__":
    main()
