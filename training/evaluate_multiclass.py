"""Evaluate one pipeline (DDAD or DiAD) on several categories, per category and as the mean over categories.

    python training/evaluate_multiclass.py --pipeline runs/multi-diad/pipeline \
        --data ../shared/data/mvtec_ad_256/transistor ../shared/data/mvtec_ad_256/bottle \
               ../shared/data/mvtec3d_256/tire ../shared/data/mtd/magnetic_tile --output-dir runs/eval-diad

The model is not told the category (unless ``--stated-category``): it recognises it. For every category and mode it
reports image AUROC, pixel AUROC and AUPRO (FPR 0.3) as ``training/evaluate.py`` does, and their mean over
categories, as DiAD's tables do. Thresholds are not learnt from test labels: the pipeline's own (one for all
categories, from held-out nominal training images), and, for comparison, per-category thresholds from the same
held-out images of each category (what a line that knows the product could use); the flagged rates of both are
reported. ``--memory`` adds the nearest-neighbour feature memory with one bank over all categories' training images.
Results go to ``<output-dir>/results.json`` and ``table.md``; with ``--output-dir`` the pipeline's own folder, its
model card is rendered with them. """

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ddad_hub.cli import add_pipeline_arguments, check_modes, pipeline_label, pipeline_source, run
from ddad_hub.data import find_categories, list_test_items, load_images, load_mask, split_categories, to_unit_range
from ddad_hub.metrics import finite_json, format_mean, format_metric, mean_footnote, summarize
from ddad_hub.model_card import write_card
from ddad_hub.model_info import recorded_categories, trained_products, training_record
from ddad_hub.models.feature_encoder import FeatureEncoder
from ddad_hub.models.feature_memory import INPUT_NORMS, FeatureMemory
from ddad_hub.pipelines.loading import load_pipeline
from ddad_hub.recipe import category_ids

METRICS = ("image_auroc", "pixel_auroc", "aupro")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pipeline_arguments(p, "a saved pipeline folder or Hub id (DDADPipeline or DiADPipeline)", required=False)
    p.add_argument("--data", required=True, nargs="+", help="category folders, or parent folders of categories")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--modes", nargs="+", default=None,
                   help="modes to evaluate (default: the pipeline's default mode)")
    p.add_argument("--memory", action="store_true", help="also evaluate a one-bank feature memory")
    p.add_argument("--memory-patches", type=int, default=10000,
                   help="per category, at most this many bank entries (a greedy coreset of 10%% of its patches, "
                        "picked among at most 250000 of them); the bank is their union")
    p.add_argument("--memory-total-patches", type=int, default=None,
                   help="at most this many bank entries in all, shared in proportion to the categories' training "
                        "patches (as the recipe's memory.max_total_patches)")
    p.add_argument("--memory-size", type=int, default=256, help="image side for the memory's features")
    p.add_argument("--memory-input-norm", default="none", choices=INPUT_NORMS,
                   help="the one-bank memory's input normalisation (FeatureMemory's input_norm)")
    p.add_argument("--memory-every", type=int, default=1,
                   help="fit the memory on every n-th training image only (the coreset's cost grows with the pool)")
    p.add_argument("--stated-category", action="store_true",
                   help="tell the pipeline each test image's product (its category folder's name, category=), as an "
                        "inspection station that knows its product would, instead of letting the memory recognise it")
    p.add_argument("--holdout", type=float, default=0.1, help="held-out share of train/good (as in training)")
    p.add_argument("--max-test-images", type=int, default=None,
                   help="per category, at most about this many test images: an evenly spaced subset of each defect "
                        "type (and of the good ones), for a CPU budget; every category's count is reported")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0, help="the split seed used in training")
    return p.parse_args(argv)


