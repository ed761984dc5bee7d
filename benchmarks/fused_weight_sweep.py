"""How far fused mode's image and pixel AUROC can move on one product: every memory weight, on test labels.

    python benchmarks/fused_weight_sweep.py --pipeline models/ddad-multiclass-cpu-latent \
        --data ../shared/data/mvtec3d_256/tire --threads 2

A feasibility check, not a setting: it reads the test labels to show the range of image AUROC the pipeline's two
maps allow (reconstruction map of ``fused_base``, or of ``--base``, and memory map; normalised with the pipeline's
own statistics), for the memory weights 0..1 of the weighted sum and for the maximum, a high quantile or the mean
of the map as image score, with the pixel AUROC of each weight's map. Per-product normalisation statistics would
only move the weight within a product, so they are covered too. The column "sum of maxima" fuses scores instead of
maps: the same weighted sum of the two normalised maps' maxima (never below the maximum of the fused map, equal to
it where both peaks fall on one pixel). Below the table, a paired bootstrap of the image AUROC of fused mode (the
pipeline's rule and weight on this base) minus that of the memory alone. Prints a table; ``--save`` also writes it
to ``benchmarks/results/fused_weight_sweep_<category>[_<base>].md``, where the tables in docs/ come from.

With ``--held-out`` the same table is measured where the recipe measures, without test labels: on the pipeline's
held-out nominal training images and synthetic defects made from them (``ddad_hub.recipe``), the memory refitted
with the recipe's settings and those images left out of its bank (a few minutes), written with the suffix
``_held_out``. Set beside the test table, it shows which image scores the recipe could have chosen.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ddad_hub.anomaly_map import fuse_maps, image_scores, normalize_map  # noqa: E402
from ddad_hub.data import held_out_split, list_test_items, load_images, load_mask, to_unit_range  # noqa: E402
from ddad_hub.hardware import machine_summary  # noqa: E402
from ddad_hub.metrics import image_auroc, paired_auroc_difference, pixel_auroc  # noqa: E402
from ddad_hub.pipelines.loading import load_pipeline  # noqa: E402
from ddad_hub.recipe import _synthetic_set, fit_memory, memory_options  # noqa: E402

WEIGHTS = (0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
SCORES = {"max": lambda m: m.amax(1), "q99.9": lambda m: torch.quantile(m, 0.999, dim=1),
          "q99": lambda m: torch.quantile(m, 0.99, dim=1), "mean": lambda m: m.mean(1)}


def held_out_set(pipe, pipeline: str, data: str):
    """The recipe's held-out images and synthetic defects (in [0, 1]), their labels and masks, and the context in
    which the refitted memory scores them with the held-out images left out of its bank."""
    info = json.loads((Path(pipeline) / "training_info.json").read_text())
    if info.get("categories"):
        raise SystemExit("--held-out needs a one-product pipeline: a multi-class one holds out images of each product")
    train_paths, held_out = held_out_split(data, info["held_out_nominal"])
    if not held_out:
        raise SystemExit(f"none of the pipeline's held-out images is in {data}")
    options = memory_options(info["preset"])
    options["input_norm"] = pipe.feature_memory.config.input_norm  # the candidate the recipe kept
    bins = pipe.feature_memory.config.score_bins
    nominal = load_images(held_out, pipe.map_hw[0])
    fit = fit_memory(pipe, load_images(train_paths, pipe.map_hw[0]), nominal, **options)
    pipe.feature_memory.register_to_config(score_bins=bins)  # D3AD's bins, as the recipe fitted them
    defective, masks, labels = _synthetic_set(pipe, nominal, seed=0)
    images = to_unit_range(torch.cat([nominal, defective]))
    what = f"held-out images ({len(held_out)} nominal + as many synthetic defects)"
    return images, labels.astype(bool), masks, pipe.feature_memory.leaving_out(fit["held_out_ids"]), what


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", required=True)
    p.add_argument("--data", required=True, help="one category folder")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--base", default=None, help="the reconstruction mode to fuse (default: the pipeline's fused_base)")
    p.add_argument("--held-out", action="store_true",
                   help="held-out nominal training images and synthetic defects instead of the test set")
    p.add_argument("--save", action="store_true",
                   help="also write the table to benchmarks/results/ (overwriting the committed one of that name)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.pipeline)
    pipe.set_progress_bar_config(disable=True)
    if "fused" not in pipe.available_modes():
        raise SystemExit(f"{args.pipeline} has no fused mode to sweep")
    base = args.base or pipe.config.fused_base
    if args.held_out:
        images, labels, masks, leaving_out, what = held_out_set(pipe, args.pipeline, args.data)
    else:
        items = list_test_items(args.data)
        labels = np.array([it.defect_type != "good" for it in items])
        masks = np.stack([load_mask(it.mask, pipe.map_hw) for it in items])
        images = to_unit_range(load_images([it.image for it in items], max(pipe.sample_size[0], pipe.map_hw[0])))
        leaving_out, what = contextlib.nullcontext(), "test images"
    recon, memory = [], []
    with leaving_out:
        for s in range(0, len(images), args.batch_size):
            chunk = images[s : s + args.batch_size]
            recon.append(pipe(chunk, mode=base, output_type="pt", per_category_thresholds=False).anomaly_maps)
            memory.append(pipe.memory_maps(pipe.preprocess(chunk, size=pipe.map_hw)[0])[0])
    stats = pipe.config.fused_stats
    recon, memory = torch.cat(recon), torch.cat(memory)
    rows = [f"{Path(args.data).name}, {len(images)} {what}, {args.pipeline} (fused base {base}; the pipeline "
            f"fuses {pipe.config.fused_base} with memory weight {pipe.config.fused_weight}); {machine_summary()}", "",
            "| memory weight | " + " | ".join(SCORES) + " | sum of maxima | pixel AUROC |",
            "|---" * (len(SCORES) + 3) + "|"]
    peak_r = image_scores(normalize_map(recon, stats[base]))
    peak_m = image_scores(normalize_map(memory, stats["memory"]))
    for w in WEIGHTS:
        fused = fuse_maps(recon, memory, stats[base], stats["memory"], "sum", w).flatten(1)
        rows.append(f"| {w:.1f} | " + " | ".join(f"{image_auroc(f(fused).numpy(), labels):.4f}"
                                                 for f in SCORES.values())
                    + f" | {image_auroc(((1 - w) * peak_r + w * peak_m).numpy(), labels):.4f}"
                    + f" | {pixel_auroc(fused.view(len(images), *pipe.map_hw).numpy(), masks):.4f} |")
    shipped = image_scores(fuse_maps(recon, memory, stats[base], stats["memory"], pipe.config.fused_rule,
                                     pipe.config.fused_weight))
    rounds = 2000
    diff = paired_auroc_difference(shipped.numpy(), image_scores(memory).numpy(), labels, rounds=rounds)
    rows += ["", f"Fused ({base}, rule {pipe.config.fused_rule}, memory weight {pipe.config.fused_weight}, maximum) "
             f"minus memory alone, image AUROC: {diff['difference']:+.4f}, paired bootstrap ({rounds} rounds) standard "
             f"error {diff['se']:.4f}, 95% interval [{diff['ci95'][0]:+.4f}, {diff['ci95'][1]:+.4f}], fused ahead in "
             f"{100 * diff['share_ahead']:.0f}% of rounds"]
    table = "\n".join(rows)
    suffix = (f"_{args.base}" if args.base else "") + ("_held_out" if args.held_out else "")
    if args.save:
        out = REPO / "benchmarks" / "results" / f"fused_weight_sweep_{Path(args.data).name}{suffix}.md"
        out.write_text("Image AUROC of the fused map per memory weight (rows) and image score (columns), and its "
                       "pixel AUROC\n\n" + table + "\n")
    print(table)
    return table


if __name__ == "__main__":
    main()
