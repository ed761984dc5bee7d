"""Scoring many image files with a pipeline: the one path the demo's batch tab and ``training/predict.py`` share.

Files that cannot be read become rows with the reason and do not stop the run; the rest are scored in batches
with each image's own seeded noise, so a file's score does not depend on what it was batched with: in float32 to
about 1e-6; under bf16 autocast (where bf16 is native) the batch's shape changes the kernels' rounding, which moves
a score a little (8.3609 alone, 8.3578 in a batch, measured on a transistor test image). Both users batch
``BATCH_SIZE`` at a time, so the same files in the same order get the same scores from either.
"""

from __future__ import annotations

import csv
import math
import os
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .data import IMAGE_SUFFIXES
from .image_utils import ImageLoadError, count_pages, open_image
from .visualize import outline, overlay

UNKNOWN_VERDICT = "unknown product"  # a multi-class model's verdict on an image of none of its products
CSV_FIELDS = ("file", "score", "verdict", "start_step", "error", "threshold", "product")
# A zip upload may not expand to more than this many bytes or files (a zip bomb is small on disk).
MAX_ZIP_BYTES = 2_000_000_000
MAX_ZIP_FILES = 10_000
MAX_PAGES = 100  # images one multi-page file (a TIFF stack, an animation) may hold
BATCH_SIZE = 10  # images reconstructed at once by the Space's batch tab and predict.py (the same batches: the
# same bf16 rounding)


def product_label(category: str | None, unknown: bool | None = None, stated: bool = False) -> str:
    """How an image's product reads in the app, the table and the CSV: the name a multi-class model recognised, or,
    for an image that looks like none of the trained products (``unknown_category``), only the nearest one. A
    product the inspector ``stated`` (``category=``) that the image does not look like is named with that doubt."""
    if not category:
        return ""
    if unknown:
        return f"{category} (stated, but unlike its good parts)" if stated else f"unknown (nearest: {category})"
    return category


def product_labels(out, stated: bool = False) -> list[str] | None:
    """:func:`product_label` of each image of a pipeline output; ``None`` when it names no products."""
    if not out.categories:
        return None
    unknown = out.unknown_category if out.unknown_category is not None else [None] * len(out.categories)
    return [product_label(c, bool(u) if u is not None else None, stated) for c, u in zip(out.categories, unknown)]


@dataclass
class InspectionRow:
    """One file's result: its score and verdict, or why it could not be scored."""

    file: str
    score: float | None = None
    verdict: str = ""  # "defective", "good", "unknown product" (of none of a multi-class model's), "" (no verdict)
    start_step: int | None = None
    error: str = ""
    threshold: float | None = None  # the one the verdict was made with (a multi-class model's: its product's)
    product: str = ""  # the product a multi-class model recognised (product_label; "" for a one-product model)

    def as_csv(self) -> dict[str, str]:
        row = asdict(self)
        row["score"] = "" if self.score is None else f"{self.score:.6f}"
        row["threshold"] = "" if self.threshold is None else f"{self.threshold:.6f}"
        row["start_step"] = "" if self.start_step is None else str(self.start_step)
        return row


def product_tally(rows: list[InspectionRow]) -> dict[str, tuple[int, int]]:
    """Per product a multi-class model named (``unknown (nearest: ...)`` apart), (flagged, scored), flagged meaning
    not passed as good: what an inspector reads first of a mixed batch. Empty for a one-product model's rows."""
    tally: dict[str, list[int]] = {}
    for row in rows:
        if row.product and row.score is not None:
            counts = tally.setdefault(row.product, [0, 0])
            counts[0] += row.verdict in ("defective", UNKNOWN_VERDICT)
            counts[1] += 1
    return {product: (flagged, scored) for product, (flagged, scored) in tally.items()}


def tally_text(rows: list[InspectionRow]) -> str:
    """:func:`product_tally` in a line, ``"transistor 2 of 10 flagged, bottle 0 of 4 flagged"``; ``""`` without
    products."""
    return ", ".join(f"{product} {flagged} of {scored} flagged" for product, (flagged, scored)
                     in product_tally(rows).items())


@dataclass
class Inspected:
    """A scored file with the pictures made from it (``image`` is the decoded input, ``anomaly_map`` at its size)."""

    row: InspectionRow
    image: Image.Image | None = None
    anomaly_map: np.ndarray | None = field(default=None, repr=False)
    threshold: float | None = None  # the one the verdict was made with
    file_index: int = 0  # which of the given files it came from (a multi-page file gives several)
    page: int | None = None  # which page of that file (0-based), for a file of several images


