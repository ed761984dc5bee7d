"""What a saved pipeline folder says about itself: what it was trained on and its model card's metrics."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path, PureWindowsPath

from .data import DatasetLayoutError, nominal_id, split_categories
from .hashing import file_sha256
from .metrics import METRICS


class PipelineFolderError(ValueError):
    """A pipeline folder that cannot be loaded as it is (damaged metadata or weights, another pipeline class);
    the message names the file."""


def find_pipelines(folder: str | os.PathLike) -> list[Path]:
    """The pipeline folders directly under ``folder`` (those holding a ``model_index.json``), sorted by name."""
    return sorted(p.parent for p in Path(folder).glob("*/model_index.json"))


def _read_json(path: Path) -> dict:
    """A metadata file's object, or ``{}`` when it is missing, unreadable or not a JSON object: a damaged record must
    not stop the app from showing the model."""
    try:
        value = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def weights_fingerprint(folder: str | os.PathLike) -> str | None:
    """A digest of the weights files in a pipeline folder's components (``None`` when it holds none): whether a save
    changed the networks the folder's training record describes."""
    files = sorted(Path(folder).glob("*/*.safetensors"))
    if not files:
        return None
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.relative_to(folder).as_posix().encode())
        file_sha256(file, digest)
    return digest.hexdigest()


def training_record(folder: str | os.PathLike, required: bool = True) -> dict:
    """A pipeline folder's ``training_info.json``, which scripts that refit or recalibrate need (the held-out
    images, the preset); a missing (when ``required``; else ``{}``) or damaged one is named, and a training run's
    folder points at its pipeline."""
    folder = Path(folder)
    path = folder / "training_info.json"
    if not path.is_file() and not required:
        return {}
    if not path.is_file():
        hint = (f"; {folder} is a training run's folder: its pipeline is {folder / 'pipeline'}"
                if (folder / "pipeline" / "training_info.json").is_file() else
                " (a pipeline written by train_unet.py or finalize.py has one)")
        raise FileNotFoundError(f"{path} is missing{hint}")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PipelineFolderError(f"{path} is damaged ({err})") from err
    if not isinstance(info, dict):
        raise PipelineFolderError(f"{path} is damaged (not a JSON object)")
    return info


def recorded_categories(info: dict) -> set[str]:
    """The category folders a training record names: its ``categories`` (a multi-class run), else the folder name
    of its ``data`` path (several ", "-joined paths only under a ``multiclass-<n>`` label: a single path may hold a
    comma), else its ``category``."""
    if info.get("categories"):
        return set(info["categories"])
    data = str(info.get("data") or "")
    paths = data.split(", ") if str(info.get("category", "")).startswith("multiclass-") else [data]
    # recorded paths may be another system's (a model trained on Windows): both separators split them
    names = {PureWindowsPath(d.rstrip("/\\")).name for d in paths if d}
    return names or ({info["category"]} if info.get("category") else set())


def trained_products(info: dict) -> set[str]:
    """Every name a pipeline's training record gives what it was trained on: its category folders and its
    ``category`` label (``--category``, or a multi-class run's); empty when it does not say."""
    return {*recorded_categories(info), info.get("category")} - {None, ""}


def is_multiclass(info: dict) -> bool:
    """Whether a training record is of a multi-class model (several category folders); ``--category`` alone, the
    paper settings' name for one product, does not make one."""
    return len(recorded_categories(info)) > 1


def check_single_product(folder: str | os.PathLike, info: dict, instead: str) -> None:
    """Refuse a multi-class pipeline where a script refits or compares one product's pipeline: its memory keeps a
    coreset per product and its held-out images are named by file name only, which products share. Raises
    :class:`PipelineFolderError`; ``instead`` says what to do with such a pipeline."""
    if is_multiclass(info):
        raise PipelineFolderError(f"{folder} is a multi-class pipeline: {instead}")


def check_same_product(folder: str | os.PathLike, data: str | os.PathLike, hint: str = "") -> None:
    """Refuse ``data`` of a product the pipeline in ``folder`` was not trained on. Its held-out images are known by
    file name only, and every MVTec product has a ``000.png``: another product's folder would silently stand in.
    Raises :class:`~ddad_hub.data.DatasetLayoutError` naming both; ``hint`` says what to do instead."""
    info = _read_json(Path(folder) / "training_info.json")
    known, names = trained_products(info), {Path(data).name, Path(data).resolve().name}  # as given, or its target
    name = Path(data).name
    if known and not names & known:
        raise DatasetLayoutError(f"{folder} was trained on {', '.join(sorted(known))}, not on {name}"
                                 + (f": {hint}" if hint else ": pass the category folder it was trained on"))


