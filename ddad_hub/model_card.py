"""Model cards for saved pipelines, rendered from ``model_cards/*_template.md`` with Hub metadata."""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .metrics import METRICS, format_mean, format_metric, mean_footnote
from .model_info import is_multiclass, recorded_categories
from .models.autoencoder import latent_factor

TEMPLATE = Path(__file__).resolve().parents[1] / "model_cards" / "ddad_template.md"
DIAD_TEMPLATE = TEMPLATE.with_name("diad_template.md")

DATASETS = {
    "transistor": ("MVTec AD transistor", "mvtec_ad", "cc-by-nc-sa-4.0",
                   "MVTec AD, category transistor (Bergmann et al., CVPR 2019 / IJCV 2021; CC BY-NC-SA 4.0)"),
    "bottle": ("MVTec AD bottle", "mvtec_ad", "cc-by-nc-sa-4.0",
               "MVTec AD, category bottle (Bergmann et al., CVPR 2019 / IJCV 2021; CC BY-NC-SA 4.0)"),
    "tire": ("MVTec 3D-AD tire (RGB)", "mvtec_3d_ad", "cc-by-nc-sa-4.0",
             "MVTec 3D-AD, category tire, RGB images only (Bergmann et al., VISAPP 2022; CC BY-NC-SA 4.0)"),
    "magnetic_tile": ("Magnetic Tile Defect", "magnetic_tile_defect", "other",
                      "the Magnetic Tile Defect data set (Huang et al., The Visual Computer 2020; free for research "
                      "use), with this project's own 80/20 split of the defect-free images"),
}
METRIC_NAMES = {"image_auroc": "Image AUROC", "pixel_auroc": "Pixel AUROC", "aupro": "AUPRO (FPR 0.3)"}


LICENSE_FILE = "LICENSE.md"  # the terms of a model whose training data carry no licence the Hub names
LICENSE_HEADING = "# Terms of this model"


def _license_metadata(folder: Path, names: list[str], license_id: str) -> dict:
    """The card's licence fields. A Hub licence id passes as is; ``other`` (a data set with its own terms, or
    several data sets) needs a name and a link, so the terms of each training set are written to ``LICENSE.md``
    in ``folder`` and linked from there. A ``LICENSE.md`` the project did not write (the user's own terms) is never
    overwritten nor removed."""
    ours = folder / LICENSE_FILE
    if license_id != "other":
        if ours.is_file() and ours.read_text().startswith(LICENSE_HEADING):  # ours, from before the data changed
            ours.unlink()
        return {"license": license_id}
    if ours.is_file() and not ours.read_text().startswith(LICENSE_HEADING):  # the user's own terms: kept, linked
        return {"license": "other", "license_name": "training-data-terms", "license_link": LICENSE_FILE}
    known = [name for name in names if name in DATASETS]  # the data sets here are all for non-commercial research
    lines = [LICENSE_HEADING, "",
             "The weights were trained on the data sets below; their terms carry over to the model."
             + (" Use it for non-commercial research only, and credit the data sets as they ask." if known else ""), ""]
    for name in names:
        credit = DATASETS[name][3] if name in DATASETS else f"`{name}`: its terms were not recorded; check them"
        lines.append(f"- {credit}")
    (folder / LICENSE_FILE).write_text("\n".join(lines) + "\n")
    return {"license": "other", "license_name": "training-data-terms", "license_link": LICENSE_FILE}


