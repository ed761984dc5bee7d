"""Opening and normalising user images, with clear errors for files that are not usable images."""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
import torch
from diffusers.image_processor import VaeImageProcessor
from PIL import Image, ImageOps, UnidentifiedImageError

# Refuse images above this many pixels before decoding them (a decompression bomb is tiny on disk).
MAX_PIXELS = 64_000_000
MIN_SIDE = 8


class ImageLoadError(ValueError):
    """The input could not be used as an image; the message says why."""


def image_pages(image: Image.Image, name: str = "image") -> int:
    """How many images a file holds: the pages of a multi-page TIFF, the frames of an animated GIF, PNG or WebP.
    A camera JPEG's extra pictures (MPO: a preview or depth map beside the photo) are not pages: it counts as one.
    Raises :class:`ImageLoadError` when the file is too damaged to count them."""
    if image.format == "MPO":
        return 1
    try:
        return int(getattr(image, "n_frames", 1) or 1)
    except Exception as err:  # noqa: BLE001 - PIL raises TypeError, IndexError, EOFError... for cut-off frames
        raise ImageLoadError(f"{name}: the image file is damaged or truncated: its pages cannot be counted ({err!r})") \
            from err


def count_pages(source: str | os.PathLike | bytes) -> int:
    """:func:`image_pages` of a file, read from its header; 1 for a file that cannot be opened (its error comes
    when :func:`open_image` reads it)."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            return image_pages(image)
    except Exception:  # noqa: BLE001 - whatever is wrong with the file, open_image names it
        return 1


def open_image(source: str | os.PathLike | bytes | Image.Image, page: int | None = None) -> Image.Image:
    """Open a path, raw bytes or a PIL image and return a fully decoded 8-bit RGB image, upright as a viewer shows
    it (a camera's EXIF orientation applied).

    A file of several images (:func:`image_pages`: a multi-page TIFF, an animation) needs ``page`` (0-based): a
    score of its first page alone would pass the others unseen. Raises :class:`ImageLoadError` for that, for files
    that are not images, truncated files, images too large to decode safely and images too small to inspect.
    Grayscale, palette, RGBA and 16-bit images are converted.
    """
    given = isinstance(source, Image.Image)
    name = "image" if given or isinstance(source, bytes) else os.path.basename(os.fspath(source))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = source if given else Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
            pages = image_pages(image, name)
            if page is None and pages > 1:
                raise ImageLoadError(
                    f"{name}: holds {pages} images (pages of a TIFF or frames of an animation), and one score would "
                    "leave all but the first unseen: score each page (open_image(path, page=k); the Space's batch "
                    "tab and training/predict.py score every page)")
            if page is not None:
                if not 0 <= page < pages:
                    raise ImageLoadError(f"{name}: has no page {page} (it holds {pages})")
                try:
                    image.seek(page)
                except Exception as err:  # noqa: BLE001 - as in image_pages: a damaged frame, whatever PIL raises
                    raise ImageLoadError(f"{name}: page {page} is damaged or truncated ({err!r})") from err
            _check_size(image, name)
            image.load()  # a PIL image opened lazily by the caller is decoded here too, so damage shows here
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageLoadError(f"{name}: image is too large to decode safely ({err})") from err
    except UnidentifiedImageError as err:
        raise ImageLoadError(f"{name}: not an image file PIL can read") from err
    except FileNotFoundError as err:
        raise ImageLoadError(f"{name}: no such file ({source})") from err
    except IsADirectoryError as err:
        raise ImageLoadError(f"{name}: is a folder, not an image file") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageLoadError(f"{name}: the image file is damaged or truncated ({err})") from err
    return to_rgb8(_upright(image))


def _upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says (phones store pixels sideways and tag them); a damaged EXIF
    block leaves it as stored."""
    try:
        return ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError, KeyError, TypeError):
        return image


def _check_size(image: Image.Image, name: str) -> None:
    w, h = image.size
    if w * h > MAX_PIXELS:
        raise ImageLoadError(f"{name}: {w}x{h} pixels is more than the {MAX_PIXELS:,} this tool decodes")
    if min(w, h) < MIN_SIDE:
        raise ImageLoadError(f"{name}: {w}x{h} is too small; images need at least {MIN_SIDE} px on each side")


def full_scale(values: np.ndarray, integer: bool) -> float:
    """The white level of a deep image's samples: 65535 for 16-bit data; for 32-bit integers and floats the
    smallest of 255, 65535 and 2**32 - 1 (floats first 1.0) that holds the largest sample. The level is fixed per
    range, not the image's own maximum, so a bright pixel cannot darken the rest of the image."""
    top = float(values.max()) if values.size else 0.0
    for level in ((255.0, 65535.0) if integer else (1.0, 255.0, 65535.0)):
        if top <= level:
            return level
    return 4294967295.0


