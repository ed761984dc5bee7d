"""A multi-class model told each image's product (``category=``) against the same model recognising it: seconds
per image, and how far maps and scores move.

    python benchmarks/bench_stated_product.py --model models/ddad-multiclass-cpu-latent \
        --data ../shared/data/mvtec_ad_256/transistor ../shared/data/mvtec_ad_256/bottle \
        ../shared/data/mvtec3d_256/tire ../shared/data/mtd/magnetic_tile --output benchmarks/results/stated_product

Per product, ``--per-product`` test images (evenly spaced over the defect types) are scored both ways in the
model's default mode, in rounds that alternate the two (the machine may be shared: medians over rounds are
reported), ``--batch`` images per call. Also timed: the feature-memory search alone (the part that changes).
Without ``--data`` the example images under ``examples/multiclass`` are used, each named after its product.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.results_io import write_results  # noqa: E402
from ddad_hub import load_pipeline  # noqa: E402
from ddad_hub.data import find_categories, list_test_items  # noqa: E402
from ddad_hub.hardware import machine_summary  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "multiclass"


def test_images(data: list[str] | None, products: list[str], per_product: int) -> dict[str, list[str]]:
    """Product -> image paths: ``per_product`` evenly spaced test images of each category folder, or the examples."""
    if not data:
        found = {p: [str(f) for f in sorted(EXAMPLES.glob(f"{p}_*.png"))] for p in products}
        return {p: files for p, files in found.items() if files}
    chosen = {}
    for name, folder in find_categories(data).items():
        items = list_test_items(folder)
        step = max(1, len(items) // per_product)
        chosen[name] = [str(it.image) for it in items[::step][:per_product]]
    return chosen


def time_calls(pipe, paths: list[str], mode: str, batch: int, category: str | None) -> tuple[float, object]:
    began = time.perf_counter()
    out = pipe(paths, mode=mode, batch_size=batch, output_type="np", category=category)
    return (time.perf_counter() - began) / len(paths), out


def time_memory(pipe, paths: list[str], category: str | None) -> float:
    x = pipe.memory_inputs(paths)
    began = time.perf_counter()
    if category is None:
        pipe.memory_maps(x, return_categories=True)
    else:
        pipe.memory_for_categories(x, [category] * len(paths))
    return (time.perf_counter() - began) / len(paths)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/ddad-multiclass-cpu-latent")
    p.add_argument("--data", nargs="+", default=None, help="category folders (default: examples/multiclass)")
    p.add_argument("--per-product", type=int, default=16)
    p.add_argument("--mode", default=None, help="default: the model's own")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output", default=None, help="path stem for .json and .md results")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    if pipe.feature_memory is None or not pipe.feature_memory.has_groups:
        raise SystemExit(f"{args.model} is not a multi-class pipeline (its memory knows no products)")
    mode = args.mode or pipe.config.mode
    products = list(pipe.feature_memory.config.group_names)
    images = test_images(args.data, products, args.per_product)
    rows, record = [], {"machine": machine_summary(), "model": args.model, "mode": mode, "batch": args.batch,
                        "threads": args.threads, "rounds": args.rounds, "products": {}}
    for product, paths in images.items():
        times = {"recognised": [], "stated": [], "memory_recognised": [], "memory_stated": []}
        outs = {}
        for r in range(args.rounds):
            order = ("recognised", "stated") if r % 2 == 0 else ("stated", "recognised")
            for variant in order:
                category = product if variant == "stated" else None
                seconds, outs[variant] = time_calls(pipe, paths, mode, args.batch, category)
                times[variant].append(seconds)
                times[f"memory_{variant}"].append(time_memory(pipe, paths, category))
        a, b = outs["recognised"], outs["stated"]
        span = float(np.max(np.abs(a.anomaly_maps))) or 1.0
        entry = {k: statistics.median(v) for k, v in times.items()}
        entry.update(images=len(paths), recognised_correctly=float(np.mean([c == product for c in a.categories])),
                     max_map_change=float(np.max(np.abs(b.anomaly_maps - a.anomaly_maps))) / span,
                     max_score_change=float(np.max(np.abs(b.image_scores - a.image_scores))),
                     verdicts_changed=int(np.sum(a.is_anomalous != b.is_anomalous)))
        record["products"][product] = entry
        rows.append(f"| {product} | {len(paths)} | {entry['recognised']:.3f} | {entry['stated']:.3f} | "
                    f"{entry['recognised'] / entry['stated']:.2f}x | {entry['memory_recognised']:.3f} / "
                    f"{entry['memory_stated']:.3f} ({entry['memory_recognised'] / entry['memory_stated']:.2f}x) | "
                    f"{entry['recognised_correctly']:.0%} | {entry['max_map_change']:.1e} | "
                    f"{entry['max_score_change']:.1e} | {entry['verdicts_changed']} |")
        print(rows[-1], flush=True)
    table = ("| product | images | recognised s/img | stated s/img | stated faster | memory search s/img, recognised / "
             "stated | recognised correctly | largest map change (of the map's max) | largest score change | "
             "verdicts changed |\n|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows))
    markdown = (f"{machine_summary()}; `{args.model}`, {mode} mode, batch {args.batch}, {args.threads} thread(s), "
                f"medians of {args.rounds} alternating rounds\n\n{table}\n")
    print(markdown)
    if args.output:
        write_results(args.output, record, markdown)
    return record


if __name__ == "__main__":
    main()
