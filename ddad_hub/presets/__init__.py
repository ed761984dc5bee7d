"""Training presets and the paper's per-category settings, kept as JSON data beside this file."""

from __future__ import annotations

import json
from pathlib import Path

_HERE = Path(__file__).parent
PRESETS = ("cpu", "cpu_latent", "cpu_diad", "paper")


class PresetError(ValueError):
    """A preset that cannot be used (unknown name, broken file, a count that is not positive); the message says."""


def load_preset(name: str, category: str | None = None, **overrides) -> dict:
    """A preset's settings (by name, or a path to a JSON file); ``paper`` takes the category's published settings.

    ``overrides`` with value ``None`` are ignored, so command-line defaults do not mask the preset.
    """
    if name.endswith(".json"):  # a user's own preset file
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"preset file not found: {path}")
        try:
            preset = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise PresetError(f"preset file {path} is not valid JSON: {err}") from err
        if not isinstance(preset, dict):
            raise PresetError(f"preset file {path} must hold a JSON object of settings")
        preset.setdefault("name", path.stem)
        name = preset["name"]
    elif name in PRESETS:
        preset = json.loads((_HERE / f"{name}.json").read_text())
        preset["name"] = name
    else:
        raise PresetError(f"unknown preset {name!r}; choose from {PRESETS} or pass a .json file")
    if name == "paper" and category is not None:
        table = json.loads((_HERE / "categories.json").read_text())
        if category in table:
            preset.update(table[category])
    preset.update({k: v for k, v in overrides.items() if v is not None})
    _check_counts(preset)
    return preset


def _check_counts(preset: dict) -> None:
    """Settings that count something must be positive: a zero only fails later, deep in a training loop."""
    for key in ("batch_size", "checkpoint_every", "resolution"):
        value = preset.get(key)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise PresetError(f"preset {preset.get('name')!r}: {key} must be a positive integer, got {value!r}")
    for key in ("max_minutes", "epochs"):
        value = preset.get(key)
        if value is not None and not value > 0:
            raise PresetError(f"preset {preset.get('name')!r}: {key} must be above 0 (or left out), got {value!r}")
    resolution, map_size = preset.get("resolution"), preset.get("map_size")
    if resolution and map_size and map_size < resolution:
        # the recipe calibrates on images read at map size; the pipeline reads inputs at the larger of the two
        raise PresetError(f"preset {preset.get('name')!r}: map_size ({map_size}) must be at least the resolution "
                          f"({resolution}), or left out")


def fill_preset(preset: dict) -> dict:
    """A run's stored preset, with settings added to its named preset since the run started filling the gaps."""
    return {**load_preset(preset["name"]), **preset} if preset.get("name") in PRESETS else preset


def preset_section(preset: dict, section: str, suggestion: str, max_minutes: float | None = None) -> dict:
    """A copy of the preset's ``section`` (``"vae"``, ``"diad"``) for a training script, its ``max_minutes``
    replaced when given; exits with a hint naming ``suggestion`` when the preset has no such section."""
    if section not in preset:
        raise SystemExit(f"preset {preset['name']!r} has no '{section}' entry: use --preset {suggestion} or add one")
    spec = dict(preset[section])
    if max_minutes is not None:
        spec["max_minutes"] = max_minutes
    return spec
