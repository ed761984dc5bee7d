"""Evaluate a DDADPipeline folder on an MVTec-layout test set, beside the nearest-neighbour feature memory.

    python training/evaluate.py --pipeline runs/transistor/pipeline --data ../shared/data/mvtec_ad_256/transistor

Every mode the pipeline has (``DDADPipeline.available_modes()``: ddad, d3ad, fused) is scored side by side, with
the nearest-neighbour memory alone: the pipeline's own memory when the recipe fitted it on all training images
(the one D3AD and fused mode use), else one fitted here on the training split.
Writes ``results.json`` (image AUROC, pixel AUROC, AUPRO at FPR 0.3, overall and per defect type; the share of
each type flagged at the calibrated threshold) and ``evaluation.png`` (ROC curves and example maps) to
``--output-dir`` (default: the pipeline folder, whose model card is then re-rendered with the results, or
``evaluation/<owner>--<name>`` for a Hub repo id; for data of
a product the pipeline was not trained on, ``--output-dir`` is required, so its card never shows them). Defect
types without masks (no ``ground_truth/<type>/`` folder) get image-level metrics only; the report says so. Maps
are compared with the masks on the whole image at the map size (no centre crop). Nothing is tuned here: the
pipeline's settings were fixed before it saw the test set.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ddad_hub import DDADPipeline
from ddad_hub.cli import add_pipeline_arguments, check_modes, pipeline_label, pipeline_source, run
from ddad_hub.data import held_out_split, list_test_items, load_images, load_mask, to_unit_range
from ddad_hub.metrics import METRICS, finite_json, format_metric, paired_auroc_difference, roc_points, summarize
from ddad_hub.model_card import write_model_card
from ddad_hub.model_info import check_same_product, is_multiclass, training_record
from ddad_hub.models.feature_memory import FeatureMemory
from ddad_hub.pipelines.loading import load_pipeline

BOOTSTRAP_ROUNDS = 2000  # resamples of the test images for fused mode's margin over each part


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pipeline_arguments(p, "a saved DDADPipeline folder or Hub repo id")
    p.add_argument("--data", required=True, help="an MVTec-layout category folder")
    p.add_argument("--output-dir", default=None)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--compute-dtype", default=None, choices=["float32", "bfloat16"],
                   help="the networks' compute type (default: the pipeline's compute_dtype, bf16 where fast)")
    p.add_argument("--no-memory", action="store_true", help="skip the feature-memory baseline")
    p.add_argument("--modes", nargs="+", default=None, choices=["ddad", "d3ad", "fused", "diad"],
                   help="pipeline modes to evaluate (default: every mode the pipeline has, see available_modes())")
    p.add_argument("--memory-coreset", type=float, default=0.1)
    return p.parse_args(argv)


def run_pipeline(
    pipe: DDADPipeline, images: torch.Tensor, batch_size: int, autocast_dtype, mode: str
) -> tuple[np.ndarray, ...]:
    maps, scores, recons, starts = [], [], [], []
    for s in tqdm(range(0, images.shape[0], batch_size), desc=mode.upper()):
        out = pipe(to_unit_range(images[s : s + batch_size]), output_type="pt", batch_size=batch_size,
                   autocast_dtype=autocast_dtype, mode=mode)
        maps.append(out.anomaly_maps.numpy())
        scores.append(out.image_scores.numpy())
        recons.append(out.reconstructions)
        starts.append(out.start_steps.numpy())
    return np.concatenate(maps), np.concatenate(scores), torch.cat(recons), np.concatenate(starts)


def memory_inputs(pipe: DDADPipeline, images: torch.Tensor) -> torch.Tensor:
    """``images`` as the pipeline's calls hand them to its memory: at map size, or (pipelines saved before
    ``memory_at_map_size``) at the U-Net's size, then resized."""
    if pipe.config.memory_at_map_size:
        return pipe.resize_to_map(images)
    return pipe.resize_to_map(pipe.preprocess(to_unit_range(images))[0])


