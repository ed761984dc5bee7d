"""Image AUROC, pixel AUROC and AUPRO, through scikit-learn and scikit-image."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

METRICS = (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO"))  # key, short label


def image_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """AUROC of image scores, defective = positive."""
    from sklearn.metrics import roc_auc_score  # imported on use: importing scikit-learn costs every CLI 2 s

    return float(roc_auc_score(np.asarray(labels).astype(int), np.asarray(scores, dtype=np.float64)))


def pixel_auroc(maps: np.ndarray, masks: np.ndarray) -> float:
    """AUROC over every pixel of every image."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.asarray(masks).ravel().astype(np.uint8), np.asarray(maps, dtype=np.float32).ravel()))


def aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3, num_thresholds: int = 1000) -> float:
    """Area under the per-region-overlap curve up to ``fpr_limit``, divided by ``fpr_limit``.

    Regions are the 8-connected components of each ground-truth mask (scikit-image ``label``). For each threshold,
    PRO is the mean over regions of the fraction of the region above it; FPR is the fraction of nominal pixels
    above it. Thresholds are quantiles of the nominal pixels' scores, dense where the FPR is below the limit.
    """
    from skimage.measure import label

    maps = np.asarray(maps, dtype=np.float32)
    masks = np.asarray(masks).astype(bool)
    negatives = np.sort(maps[~masks])
    if negatives.size == 0 or not masks.any():
        raise ValueError("AUPRO needs both defective and nominal pixels")
    regions = []
    for m, mask in zip(maps, masks):
        labelled = label(mask, connectivity=2)
        for k in range(1, labelled.max() + 1):
            regions.append(np.sort(m[labelled == k]))
    # thresholds from the (1 - fpr) quantiles of nominal scores, covering FPR 0 .. fpr_limit
    fprs_wanted = np.linspace(0, fpr_limit, num_thresholds)
    thresholds = np.quantile(negatives, 1 - fprs_wanted)
    fpr = 1 - np.searchsorted(negatives, thresholds, side="right") / negatives.size
    pro = np.mean([1 - np.searchsorted(r, thresholds, side="right") / r.size for r in regions], axis=0)
    order = np.argsort(fpr)
    fpr, pro = fpr[order], pro[order]
    keep = fpr <= fpr_limit
    fpr, pro = np.concatenate([[0.0], fpr[keep], [fpr_limit]]), np.concatenate(
        [[pro[keep][0] if keep.any() else 0.0], pro[keep], [np.interp(fpr_limit, fpr, pro)]]
    )
    return float(np.trapezoid(pro, fpr) / fpr_limit)