def _listed(names: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``: the products of a card's first sentence."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _terms_text(names: list[str]) -> str:
    """What a card says of its training data's terms: the known data sets' (non-commercial research), or to check
    them when any is not one of ``DATASETS``."""
    if all(name in DATASETS for name in names):
        return " The data's terms carry over to this model: it is for non-commercial research use."
    return " Check each data set's licence: its terms carry over to this model."


def _per_category_eval_results(names: list[str], results: dict | None, mode: str) -> list:
    """Hub eval results of ``mode``, one set per category of a multi-class ``results.json``."""
    eval_results = []
    for name in names:
        ds_name, ds_type, _, _ = DATASETS.get(name, (name, name, "other", name))
        values = (results or {}).get("per_category", {}).get(name, {}).get(mode, {}).get("all", {})
        for key, label in METRIC_NAMES.items():
            if values.get(key) is not None and values[key] == values[key]:
                eval_results.append(EvalResult(
                    task_type="anomaly-detection", task_name="Visual anomaly detection", dataset_type=ds_type,
                    dataset_name=ds_name, dataset_config=name, dataset_split="test", metric_type=key, metric_name=label,
                    metric_value=round(float(values[key]), 4)))
    return eval_results


def _per_category_table(names: list[str], results: dict) -> str:
    """The per-category and mean rows of a multi-class ``results.json`` as a markdown table."""
    rows = ["| category | detector | image AUROC | pixel AUROC | AUPRO |", "|---|---|---|---|---|"]
    for name in names:
        for detector, vals in results["per_category"][name].items():
            if isinstance(vals, dict) and "all" in vals:
                rows.append(f"| {name} | {detector} | " + " | ".join(format_metric(vals["all"][key])
                                                                     for key, _ in METRICS) + " |")
    means = results.get("mean_over_categories", {})
    for detector, vals in means.items():
        rows.append(f"| **mean** | {detector} | " + " | ".join(format_mean(vals, key) for key, _ in METRICS) + " |")
    return (f"On each category's test set ({results.get('protocol', '')}):\n\n" + "\n".join(rows)
            + mean_footnote(means))


TEST_RESULT_FILES = ("results.json", "evaluation.png", "table.md")  # what evaluate*.py write into a pipeline folder


def discard_test_results(folder: str | Path) -> list[str]:
    """Remove the test results in a pipeline folder whose pipeline was just refitted or recalibrated: they measured
    other weights or thresholds, and its card would show them as its own. Returns the names removed (and says so)."""
    removed = [name for name in TEST_RESULT_FILES if (Path(folder) / name).is_file()]
    for name in removed:
        (Path(folder) / name).unlink()
    if removed:
        print(f"{folder}: removed {', '.join(removed)} (test results of the pipeline before this change); run "
              "training/evaluate.py (evaluate_multiclass.py for a multi-class model) again for its own")
    return removed


def write_model_card(folder: str | Path, repo_id: str | None = None, template: Path = TEMPLATE) -> Path:
    """Render ``README.md`` in a pipeline folder from its ``training_info.json`` and, if present, ``results.json``."""
    folder = Path(folder)
    if not template.is_file():
        raise FileNotFoundError(f"model card template not found: {template}")
    info = json.loads((folder / "training_info.json").read_text())
    results = json.loads((folder / "results.json").read_text()) if (folder / "results.json").is_file() else None
    index = json.loads((folder / "model_index.json").read_text())
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    preset = info["preset"]
    category = info["category"]
    ds_name, ds_type, _, credit = DATASETS.get(category, (category, category, "other", category))
    # a multi-class model's products, evaluated or not, in training order where the record keeps it
    trained = (list(info.get("categories") or sorted(recorded_categories(info))) if is_multiclass(info)
               else [category])
    licenses = {DATASETS.get(name, (name, name, "other", name))[2] for name in trained}
    license_id = licenses.pop() if len(licenses) == 1 else "other"
    # a multi-class model is named for what it is (as the DiAD card does), not for its data's label "multiclass-<n>"
    model_name = (f"ddad-multiclass-{preset['name']}" if len(trained) > 1
                  else f"ddad-{category}-{preset['name']}").replace("_", "-")
    products = _listed(trained)

    eval_results = []
    mode = index.get("mode", "ddad")  # the Hub metadata reports what a default call does
    names = list(results["categories"]) if results and "per_category" in results else None
    if names:  # a multi-class model evaluated by training/evaluate_multiclass.py: one model-index set per category
        eval_results = _per_category_eval_results(names, results, mode)
        ds_name = "categories " + ", ".join(names)
    elif results and mode in results:
        for key, label in METRIC_NAMES.items():
            value = results[mode]["all"].get(key)
            if value is not None and value == value:  # skip NaN
                eval_results.append(EvalResult(
                    task_type="anomaly-detection", task_name="Visual anomaly detection", dataset_type=ds_type,
                    dataset_name=ds_name, dataset_split="test", metric_type=key, metric_name=label,
                    metric_value=round(float(value), 4)))
    card_data = ModelCardData(
        **_license_metadata(folder, trained, license_id), library_name="ddad-hub",
        tags=["anomaly-detection", "diffusion", "ddad", "diffusers"],
        model_name=model_name, eval_results=eval_results or None,
    )
    selection = info.get("selection")
    selection_text = ""
    if selection:
        best = selection["best"]
        selection_text = (
            f"w, start step and the pixel-weight mode were chosen on {selection['how']} (objective: mean of image "
            f"and pixel AUROC there, best {best['objective']:.3f} of {len(selection['table'])} settings); no test "
            "image was used. Each mode's threshold is the highest score among held-out nominal images."
        )
    if info.get("mode"):
        objectives = ", ".join(f"{m.upper()} {v:.4f}" for m, v in info["mode"]["objectives"].items())
        selection_text += f" The default mode, {info['mode']['chosen'].upper()}, scored best there ({objectives})."
    training = info["training"]
    training_text = (
        f"{training.get('steps')} optimiser steps of batch {preset['batch_size']} in {training.get('minutes')} "
        f"minutes ({training.get('processes', 1)} process(es), mixed precision "
        f"`{training.get('mixed_precision', preset['mixed_precision'])}`"
        + (f" on {training['cpu']}" if training.get("cpu") else "") + "), "
        f"timesteps below {preset['max_train_timestep']}, EMA {preset.get('ema_decay')}."
    )
    vae_training = info.get("autoencoder", {}).get("training")
    if vae_training:
        training_text += (
            f" Before it, the {info['autoencoder']['params']} autoencoder trained {vae_training['steps']} steps in "
            f"{vae_training['minutes']} minutes (L1 error {vae_training['l1_train_images']:.4f} on whole training "
            "images in [-1, 1])."
        )
    if names:
        results_text = _per_category_table(names, results)
    elif results:
        rows = ["| detector | subset | image AUROC | pixel AUROC | AUPRO |", "|---|---|---|---|---|"]
        detectors = (("ddad", "DDAD mode"), ("d3ad", "D3AD mode"), ("fused", "fused mode"),
                     ("feature_memory", "feature memory (kNN)"))
        for detector, label in detectors:
            for subset, vals in results.get(detector, {}).items():
                shown = [format_metric(vals.get(k)) for k, _ in METRICS]
                rows.append(f"| {label} | {subset} | {' | '.join(shown)} |")
        results_text = (f"On the {ds_name} test set ({results.get('protocol', '')}):\n\n" + "\n".join(rows))
        results_text += _fused_vs_parts_text(results.get("fused_vs_parts"))
    else:
        results_text = "Not evaluated yet: run `training/evaluate.py` on this folder."
    if len(trained) > 1:  # a multi-class model, evaluated or not
        credits = "; ".join(DATASETS.get(n, (n, n, "other", n))[3] for n in trained)
        terms = _terms_text(trained)
        data_text = (f"Trained on the nominal training images of {credits}, as one set (the model is never told the "
                     f"category).{terms}")
    elif category in DATASETS:
        data_text = (f"Trained on the nominal training images of {credit}. The data's terms carry over to this model: "
                     "it is for non-commercial research use.")
    else:
        data_text = (f"Trained on the nominal training images of `{Path(str(info['data'])).name}`; check that data's "
                     "license.")
    resolution = f"{preset['resolution']} px"
    if index.get("vae", [None])[0] is not None:
        vae = json.loads((folder / "vae" / "config.json").read_text())
        side = preset.get("latent_resolution") or preset["resolution"] // latent_factor(vae)
        resolution += (f" images, diffused as {side}x{side}x{vae['latent_channels']} latents of an AutoencoderKL "
                       f"(D3AD's latent space; the pixel distance is the latent distance)")
    card = ModelCard.from_template(
        card_data, template_path=str(template), model_name=model_name, category=products,
        repo_id=repo_id or f"<user>/{model_name}", preset_name=preset["name"], resolution=resolution,
        unet_params=info.get("unet_params", "n/a"), backbone=preset["feature_backbone"],
        strides=", ".join(map(str, preset["feature_strides"])), map_size=index.get("map_size"),
        w=scheduler["w"], start_step=scheduler["start_step"], skip=scheduler["skip"],
        pixel_weight=(f"{index['pixel_weight']:.4f}" if index.get("pixel_weight") is not None
                      else "per image (max D_f / max D_p)"),
        threshold=index.get("threshold"), mode=mode,
        d3ad_t_max=index.get("d3ad_t_max") if index.get("feature_memory", [None])[0] else "n/a (no feature memory)",
        d3ad_threshold=index.get("d3ad_threshold"), fused_text=_fused_text(index, info),
        products_text=_products_text(index, info), selection_text=selection_text, training_text=training_text,
        results_text=results_text, data_text=data_text,
    )
    path = folder / "README.md"
    card.save(path)
    return path


def _products_text(index: dict, info: dict) -> str:
    """A multi-class model's per-product thresholds (default mode) and how well it recognises the product."""
    own = (index.get("category_thresholds") or {}).get(index.get("mode", "ddad"))
    if not own:
        return "one threshold per mode"
    accuracy = info.get("category_thresholds", {}).get("held_out_recognition_accuracy")
    recognised = f" ({accuracy:.1%} of held-out nominal images recognised correctly)" if accuracy is not None else ""
    text = ("each image is judged by the threshold of the product its feature memory recognises (nearest "
            f"neighbours, no label){recognised}: " + ", ".join(f"{k} {v:.4f}" for k, v in own.items()))
    unknown = info.get("unknown_products") or {}
    if "margin" in unknown:
        text += (f"; an image whose median patch distance from the bank exceeds {unknown['margin']:.2f} times its "
                 "product's limit (the farthest held-out good image of it) looks like none of the products "
                 "(`unknown_category`; held-out ratios: images of the products and their synthetic defects up to "
                 f"{unknown['highest_known_ratio']:.2f}, each product with itself left out of the bank from "
                 f"{unknown['lowest_unknown_ratio']:.2f})")
    return text + (f"; an inspector who knows the product states it (`pipe(image, category=\"{next(iter(own))}\")`): "
                   "the image is then compared with that product's good patches only and judged by its threshold")


def _fused_vs_parts_text(comparison: dict | None) -> str:
    """Fused mode's image AUROC against each part's, with the paired bootstrap interval ``evaluate.py`` measured."""
    if not comparison:
        return ""
    names = {"feature_memory": "the feature memory", "ddad": "DDAD mode", "d3ad": "D3AD mode"}
    parts = "; ".join(f"{names.get(k, k)} {d['difference']:+.4f} (95% interval {d['ci95'][0]:+.4f} to "
                      f"{d['ci95'][1]:+.4f})" for k, d in comparison.items())
    return ("\n\nFused mode's image AUROC minus each part's, on all test images, with a paired bootstrap over the "
            f"images: {parts}. An interval that spans 0 means the test set cannot order the two.")


def _fused_text(index: dict, info: dict) -> str:
    """Fused mode's settings in a line: n/a for pipelines fitted before it existed."""
    if not index.get("fused_base") or not index.get("fused_stats"):
        return "n/a (not fitted)"
    rule = (f"{1 - index['fused_weight']:.1f} x reconstruction + {index['fused_weight']:.1f} x memory"
            if index.get("fused_rule", "sum") == "sum" else "maximum of the two")
    memory = info.get("memory") or info.get("d3ad", {}).get("memory", {})  # DiAD's run keeps it at the top
    bank = f"; bank {memory['bank_size']} patches of {memory['images']} images" if memory.get("bank_size") else ""
    if bank and memory.get("bank_dtype", "float32") != "float32":
        bank += f", stored as {memory['bank_dtype']}"
    if bank and memory.get("input_norm", "none") == "image":
        bank += ", each image's brightness and contrast standardised before the encoder"
    base = {"diad": "DiAD"}.get(index["fused_base"], index["fused_base"].upper())
    se = info.get("fused", {}).get("bootstrap_se")
    chosen = (f" (of the settings within one bootstrap standard error, {se:.4f}, of the best held-out objective, "
              "the one nearest the part stronger alone; equal weights go to the reconstruction mode stronger alone)"
              if se is not None else "")
    return (f"{base} map and memory map, each normalised by nominal mean and std, "
            f"{rule}{chosen}{bank}; threshold {index.get('fused_threshold')}")


def write_diad_model_card(folder: str | Path, repo_id: str | None = None, template: Path = DIAD_TEMPLATE) -> Path:
    """Render ``README.md`` of a multi-class ``DiADPipeline`` folder from its ``training_info.json`` and, if present,
    the ``results.json`` of ``training/evaluate_multiclass.py``: the model-index has one entry per category."""
    folder = Path(folder)
    info = json.loads((folder / "training_info.json").read_text())
    results = json.loads((folder / "results.json").read_text()) if (folder / "results.json").is_file() else None
    index = json.loads((folder / "model_index.json").read_text())
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    encoder = json.loads((folder / "feature_encoder" / "config.json").read_text())
    preset, names = info["preset"], list(info["categories"])
    model_name = f"diad-multiclass-{preset['name']}".replace("_", "-")
    mode = index.get("mode", "diad")
    eval_results = _per_category_eval_results(names, results, mode)
    licenses = {DATASETS.get(name, (name, name, "other", name))[2] for name in names}  # evaluated or not
    card_data = ModelCardData(
        **_license_metadata(folder, names, licenses.pop() if len(licenses) == 1 else "other"), library_name="ddad-hub",
        tags=["anomaly-detection", "diffusion", "diad", "multi-class", "diffusers"], model_name=model_name,
        eval_results=eval_results or None,
    )
    training = info["training"]
    training_text = (
        f"The SG network and the U-Net's up path trained {training.get('steps')} steps of batch "
        f"{preset['diad']['batch_size']} in {training.get('minutes')} minutes"
        + (f" on {training['cpu']}" if training.get("cpu") else "")
        + f", on the nominal training images of all categories, starting from the multi-class U-Net "
        f"`{info.get('base_denoiser')}` (its input layers, down path and middle block frozen)."
    )
    vae_training = info.get("autoencoder", {}).get("training")
    if vae_training:
        training_text += (f" The {info['autoencoder']['params']} autoencoder trained {vae_training['steps']} steps in "
                          f"{vae_training['minutes']} minutes on the same images.")
    if results:
        results_text = _per_category_table(names, results)
    else:
        results_text = "Not evaluated yet: run `training/evaluate_multiclass.py` with `--output-dir` this folder."
    per_category = info.get("calibration", {}).get("per_category", {})
    threshold_text = ("DiAD mode's shared threshold is the highest score among held-out nominal images of all "
                      "categories, so it needs no labels and no category. The same rule per category: "
                      + ", ".join(f"{k} {v['threshold']:.4f}" for k, v in per_category.items()) + ".")
    credits = "; ".join(DATASETS.get(n, (n, n, "other", n))[3] for n in names)
    vae = json.loads((folder / "vae" / "config.json").read_text())
    side = preset["resolution"] // latent_factor(vae)
    card = ModelCard.from_template(
        card_data, template_path=str(template), model_name=model_name, categories=", ".join(names),
        repo_id=repo_id or f"<user>/{model_name}", preset_name=preset["name"],
        resolution=f"{preset['resolution']} px images as {side}x{side}x{vae['latent_channels']} latents",
        unet_params=info.get("unet_params", "n/a"), sg_params=info.get("sg_params", "n/a"),
        backbone=encoder["backbone"], strides=", ".join(map(str, encoder["feature_strides"])),
        map_size=index.get("map_size"), blur_sigma=index.get("blur_sigma"), start_step=scheduler["start_step"],
        skip=scheduler["skip"], threshold=index.get("threshold"), threshold_text=threshold_text, mode=mode,
        fused_text=_fused_text(index, info), products_text=_products_text(index, info),
        training_text=training_text, results_text=results_text,
        data_text=f"Trained on the nominal training images of {credits}.{_terms_text(names)}",
    )
    path = folder / "README.md"
    card.save(path)
    return path


def write_card(folder: str | Path, repo_id: str | None = None) -> Path:
    """Render the card of whichever pipeline ``folder`` holds: :func:`write_diad_model_card` for a DiAD pipeline
    (its ``model_index.json`` has an SG network), else :func:`write_model_card`."""
    index = json.loads((Path(folder) / "model_index.json").read_text())
    return (write_diad_model_card if "sg_network" in index else write_model_card)(folder, repo_id=repo_id)