def score(
    pipe, images: torch.Tensor, mode: str, batch_size: int, desc: str, verdicts: bool = True,
    category: str | None = None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """(maps, scores, verdicts) of ``images`` in [-1, 1] in ``mode``; ``verdicts`` holds the pipeline's own flags,
    the threshold each image was judged by and, with per-product thresholds, the product it recognised (the search
    for it is skipped when ``verdicts`` is False) or was told (``category``)."""
    maps, scores, found = [], [], {"flags": [], "thresholds": [], "categories": []}
    for s in tqdm(range(0, images.shape[0], batch_size), desc=desc, leave=False):
        out = pipe(to_unit_range(images[s : s + batch_size]), output_type="pt", batch_size=batch_size, mode=mode,
                   per_category_thresholds=verdicts, category=category)
        maps.append(out.anomaly_maps.numpy())
        scores.append(out.image_scores.numpy())
        if out.is_anomalous is not None:
            found["flags"].append(out.is_anomalous.numpy())
            found["thresholds"].append(out.image_thresholds.numpy())
        found["categories"] += out.categories or []
    return np.concatenate(maps), np.concatenate(scores), found


def own_verdicts(verdicts: dict, labels: np.ndarray, category: str) -> dict | None:
    """Flagged rates of the pipeline's own per-product thresholds (the product recognised, never told) and how
    often it recognised ``category``; ``None`` when the pipeline has no per-product thresholds."""
    if not verdicts["categories"]:
        return None
    flags = np.concatenate(verdicts["flags"])
    recognised = np.array(verdicts["categories"])
    return {"flagged": float(flags.mean()), "true_positive_rate": float(flags[labels].mean()),
            "false_positive_rate": float(flags[~labels].mean()),
            "recognised": float((recognised == category).mean()),
            "recognised_as": {c: int((recognised == c).sum()) for c in np.unique(recognised)},
            "thresholds_used": sorted({round(float(t), 6) for t in np.concatenate(verdicts["thresholds"])})}


def subsample_items(items: list, limit: int | None) -> list:
    """An evenly spaced subset of each defect type with the same share of every type, about ``limit`` in all."""
    if limit is None or len(items) <= limit:
        return items
    kept = []
    for kind in sorted({it.defect_type for it in items}):
        group = [it for it in items if it.defect_type == kind]
        k = max(1, round(len(group) * limit / len(items)))
        kept += [group[i] for i in np.unique(np.linspace(0, len(group) - 1, k).round().astype(int))]
    return kept


def flagged_rates(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    flagged = scores > threshold
    return {"threshold": float(threshold), "flagged": float(flagged.mean()),
            "true_positive_rate": float(flagged[labels].mean()), "false_positive_rate": float(flagged[~labels].mean())}


def per_category_thresholds(folder: str) -> dict[str, float]:
    """Per-category thresholds of DiAD mode that training already computed (``train_diad.py`` keeps them in
    ``training_info.json``), so the held-out images are not scored again; empty if there are none."""
    info = Path(folder) / "training_info.json"
    if not info.is_file():
        return {}
    per_category = json.loads(info.read_text()).get("calibration", {}).get("per_category", {})
    return {name: entry["threshold"] for name, entry in per_category.items()}


def mean_over_categories(results: dict, categories: list[str], detector: str) -> dict:
    """Each metric's mean over the categories that have it (``None`` when none has); ``<metric>_of`` names them
    when that is not all of them."""
    means = {}
    for m in METRICS:
        have = [c for c in categories if results[c][detector]["all"][m] is not None]
        means[m] = float(np.mean([results[c][detector]["all"][m] for c in have])) if have else None
        if have and len(have) < len(categories):
            means[f"{m}_of"] = have
    return means


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.pipeline and not args.memory:
        raise SystemExit("nothing to evaluate: give --pipeline and/or --memory")
    categories = find_categories(args.data)
    train_paths, _, held_by_category = split_categories(categories, args.holdout, seed=args.seed)
    out_dir = Path(args.output_dir)
    pipeline_dir = pipeline_source(args)  # a local folder (a Hub id's cached snapshot), or None
    if pipeline_dir and out_dir.resolve() == Path(pipeline_dir).resolve():  # its results.json and card
        info = training_record(out_dir, required=False)
        trained, given = recorded_categories(info), set(categories)
        targets = {Path(path).resolve().name for path in categories.values()}  # through symlinks, as evaluate.py
        one_by_label = len(trained) == 1 and len(given) == 1 and given <= trained_products(info)  # --category
        if trained and trained not in (given, targets) and not one_by_label:
            raise SystemExit(f"{out_dir} was trained on {', '.join(sorted(trained))}; its results and card are of "
                             "those products: evaluate other data with --output-dir <another folder>")
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline(pipeline_dir) if pipeline_dir else None
    if pipe is not None:
        pipe.set_progress_bar_config(disable=True)
    modes = args.modes or ([pipe.config.mode] if pipe is not None else [])
    if pipe is not None:  # an unfitted mode is named before minutes of work
        check_modes(pipe, modes, "--modes")
    map_hw = pipe.map_hw if pipe is not None else (256, 256)

    memory, encoder, timing = None, None, {}
    if args.memory:
        encoder = FeatureEncoder.from_imagenet("efficientnet_lite0", (8, 16))
        start = time.perf_counter()
        pool = train_paths[:: args.memory_every]
        memory = FeatureMemory.fit(encoder, load_images(pool, args.memory_size), coreset_ratio=0.1,
                                   image_size=args.memory_size, max_patches=args.memory_patches,
                                   max_candidates=250_000, groups=category_ids(pool),
                                   max_total_patches=args.memory_total_patches, input_norm=args.memory_input_norm)
        timing["memory_fit_seconds"] = time.perf_counter() - start

    if args.stated_category:
        known = list(pipe.feature_memory.config.group_names) if pipe is not None and pipe.feature_memory else []
        missing = sorted(set(categories) - set(known))
        if pipe is None or missing:
            raise SystemExit(f"--stated-category needs a multi-class pipeline that knows every category; "
                             f"{missing or list(categories)} not among its products {known}")
    results: dict = {"categories": {k: str(v) for k, v in categories.items()}, "per_category": {},
                     "stated_category": args.stated_category}
    global_thresholds = {m: pipe.threshold_for(m) for m in modes}
    known_thresholds = per_category_thresholds(pipeline_dir) if pipe is not None else {}
    for name, folder in categories.items():
        all_items = list_test_items(folder)
        items = subsample_items(all_items, args.max_test_images)
        types = [it.defect_type for it in items]
        labels = np.array(types) != "good"
        masks = np.stack([load_mask(it.mask, map_hw) for it in items])
        labelled = np.array([it.has_pixel_labels for it in items])  # types without masks: image metrics only
        entry: dict = {"n_test_images": len(items), "n_test_images_in_category": len(all_items)}
        if pipe is not None:  # as evaluate.py: at map size when larger (a memory-using mode reads that size)
            side = max(pipe.sample_size[0], map_hw[0])
            images = load_images([it.image for it in items], side)
            held = load_images(held_by_category[name], side)  # only scored without known thresholds
        for mode in modes:
            start = time.perf_counter()
            stated = name if args.stated_category else None
            maps, scores, verdicts = score(pipe, images, mode, args.batch_size, f"{name} {mode}", category=stated)
            timing[f"{name}_{mode}_seconds_per_image"] = (time.perf_counter() - start) / len(items)
            entry[mode] = summarize(scores, maps, masks, types, labelled)
            # the pipeline's own per-product thresholds (calibrated with the held-out images left out of its bank),
            # else those training kept, else the held-out images' scores where the bank does not hold them
            own = (pipe.config.get("category_thresholds") or {}).get(mode, {}).get(name)
            own = known_thresholds.get(name) if own is None and mode == "diad" else own
            in_bank = mode in ("d3ad", "fused") and pipe.feature_memory.config.cross_fitted
            if own is None and not in_bank:
                own = float(score(pipe, held, mode, args.batch_size, f"{name} held-out", verdicts=False,
                                  category=stated)[1].max())
            recognised = own_verdicts(verdicts, labels, name)
            entry[mode]["at_threshold"] = {
                "one_threshold": (flagged_rates(scores, labels, global_thresholds[mode])
                                  if global_thresholds[mode] is not None else None),
                # the held-out images are in a cross-fitted bank, and a reloaded bank cannot leave them out: their
                # in-bank scores would set per-category thresholds far too low
                "per_category_threshold": (flagged_rates(scores, labels, own) if own is not None else
                                           "not measurable: the held-out images are in the memory's bank"),
            }
            if recognised is not None:  # the thresholds the pipeline itself applies, per recognised product
                key = "stated_product_threshold" if stated else "recognised_product_threshold"
                entry[mode]["at_threshold"][key] = recognised
        if memory is not None:
            full = load_images([it.image for it in items], args.memory_size)
            m_maps, m_scores = [], []
            for s in range(0, len(items), args.batch_size):
                mm, ms = memory.anomaly_maps(encoder, full[s : s + args.batch_size], map_hw)
                m_maps.append(mm.numpy())
                m_scores.append(ms.numpy())
            entry["feature_memory"] = summarize(np.concatenate(m_scores), np.concatenate(m_maps), masks, types,
                                                labelled)
        results["per_category"][name] = entry
        print(name, {d: {m: None if entry[d]["all"][m] is None else round(entry[d]["all"][m], 3) for m in METRICS}
                     for d in entry if isinstance(entry[d], dict)}, flush=True)

    names = list(categories)
    detectors = modes + (["feature_memory"] if memory is not None else [])
    results["mean_over_categories"] = {d: mean_over_categories(results["per_category"], names, d) for d in detectors}
    results["thresholds"] = {"one_threshold": global_thresholds,
                             "how": "one: the pipeline's calibrated threshold (highest score among held-out nominal "
                                    "training images of all categories); per category: the same per category"}
    results["protocol"] = f"maps and masks at {map_hw[0]} px, whole image, AUPRO up to FPR 0.3"
    if args.stated_category:
        results["protocol"] += "; each image's product stated (category=), its memory search kept to that product"
    if memory is not None:
        results["protocol"] += (
            f"; memory: one bank, the union of per-category greedy coresets (10%, at most {args.memory_patches} "
            "patches each" + (f", {args.memory_total_patches} in all, shared in proportion to the categories' patches"
                              if args.memory_total_patches else "")
            + ") of all categories' training split"
            + (f", every {args.memory_every}th image" if args.memory_every > 1 else "")
            + ("; each image standardised before the encoder" if args.memory_input_norm == "image" else ""))
    if args.max_test_images:
        results["protocol"] += (f"; at most about {args.max_test_images} test images per category (evenly spaced "
                                "within each defect type)")
    results["timing"] = timing
    results["pipeline"] = pipeline_label(args) if args.pipeline else None
    (out_dir / "results.json").write_text(json.dumps(finite_json(results), indent=2, allow_nan=False))
    if pipeline_dir and out_dir.resolve() == Path(pipeline_dir).resolve():
        # the card's model-index gets one entry per category
        write_card(out_dir)
    rows = ["| detector | " + " | ".join(names) + " | mean |", "|---" * (len(names) + 2) + "|"]
    for d in detectors:
        cells = [" / ".join(format_metric(results["per_category"][c][d]["all"][m]) for m in METRICS) for c in names]
        mean = " / ".join(format_mean(results["mean_over_categories"][d], m) for m in METRICS)
        rows.append(f"| {d} | " + " | ".join(cells) + f" | {mean} |")
    table = "\n".join(rows)
    (out_dir / "table.md").write_text("image AUROC / pixel AUROC / AUPRO\n\n" + table
                                      + mean_footnote(results["mean_over_categories"]) + "\n")
    print(table)
    return results


if __name__ == "__main__":
    run(main)
