"""The modes side by side per defect type (DDAD, D3AD, fused, and the memory alone), from the results.json files
that training/evaluate.py writes.

    python benchmarks/compare_modes.py models/ddad-transistor-cpu runs/latent/pipeline --names pixel latent

Prints a markdown table (image AUROC / pixel AUROC / AUPRO per defect type and overall) for the README.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ddad_hub.metrics import METRICS, format_metric

MODES = ("ddad", "d3ad", "fused", "feature_memory")
LABELS = {"ddad": "DDAD", "d3ad": "D3AD", "fused": "fused", "feature_memory": "memory"}


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", help="pipeline or output folders holding results.json")
    p.add_argument("--names", nargs="+", default=None, help="a column label per folder")
    args = p.parse_args(argv)
    names = args.names or [Path(f).name for f in args.folders]
    if len(names) != len(args.folders):
        raise SystemExit("give one --names label per folder")
    results = [json.loads((Path(f) / "results.json").read_text()) for f in args.folders]
    columns = [(name, mode) for name, r in zip(names, results) for mode in MODES if mode in r]
    subsets = sorted({s for r in results for m in MODES for s in r.get(m, {})} - {"all"}) + ["all"]
    head = "| defect type | " + " | ".join(f"{name} {LABELS[mode]}" for name, mode in columns) + " |"
    lines = [head, "|---" * (len(columns) + 1) + "|"]
    by_name = dict(zip(names, results))
    for subset in subsets:
        cells = []
        for name, mode in columns:
            v = by_name[name][mode].get(subset)
            cells.append("n/a" if v is None else " / ".join(format_metric(v[key]) for key, _ in METRICS))
        label = "**all**" if subset == "all" else subset.replace("_", " ")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    return table


if __name__ == "__main__":
    main()