def to_rgb8(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB: 16-bit, 32-bit and float images are scaled from their range's white level
    (:func:`full_scale`), transparency goes on black."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else full_scale(arr, integer=image.mode == "I")
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        image = Image.fromarray(arr, mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB") if image.mode != "RGB" else image


_RANGE_SLACK = 0.01  # rounding past the range is clamped later; 0-255 floats are refused, not painted white
_AMBIGUOUS = 0.15  # a minimum between -0.15 and -0.01: a bright [-1, 1] image, or a [0, 1] one a bicubic resize
# pushed below 0 at a hard edge (about -0.09 seen); read as [-1, 1], with a warning


def to_image_tensor(image: Image.Image | np.ndarray | torch.Tensor) -> torch.Tensor:
    """One input image, or a batch of them, as a float (N, 3, H, W) tensor in [0, 1].

    PIL images go through :func:`open_image`. Arrays are read channels-last (H, W[, C]), as numpy images are, and
    tensors channels-first (C, H, W), as torch's are; the other order is taken only when the first reading has no
    channel axis of 1, 3 or 4. 8- and 16-bit integers are scaled by 255 and 65535; floats in [-1, 1] (a value below
    -0.01) are mapped to [0, 1], others taken as [0, 1], rounding up to 0.01 past either end clamped (a minimum
    between -0.15 and -0.01 is read as [-1, 1] with a warning: it may be a [0, 1] image a bicubic resize pushed
    below 0, which should be clamped first); floats beyond that (0-255 values as float), NaN or infinity are
    refused, as is an empty batch. One channel is grey, four are RGBA put on black.
    """
    if image is None:
        raise ValueError("no image given (None): pass a path, a PIL image, an array or a tensor")
    if isinstance(image, Image.Image):
        return VaeImageProcessor.numpy_to_pt(VaeImageProcessor.pil_to_numpy(open_image(image)))
    channels_last = isinstance(image, np.ndarray)
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        array = (image.float() if image.is_floating_point() else image).numpy()
    else:
        array = np.asarray(image)
    if array.dtype == np.uint8 or array.dtype == np.uint16:
        array = array.astype(np.float32) / (255.0 if array.dtype == np.uint8 else 65535.0)
    elif array.dtype.kind in "iub":
        raise ValueError(f"integer images must be 8- or 16-bit (uint8, uint16), got {array.dtype}")
    x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if x.ndim == 2:
        x = x[None]
    elif x.ndim == 3:
        last, first = x.shape[-1] in (1, 3, 4), x.shape[0] in (1, 3, 4)
        if (channels_last and last) or not first:
            x = x.permute(2, 0, 1)
    elif x.ndim == 4 and channels_last and x.shape[-1] in (1, 3, 4):
        x = x.permute(0, 3, 1, 2)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] not in (1, 3, 4):
        raise ValueError(f"an image array needs 1 (grey), 3 (RGB) or 4 (RGBA) channels; got shape {array.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"an empty batch of images (shape {tuple(array.shape)})")
    if not torch.isfinite(x).all():
        raise ValueError("the image holds NaN or infinite values: it cannot be scored")
    if x.max() > 1 + _RANGE_SLACK or x.min() < -1 - _RANGE_SLACK:
        raise ValueError(f"float images are read in [0, 1] (or [-1, 1]); this one spans [{x.min():.4g}, "
                         f"{x.max():.4g}]: pass 0-255 values as uint8, or divide them by 255")
    if x.min() < -_RANGE_SLACK:  # [-1, 1] -> [0, 1]; a value just below 0 is rounding, as one just above 1 is
        if x.min() > -_AMBIGUOUS:
            warnings.warn(f"a float image with values from {x.min():.3g} to {x.max():.3g} is read as [-1, 1]; if it "
                          "is a [0, 1] image that a resize pushed below 0, clamp it to [0, 1] first", stacklevel=3)
        x = (x + 1) / 2
    x = x.clamp(0, 1)
    if x.shape[1] == 4:
        x = x[:, :3] * x[:, 3:].clamp(0, 1)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def resize_images(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, C, H, W) images in [-1, 1] at ``size`` (height, width), bilinear with antialiasing, clamped to [-1, 1]:
    the one resize of every image the project reads, at training, calibration, evaluation and inference alike, so
    a user's image is scored as the thresholds were calibrated whatever its size."""
    if tuple(images.shape[-2:]) != tuple(size):
        images = torch.nn.functional.interpolate(images, size=tuple(size), mode="bilinear", antialias=True)
    return images.clamp(-1, 1)
