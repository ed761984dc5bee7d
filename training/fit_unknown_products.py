"""Let a saved multi-class pipeline say when an image shows none of the products it was trained on.

    python training/fit_unknown_products.py --pipeline models/ddad-multiclass-cpu-latent --output-dir runs/mc-unknown

A multi-class pipeline names the product each image shows by its nearest bank entries, so an image of another
product is still named one of its own (and, far from every good part, flagged defective). Finalisation now also fits
a distance limit per product and a margin (``ddad_hub.recipe.fit_unknown_products``; held-out images only), and
calls report ``unknown_category``. This script fits them for a pipeline finalised before that, without
re-finalising it: the split is drawn again from the run's seed, the feature memory is fitted again and must equal
the saved bank (so its held-out images can be left out of it), and only the limits are added. Maps, scores,
thresholds and test results do not change, so the folder's ``results.json`` is carried over.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from ddad_hub.cli import run
from ddad_hub.data import category_of, find_categories, load_images
from ddad_hub.model_card import TEST_RESULT_FILES, write_card
from ddad_hub.model_info import PipelineFolderError, is_multiclass, redrawn_split, training_record
from ddad_hub.pipelines.loading import load_pipeline
from ddad_hub.presets import fill_preset
from ddad_hub.recipe import category_ids, category_names, fit_unknown_products, memory_options, recover_held_out


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", required=True, help="a saved multi-class pipeline folder")
    p.add_argument("--data", nargs="+", default=None, help="its category folders (default: the ones it recorded)")
    p.add_argument("--output-dir", required=True, help="where to write pipeline/ (the saved one is not overwritten)")
    args = p.parse_args(argv)
    folder, out = Path(args.pipeline), Path(args.output_dir) / "pipeline"
    if out.resolve() == folder.resolve():
        raise PipelineFolderError(f"--output-dir {args.output_dir} would write over {folder}: choose another folder")
    info = training_record(folder)
    if not is_multiclass(info):
        raise PipelineFolderError(f"{folder} is a one-product pipeline: it has no other products to tell apart")
    preset = fill_preset(info["preset"])
    options = memory_options(preset)
    if options is None:
        raise PipelineFolderError(f"{folder} was trained with a preset that fits no feature memory")
    categories = find_categories(args.data or info["data"].split(", "))
    train_paths, held_out = redrawn_split(folder, info, categories, preset["holdout"])
    pipe = load_pipeline(folder)
    pipe.set_progress_bar_config(disable=True)
    if pipe.feature_memory is None or not pipe.feature_memory.has_groups:
        raise PipelineFolderError(f"{folder}'s feature memory does not know its products (fitted before they were "
                                  "recorded): re-finalise it with training/finalize.py")
    size = pipe.map_hw[0]  # the memory reads images at map size
    train, nominal = load_images(train_paths, size), load_images(held_out, size)
    paths = train_paths + held_out
    held_ids = recover_held_out(pipe, train, nominal, options, category_ids(paths), category_names(paths))
    info["unknown_products"] = fit_unknown_products(pipe, nominal, [category_of(p) for p in held_out], held_ids)
    if "skipped" in info["unknown_products"]:
        raise PipelineFolderError(f"{folder}: no limits fitted, {info['unknown_products']['skipped']}")

    pipe.save_pretrained(out)
    for name in TEST_RESULT_FILES:  # the maps, scores and thresholds are those the results measured
        if (folder / name).is_file():
            shutil.copy2(folder / name, out / name)
    (out / "training_info.json").write_text(json.dumps(info, indent=2, default=str))
    write_card(out)
    fitted = info["unknown_products"]
    print(f"limits {', '.join(f'{k} {v:.3f}' for k, v in fitted['limits'].items())}; margin {fitted['margin']:.3f} "
          f"(held-out ratios: known up to {fitted['highest_known_ratio']:.3f}, unknown from "
          f"{fitted['lowest_unknown_ratio']:.3f}); pipeline written to {out}")
    return out


if __name__ == "__main__":
    run(main)
