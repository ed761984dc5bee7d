"""Score pipelines on held-out good training images and synthetic defects, never on the test set.

    python training/validate.py --data ../shared/data/mvtec_ad_256/transistor \
        --pipelines runs/transistor/pipeline runs/transistor/adapted/pipeline

This is how a choice between trained variants (adapted encoder or not, DDAD or D3AD mode) is made without test
images: the same held-out images and synthetic defects the settings were chosen on.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ddad_hub import DDADPipeline
from ddad_hub.data import held_out_split, load_images
from ddad_hub.recipe import synthetic_objective


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--pipelines", nargs="+", required=True)
    args = p.parse_args(argv)
    rows = []
    for folder in map(Path, args.pipelines):
        held = json.loads((folder / "training_info.json").read_text())["held_out_nominal"]
        pipe = DDADPipeline.from_pretrained(folder)
        pipe.set_progress_bar_config(disable=True)
        nominal = load_images(held_out_split(args.data, held)[1], pipe.sample_size[0])
        for mode in ("ddad", "d3ad") if pipe.feature_memory is not None else ("ddad",):
            row = {"pipeline": str(folder), "mode": mode, **synthetic_objective(pipe, nominal, mode=mode)}
            rows.append(row)
            print(f"{folder} {mode}: image AUROC {row['image_auroc']:.4f}  pixel AUROC {row['pixel_auroc']:.4f}  "
                  f"objective {row['objective']:.4f}")
    return rows


if __name__ == "__main__":
    main()
