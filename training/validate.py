"""Score pipelines on held-out good training images and synthetic defects, never on the test set.

    python training/validate.py --data ../shared/data/mvtec_ad_256/transistor \
        --pipelines runs/transistor/pipeline runs/transistor/adapted/pipeline

This is how a choice between trained variants (adapted encoder or not, DDAD or D3AD mode) is made without test
images: the same held-out images and synthetic defects the settings were chosen on.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ddad_hub.cli import run
from ddad_hub.data import held_out_split, load_images
from ddad_hub.model_info import check_same_product, check_single_product, training_record
from ddad_hub.pipelines.loading import load_pipeline
from ddad_hub.recipe import fused_mode_objectives, synthetic_objective


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--pipelines", nargs="+", required=True)
    args = p.parse_args(argv)
    rows = []
    for folder in map(Path, args.pipelines):
        info = training_record(folder)
        check_single_product(folder, info, "compare it with evaluate_multiclass.py's held-out thresholds, or the "
                             "objectives its training_info.json records")
        check_same_product(folder, args.data)
        pipe = load_pipeline(folder)
        pipe.set_progress_bar_config(disable=True)
        nominal = load_images(held_out_split(args.data, info["held_out_nominal"])[1], pipe.map_hw[0])
        in_bank = pipe.feature_memory is not None and pipe.feature_memory.config.cross_fitted
        recorded = info.get("mode", {}).get("objectives") or (
            fused_mode_objectives(info["fused"]) if "fused" in info else {})
        for mode in pipe.available_modes():
            if mode not in ("d3ad", "fused") or not in_bank:
                row = {"pipeline": str(folder), "mode": mode, **synthetic_objective(pipe, nominal, mode=mode)}
                print(f"{folder} {mode}: image AUROC {row['image_auroc']:.4f}  pixel AUROC {row['pixel_auroc']:.4f}  "
                      f"objective {row['objective']:.4f}")
            else:  # the bank holds these images: scored here, they would look more nominal than unseen ones
                row = {"pipeline": str(folder), "mode": mode, "objective": recorded.get(mode),
                       "source": "training_info.json (measured with the held-out images left out of the bank)"}
                shown = "n/a" if row["objective"] is None else f"{row['objective']:.4f}"
                print(f"{folder} {mode}: objective {shown} as recorded at training (the memory's bank holds the "
                      "held-out images, so they are not scored again)")
            rows.append(row)
    return rows


if __name__ == "__main__":
    run(main)
