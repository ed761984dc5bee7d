"""Re-derive a pipeline's calibrated pixel weight and threshold from its held-out good images, in place.

    python training/recalibrate.py --pipeline runs/transistor/pipeline --data ../shared/data/mvtec_ad_256/transistor

Use it after changing a pipeline's settings (``w``, start step, ``compute_dtype``...), since scores move with them.
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
from ddad_hub.recipe import recalibrate


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", required=True, help="a pipeline folder written by train_unet.py or finalize.py")
    p.add_argument("--data", required=True, help="the category folder it was trained on")
    args = p.parse_args(argv)
    folder = Path(args.pipeline)
    info = training_record(folder)
    check_single_product(folder, info, "its held-out images are named by file name, which its products share, and it "
                         "has a threshold per product: refit them all with training/finalize.py --pipeline "
                         f"{folder} --output-dir <new folder> (it draws each product's held-out images again)")
    check_same_product(folder, args.data)
    held = set(info["held_out_nominal"])
    _, paths = held_out_split(args.data, held)
    if len(paths) != len(held):
        raise SystemExit(f"{len(held) - len(paths)} held-out images of {folder} are not in {args.data}")
    pipe = DDADPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    # read as training read them: at map size for the thresholds, at the U-Net's size for the pixel weight
    calibration = recalibrate(pipe, load_images(paths, pipe.map_hw[0]),
                              nominal_unet_size=load_images(paths, pipe.sample_size[0], pipe.read_hw[0]))
    pipe.save_pretrained(folder)
    discard_test_results(folder)  # their verdicts were made with the old thresholds
    info["calibration"] = {**calibration, "how": "highest score among held-out nominal training images",
                           "compute_dtype": str(pipe.default_autocast_dtype() or "float32")}
    (folder / "training_info.json").write_text(json.dumps(info, indent=2, default=str))
    write_model_card(folder)
    print(f"threshold {calibration['threshold']:.5f}, pixel weight {calibration['pixel_weight']}")
    return calibration


if __name__ == "__main__":
    run(main)