def redrawn_split(
    folder: str | os.PathLike, info: dict, categories: dict[str, Path], holdout: float
) -> tuple[list[Path], list[Path]]:
    """A multi-class pipeline's (training, held-out) images. Its record names held-out images by file name only,
    which several products share, so the split is drawn again from the run's seed and must reproduce the record
    name for name; otherwise the held-out images could have been trained on, and that is refused
    (:class:`PipelineFolderError`)."""
    seed = info.get("training", {}).get("seed", 0)
    train_paths, held_out, _ = split_categories(categories, holdout, seed=seed)
    if [nominal_id(p) for p in held_out] != info.get("held_out_nominal"):
        raise PipelineFolderError(
            f"{folder} is a multi-class pipeline and drawing its split again (seed {seed}, holdout {holdout}, data "
            f"{', '.join(categories)}) does not give the held-out images it records: pass the --data it trained on, "
            "or finalise it again from its training run")
    return train_paths, held_out


def trained_on(folder: str | os.PathLike) -> str:
    """A short phrase naming the data a pipeline was trained on, from its ``training_info.json``."""
    info = _read_json(Path(folder) / "training_info.json")
    categories = info.get("categories") or ([info["category"]] if info.get("category") else [])
    # a list of names (train_unet.py), or names to folders (train_diad.py)
    categories = list(categories) if isinstance(categories, list | dict) else [categories]
    data = info.get("data")
    parts = []
    if categories:
        parts.append(", ".join(map(str, categories)))
    if data and len(categories) <= 1:  # several categories: their names say it
        parts.append(f"(`{Path(str(data)).parent.name or data}`)" if categories else f"`{data}`")
    training = info.get("training") if isinstance(info.get("training"), dict) else {}
    if isinstance(training.get("minutes"), int | float) and training["minutes"]:
        parts.append(f"{training['minutes']:g} min of training")
    return " ".join(parts) or "not recorded (no training_info.json)"


def card_metrics(folder: str | os.PathLike) -> dict[str, dict[str, float]]:
    """Test metrics per mode from ``results.json``, else the model card's ``model-index`` (as mode "card")."""
    folder = Path(folder)
    results = _read_json(folder / "results.json")
    found = {}
    means = results.get("mean_over_categories")
    for mode, values in (means.items() if isinstance(means, dict) else ()):  # a multi-class evaluation
        if isinstance(values, dict):
            found[f"{mode} (mean over categories)"] = {key: values[key] for key, _ in METRICS
                                                       if isinstance(values.get(key), int | float)}
    for mode, values in results.items():
        overall = values.get("all") if isinstance(values, dict) else None
        if isinstance(overall, dict):
            found[mode] = {key: overall[key] for key, _ in METRICS if isinstance(overall.get(key), int | float)}
    if found or not (folder / "README.md").is_file():
        return found
    try:
        from huggingface_hub import ModelCard

        card = ModelCard.load(folder / "README.md")
    except Exception:  # noqa: BLE001 - a card without readable metadata has no metrics to show
        return {}
    metrics = {r.metric_type: float(r.metric_value) for r in (card.data.eval_results or [])
               if isinstance(r.metric_value, int | float)}
    return {"card": metrics} if metrics else {}


def describe(folder: str | os.PathLike) -> str:
    """Markdown: what the pipeline in ``folder`` was trained on and its metrics per mode."""
    lines = [f"**trained on** {trained_on(folder)}"]
    metrics = card_metrics(folder)
    if not metrics:
        lines.append("no test metrics recorded")
    for mode, values in metrics.items():
        shown = ", ".join(f"{label} {values[key]:.3f}" for key, label in METRICS if key in values)
        name = "model card" if mode == "card" else mode.replace("_", " ")
        lines.append(f"{name}: {shown or 'no metrics'}")
    return "  \n".join(lines)


# the model_index.json key naming the ddad-hub version that saved the folder (diffusers keeps its own beside it)
VERSION_KEY = "_ddad_hub_version"


def stamp_version(folder: str | os.PathLike) -> None:
    """Record the installed ddad-hub version in a saved pipeline's ``model_index.json``, so a reader with an older
    version can tell that the folder may hold settings it does not know."""
    from . import __version__

    index = Path(folder) / "model_index.json"
    values = json.loads(index.read_text())
    values[VERSION_KEY] = __version__
    index.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")


def newer_version_note(config: dict, path: str | os.PathLike) -> str | None:
    """A warning's text when the folder was saved by a newer ddad-hub than the installed one (``None`` otherwise,
    also for folders saved before the stamp existed)."""
    from packaging.version import InvalidVersion, Version

    from . import __version__

    saved = config.get(VERSION_KEY)
    try:
        newer = saved is not None and Version(str(saved)) > Version(__version__)
    except InvalidVersion:
        return f"{path} names an unreadable ddad-hub version ({saved!r}) in model_index.json"
    if not newer:
        return None
    return (f"{path} was saved by ddad-hub {saved}, newer than the installed {__version__}: settings that version "
            "added are not read, and the folder may not load or score as it should. Upgrade: pip install -U ddad-hub")
