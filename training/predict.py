"""Score a folder of your own images with a DDADPipeline: a heat-map PNG per image and a CSV of scores.

    python training/predict.py --pipeline runs/transistor/pipeline --input-dir my_parts/ --output-dir predictions/

Files that cannot be read as images are listed in the CSV with the reason and do not stop the run.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ddad_hub import ImageLoadError, open_image
from ddad_hub.data import IMAGE_SUFFIXES
from ddad_hub.pipelines.loading import load_pipeline
from ddad_hub.visualize import outline, overlay


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", required=True, help="a saved pipeline folder or Hub repo id")
    p.add_argument("--input-dir", required=True)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    files = sorted(f for f in Path(args.input_dir).rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SystemExit(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {args.input_dir}")
    pipe = load_pipeline(args.pipeline)  # a DDADPipeline or a DiADPipeline
    pipe.set_progress_bar_config(disable=True)
    threshold = pipe.threshold_for()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for start in tqdm(range(0, len(files), args.batch_size), desc="predict"):
        batch, names = [], []
        for f in files[start : start + args.batch_size]:
            try:
                batch.append(open_image(f))
                names.append(f)
            except ImageLoadError as err:
                rows.append({"file": str(f), "score": "", "verdict": "", "error": str(err)})
        if not batch:
            continue
        result = pipe(batch, output_type="np")
        for f, image, score, full in zip(names, batch, result.image_scores, result.anomaly_maps_input_size):
            rel = f.relative_to(args.input_dir).with_suffix("")
            target = out / f"{str(rel).replace('/', '__')}_map.png"
            scale = {"vmin": 0.0, "vmax": 2 * threshold} if threshold else {}
            picture = overlay(image, full, **scale)
            if threshold is not None:
                picture = outline(picture, full > threshold, colour=(255, 255, 255))
            picture.save(target)
            verdict = "" if threshold is None else ("defective" if score > threshold else "good")
            rows.append({"file": str(f), "score": f"{float(score):.6f}", "verdict": verdict, "error": ""})
    with open(out / "scores.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "score", "verdict", "error"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"{len(rows)} rows written to {out / 'scores.csv'}")
    return out


if __name__ == "__main__":
    main()
