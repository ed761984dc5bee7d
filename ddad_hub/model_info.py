"""What a saved pipeline folder says about itself: what it was trained on and its model card's metrics."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .metrics import METRICS


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


def trained_on(folder: str | os.PathLike) -> str:
    """A short phrase naming the data a pipeline was trained on, from its ``training_info.json``."""
    info = _read_json(Path(folder) / "training_info.json")
    categories = info.get("categories") or ([info["category"]] if info.get("category") else [])
    categories = categories if isinstance(categories, list) else [categories]
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
