"""From a trained U-Net to a calibrated, saved DDADPipeline.

Nothing here looks at test images. Settings (``w``, start step, pixel-weight mode) are chosen on held-out nominal
training images and synthetic defects pasted into them; the threshold comes from held-out nominal scores only.
"""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DModel
from tqdm.auto import tqdm

from .anomaly_map import FUSION_RULES, fuse_maps, image_scores, map_statistics
from .data import category_of, load_images, nominal_id, read_size, to_unit_range
from .dynamic_noise import score_bin_edges
from .metrics import image_auroc, pixel_auroc, stratified_resamples
from .model_card import discard_test_results, write_model_card
from .model_info import PipelineFolderError
from .models.feature_encoder import FeatureEncoder
from .models.feature_memory import FeatureMemory
from .pipelines.pipeline_ddad import DDADPipeline
from .schedulers.scheduling_ddad import DDADScheduler


def assemble_pipeline(
    unet: UNet2DModel, preset: dict, encoder: FeatureEncoder | None = None, vae: AutoencoderKL | None = None
) -> DDADPipeline:
    """A pipeline with the preset's reconstruction settings and an ImageNet encoder (unless one is given).

    With a ``vae`` the U-Net denoises its latents (D3AD's latent space).
    """
    if encoder is None:
        encoder = FeatureEncoder.from_imagenet(preset["feature_backbone"], tuple(preset["feature_strides"]))
    scheduler = DDADScheduler(
        start_step=preset["start_step"], skip=preset["skip"], eta=preset["eta"], w=preset.get("w") or 0.0
    )
    return DDADPipeline(unet=unet, scheduler=scheduler, feature_encoder=encoder, map_size=preset.get("map_size"),
                        v=preset.get("v", 1.0), vae=vae)