def verdict(score: float, threshold: float | None) -> str:
    """"defective" above the calibrated threshold, else "good"; "" for a model without a threshold. A NaN score
    (a network that computed NaN) is "defective": a part the model could not judge must not pass. The rule a
    pipeline call applies (``is_anomalous``), for scores judged outside a call; :func:`inspect_files` takes the
    call's own verdicts."""
    if threshold is None:
        return ""
    return "defective" if score > threshold or math.isnan(score) else "good"


def image_files(folder: str | os.PathLike) -> list[Path]:
    """Every file under ``folder`` whose suffix is an image type, sorted; hidden files and folders are skipped."""
    root = Path(folder)
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not _hidden(p.relative_to(root)))


def extract_zip(archive: str | os.PathLike, target: str | os.PathLike) -> list[Path]:
    """Extract a zip of images into ``target`` (a fresh folder) and return its image files.

    Refuses archives that are not zips, damaged, password-protected or compressed with a method Python cannot read,
    that would expand beyond ``MAX_ZIP_BYTES`` or ``MAX_ZIP_FILES``, or whose member names leave the target folder;
    raises ``ValueError`` with the reason.
    """
    name = os.path.basename(os.fspath(archive))
    if not zipfile.is_zipfile(archive):
        raise ValueError(f"{name} is not a zip archive")
    try:
        return _extract_images(archive, Path(target), name)
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise ValueError(f"{name} is a damaged zip archive ({err})") from err
    except NotImplementedError as err:  # Deflate64 (Windows' zip of large folders), or another rare method
        raise ValueError(f"{name} uses a compression method Python cannot read ({err}): zip the images again "
                         "with the standard Deflate method") from err
    except RuntimeError as err:  # zipfile's word for an encrypted member (NotImplementedError is one too)
        if "encrypted" not in str(err):
            raise
        raise ValueError(f"{name} is password-protected: zip the images again without a password") from err


def skipped_members(archive: str | os.PathLike) -> list[str]:
    """The files in a zip that :func:`extract_zip` leaves out because their suffix is not an image type (hidden
    files and macOS ``__MACOSX`` metadata are not counted): what an upload should tell its user it skipped."""
    with zipfile.ZipFile(archive) as zf:
        return [m.filename for m in zf.infolist() if not m.is_dir() and not _hidden(m.filename)
                and Path(m.filename).suffix.lower() not in IMAGE_SUFFIXES]


def _hidden(name: str | os.PathLike) -> bool:
    """A hidden file or folder, or macOS metadata: never an image a user meant to send."""
    return any(part.startswith(".") or part == "__MACOSX" for part in Path(name).parts)


def _extract_images(archive: str | os.PathLike, target: Path, name: str) -> list[Path]:
    with zipfile.ZipFile(archive) as zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        if len(members) > MAX_ZIP_FILES:
            raise ValueError(f"{name} holds {len(members)} files, more than the {MAX_ZIP_FILES} this tool takes")
        total = sum(m.file_size for m in members)
        if total > MAX_ZIP_BYTES:
            raise ValueError(f"{name} would expand to {total:,} bytes, more than the {MAX_ZIP_BYTES:,} allowed")
        root = target.resolve()
        named = {(target / m.filename).resolve() for m in members}  # a second copy of a path takes none of these
        for m in members:
            dest = (target / m.filename).resolve()
            if root not in dest.parents:
                raise ValueError(f"{name}: the member {m.filename!r} would be written outside the folder")
            if Path(m.filename).suffix.lower() in IMAGE_SUFFIXES:
                if dest.exists():  # a zip may hold one path twice: the second is kept as "name (2).png"
                    dest = _unused(dest, named)
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(m) as src, open(dest, "wb") as out:
                    out.write(src.read(MAX_ZIP_BYTES))
    return image_files(target)


def _unused(path: Path, reserved: set[Path]) -> Path:
    """The first of ``stem (2).suffix``, ``stem (3).suffix``... that is neither a file yet nor ``reserved``."""
    n, found = 2, path.with_name(f"{path.stem} (2){path.suffix}")
    while found.exists() or found in reserved:
        n += 1
        found = path.with_name(f"{path.stem} ({n}){path.suffix}")
    return found


