"""Opening and normalising user images, with clear errors for files that are not usable images."""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

# Refuse images above this many pixels before decoding them (a decompression bomb is tiny on disk).
MAX_PIXELS = 64_000_000
MIN_SIDE = 8


class ImageLoadError(ValueError):
    """The input could not be used as an image; the message says why."""


def open_image(source: str | os.PathLike | bytes | Image.Image) -> Image.Image:
    """Open a path, raw bytes or a PIL image and return a fully decoded 8-bit RGB image.

    Raises :class:`ImageLoadError` for files that are not images, truncated files, images too large to decode
    safely and images too small to inspect. Grayscale, palette, RGBA and 16-bit images are converted.
    """
    if isinstance(source, Image.Image):
        image = source
        name = "image"
    else:
        name = "image" if isinstance(source, bytes) else os.path.basename(os.fspath(source))
        fp = io.BytesIO(source) if isinstance(source, bytes) else source
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(fp)
                _check_size(image, name)
                image.load()
        except ImageLoadError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise ImageLoadError(f"{name}: image is too large to decode safely ({err})") from err
        except UnidentifiedImageError as err:
            raise ImageLoadError(f"{name}: not an image file PIL can read") from err
        except (OSError, SyntaxError, ValueError) as err:
            raise ImageLoadError(f"{name}: the image file is damaged or truncated ({err})") from err
    _check_size(image, name)
    return to_rgb8(image)


def _check_size(image: Image.Image, name: str) -> None:
    w, h = image.size
    if w * h > MAX_PIXELS:
        raise ImageLoadError(f"{name}: {w}x{h} pixels is more than the {MAX_PIXELS:,} this tool decodes")
    if min(w, h) < MIN_SIDE:
        raise ImageLoadError(f"{name}: {w}x{h} is too small; images need at least {MIN_SIDE} px on each side")


def to_rgb8(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB: 16-bit and float images are rescaled, transparency goes on black."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        if image.mode == "I" and arr.max() <= 255:
            top = 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        image = Image.fromarray(arr, mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB") if image.mode != "RGB" else image
