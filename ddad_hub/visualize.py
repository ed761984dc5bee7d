"""Rendering anomaly maps as pictures: heat-maps, overlays and mask outlines."""

from __future__ import annotations

import numpy as np
from PIL import Image


def _colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> RGB uint8 through matplotlib's 'jet' when available, else a built-in approximation."""
    try:
        from matplotlib import colormaps

        return (colormaps["jet"](values)[..., :3] * 255).astype(np.uint8)
    except ImportError:  # matplotlib is an optional extra
        v = values[..., None]
        rgb = np.concatenate([1.5 - np.abs(4 * v - k) for k in (3, 2, 1)], axis=-1).clip(0, 1)
        return (rgb * 255).astype(np.uint8)


def heatmap(anomaly_map: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> Image.Image:
    """A colour heat-map of one (H, W) map; ``vmin``/``vmax`` fix the scale (e.g. 0 and twice the threshold)."""
    m = np.asarray(anomaly_map, dtype=np.float32)
    lo = float(m.min()) if vmin is None else vmin
    hi = float(m.max()) if vmax is None else vmax
    scaled = np.clip((m - lo) / max(hi - lo, 1e-8), 0, 1)
    return Image.fromarray(_colormap(scaled))


def overlay(image: Image.Image, anomaly_map: np.ndarray, alpha: float = 0.5, **scale) -> Image.Image:
    """The heat-map blended over the image (resized to the map's size if they differ)."""
    heat = heatmap(anomaly_map, **scale)
    base = image.convert("RGB").resize(heat.size, Image.BILINEAR)
    return Image.blend(base, heat, alpha)


def outline(image: Image.Image, mask: np.ndarray, colour: tuple[int, int, int] = (255, 0, 0)) -> Image.Image:
    """The image with the boundary of a boolean mask drawn in ``colour``."""
    mask = np.asarray(mask, dtype=bool)
    base = np.array(image.convert("RGB").resize((mask.shape[1], mask.shape[0]), Image.BILINEAR))
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    edge = mask & ~inner
    base[edge] = colour
    return Image.fromarray(base)