def pipeline_memory_maps(
    pipe: DDADPipeline, images: torch.Tensor, batch_size: int
) -> tuple[np.ndarray, float, list[str] | None]:
    """The pipeline's own memory maps of ``images`` (read at map size, as its calls do), seconds per image and, for
    a multi-class memory, the product each image was recognised as (from the same search; else ``None``)."""
    start = time.perf_counter()
    maps, products = [], []
    grouped = pipe.feature_memory.has_groups
    for s in tqdm(range(0, images.shape[0], batch_size), desc="feature memory"):
        m, _, *found = pipe.memory_maps(memory_inputs(pipe, images[s : s + batch_size]), return_categories=grouped)
        maps.append(m.numpy())
        products += found[0] if found else []
    return np.concatenate(maps), (time.perf_counter() - start) / images.shape[0], products if grouped else None


def plot(path: Path, results: dict, curves: dict, examples: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(examples)
    fig = plt.figure(figsize=(3 * max(4, n), 3 * 5))
    ax = fig.add_subplot(5, 1, 1)
    for name, (fpr, tpr) in curves.items():
        ax.plot(fpr, tpr, label=f"{name} (AUROC {format_metric(results[name]['all']['image_auroc'])})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_title("image-level ROC")
    ax.legend(loc="lower right")
    rows = ("input", "reconstruction", "DDAD map", "ground truth")
    for j, ex in enumerate(examples):
        for i, key in enumerate(rows):
            a = fig.add_subplot(5, n, (i + 1) * n + j + 1)
            a.imshow(ex[key], cmap="jet" if key == "DDAD map" else "gray" if key == "ground truth" else None)
            a.set_xticks([])
            a.set_yticks([])
            if j == 0:
                a.set_ylabel(key)
            if i == 0:
                a.set_title(f"{ex['type']} ({ex['score']:.3f})", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = Path(pipeline_source(args))  # a Hub id's cached snapshot: its training record is read
    pipe = load_pipeline(folder)  # a DDADPipeline or a DiADPipeline
    pipe.set_progress_bar_config(disable=True)
    check_modes(pipe, args.modes or [], "--modes")  # before anything is written or scored
    local = os.path.isdir(os.path.expanduser(args.pipeline))
    data = Path(args.data)
    if args.output_dir:
        out_dir = Path(args.output_dir)
    elif local:
        out_dir = folder
    else:  # the Hub cache is not written to
        out_dir = Path("evaluation") / pipeline_label(args).replace("/", "--")
        print(f"results of Hub model {pipeline_label(args)} go to {out_dir} (--output-dir to choose)")
    if out_dir.resolve() == folder.resolve():  # its own results.json and card: only its own product's
        check_same_product(folder, data, "pass --output-dir <another folder> to evaluate it on other data without "
                                         "writing over its own results and card")
        if is_multiclass(training_record(folder, required=False)) or "sg_network" in pipe.components:
            raise SystemExit(f"{folder} holds a multi-class or DiAD pipeline, whose folder keeps "
                             "evaluate_multiclass.py's results of all its products: evaluate one product with "
                             "--output-dir <another folder>")
    out_dir.mkdir(parents=True, exist_ok=True)
    items = list_test_items(data)
    size = pipe.map_hw
    masks = np.stack([load_mask(it.mask, size) for it in items])
    types = [it.defect_type for it in items]
    labels = np.array(types) != "good"  # defective = positive
    pixel_labelled = np.array([it.has_pixel_labels for it in items])
    maskless = sorted({it.defect_type for it in items if not it.has_pixel_labels})
    if maskless:
        print(f"no masks for {', '.join(maskless)}: image-level metrics only for these types")
    autocast = getattr(torch, args.compute_dtype) if args.compute_dtype else None

    # at the larger of the two sizes, as a user's image comes: the pipeline resizes it for each part
    images = load_images([it.image for it in items], pipe.read_hw[0])
    modes = args.modes or pipe.available_modes()
    results, curves, timing, outputs = {}, {}, {}, {}
    memory_maps, recognised = None, None
    for mode in sorted(modes, key=lambda m: m == "fused"):  # fused last: it reuses its reconstruction mode's maps
        start = time.perf_counter()
        if mode == "fused" and pipe.config.fused_base in outputs:
            # the same maps a fused call makes (same per-image seeds), without reconstructing twice
            pipe.check_mode("fused")
            memory_maps, memory_seconds, recognised = pipeline_memory_maps(pipe, images, args.batch_size)
            base = outputs[pipe.config.fused_base]
            fused = pipe.fuse(torch.from_numpy(base[0]), torch.from_numpy(memory_maps)).numpy()
            outputs[mode] = (fused, fused.reshape(len(fused), -1).max(1), base[2], base[3])
            timing["fused_seconds_per_image"] = timing[f"{pipe.config.fused_base}_seconds_per_image"] + memory_seconds
        else:
            outputs[mode] = run_pipeline(pipe, images, args.batch_size, autocast, mode)
            timing[f"{mode}_seconds_per_image"] = (time.perf_counter() - start) / len(items)
        maps_m, scores_m, _, starts = outputs[mode]
        results[mode] = summarize(scores_m, maps_m, masks, types, pixel_labelled)
        for kind in results[mode]:
            sel = np.ones(len(types), bool) if kind == "all" else np.array(types) == kind
            results[mode][kind]["mean_start_step"] = float(starts[sel].mean())
        curves[mode] = roc_points(scores_m, labels)
    maps, scores, recons, _ = outputs[modes[0]]

    own_memory = pipe.feature_memory is not None and pipe.feature_memory.config.cross_fitted
    if not args.no_memory and own_memory:
        if memory_maps is None:
            memory_maps, timing["memory_seconds_per_image"], recognised = pipeline_memory_maps(
                pipe, images, args.batch_size)
        else:
            timing["memory_seconds_per_image"] = memory_seconds
        m_scores = memory_maps.reshape(len(memory_maps), -1).max(1)
        results["feature_memory"] = summarize(m_scores, memory_maps, masks, types, pixel_labelled)
        results["feature_memory_source"] = "the pipeline's own memory (all training images, cross-fitted statistics)"
        curves["feature_memory"] = roc_points(m_scores, labels)
    elif not args.no_memory:
        info_file = folder / "training_info.json"
        held = json.loads(info_file.read_text()).get("held_out_nominal", []) if info_file.is_file() else []
        train_paths, _ = held_out_split(data, held)
        start = time.perf_counter()
        memory = FeatureMemory.fit(
            pipe.feature_encoder, load_images(train_paths, size[0]), coreset_ratio=args.memory_coreset,
            image_size=size[0],
        )
        timing["memory_fit_seconds"] = time.perf_counter() - start
        full = load_images([it.image for it in items], size[0])
        start = time.perf_counter()
        m_maps, m_scores = [], []
        for s in tqdm(range(0, len(items), args.batch_size), desc="feature memory"):
            mm, ms = memory.anomaly_maps(pipe.feature_encoder, full[s : s + args.batch_size], size)
            m_maps.append(mm.numpy())
            m_scores.append(ms.numpy())
        timing["memory_seconds_per_image"] = (time.perf_counter() - start) / len(items)
        m_maps, m_scores = np.concatenate(m_maps), np.concatenate(m_scores)
        results["feature_memory"] = summarize(m_scores, m_maps, masks, types, pixel_labelled)
        curves["feature_memory"] = roc_points(m_scores, labels)

    if "fused" in outputs and "feature_memory" in results and 0 < labels.sum() < len(labels):
        # does fused mode beat each of its parts beyond what the test set can resolve?
        parts = {"feature_memory": m_scores, **{m: outputs[m][1] for m in outputs if m != "fused"}}
        results["fused_vs_parts"] = {
            name: {**paired_auroc_difference(outputs["fused"][1], part, labels, rounds=BOOTSTRAP_ROUNDS),
                   "how": f"fused image AUROC minus this part's, paired bootstrap over images "
                          f"({BOOTSTRAP_ROUNDS} rounds)"}
            for name, part in parts.items()}
    results["protocol"] = (f"{len(items)} test images, maps and masks at {size[0]} px, whole image, "
                           "AUPRO up to FPR 0.3")
    results["timing"] = timing
    results["at_threshold"] = {}
    # a multi-class pipeline judges each image by the threshold of the product its memory recognises
    own = {m: pipe.category_thresholds_for(m) for m in modes}
    if any(own.values()):
        if recognised is None:  # no memory maps were computed: only the product search
            recognised = [c for s in range(0, len(items), args.batch_size)
                          for c in pipe.infer_categories(memory_inputs(pipe, images[s : s + args.batch_size]))]
        results["recognised_products"] = {c: recognised.count(c) for c in sorted(set(recognised))}
    for mode in modes:  # each mode's verdicts at the threshold calibrated for it on held-out good images
        threshold = pipe.threshold_for(mode)
        if threshold is None:
            continue
        per_image = np.full(len(items), threshold, dtype=float)
        if own[mode] and recognised is not None:
            per_image = np.array([own[mode].get(c, threshold) for c in recognised], dtype=float)
        flagged = outputs[mode][1] > per_image
        results["at_threshold"][mode] = {
            "threshold": threshold, "true_positive_rate": float(flagged[labels].mean()),
            "false_positive_rate": float(flagged[~labels].mean()),
            "flagged_rate": {kind: float(flagged[np.array(types) == kind].mean()) for kind in sorted(set(types))}}
        if own[mode] and recognised is not None:
            results["at_threshold"][mode]["thresholds_used"] = sorted({round(float(t), 6) for t in per_image})
            results["at_threshold"][mode]["how"] = "each image judged by its recognised product's threshold"
    (out_dir / "results.json").write_text(json.dumps(finite_json(results), indent=2, allow_nan=False))

    examples = []
    for kind in sorted(set(types)):
        i = types.index(kind)
        examples.append({
            "type": kind, "score": float(scores[i]),
            "input": ((images[i].permute(1, 2, 0).numpy() + 1) / 2).clip(0, 1),
            "reconstruction": recons[i].permute(1, 2, 0).numpy(),  # output_type="pt": [0, 1]
            "DDAD map": maps[i], "ground truth": masks[i],  # first mode's
        })
    plot(out_dir / "evaluation.png", results, curves, examples)
    if out_dir.resolve() == folder.resolve() and (folder / "training_info.json").is_file():
        write_model_card(folder)  # (a multi-class or DiAD folder was refused above)
    for name in ("ddad", "d3ad", "fused", "feature_memory"):
        if name in results:
            r = results[name]["all"]
            shown = "  ".join(f"{label} {format_metric(r[key])}" for key, label in METRICS)
            notes = [f"{kind} metrics {r[key]}" for kind, key in (("image", "image_metrics"),
                                                                  ("pixel", "pixel_metrics")) if key in r]
            print(f"{name}: {shown}" + (f"  ({'; '.join(notes)})" if notes else ""))
            if name in results["at_threshold"]:
                rates = results["at_threshold"][name]["flagged_rate"]
                print(f"  flagged at threshold: {', '.join(f'{k} {v:.1%}' for k, v in rates.items())}")
    for name, d in results.get("fused_vs_parts", {}).items():
        print(f"fused - {name}, image AUROC: {d['difference']:+.4f} (bootstrap SE {d['se']:.4f}, 95% interval "
              f"[{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}])")
    return results


if __name__ == "__main__":
    run(main)