def stratified_resamples(labels: np.ndarray, rounds: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Bootstrap index sets over images: nominal and defective images are resampled separately, so every round
    keeps both classes in their own numbers."""
    labels = np.asarray(labels).astype(bool)
    nominal, defective = np.flatnonzero(~labels), np.flatnonzero(labels)
    rng = np.random.default_rng(seed)
    for _ in range(rounds):
        yield np.concatenate([rng.choice(nominal, nominal.size), rng.choice(defective, defective.size)])


def paired_auroc_difference(scores_a: np.ndarray, scores_b: np.ndarray, labels: np.ndarray, rounds: int = 2000,
                            seed: int = 0) -> dict:
    """Image AUROC of ``scores_a`` minus that of ``scores_b`` on the same images, with a paired bootstrap.

    Both score sets are read at the same resampled indices (:func:`stratified_resamples`), so the spread is that of
    the difference, not of either AUROC. Returns the difference, its bootstrap standard error, a 95% percentile
    interval and the share of rounds in which ``a`` is ahead.
    """
    scores_a, scores_b = np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    if labels.all() or not labels.any():
        raise ValueError("an AUROC difference needs nominal and defective images")
    diffs = np.array([image_auroc(scores_a[idx], labels[idx]) - image_auroc(scores_b[idx], labels[idx])
                      for idx in stratified_resamples(labels, rounds, seed)])
    low, high = np.percentile(diffs, [2.5, 97.5])
    return {"difference": image_auroc(scores_a, labels) - image_auroc(scores_b, labels),
            "se": float(diffs.std(ddof=1)), "ci95": [float(low), float(high)], "share_ahead": float((diffs > 0).mean())}


def roc_points(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) of the image-level ROC curve, for plots."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(np.asarray(labels).astype(int), np.asarray(scores, dtype=np.float64))
    return fpr, tpr


def summarize(
    image_scores: np.ndarray, maps: np.ndarray, masks: np.ndarray, defect_types: list[str],
    pixel_labelled: np.ndarray | None = None,
) -> dict[str, dict]:
    """Metrics overall and per defect type (each type scored against all nominal test images).

    ``pixel_labelled`` marks the images whose mask is known (default: all). Defect types without masks get image
    AUROC only, their pixel metrics ``None`` and a ``pixel_metrics`` note; "all" computes pixel metrics on the
    nominal images and the types with masks, and says so.
    """
    types = np.asarray(defect_types)
    labels = types != "good"
    known = np.ones(len(types), bool) if pixel_labelled is None else np.asarray(pixel_labelled, bool)
    maskless = sorted(set(types[~known]))
    out = {"all": _metrics(image_scores, maps, masks, labels, known)}
    if maskless:
        out["all"]["pixel_metrics"] = (f"on nominal images and types with masks only; none for {', '.join(maskless)}"
                                       if (known & labels).any() else "skipped: no defect type has masks")
    for kind in sorted(set(defect_types) - {"good"}):
        sel = (types == "good") | (types == kind)
        out[kind] = _metrics(image_scores[sel], maps[sel], masks[sel], labels[sel], known[sel])
        if kind in maskless:
            out[kind]["pixel_metrics"] = "skipped: this type has no masks"
    return out


def _metrics(scores, maps, masks, labels, known) -> dict:
    """Image AUROC on every image; pixel AUROC and AUPRO on the pixel-labelled ones. A metric the images cannot give
    (one class only: no defective or no nominal images, masks without defect pixels) is ``None`` with a note, not
    NaN."""
    result = {"image_auroc": None, "pixel_auroc": None, "aupro": None}
    if labels.all() or not labels.any():
        result["image_metrics"] = f"n/a: no {'nominal' if labels.all() else 'defective'} test images"
    else:
        result["image_auroc"] = image_auroc(scores, labels)
    if (known & labels).any():
        labelled = masks[known].astype(bool)
        if labelled.any() and not labelled.all():
            result["pixel_auroc"] = pixel_auroc(maps[known], masks[known])
            result["aupro"] = aupro(maps[known], masks[known])
        elif not labelled.any():
            result["pixel_metrics"] = ("n/a: the defective images' masks mark no defect pixel (masks are read as "
                                       "defect where > 127, or > 0 in masks without a value above 127)")
        else:
            result["pixel_metrics"] = "n/a: every pixel of the pixel-labelled images is marked defective"
    result["n_images"] = int(len(labels))
    return result


def format_metric(value: float | None, digits: int = 3) -> str:
    """A metric as tables show it: ``digits`` decimals, or "n/a" where the test images cannot give it."""
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def format_mean(means: dict, key: str) -> str:
    """A mean over categories (``evaluate_multiclass.mean_over_categories``) as tables show it: starred when it is
    over only the categories that have the metric (``<key>_of`` names them; see :func:`mean_footnote`)."""
    return format_metric(means.get(key)) + ("*" if f"{key}_of" in means else "")


def mean_footnote(means: dict[str, dict]) -> str:
    """The footnote of starred means (:func:`format_mean`), "" when no mean is starred."""
    partial = sorted({", ".join(v) for m in means.values() for k, v in m.items() if k.endswith("_of")})
    return f"\n\n\\* mean over the categories that have the metric only ({'; '.join(partial)})" if partial else ""


def finite_json(value):
    """``value`` with every NaN or infinite float replaced by ``None``: JSON has no NaN (many parsers refuse it)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v) for v in value]
    return value
