"""Where every benchmark writes its numbers: ``stem.json`` (the full record) and ``stem.md`` (the table)."""

from __future__ import annotations

import json
from pathlib import Path


def write_results(stem: str | Path, record, markdown: str) -> None:
    """Write ``record`` as ``stem.json`` and ``markdown`` as ``stem.md``, creating the folder."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2))
    stem.with_suffix(".md").write_text(markdown.rstrip("\n") + "\n")
