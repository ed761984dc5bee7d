"""Give a trained DDAD pipeline its D3AD and fused modes: the feature memory, the per-image noise-level rule and
the fusion of the maps.

    python training/fit_d3ad.py --pipeline runs/transistor/pipeline --data ../shared/data/mvtec_ad_256/transistor

The memory's histogram bins come from the held-out good images' scores and the
largest start step on held-out images with synthetic defects (the same recipe, with the run's preset's memory
settings, that ``train_unet.py`` runs when its preset has a ``d3ad`` entry); fused mode's statistics, rule and
threshold follow. The memory takes every training
image, the held-out ones included (their statistics are cross-fitted). The folder is updated in place.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ddad_hub import DDADPipeline
from ddad_hub.cli import run
from ddad_hub.data import held_out_split, load_images
from ddad_hub.model_card import discard_test_results, write_model_card
from ddad_hub.model_info import check_same_product, check_single_product, training_record
from ddad_hub.presets import fill_preset
from ddad_hub.recipe import fit_d3ad, fit_fused_mode, memory_options


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--t-max", type=int, nargs="+", default=None,
                   help="candidates for the largest step (default: the preset's, else 80 200 400)")
    p.add_argument("--coreset-ratio", type=float, default=None, help="default: the preset's memory setting")
    p.add_argument("--max-patches", type=int, default=None, help="default: the preset's memory setting")
    args = p.parse_args(argv)
    folder = Path(args.pipeline)
    info = training_record(folder)
    check_single_product(folder, info, "refit it with training/finalize.py --pipeline, which draws each product's "
                         "images again")
    check_same_product(folder, args.data)
    preset = fill_preset(info["preset"]) if "preset" in info else {}
    # the recipe's memory settings (bank cap, input normalisation...), as train_unet.py fits it; flags override
    options = memory_options(preset) or {"coreset_ratio": 0.02, "max_patches": 4000}
    options.update({k: v for k, v in {"coreset_ratio": args.coreset_ratio, "max_patches": args.max_patches}.items()
                    if v is not None})
    t_max = args.t_max or (preset.get("d3ad") or {}).get("t_max") or [80, 200, 400]
    train_paths, held_paths = held_out_split(args.data, info["held_out_nominal"])
    pipe = DDADPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    size = pipe.map_hw[0]  # the memory reads images at map size
    train = load_images(train_paths, size)
    nominal = load_images(held_paths, size)
    info["d3ad"] = fit_d3ad(pipe, train, nominal, t_max_grid=t_max, **options)
    info.update(fit_fused_mode(pipe, nominal, info["d3ad"]["memory"]))  # as finalisation fits and chooses them
    pipe.save_pretrained(folder)
    discard_test_results(folder)
    (folder / "training_info.json").write_text(json.dumps(info, indent=2, default=str))
    write_model_card(folder)
    best = info["d3ad"]["best"]
    print(f"D3AD: t_max {best['t_max']}, synthetic image AUROC {best['image_auroc']:.3f}, "
          f"pixel AUROC {best['pixel_auroc']:.3f}, bank {info['d3ad']['bank_size']} patches")
    return info["d3ad"]


if __name__ == "__main__":
    run(main)
