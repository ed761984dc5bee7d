"""The feature memory alone: its accuracy and its fit cost, per category, encoder padding and pooling border.

    python benchmarks/bench_memory.py --data ../shared/data/mvtec_ad_256/transistor ../shared/data/mtd/magnetic_tile \
        --padding same symmetric --pooling-pad zeros exclude --threads 1

The memory is fitted as the recipe fits it (``ddad_hub.recipe.fit_memory``: every training image, a greedy coreset
of 10% of the patches, at most ``--max-patches`` entries picked among at most ``--max-candidates`` patches), on the
ImageNet EfficientNet-Lite0 encoder at 256 px (``--padding``: its strided convolutions padded as the weights were
trained, ``same``, or as encoders saved before that option, ``symmetric``), and scored on the whole test set. Fit
cost is CPU seconds (user + system of this process), so a busy machine does not inflate it. Writes
``benchmarks/results/memory.{json,md}``.

``--bank-sizes`` measures accuracy against the bank's size instead: one fit with the largest size, then each size
scored with the first picks of that greedy coreset, which is exactly the coreset of that size (each pick depends
only on the picks before it):

    python benchmarks/bench_memory.py --data ../shared/data/mtd/magnetic_tile --pooling-pad zeros --threads 2 \
        --bank-sizes 3500 5000 7500 10000 15000 20000 30000 --output benchmarks/results/memory_bank_size
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from results_io import write_results  # noqa: E402

from ddad_hub.data import find_categories, list_test_items, list_train_images, load_images, load_mask  # noqa: E402
from ddad_hub.hardware import machine_summary  # noqa: E402
from ddad_hub.metrics import format_metric, summarize  # noqa: E402
from ddad_hub.models.backbones.efficientnet_lite import PADDINGS  # noqa: E402
from ddad_hub.models.feature_encoder import FeatureEncoder  # noqa: E402
from ddad_hub.models.feature_memory import FeatureMemory  # noqa: E402


def load_test_set(folder: Path) -> dict:
    """A category's test images at 256 px with their masks, types and pixel-label flags, read once per category."""
    items = list_test_items(folder)
    return {"images": load_images([it.image for it in items], 256),
            "masks": np.stack([load_mask(it.mask, (256, 256)) for it in items]),
            "types": [it.defect_type for it in items],
            "pixel_labelled": np.array([it.has_pixel_labels for it in items])}


def evaluate(memory: FeatureMemory, encoder: FeatureEncoder, test: dict, batch_size: int = 16) -> dict:
    images = test["images"]
    maps = torch.cat([memory.anomaly_maps(encoder, images[s : s + batch_size])[0]
                      for s in range(0, images.shape[0], batch_size)]).numpy()
    scores = maps.reshape(len(maps), -1).max(1)
    return summarize(scores, maps, test["masks"], test["types"], test["pixel_labelled"])["all"]


def first_picks(memory: FeatureMemory, size: int) -> FeatureMemory:
    """The memory with only the first ``size`` entries of its (one-group) greedy coreset, kept in pick order."""
    if size >= memory.bank.shape[0]:
        return memory
    part = FeatureMemory.from_config({**memory.config, "num_patches": size})
    part.bank.copy_(memory.bank[:size])
    return part.eval()


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", required=True, help="category folders")
    p.add_argument("--padding", nargs="+", default=["same"], choices=list(PADDINGS),
                   help="the encoder's padding of strided convolutions")
    p.add_argument("--pooling-pad", nargs="+", default=["zeros", "exclude"], choices=["zeros", "exclude"])
    p.add_argument("--coreset-ratio", type=float, default=0.1)
    p.add_argument("--max-patches", type=int, default=10000)
    p.add_argument("--max-candidates", type=int, default=250000)
    p.add_argument("--bank-sizes", type=int, nargs="+", default=None,
                   help="score these bank sizes (prefixes of one coreset) instead of --max-patches alone")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--output", default=None, help="path stem for .json and .md results (default: print only; the "
                   "table in docs/results.md is benchmarks/results/memory)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    machine = machine_summary()
    print(machine)
    encoders = {pad: FeatureEncoder.from_imagenet("efficientnet_lite0", (8, 16), padding=pad) for pad in args.padding}
    sizes = sorted(args.bank_sizes or [args.max_patches])
    rows = []
    for name, folder in find_categories(args.data).items():
        train = load_images(list_train_images(folder), 256)
        test = load_test_set(folder)
        for (padding, encoder), pad in itertools.product(encoders.items(), args.pooling_pad):
            cpu, wall = time.process_time(), time.perf_counter()
            memory = FeatureMemory.fit(encoder, train, coreset_ratio=args.coreset_ratio, max_patches=sizes[-1],
                                       max_candidates=args.max_candidates, pooling_pad=pad)
            fit = {"fit_cpu_minutes": (time.process_time() - cpu) / 60,
                   "fit_wall_minutes": (time.perf_counter() - wall) / 60}
            for size in sizes:
                part = first_picks(memory, size)
                row = {"category": name, "padding": padding, "pooling_pad": pad, "train_images": int(train.shape[0]),
                       "bank": int(part.bank.shape[0]), **fit, **evaluate(part, encoder, test)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    cap = f"banks of {args.bank_sizes} entries" if args.bank_sizes else f"at most {args.max_patches} entries"
    lines = [f"Feature memory alone ({machine}; coreset {args.coreset_ratio:.0%}, {cap} "
             f"among at most {args.max_candidates} candidate patches, {args.threads} thread(s); fit cost: the "
             "largest bank's)", "",
             "| category | encoder padding | pooling border | training images | bank | fit CPU-min | image AUROC | "
             "pixel AUROC | AUPRO |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['category']} | {r['padding']} | {r['pooling_pad']} | "
                     f"{r['train_images']} | {r['bank']} | "
                     f"{r['fit_cpu_minutes']:.1f} | {format_metric(r['image_auroc'])} | "
                     f"{format_metric(r['pixel_auroc'])} | {format_metric(r['aupro'])} |")
    if args.output:
        write_results(args.output, {"machine": machine, "args": vars(args), "rows": rows}, "\n".join(lines))
    print("\n".join(lines))
    return rows


if __name__ == "__main__":
    main()
