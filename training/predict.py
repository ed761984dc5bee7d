"""Score a folder of your own images with a pipeline: a heat-map PNG per image and a CSV of scores.

    python training/predict.py --pipeline runs/transistor/pipeline --input-dir my_parts/ --output-dir predictions/

Files that cannot be read as images are listed in the CSV with the reason and do not stop the run. The demo's
batch tab scores through the same code (``ddad_hub.inspection``) in batches of the same size, so both give the same
scores for the same files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ddad_hub import load_pipeline
from ddad_hub.cli import add_pipeline_arguments, check_modes, pipeline_source, run
from ddad_hub.data import IMAGE_SUFFIXES
from ddad_hub.inspection import BATCH_SIZE, anomaly_picture, image_files, inspect_files, tally_text, write_csv


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pipeline_arguments(p, "a saved pipeline folder or Hub repo id")
    p.add_argument("--input-dir", required=True)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                   help="images reconstructed at once (default: the Space's, so both give bit-identical scores)")
    p.add_argument("--mode", default=None, help="the pipeline's mode (default: the model's own, config.mode)")
    p.add_argument("--category", default=None,
                   help="the product every image shows, for a multi-class model (default: each image's recognised)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(args.input_dir)
    files = image_files(root)
    if not files:
        raise SystemExit(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {args.input_dir}")
    pipe = load_pipeline(pipeline_source(args))  # a DDADPipeline or a DiADPipeline
    pipe.set_progress_bar_config(disable=True)
    if args.mode is not None:  # before the output folder is made: a mistake leaves nothing behind
        check_modes(pipe, [args.mode], "--mode")
    if args.category is not None:
        try:
            pipe.check_categories(args.category, 1)
        except ValueError as err:
            raise SystemExit(f"--category: {err}") from None
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, used = [], set()
    bar = tqdm(total=len(files), desc="predict", unit="image")

    def progress(done: int, total: int) -> None:  # images: a multi-page file counts its pages
        bar.total = total
        bar.update(done - bar.n)

    for item in inspect_files(pipe, files, args.batch_size, progress=progress, mode=args.mode,
                              category=args.category):
        rows.append(item.row)
        if item.image is not None:
            rel = files[item.file_index].relative_to(root)
            stem = str(rel.with_suffix("")).replace("/", "__") + ("" if item.page is None else f"_page{item.page + 1}")
            target = out / f"{_unique(stem, rel.suffix, used)}_map.png"
            anomaly_picture(item.image, item.anomaly_map, item.threshold).save(target)
    bar.close()
    write_csv(rows, out / "scores.csv")
    print(f"{len(rows)} rows written to {out / 'scores.csv'}")
    if tally_text(rows):  # a multi-class model: how each product fared
        print(f"per product: {tally_text(rows)}")
    return out


def _unique(name: str, suffix: str, used: set[str]) -> str:
    """``name``, or with the file's suffix (``a_jpg`` beside ``a`` from ``a.png``), then a number, when an earlier
    file's map already took it: every scored file keeps its own heat-map."""
    candidates = [name, f"{name}_{suffix.lstrip('.')}"] + [f"{name}_{k}" for k in range(2, len(used) + 3)]
    chosen = next(c for c in candidates if c not in used)
    used.add(chosen)
    return chosen


if __name__ == "__main__":
    run(main)
