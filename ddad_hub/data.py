"""MVTec-layout data sets: checked folder listing and in-memory tensors for training and evaluation."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .image_utils import ImageLoadError, open_image, resize_images, to_image_tensor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")


class DatasetLayoutError(ValueError):
    """The folder does not have the MVTec layout; the message says what is missing."""


@dataclass
class TestItem:
    image: Path
    defect_type: str  # "good" for nominal images
    mask: Path | None  # None for nominal images (all-zero mask) and for defect types without masks
    has_pixel_labels: bool = True  # False for a defect type with image-level labels only (no ground_truth folder)

    @property
    def is_anomalous(self) -> bool:
        return self.defect_type != "good"


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def list_train_images(root: str | os.PathLike) -> list[Path]:
    """The nominal training images, ``<root>/train/good/*``."""
    folder = Path(root) / "train" / "good"
    if not folder.is_dir():
        raise DatasetLayoutError(
            f"{root} is not an MVTec-style category folder: {folder} is missing "
            "(expected <category>/train/good/*.png, <category>/test/<type>/*.png, "
            f"<category>/ground_truth/<type>/*_mask.png){_other_layout_hint(Path(root))}"
        )
    images = _images_in(folder)
    if not images:
        raise DatasetLayoutError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)}){_layout_hint(folder)}")
    return images


def _layout_hint(folder: Path) -> str:
    """What an empty image folder's subfolders say about the layout it is in, for its error message."""
    subfolders = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if "rgb" in subfolders:
        return ("; its images are in rgb/, as MVTec 3D-AD ships them: move each rgb/*.png up a level and its gt/*.png "
                "to ground_truth/<type>/<name>_mask.png (the MVTec AD layout)")
    if subfolders:
        return f"; it holds folders ({', '.join(subfolders[:3])}), but the images must lie in it directly"
    return ""


def _other_layout_hint(root: Path) -> str:
    """How to convert a category folder of another known data set's layout, for a missing-folder error."""
    if (root / "Data" / "Images" / "Normal").is_dir():
        return ("; this is VisA's layout (Data/Images/Normal, Data/Images/Anomaly, Data/Masks/Anomaly): split it "
                "with VisA's split_csv/1cls.csv into train/good, test/good, test/bad and ground_truth/bad/"
                "<name>_mask.png (the conversion anomalib's VisA data module or VisA's own prepare script does)")
    if (root / "train" / "ok").is_dir() or (root / "test" / "ok").is_dir():
        return ("; it has train/ok, as BTAD names its good images: rename train/ok and test/ok to train/good and "
                "test/good, and name the masks of test/ko/<name>.bmp ground_truth/ko/<name>_mask.png")
    if (root / "train").is_dir():
        found = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
        if found:
            return f"; train/ holds {', '.join(found[:5])}: the nominal images must be in train/good"
    return ""


def _mask_of(mask_dir: Path, image: Path) -> Path:
    """``<name>_mask.png`` beside the other masks; a differently cased suffix (``_MASK.PNG``) is found too."""
    mask = mask_dir / f"{image.stem}_mask.png"
    if mask.is_file():
        return mask
    wanted = mask.name.lower()
    return next((p for p in mask_dir.iterdir() if p.name.lower() == wanted), mask)


def list_validation_images(root: str | os.PathLike) -> list[Path]:
    """A category's own nominal validation images, ``<root>/validation/good/*`` (MVTec 3D-AD ships such a split),
    or an empty list when it has none."""
    folder = Path(root) / "validation" / "good"
    return _images_in(folder) if folder.is_dir() else []


def nominal_id(path: str | os.PathLike) -> str:
    """How ``training_info.json`` names a held-out nominal image: the file name of a ``train/good`` image (as runs
    always have), ``validation/good/<name>`` for an image of the category's own validation split."""
    path = Path(path)
    split = path.parent.parent.name
    return path.name if split == "train" else f"{split}/{path.parent.name}/{path.name}"


def held_out_split(root: str | os.PathLike, ids: list[str]) -> tuple[list[Path], list[Path]]:
    """One category's (training, held-out) nominal images, from the held-out ids a run recorded
    (:func:`nominal_id`): what scripts that refit or recalibrate a saved pipeline need to see the same split."""
    ids = set(ids)
    train_images = list_train_images(root)
    train = [p for p in train_images if p.name not in ids]
    held = [p for p in train_images + list_validation_images(root) if nominal_id(p) in ids]
    return train, held


def list_test_items(root: str | os.PathLike) -> list[TestItem]:
    """The test images with their defect type and mask path, ``<root>/test/<type>/*``.

    A defect type without a ``ground_truth/<type>/`` folder (or one without images) has image-level labels only:
    its items have no mask and ``has_pixel_labels`` False. Where the folder holds masks, each image needs its own.
    """
    root = Path(root)
    test_dir = root / "test"
    if not test_dir.is_dir():
        raise DatasetLayoutError(f"{test_dir} is missing: an MVTec-style category has test/<defect_type>/ folders"
                                 + _other_layout_hint(root))
    if (test_dir / "ok").is_dir() and not (test_dir / "good").is_dir():  # BTAD's ok would be read as a defect
        raise DatasetLayoutError(f"{test_dir} has ok/ and no good/" + _other_layout_hint(root))
    items = []
    for type_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
        mask_dir = root / "ground_truth" / type_dir.name
        labelled = type_dir.name == "good" or (mask_dir.is_dir() and bool(_images_in(mask_dir)))
        for image in _images_in(type_dir):
            mask = None
            if type_dir.name != "good" and labelled:
                mask = _mask_of(mask_dir, image)
                if not mask.is_file():
                    raise DatasetLayoutError(f"mask for {image} is missing: expected {mask}")
            items.append(TestItem(image, type_dir.name, mask, labelled))
    if not items:
        hints = [_layout_hint(d) for d in sorted(test_dir.iterdir()) if d.is_dir()]
        raise DatasetLayoutError(f"{test_dir} holds no images" + next((h for h in hints if h), ""))
    warn_mismatched_masks(items)
    return items


def _upright_size(path: Path) -> tuple[int, int] | None:
    """(width, height) of an image file as read upright (EXIF rotations swap them); ``None`` when the file cannot
    be opened (loading it names that error later). Reading a PNG's EXIF decodes the file (about 17 ms at 1024 px),
    once per defective test image and mask."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            turned = image.getexif().get(0x0112) in (5, 6, 7, 8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None
    return (height, width) if turned else (width, height)


def warn_mismatched_masks(items: list[TestItem], tolerance: float = 0.02) -> list[TestItem]:
    """Warn about (and return) the items whose mask has another aspect ratio than their image: such a mask belongs
    to another image or a crop of it, and stretched to the map it would mark the wrong pixels. Masks of another
    size but the same shape (a 256 px mask of a 1024 px image) are fine: they are resized to the map."""
    bad, shown = [], []
    for item in items:
        if item.mask is None:
            continue
        image, mask = _upright_size(item.image), _upright_size(item.mask)
        if image and mask and abs(image[0] / image[1] - mask[0] / mask[1]) > tolerance * image[0] / image[1]:
            bad.append(item)
            shown.append(f"{item.image} is {image[0]}x{image[1]}, its mask {mask[0]}x{mask[1]}")
    if bad:
        import warnings

        warnings.warn(f"{len(bad)} test mask(s) have another aspect ratio than their image, so they are stretched "
                      f"onto it and the pixel metrics may be wrong: {'; '.join(shown[:3])}"
                      + (" ..." if len(bad) > 3 else ""), stacklevel=3)
    return bad


def load_images(paths: list[Path], size: int, read_size: int | None = None) -> torch.Tensor:
    """Images as a (N, 3, size, size) float tensor in [-1, 1], resized as the pipeline resizes a user's image
    (:func:`~ddad_hub.image_utils.resize_images`): first to ``read_size`` when given (the pipeline's ``read_hw``,
    :func:`read_size` of a preset), then to ``size``. Read so, images score as uploads of any size do."""
    tensors = []
    for path in paths:
        try:
            image = to_image_tensor(open_image(path)) * 2 - 1
        except ImageLoadError as err:  # the whole path: several categories and defect types share file names
            raise ImageLoadError(f"{err} (at {path})") from err
        if read_size:
            image = resize_images(image, (read_size, read_size))
        tensors.append(resize_images(image, (size, size)))
    return torch.cat(tensors).contiguous()


def read_size(preset: dict) -> int:
    """The size a pipeline of ``preset`` reads every input at before its parts (its ``read_hw``): the larger of the
    image size and the map size."""
    return max(preset["resolution"], preset.get("map_size") or preset["resolution"])


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], the range the pipeline reads tensors in (no guessing for bright images)."""
    return ((images + 1) / 2).clamp(0, 1)


def load_mask(path: Path | None, size: tuple[int, int]) -> np.ndarray:
    """A boolean (H, W) mask at ``size``; all False for nominal images.

    8-bit masks are read as images are (upright by their EXIF orientation, transparency on black) and mark defects
    where their brightest channel is above 127 (MVTec's 0/255; a coloured mark on black too), or above 0 in a mask
    without any value above 127 (0/1 masks, class labels 1, 2..., dark label colours). Deeper masks (16-bit,
    32-bit) are label images: any non-zero value is a defect, so 0/255, 0/65535 and multi-label masks alike are read
    whatever the depth; float masks mark above half their maximum.
    """
    if path is None:
        return np.zeros(size, dtype=bool)
    try:
        with Image.open(path) as image:
            deep = image.mode in ("I", "F") or image.mode.startswith("I;16")
            if deep:
                values = np.asarray(ImageOps.exif_transpose(image), dtype=np.float64)
        if not deep:
            brightest = np.asarray(open_image(path)).max(axis=-1)  # any colour: red-on-black marks defects too
            # a mask with a bright mark: MVTec's 0/255 cut; one without (0/1, class labels 1, 2..., dark palette
            # colours): any non-zero value (an empty mask's faint JPEG noise would count too: masks are PNG here)
            mask = brightest > (127 if brightest.max() > 127 else 0)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        # named in full: every defect type has a 000_mask.png
        raise ImageLoadError(f"mask {path} cannot be read: {err}") from err
    if deep:
        top = values.max() if values.size else 0.0
        mask = values > (top / 2 if image.mode == "F" else 0) if top > 0 else np.zeros(values.shape, dtype=bool)
    if mask.shape != tuple(size):
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size[1], size[0]), Image.NEAREST)) > 127
    return mask


def split_nominal(paths: list[Path], holdout: float, seed: int = 0) -> tuple[list[Path], list[Path]]:
    """Split nominal images into (train, held-out) with a fixed seed; the held-out part calibrates settings."""
    if not 0 <= holdout < 1:
        raise ValueError(f"holdout must be in [0, 1), got {holdout}")
    order = np.random.default_rng(seed).permutation(len(paths))
    n_hold = int(round(holdout * len(paths)))
    held = sorted(paths[i] for i in order[:n_hold])
    train = sorted(paths[i] for i in order[n_hold:])
    return train, held


# ---------------------------------------------------------------------------- several categories as one set
def is_category_folder(folder: Path) -> bool:
    """A folder that looks like one category (it has ``train/`` or ``test/``, or VisA's ``Data/Images``), not a
    parent of several."""
    return (folder / "train").is_dir() or (folder / "test").is_dir() or (folder / "Data" / "Images").is_dir()


def find_categories(paths: list[str | os.PathLike] | str | os.PathLike) -> dict[str, Path]:
    """Category name -> folder, from category folders and parent folders of categories, in the given order.

    Every category is checked for ``train/good`` images here, so a broken one is named before any training starts.
    Names must be unique: they label the per-category results.
    """
    paths = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    if not paths:
        raise DatasetLayoutError("no data folder given")
    found: dict[str, Path] = {}
    for path in map(Path, paths):
        if not path.is_dir():
            raise DatasetLayoutError(f"data folder {path} does not exist")
        if is_category_folder(path):
            folders = [path]
        else:
            folders = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
            if not folders:
                raise DatasetLayoutError(f"{path} is neither an MVTec-style category (train/, test/) nor a folder "
                                         "of categories")
        for folder in folders:
            if folder.name in found:
                raise DatasetLayoutError(f"two categories are named {folder.name!r}: {found[folder.name]} and "
                                         f"{folder}")
            try:
                list_train_images(folder)
            except DatasetLayoutError as err:
                raise DatasetLayoutError(f"category {folder.name!r} ({folder}) is broken: {err}") from err
            found[folder.name] = folder
    return found


def split_categories(
    categories: dict[str, Path], holdout: float, seed: int = 0, use_validation: bool = True
) -> tuple[list[Path], list[Path], dict[str, list[Path]]]:
    """The nominal training images of all categories as one set: (train, held-out, held-out per category).

    A category that ships its own nominal validation split (``validation/good``, as MVTec 3D-AD does) is held out
    by it and trains on all of ``train/good``, the data set's protocol; any other is split on its own with
    :func:`split_nominal` (a ``holdout`` share, fixed seed), so every category has held-out images (for
    thresholds and settings). ``use_validation=False`` splits every category's ``train/good``.
    """
    train, held, held_by_category = [], [], {}
    for name, folder in categories.items():
        images = list_train_images(folder)
        validation = list_validation_images(folder) if use_validation else []
        t, h = (images, validation) if validation else split_nominal(images, holdout, seed=seed)
        train += t
        held += h
        held_by_category[name] = h
    return train, held, held_by_category


MIN_HELD_OUT = 2  # held-out nominal images a run needs: D3AD's score bins span at least two scores


def check_held_out(held_by_category: dict[str, list[Path]], holdout: float) -> None:
    """Before a run trains: every category has held-out images and they all decode. They are read only when the run
    finalises (settings, thresholds), and a run that trained for an hour must not fail there."""
    empty = [name for name, held in held_by_category.items() if not held]
    if empty:
        raise DatasetLayoutError(f"category {', '.join(empty)}: holdout {holdout} leaves no held-out nominal image for "
                                 "the settings and thresholds; add train/good images or raise the preset's holdout")
    total = sum(len(held) for held in held_by_category.values())
    if total < MIN_HELD_OUT:
        raise DatasetLayoutError(f"holdout {holdout} leaves {total} held-out nominal image(s); the settings search and "
                                 f"D3AD's score bins need at least {MIN_HELD_OUT}: add train/good images or raise the "
                                 "preset's holdout (a preset .json file)")
    for held in held_by_category.values():
        for path in held:
            open_image(path)


def category_of(path: str | os.PathLike) -> str:
    """The category a ``<category>/{train,validation}/good/<image>`` nominal image belongs to: its category folder's
    name."""
    return Path(path).parent.parent.parent.name


def categories_label(categories: dict[str, Path]) -> str:
    """A short name for a set of categories: the category itself, or ``multiclass-<n>``."""
    return next(iter(categories)) if len(categories) == 1 else f"multiclass-{len(categories)}"