def inspect_files(
    pipe,
    files: Sequence[str | os.PathLike],
    batch_size: int = 8,
    names: Sequence[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    **call_kwargs,
) -> Iterator[Inspected]:
    """Score ``files`` with ``pipe`` ``batch_size`` at a time, yielding one :class:`Inspected` per image in order.

    A file of several images (a multi-page TIFF, an animated GIF) yields one per page, named ``name [page k of n]``;
    one of more than ``MAX_PAGES`` yields a row saying so. ``names`` are what the rows call the files (default: the
    paths). ``progress(done, total)`` counts images and is called after each batch. Other keyword arguments
    (``mode``, ``w``, ``category``...) go to the pipeline call; ``category`` names one product for every file (an
    inspection station sees one product).
    """
    stated = call_kwargs.get("category") is not None
    if stated and not isinstance(call_kwargs["category"], str):
        raise ValueError("inspect_files takes one product for all files (category='<name>'), not a list")
    names = [str(f) for f in files] if names is None else list(names)
    if len(names) != len(files):
        raise ValueError(f"{len(names)} names for {len(files)} files")
    entries = list(_pages_of(files, names))  # (file index, page or None, row name, error)
    total = len(entries)
    for start in range(0, total, batch_size):
        loaded: list[tuple[str, Image.Image]] = []
        failed: dict[int, Inspected] = {}
        for i in range(start, min(start + batch_size, total)):
            index, page, name, error = entries[i]
            try:
                if error:
                    raise ImageLoadError(error)
                loaded.append((name, open_image(files[index], page=page)))
            except ImageLoadError as err:
                failed[i] = Inspected(InspectionRow(name, error=str(err)), file_index=index, page=page)
        results = iter(())
        if loaded:
            out = pipe([image for _, image in loaded], output_type="np", batch_size=batch_size, **call_kwargs)
            # each image's own threshold: a multi-class model judges it by the product it recognised
            thresholds = out.image_thresholds if out.image_thresholds is not None else [None] * len(loaded)
            flags = out.is_anomalous if out.is_anomalous is not None else [None] * len(loaded)
            products = product_labels(out, stated) or [""] * len(loaded)
            unknown = out.unknown_category if out.unknown_category is not None else [False] * len(loaded)
            results = iter(zip(loaded, out.image_scores, out.anomaly_maps_input_size, out.start_steps, thresholds,
                               flags, products, unknown))
        for i in range(start, min(start + batch_size, total)):
            if i in failed:
                yield failed[i]
                continue
            (name, image), score, full, step, threshold, flag, product, stranger = next(results)
            score, threshold = float(score), None if threshold is None else float(threshold)
            shown = "" if flag is None else ("defective" if flag else "good")  # the pipeline's own verdict
            if stranger and flag is not None:  # judged as another product: neither verdict holds for this part
                shown = UNKNOWN_VERDICT
            row = InspectionRow(name, score, shown, int(step), threshold=threshold, product=product)
            yield Inspected(row, image, full, threshold, file_index=entries[i][0], page=entries[i][1])
        if progress is not None:
            progress(min(start + batch_size, total), total)


def _pages_of(files: Sequence[str | os.PathLike], names: Sequence[str]) -> Iterator[tuple[int, int | None, str, str]]:
    """One entry per image the files hold: (file index, page or ``None`` for a one-image file, name, error)."""
    for index, (path, name) in enumerate(zip(files, names)):
        pages = count_pages(path)
        if pages == 1:
            yield index, None, name, ""
        elif pages > MAX_PAGES:
            yield index, None, name, (f"{name}: holds {pages} images (pages or frames), more than the {MAX_PAGES} "
                                      "one file may hold here; split it")
        else:
            yield from ((index, k, f"{name} [page {k + 1} of {pages}]", "") for k in range(pages))


def anomaly_picture(image: Image.Image, anomaly_map: np.ndarray, threshold: float | None,
                    alpha: float = 0.5, colour: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """The map as a heat-map over the image (scaled 0 to twice the threshold), the region above it outlined."""
    scale = {"vmin": 0.0, "vmax": 2 * threshold} if threshold else {}
    picture = overlay(image, anomaly_map, alpha=alpha, **scale)
    return picture if threshold is None else outline(picture, anomaly_map > threshold, colour=colour)


def write_csv(rows: Sequence[InspectionRow], path: str | os.PathLike) -> Path:
    """The rows as a CSV with the columns ``CSV_FIELDS``."""
    path = Path(path)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(CSV_FIELDS))
        writer.writeheader()
        writer.writerows(row.as_csv() for row in rows)
    return path