def synthetic_defects(images: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste defect-like changes into nominal images in [-1, 1]; returns (images, boolean masks (B, H, W)).

    Three kinds, in turn: a rectangle cut from another place of another image with jittered brightness (CutPaste),
    a thin bar of random colour (a scratch; of random grey on a grey image, where a coloured bar could not occur and
    would be trivially found), and a large rectangle erased to the image's background colour, the median of its
    border, with a little noise (a missing part, the defect a fixed small noise level cannot repaint).
    They stand in for real defects only to rank settings; no test image is involved.
    """
    g = torch.Generator().manual_seed(seed)
    out = images.clone()
    b, _, h, w = images.shape
    masks = torch.zeros(b, h, w, dtype=torch.bool)

    def rand(lo: float, hi: float) -> float:
        return lo + (hi - lo) * torch.rand(1, generator=g).item()

    def corner(ph: int, pw: int) -> tuple[int, int]:
        return int(torch.randint(h - ph + 1, (1,), generator=g)), int(torch.randint(w - pw + 1, (1,), generator=g))

    for i in range(b):
        if i % 3 == 0:
            ph, pw = max(2, int(rand(0.08, 0.25) * h)), max(2, int(rand(0.08, 0.25) * w))
            src = images[int(torch.randint(b, (1,), generator=g))]
            sy, sx = corner(ph, pw)
            patch = src[:, sy : sy + ph, sx : sx + pw] * rand(0.6, 1.4) + rand(-0.3, 0.3)
        elif i % 3 == 1:
            horizontal = bool(torch.rand(1, generator=g) < 0.5)
            long, thin = max(3, int(rand(0.15, 0.4) * h)), max(1, int(rand(0.02, 0.05) * h))
            ph, pw = (thin, long) if horizontal else (long, thin)
            colour = torch.rand(3, 1, 1, generator=g) * 2 - 1
            if bool((images[i] - images[i, :1]).abs().max() < 1e-6):  # a grey image gets a grey scratch
                colour = colour[:1].expand(3, 1, 1)
            patch = colour.expand(3, ph, pw)
        else:
            ph, pw = max(2, int(rand(0.2, 0.4) * h)), max(2, int(rand(0.2, 0.4) * w))
            border = torch.cat([images[i, :, :2].flatten(1), images[i, :, -2:].flatten(1),
                                images[i, :, :, :2].flatten(1), images[i, :, :, -2:].flatten(1)], dim=1)
            background = border.median(dim=1).values.view(3, 1, 1)
            patch = background + 0.02 * torch.randn(3, ph, pw, generator=g)
        y, x = corner(ph, pw)
        out[i, :, y : y + ph, x : x + pw] = patch.clamp(-1, 1)
        masks[i, y : y + ph, x : x + pw] = True
    return out, masks


@torch.no_grad()
def _distances(pipe: DDADPipeline, images: torch.Tensor, w: float, start_step: int, skip: int, batch_size: int = 16):
    """Feature and pixel (or latent) distances of ``images`` in [-1, 1] and their reconstructions. Images of another
    size than the U-Net's (read at map size, as calibration reads them) are resized to it as a call resizes its
    inputs: the U-Net never runs at a size it was not trained at."""
    if tuple(images.shape[-2:]) != tuple(pipe.sample_size):
        images = F.interpolate(images.float(), size=pipe.sample_size, mode="bilinear", antialias=True).clamp(-1, 1)
    d_f, d_p = [], []
    for s in range(0, images.shape[0], batch_size):
        x = images[s : s + batch_size]
        r, latents = pipe.reconstruct(x, w=w, start_step=start_step, skip=skip, show_progress=False,
                                      return_latents=True)
        f, p = pipe.compute_distances(x, r, latents=latents)
        d_f.append(f)
        d_p.append(p)
    return torch.cat(d_f), torch.cat(d_p)


def _synthetic_set(pipe: DDADPipeline, nominal: torch.Tensor, seed: int):
    """Synthetic defects made from ``nominal``; masks at map size for [nominal, defective]; image labels."""
    defective, masks = synthetic_defects(nominal, seed=seed)
    size = pipe.map_hw
    masks = F.interpolate(masks[:, None].float(), size=size, mode="nearest")[:, 0].bool().numpy()
    all_masks = np.concatenate([np.zeros((nominal.shape[0], *size), dtype=bool), masks])
    labels = np.r_[np.zeros(nominal.shape[0]), np.ones(defective.shape[0])]
    return defective, all_masks, labels


def pixel_weight_from_nominal(d_f: torch.Tensor, d_p: torch.Tensor) -> float:
    """The ``max D_f / max D_p`` ratio averaged over nominal images, a batch-independent stand-in for the paper's."""
    return float(d_f.flatten(1).amax(1).mean() / d_p.flatten(1).amax(1).mean().clamp(min=1e-8))


def select_settings(pipe: DDADPipeline, nominal: torch.Tensor, grid: dict, seed: int = 0) -> tuple[dict, list[dict]]:
    """Rank (w, start_step, pixel-weight mode) on held-out nominal images and synthetic defects made from them.

    The objective is the mean of image AUROC and pixel AUROC. Returns the best setting and the whole table.
    """
    defective, all_masks, labels = _synthetic_set(pipe, nominal, seed)
    table = []
    combos = [(w, t) for w in grid["w"] for t in grid["start_step"]]
    for w, t in tqdm(combos, desc="select settings"):
        f_n, p_n = _distances(pipe, nominal, w, t, max(1, t // 10))
        f_d, p_d = _distances(pipe, defective, w, t, max(1, t // 10))
        for mode, pw in (("per_image", None), ("calibrated", pixel_weight_from_nominal(f_n, p_n))):
            pipe.register_to_config(pixel_weight=pw)
            maps = torch.cat([pipe.combine(f_n, p_n), pipe.combine(f_d, p_d)]).numpy()
            scores = maps.reshape(len(maps), -1).max(1)
            row = {"w": w, "start_step": t, "skip": max(1, t // 10), "pixel_weight_mode": mode, "pixel_weight": pw,
                   "image_auroc": image_auroc(scores, labels), "pixel_auroc": pixel_auroc(maps, all_masks)}
            row["objective"] = (row["image_auroc"] + row["pixel_auroc"]) / 2
            table.append(row)
    best = max(table, key=lambda r: r["objective"])
    return best, table


@torch.no_grad()
def calibrate_threshold(pipe: DDADPipeline, nominal: torch.Tensor, mode: str = "ddad") -> tuple[float, list[float]]:
    """The highest score of ``mode`` among held-out nominal images: above it, an image is called defective."""
    scores = pipe(to_unit_range(nominal), output_type="pt", batch_size=16, mode=mode,
                  per_category_thresholds=False).image_scores  # scores only: no need to recognise products
    return float(scores.max()), [float(s) for s in scores]


def synthetic_objective(pipe: DDADPipeline, nominal: torch.Tensor, seed: int = 0, **call) -> dict:
    """Image and pixel AUROC of the pipeline as it stands on held-out nominal images and synthetic defects."""
    defective, all_masks, labels = _synthetic_set(pipe, nominal, seed)
    out = pipe(to_unit_range(torch.cat([nominal, defective])), output_type="pt", per_category_thresholds=False,
               **call)
    maps = out.anomaly_maps.numpy()
    row = {"image_auroc": image_auroc(out.image_scores.numpy(), labels), "pixel_auroc": pixel_auroc(maps, all_masks)}
    row["objective"] = (row["image_auroc"] + row["pixel_auroc"]) / 2
    return row


def fit_memory(
    pipe: DDADPipeline,
    train: torch.Tensor,
    nominal: torch.Tensor,
    coreset_ratio: float = 0.1,
    max_patches: int | None = None,
    folds: int = 5,
    max_candidates: int | None = None,
    normalization: str = "none",
    groups: list[int] | None = None,
    pooling_pad: str = "zeros",
    group_names: list[str] | None = None,
    feature_strides: tuple[int, ...] = (),
    bank_dtype: str = "float32",
    max_total_patches: int | None = None,
    input_norm: str | list[str] = "none",
    seed: int = 0,
) -> dict:
    """Fit the pipeline's feature memory on every nominal image, the held-out ones included, and cross-fit its
    nominal map statistics.

    ``groups`` gives the category of each image of ``train`` then ``nominal`` in a multi-class set: one coreset per
    category, and ``group_names`` their names, which the bank keeps to recognise products (:meth:`FeatureMemory.fit`).
    ``feature_strides`` picks the encoder stages the bank holds (default: all the encoder gives); ``bank_dtype``
    how the bank is stored ("float16" halves it); ``max_total_patches`` caps a multi-class bank as a whole
    (:func:`~ddad_hub.models.feature_memory.bank_shares`). ``input_norm`` is the memory's input normalisation, or a
    list of candidates: each is fitted and scored alone (mean of image and pixel AUROC) on the held-out images, left
    out of its bank, and synthetic defects made from them; the best is kept, ties going to the earlier candidate.

    ``train`` and ``nominal`` are in [-1, 1], best at map size. The bank keeps every image (no image is held out of
    it, which matters for small training sets); the statistics come from maps of each image scored against the bank
    without its fold. Returns the fit's facts, with ``held_out_ids``: the held-out images' indices in the bank,
    for :meth:`FeatureMemory.leaving_out` while the recipe scores them.
    """
    images = pipe.resize_to_map(torch.cat([train, nominal]))
    held_out_ids = list(range(train.shape[0], images.shape[0]))
    candidates = [input_norm] if isinstance(input_norm, str) else list(input_norm)
    if not candidates:
        raise ValueError("input_norm needs at least one candidate")
    fits = []  # (held-out objective row, memory, fit seconds) per candidate
    for candidate in candidates:
        start = time.perf_counter()
        memory = FeatureMemory.fit(pipe.feature_encoder, images, coreset_ratio=coreset_ratio,
                                   image_size=pipe.map_hw[0], blur_sigma=pipe.config.blur_sigma,
                                   max_patches=max_patches, max_candidates=max_candidates,
                                   normalization=normalization, pooling_pad=pooling_pad, groups=groups,
                                   group_names=group_names, feature_strides=tuple(feature_strides),
                                   bank_dtype=bank_dtype, max_total_patches=max_total_patches,
                                   input_norm=candidate)
        fit_seconds = time.perf_counter() - start
        memory.register_to_config(cross_fitted=True)
        pipe.register_modules(feature_memory=memory)
        pipe.register_to_config(memory_at_map_size=True)
        row = {"input_norm": candidate, "objective": 0.0}
        if len(candidates) > 1:
            with memory.leaving_out(held_out_ids):
                row.update(memory_objective(pipe, nominal, seed), fit_seconds=round(fit_seconds, 1))
        fits.append((row, memory, fit_seconds))
    _, memory, fit_seconds = max(fits, key=lambda fit: fit[0]["objective"])  # max keeps the first of equals
    selection = [row for row, _, _ in fits] if len(fits) > 1 else []
    pipe.register_modules(feature_memory=memory)
    start = time.perf_counter()
    maps, _ = memory.out_of_fold_maps(pipe.feature_encoder, images, folds=folds, size=pipe.map_hw)
    cross_fit_seconds = time.perf_counter() - start
    return {"bank_size": int(memory.bank.shape[0]), "images": int(images.shape[0]), "coreset_ratio": coreset_ratio,
            "max_patches": max_patches, "max_candidates": max_candidates, "folds": folds,
            "normalization": normalization, "pooling_pad": pooling_pad, "bank_dtype": bank_dtype,
            "max_total_patches": max_total_patches, "input_norm": memory.config.input_norm,
            **({"input_norm_selection": selection} if selection else {}),
            "feature_strides": list(feature_strides) or list(pipe.feature_encoder.config.feature_strides),
            "per_category_coreset": groups is not None and len(set(groups)) > 1, "stats": map_statistics(maps),
            "fit_seconds": round(fit_seconds, 1), "cross_fit_seconds": round(cross_fit_seconds, 1),
            "held_out_ids": held_out_ids,
            "how": "bank on all nominal training images; map statistics cross-fitted (each fold left out in turn)"}


def fit_d3ad(
    pipe: DDADPipeline,
    train: torch.Tensor,
    nominal: torch.Tensor,
    coreset_ratio: float,
    t_max_grid: list[int],
    max_patches: int | None = None,
    **memory_options,
) -> dict:
    """Give the pipeline D3AD's first estimate and choose ``d3ad_t_max`` without test images.

    The feature memory is fitted by :func:`fit_memory`, which takes ``memory_options`` (``folds``,
    ``max_candidates``, ``normalization``, ``groups``, ``group_names``, ``pooling_pad``); its facts are
    ``info["memory"]``. The histogram bins come from the held-out nominal images' scores and ``t_max`` from the
    synthetic-defect objective, both with the held-out images left out of the bank. ``train`` and ``nominal`` are
    best at map size (the memory reads them at that size).
    """
    memory_info = fit_memory(pipe, train, nominal, coreset_ratio, max_patches, **memory_options)
    memory = pipe.feature_memory
    table = []
    with memory.leaving_out(memory_info["held_out_ids"]):
        bins = score_bin_edges(pipe.first_estimate(pipe.resize_to_map(nominal)))
        memory.register_to_config(score_bins=bins)
        for t_max in t_max_grid:
            pipe.register_to_config(d3ad_t_max=int(t_max))
            table.append({"t_max": int(t_max), **synthetic_objective(pipe, nominal, mode="d3ad")})
        best = max(table, key=lambda r: r["objective"])
        pipe.register_to_config(d3ad_t_max=best["t_max"])
        threshold, nominal_scores = calibrate_threshold(pipe, nominal, mode="d3ad")
    pipe.register_to_config(d3ad_threshold=threshold)
    return {"best": best, "table": table, "score_bins": bins, "coreset_ratio": coreset_ratio, "threshold": threshold,
            "nominal_scores": nominal_scores,
            "bank_size": memory_info["bank_size"], "memory": memory_info,
            "how": "memory on all nominal images; bins on held-out nominal scores and t_max on synthetic defects, "
                   "with the held-out images left out of the bank"}


def _objective(scores: np.ndarray, maps: np.ndarray, labels: np.ndarray, masks: np.ndarray) -> dict:
    row = {"image_auroc": image_auroc(scores, labels), "pixel_auroc": pixel_auroc(maps, masks)}
    row["objective"] = (row["image_auroc"] + row["pixel_auroc"]) / 2
    return row


def _memory_maps(pipe: DDADPipeline, images: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    return torch.cat([pipe.memory_maps(images[s : s + batch_size])[0] for s in range(0, images.shape[0], batch_size)])


@torch.no_grad()
def memory_objective(pipe: DDADPipeline, nominal: torch.Tensor, seed: int = 0) -> dict:
    """The feature memory's objective alone (mean of image and pixel AUROC) on ``nominal`` and synthetic defects
    made from them; call it with those images left out of the bank."""
    defective, all_masks, labels = _synthetic_set(pipe, nominal, seed)
    maps = _memory_maps(pipe, torch.cat([nominal, defective]))
    return _objective(image_scores(maps).numpy(), maps.numpy(), labels, all_masks)


@torch.no_grad()
def fit_fused(
    pipe: DDADPipeline,
    nominal: torch.Tensor,
    memory_stats: list[float],
    weights: tuple[float, ...] = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    seed: int = 0,
    bootstrap_rounds: int = 50,
) -> dict:
    """Choose fused mode's reconstruction mode, rule and weight on held-out nominal images and synthetic defects.

    Each reconstruction mode's nominal statistics come from its maps of the held-out nominal images; the memory's
    (``memory_stats``) from cross-fitting. Every (mode, rule, weight) is scored by the objective of the other modes
    (mean of image and pixel AUROC). Synthetic defects are only a stand-in for real ones and a few dozen images
    measure the objective coarsely, so the choice is :func:`choose_within_noise`'s: among the settings within one
    bootstrap standard error of the best, the one nearest the part that is stronger alone. It is saved in the
    config with its threshold (the highest fused score among the held-out nominal images). Call it with the
    held-out images left out of the memory's bank. Also returns the objective of each part alone, measured on the
    same images, for :func:`choose_mode`.
    """
    defective, all_masks, labels = _synthetic_set(pipe, nominal, seed)
    both = torch.cat([nominal, defective])
    n = nominal.shape[0]
    memory_maps = _memory_maps(pipe, both)
    alone = {"memory": _objective(image_scores(memory_maps).numpy(), memory_maps.numpy(), labels, all_masks)}
    stats, table, recon_by_base = {"memory": list(memory_stats)}, [], {}
    for base in pipe.reconstruction_modes():
        recon = pipe(to_unit_range(both), output_type="pt", batch_size=16, mode=base,
                     per_category_thresholds=False).anomaly_maps
        alone[base] = _objective(image_scores(recon).numpy(), recon.numpy(), labels, all_masks)
        stats[base] = map_statistics(recon[:n])
        recon_by_base[base] = recon
        for rule in FUSION_RULES:
            for w in weights if rule == "sum" else (0.5,):
                fused = fuse_maps(recon, memory_maps, stats[base], stats["memory"], rule, w)
                table.append({"base": base, "rule": rule, "memory_weight": w,
                              **_objective(image_scores(fused).numpy(), fused.numpy(), labels, all_masks)})
    top = max(table, key=lambda r: r["objective"])
    fused_top = fuse_maps(recon_by_base[top["base"]], memory_maps, stats[top["base"]], stats["memory"], top["rule"],
                          top["memory_weight"])
    se = bootstrap_se(image_scores(fused_top).numpy(), fused_top.numpy(), labels, all_masks, bootstrap_rounds, seed)
    best = choose_within_noise(table, alone, se)
    pipe.register_to_config(fused_base=best["base"], fused_stats=stats, fused_rule=best["rule"],
                            fused_weight=float(best["memory_weight"]))
    threshold, nominal_scores = calibrate_threshold(pipe, nominal, mode="fused")
    pipe.register_to_config(fused_threshold=threshold)
    return {"best": best, "top": top, "bootstrap_se": se, "table": table, "stats": stats, "threshold": threshold,
            "nominal_scores": nominal_scores, "alone": alone,
            "how": "reconstruction mode, rule and weight on held-out nominal images + synthetic defects: among the "
                   "settings within one bootstrap standard error of the best objective, the one nearest the part "
                   "stronger alone; statistics of held-out nominal maps (the memory's cross-fitted)"}


def bootstrap_se(scores: np.ndarray, maps: np.ndarray, labels: np.ndarray, masks: np.ndarray, rounds: int = 50,
                 seed: int = 0, pixel_stride: int = 4) -> float:
    """Bootstrap standard error of the objective (mean of image and pixel AUROC): nominal and defective images are
    resampled separately, so every round keeps both classes. Pixel AUROC reads every ``pixel_stride``-th row and
    column, which keeps 50 rounds to seconds; an error estimate needs no finer grid."""
    if rounds < 2:
        return 0.0
    maps, masks = maps[:, ::pixel_stride, ::pixel_stride], masks[:, ::pixel_stride, ::pixel_stride]
    values = []
    for idx in stratified_resamples(labels == 1, rounds, seed):
        if not masks[idx].any():
            continue
        values.append(_objective(scores[idx], maps[idx], labels[idx], masks[idx])["objective"])
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def choose_within_noise(table: list[dict], alone: dict[str, dict], se: float) -> dict:
    """Fused mode's setting: among the rows of ``table`` whose objective is within ``se`` of the best, the one
    nearest the part that is stronger alone (the highest memory weight if the memory's objective alone beats every
    reconstruction mode's, else the lowest). Equal weights go to the reconstruction mode that is stronger alone,
    then to the higher objective. The maximum rule, which has no weight, is taken only if no weighted sum comes
    that close.

    Closer settings are indistinguishable on the held-out images, and synthetic defects are not real ones: a
    setting is moved away from the stronger part only as far as the held-out evidence carries it, and between rows
    the noise cannot order, the parts' own objectives (each measured on every held-out image) decide.
    """
    floor = max(r["objective"] for r in table) - se
    near = [r for r in table if r["objective"] >= floor]
    memory_stronger = all(alone["memory"]["objective"] >= v["objective"] for k, v in alone.items() if k != "memory")
    sign = 1.0 if memory_stronger else -1.0
    return max(near, key=lambda r: (sign * r["memory_weight"] if r["rule"] == "sum" else -np.inf,
                                    alone.get(r["base"], {}).get("objective", -np.inf), r["objective"]))


def choose_mode(pipe: DDADPipeline, objectives: dict[str, float]) -> dict:
    """Make the mode with the best synthetic-defect objective (``objectives``: mode -> objective, each measured on
    the same held-out nominal images and synthetic defects) the pipeline's default (``config.mode``)."""
    chosen = max(objectives, key=objectives.get)
    pipe.register_to_config(mode=chosen)
    return {"chosen": chosen, "objectives": dict(objectives),
            "how": "mean of image and pixel AUROC on held-out nominal images and synthetic defects"}


def fused_mode_objectives(fused: dict) -> dict[str, float]:
    """Each mode's objective as :func:`fit_fused` measured them (its parts alone and its best setting), all on the
    same held-out images (left out of the bank) and synthetic defects: what :func:`choose_mode` compares."""
    return {**{mode: part["objective"] for mode, part in fused["alone"].items() if mode != "memory"},
            "fused": fused["best"]["objective"]}


def fit_fused_mode(pipe: DDADPipeline, nominal: torch.Tensor, memory_info: dict) -> dict:
    """Fit fused mode on the held-out ``nominal`` images, left out of the bank the memory was just fitted with
    (``memory_info``: :func:`fit_memory`'s facts, their statistics cross-fitted), then make the mode with the best
    held-out objective the default. Every refit of the memory ends this way, since the memory moves all three
    modes' objectives. Returns ``{"fused": ..., "mode": ...}`` for ``training_info.json``."""
    with pipe.feature_memory.leaving_out(memory_info["held_out_ids"]):
        fused = fit_fused(pipe, nominal, memory_info["stats"])
    return {"fused": fused, "mode": choose_mode(pipe, fused_mode_objectives(fused))}


def per_category_maxima(scores: list[float], categories: list[str]) -> dict[str, float]:
    """The highest of ``scores`` per category (``categories`` names each score's): per-product thresholds."""
    if len(scores) != len(categories):
        raise ValueError(f"{len(scores)} scores for {len(categories)} category names")
    maxima: dict[str, float] = {}
    for value, name in zip(scores, categories):
        maxima[name] = max(maxima.get(name, float("-inf")), float(value))
    return maxima


def category_maxima(scores: list[float], categories: list[str], min_images: int = 5) -> dict[str, float]:
    """Per-product thresholds: :func:`per_category_maxima` of the products with at least ``min_images`` scores
    (a maximum of a few scores is too low a bar; the others keep the shared threshold)."""
    counts = {name: categories.count(name) for name in dict.fromkeys(categories)}
    return {name: value for name, value in per_category_maxima(scores, categories).items()
            if counts[name] >= min_images}


@torch.no_grad()
def fit_category_thresholds(
    pipe: DDADPipeline,
    nominal: torch.Tensor,
    categories: list[str],
    nominal_scores: dict[str, list[float]],
    min_images: int = 5,
) -> dict:
    """Per-product thresholds of a multi-class pipeline, from scores its calibration already computed.

    ``nominal_scores`` maps each mode to its scores of the held-out ``nominal`` images (as
    :func:`calibrate_threshold` returns them) and ``categories`` names each image's product. Each product's
    threshold is the highest score among its own held-out images, as the shared one is among all; a product with
    fewer than ``min_images`` of them keeps the shared threshold (a maximum of a few scores is too low a bar). Call
    it with the held-out images left out of the memory's bank: it also measures how often the memory recognises
    their product.
    """
    counts = {name: categories.count(name) for name in dict.fromkeys(categories)}
    thresholds = {mode: category_maxima(scores, categories, min_images) for mode, scores in nominal_scores.items()}
    pipe.register_to_config(category_thresholds=thresholds)
    recognised = pipe.infer_categories(nominal)
    accuracy = float(np.mean([r == c for r, c in zip(recognised, categories)]))
    return {"thresholds": thresholds, "held_out_images": counts, "min_images": min_images,
            "held_out_recognition_accuracy": accuracy,
            "how": "per product: the highest score among its held-out nominal images (left out of the bank); at "
                   "test time the product is the one most of an image's patches find their nearest neighbour in"}


@torch.no_grad()
def recover_held_out(
    pipe: DDADPipeline, train: torch.Tensor, nominal: torch.Tensor, options: dict, groups: list[int] | None = None,
    group_names: list[str] | None = None,
) -> list[int]:
    """Let a reloaded pipeline's memory leave its held-out images out of the bank again, as right after its fit.

    The bank holds every nominal image, but which entry came from which image is not saved. The bank is fitted
    again from ``train`` then ``nominal`` (in [-1, 1], at map size) with the memory's saved settings and the
    preset's ``options`` (:func:`memory_options`); the fit is deterministic, so it must come out equal to the saved
    bank, and only then are its sources taken over. Returns the held-out images' ids for
    :meth:`FeatureMemory.leaving_out`; raises :class:`PipelineFolderError` when the banks differ.
    """
    saved, config = pipe.feature_memory, pipe.feature_memory.config
    images = pipe.resize_to_map(torch.cat([train, nominal]))
    memory = FeatureMemory.fit(pipe.feature_encoder, images, coreset_ratio=options["coreset_ratio"],
                               image_size=config.image_size, blur_sigma=config.blur_sigma,
                               max_patches=options.get("max_patches"), max_candidates=options.get("max_candidates"),
                               normalization=config.normalization, pooling_pad=config.pooling_pad, groups=groups,
                               group_names=group_names, feature_strides=tuple(config.feature_strides),
                               bank_dtype=config.bank_dtype, max_total_patches=options.get("max_total_patches"),
                               input_norm=config.input_norm)
    same = memory.bank.shape == saved.bank.shape and torch.equal(memory.bank.cpu(), saved.bank.cpu())
    if same and saved.has_groups:
        same = memory.has_groups and torch.equal(memory.bank_groups.cpu(), saved.bank_groups.cpu())
    if not same:
        raise PipelineFolderError("fitting the feature memory again from the recorded split and settings did not give "
                                  "the saved bank, so its held-out images cannot be left out of it: re-finalise the "
                                  "pipeline with training/finalize.py")
    saved.bank_sources = memory.bank_sources.to(saved.bank.device)
    return list(range(train.shape[0], images.shape[0]))


@torch.no_grad()
def fit_unknown_products(
    pipe: DDADPipeline, nominal: torch.Tensor, categories: list[str], held_out_ids: list[int], seed: int = 0
) -> dict:
    """Let a multi-class pipeline tell an image of none of its products from a defective one of its products.

    Each product's limit is the largest distance from the bank (``FeatureMemory.image_distances``) among its
    held-out nominal images (``nominal``, ``categories`` naming each one's product), left out of the bank. Two sets
    of held-out images then place the margin: *known*, the same images and synthetic defects made from them, each
    measured against the limit of the product it is recognised as; *unknown*, each product's images with that
    product's entries taken out of the bank too (:meth:`FeatureMemory.without_groups`), so they stand for a product
    the model never saw and are measured against the product they are taken for. The margin is the geometric mean
    of the largest known ratio and the smallest unknown one when these are apart; when they overlap it is the
    largest known ratio, so that no image of a trained product is called unknown. No test image is used.
    """
    memory = pipe.feature_memory
    products = list(memory.config.group_names)
    counts = {name: categories.count(name) for name in products}
    if min(counts.values()) < 2:
        why = f"fewer than 2 held-out images of some product ({counts})"
        warnings.warn(f"no check for images of unknown products: {why}", stacklevel=2)
        return {"skipped": why}
    defective = _synthetic_set(pipe, nominal, seed)[0]
    own = {name: torch.tensor([c == name for c in categories]) for name in products}
    with memory.leaving_out(held_out_ids):
        seen, distances = pipe.recognise_categories(nominal)
        limits = {name: float(distances[own[name]].max()) for name in products}
        memory.register_to_config(group_limits=limits, unknown_margin=None)  # the ratios need the limits alone
        known = memory.product_ratios(seen, distances)
        known_defective = memory.product_ratios(*pipe.recognise_categories(defective))
        unknown = []
        for name in products:
            with memory.without_groups([name]):
                unknown.append(memory.product_ratios(*pipe.recognise_categories(nominal[own[name]])))
    unknown = torch.cat(unknown)
    highest_known = float(torch.cat([known, known_defective]).max())
    lowest_unknown = float(unknown.min())
    apart = lowest_unknown > highest_known
    margin = (highest_known * lowest_unknown) ** 0.5 if apart else highest_known
    memory.register_to_config(unknown_margin=margin)
    return {"limits": limits, "margin": margin, "separated": apart, "highest_known_ratio": highest_known,
            "lowest_unknown_ratio": lowest_unknown,
            "known_ratios": {"nominal": known.tolist(), "synthetic_defects": known_defective.tolist()},
            "unknown_ratios": unknown.tolist(), "held_out_images": counts,
            "how": "limit per product: the largest median nearest-patch distance of its held-out nominal images "
                   "(left out of the bank); margin between the held-out images and their synthetic defects (known) "
                   "and each product's held-out images with that product left out of the bank (unknown)"}


def recalibrate(
    pipe: DDADPipeline,
    nominal: torch.Tensor,
    held_out_ids: list[int] | None = None,
    categories: list[str] | None = None,
    min_images: int = 5,
    nominal_unet_size: torch.Tensor | None = None,
) -> dict:
    """Refresh the calibrated pixel weight (if the pipeline uses one) and the thresholds, e.g. after adaptation.

    ``nominal`` are the held-out images read at map size, as calls read test images (the thresholds come from
    them); ``nominal_unet_size`` the same images read at the U-Net's size, as :func:`select_settings` reads them for
    the pixel weight (default: ``nominal`` resized), so an unchanged pipeline gets back its own calibration.

    When the memory's bank holds the held-out images too (``cross_fitted``), D3AD's and fused mode's thresholds
    need them left out of it: pass ``held_out_ids`` right after :func:`fit_memory`. Without them (a reloaded
    pipeline) those two thresholds are kept as they are, since in-bank scores would set them too low. A multi-class
    pipeline's per-product thresholds of the refreshed modes are refreshed with them when ``categories`` names each
    nominal image's product (with :func:`fit_category_thresholds`' rule: products with fewer than ``min_images``
    of them keep the shared threshold), and dropped otherwise (stale thresholds would judge the new maps).
    """
    if pipe.config.pixel_weight is not None:
        sched = pipe.scheduler.config
        f_n, p_n = _distances(pipe, nominal if nominal_unet_size is None else nominal_unet_size, sched.w,
                              sched.start_step, sched.skip)
        pipe.register_to_config(pixel_weight=pixel_weight_from_nominal(f_n, p_n))
    threshold, scores = calibrate_threshold(pipe, nominal)
    pipe.register_to_config(threshold=threshold)
    result = {"threshold": threshold, "pixel_weight": pipe.config.pixel_weight, "nominal_scores": scores}
    refreshed = {"ddad": scores}
    memory = pipe.feature_memory
    memory_modes = [m for m in pipe.available_modes() if m != "ddad"]
    if memory_modes and memory.config.cross_fitted and held_out_ids is None:
        result["memory_modes"] = "thresholds kept: the bank holds the held-out images (re-run finalize.py)"
        memory_modes = []
    context = memory.leaving_out(held_out_ids) if held_out_ids is not None else contextlib.nullcontext()
    with context:
        for mode in memory_modes:
            result[f"{mode}_threshold"], result[f"{mode}_nominal_scores"] = calibrate_threshold(pipe, nominal, mode)
            pipe.register_to_config(**{f"{mode}_threshold": result[f"{mode}_threshold"]})
            refreshed[mode] = result[f"{mode}_nominal_scores"]
    own = dict(pipe.config.category_thresholds or {})
    if own:
        for mode, mode_scores in refreshed.items():
            if categories is not None:
                own[mode] = category_maxima(mode_scores, categories, min_images)
            else:
                own.pop(mode, None)
        pipe.register_to_config(category_thresholds=own or None)
        result["category_thresholds"] = own or None
    return result


def memory_options(preset: dict) -> dict | None:
    """The feature memory's fit settings of a preset (its "memory" entry, with the "d3ad" entry's coreset ratio and
    cap as fallbacks); ``None`` when the preset fits no memory."""
    mem, d3ad = preset.get("memory") or {}, preset.get("d3ad") or {}
    if not mem and not d3ad:
        return None
    return {"coreset_ratio": mem.get("coreset_ratio", d3ad.get("coreset_ratio", 0.1)),
            "max_patches": mem.get("max_patches", d3ad.get("max_patches")), "folds": mem.get("folds", 5),
            "max_candidates": mem.get("max_candidates"), "normalization": mem.get("normalization", "none"),
            "pooling_pad": mem.get("pooling_pad", "zeros"), "feature_strides": tuple(mem.get("feature_strides", ())),
            "bank_dtype": mem.get("bank_dtype", "float32"), "max_total_patches": mem.get("max_total_patches"),
            "input_norm": mem.get("input_norm", "none")}


@torch.no_grad()
def finalize_diad(pipe, train_paths: list[Path], held_out: list[Path], preset: dict) -> dict:
    """Calibrate a trained ``DiADPipeline`` without test images: DiAD's threshold and, when the preset fits a
    feature memory, the memory (one coreset per product), fused mode, the default mode and per-product thresholds.

    As :func:`finalize_run` for DDAD: the memory's bank holds every nominal image and its statistics are
    cross-fitted; fused mode's rule and weight, the default mode and the thresholds come from the held-out nominal
    images (left out of the bank) and synthetic defects made from them. Returns the facts for ``training_info.json``.
    """
    nominal = load_images(held_out, pipe.map_hw[0])  # read at map size, as test images are
    names = [category_of(p) for p in held_out]
    info: dict = {}
    options = memory_options(preset)
    scores_by_mode: dict[str, list[float]] = {}
    if options is not None:
        train = load_images(train_paths, pipe.map_hw[0])
        info["memory"] = fit_memory(pipe, train, nominal, groups=category_ids(train_paths + held_out),
                                    group_names=category_names(train_paths + held_out), **options)
        info.update(fit_fused_mode(pipe, nominal, info["memory"]))
        scores_by_mode["fused"] = info["fused"]["nominal_scores"]
    threshold, scores = calibrate_threshold(pipe, nominal, mode="diad")
    pipe.register_to_config(threshold=threshold)
    scores_by_mode["diad"] = scores
    if pipe.feature_memory is not None and pipe.feature_memory.has_groups:
        with pipe.feature_memory.leaving_out(info["memory"]["held_out_ids"]):
            info["category_thresholds"] = fit_category_thresholds(
                pipe, nominal, names, scores_by_mode, preset.get("category_threshold_min_images", 5))
        info["unknown_products"] = fit_unknown_products(pipe, nominal, names, info["memory"]["held_out_ids"])
    info["calibration"] = {
        "threshold": threshold, "nominal_scores": scores,
        "per_category": {name: {"threshold": value, "nominal_scores": [s for s, n in zip(scores, names) if n == name]}
                         for name, value in per_category_maxima(scores, names).items()},
        "how": "highest DiAD score among held-out nominal training images of all categories; per_category: the "
               "same per category"}
    return info


def autoencoder_info(vae: AutoencoderKL, training: dict | None = None) -> dict:
    """Size and latent scale of the autoencoder, and how it was trained: ``train_vae.py``'s record in its folder,
    else ``training``, the record a saved pipeline carries (a pipeline's own ``vae/`` folder has none)."""
    info = {"params": f"{sum(p.numel() for p in vae.parameters()) / 1e6:.1f}M", "source": vae.config._name_or_path,
            "scaling_factor": vae.config.scaling_factor}
    trained = Path(vae.config._name_or_path) / "training_info.json"
    if trained.is_file():
        info["training"] = json.loads(trained.read_text())
    elif training:
        info["training"] = training
    return info


def category_ids(paths: list[Path]) -> list[int]:
    """The category index of each ``<category>/train/good/<image>`` path, in order of first appearance."""
    names: dict[str, int] = {}
    return [names.setdefault(category_of(path), len(names)) for path in paths]


def category_names(paths: list[Path]) -> list[str]:
    """The category folders' names of ``<category>/train/good/<image>`` paths, in order of first appearance."""
    return list(dict.fromkeys(category_of(path) for path in paths))


def finalize_run(
    out: str | Path,
    unet: UNet2DModel,
    preset: dict,
    data: str | Path,
    held_out: list[Path],
    training: dict,
    encoder: FeatureEncoder | None = None,
    train_paths: list[Path] | None = None,
    vae: AutoencoderKL | None = None,
    category: str | None = None,
    autoencoder_training: dict | None = None,
) -> Path:
    """Assemble, select settings, calibrate and save the pipeline to ``<out>/pipeline`` with its model card.

    ``category`` names what was trained on (default: the data folder's name); ``autoencoder_training`` is how the
    ``vae`` was trained when its folder does not say (re-finalising a saved pipeline).
    """
    out = Path(out)
    pipe = assemble_pipeline(unet, preset, encoder, vae)
    pipe.set_progress_bar_config(disable=True)
    nominal = load_images(held_out, preset["resolution"], read_size(preset))
    info: dict = {"preset": preset, "data": str(data), "category": category or Path(data).name, "training": training,
                  "held_out_nominal": [nominal_id(p) for p in held_out],
                  **({"categories": category_names(train_paths + held_out)}
                     if train_paths and len(set(category_ids(train_paths + held_out))) > 1 else {}),
                  "unet_params": f"{sum(p.numel() for p in unet.parameters()) / 1e6:.1f}M"}
    if vae is not None:
        info["autoencoder"] = autoencoder_info(vae, autoencoder_training)
    if preset.get("selection_grid") and preset.get("w") is None:
        best, table = select_settings(pipe, nominal, preset["selection_grid"])
        pipe.scheduler.register_to_config(w=best["w"], start_step=best["start_step"], skip=best["skip"])
        pipe.scheduler.set_timesteps()
        pipe.register_to_config(pixel_weight=best["pixel_weight"])
        info["selection"] = {"best": best, "table": table,
                             "how": "held-out nominal training images + synthetic defects pasted into them"}
    # the pipeline's calls read images at map size, as test images come (the memory reads them at that size)
    nominal_map = load_images(held_out, pipe.map_hw[0])
    if preset.get("d3ad") and train_paths:
        train = load_images(train_paths, pipe.map_hw[0])
        info["d3ad"] = fit_d3ad(pipe, train, nominal_map, t_max_grid=preset["d3ad"]["t_max"],
                                **memory_options(preset), groups=category_ids(train_paths + held_out),
                                group_names=category_names(train_paths + held_out))
        info.update(fit_fused_mode(pipe, nominal_map, info["d3ad"]["memory"]))
    threshold, nominal_scores = calibrate_threshold(pipe, nominal_map)
    pipe.register_to_config(threshold=threshold)
    memory = pipe.feature_memory
    if "fused" in info and memory.has_groups:
        scores_by_mode = {"ddad": nominal_scores, "d3ad": info["d3ad"]["nominal_scores"],
                          "fused": info["fused"]["nominal_scores"]}
        with memory.leaving_out(info["d3ad"]["memory"]["held_out_ids"]):
            info["category_thresholds"] = fit_category_thresholds(
                pipe, nominal_map, [category_of(p) for p in held_out], scores_by_mode,
                preset.get("category_threshold_min_images", 5))
        info["unknown_products"] = fit_unknown_products(pipe, nominal_map, [category_of(p) for p in held_out],
                                                        info["d3ad"]["memory"]["held_out_ids"])
    info["calibration"] = {"threshold": threshold, "nominal_scores": nominal_scores,
                           "how": "highest score among held-out nominal training images"}
    folder = out / "pipeline"
    pipe.save_pretrained(folder)
    discard_test_results(folder)  # a re-finalisation into the same folder: the old results measured another pipeline
    (folder / "training_info.json").write_text(json.dumps(info, indent=2, default=str))
    write_model_card(folder)
    return folder
