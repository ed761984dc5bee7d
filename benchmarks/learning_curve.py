"""How quality grows with training time: finalize and evaluate every snapshot of a training run.

    python benchmarks/learning_curve.py --run-dir runs/transistor --data ../shared/data/mvtec_ad_256/transistor \
        --snapshots runs/transistor/snapshots/step_00001000 runs/transistor/snapshots/step_00002000

Each snapshot gets the full recipe a finished run gets (settings chosen on held-out images with synthetic defects,
threshold on held-out good images), so a row is what a user would have had after stopping there. Prints a
markdown table and writes it, with the raw numbers, to ``--output``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "training"))

import evaluate  # noqa: E402  (training/evaluate.py)
import finalize  # noqa: E402  (training/finalize.py)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--snapshots", nargs="+", required=True, help="checkpoint folders (step_*), in training order")
    p.add_argument("--work-dir", default=None, help="where the per-snapshot pipelines go (default: <run>/curve)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--output", default=None, help="a .json file for the rows (a .md table is written beside it)")
    args = p.parse_args(argv)
    work = Path(args.work_dir or Path(args.run_dir) / "curve")
    rows = []
    for snap in map(Path, args.snapshots):
        state = json.loads((snap / "state.json").read_text())
        out = work / snap.name
        folder = finalize.main(["--run-dir", args.run_dir, "--checkpoint", str(snap), "--data", args.data,
                                "--output-dir", str(out)])
        eval_args = ["--pipeline", str(folder), "--data", args.data, "--no-memory"]
        if args.threads:
            eval_args += ["--threads", str(args.threads)]
        results = evaluate.main(eval_args)
        row = {"step": state["step"], "minutes": round(state["elapsed_seconds"] / 60, 1)}
        for mode in ("ddad", "d3ad"):
            if mode in results:
                row.update({f"{mode}_{k}": None if v is None else round(v, 3) for k, v in results[mode]["all"].items()
                            if k in ("image_auroc", "pixel_auroc", "aupro")})
        rows.append(row)
    keys = list(rows[0])
    table = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    table += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    print("\n".join(table))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(rows, indent=2))
        Path(args.output).with_suffix(".md").write_text("\n".join(table) + "\n")
    return rows


if __name__ == "__main__":
    main()
