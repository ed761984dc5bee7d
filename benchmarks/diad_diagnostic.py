"""Does a reconstruction remove a defect or copy it? A diagnostic for DiAD (and any pipeline) on held-out images.

    python benchmarks/diad_diagnostic.py --pipeline runs/diad2/pipeline models/ddad-multiclass-cpu-latent \\
        --data ../shared/data/mvtec_ad_256/transistor ../shared/data/mvtec_ad_256/bottle \\
        ../shared/data/mvtec3d_256/tire ../shared/data/mtd/magnetic_tile --threads 2

Synthetic defects are pasted into held-out nominal training images (the recipe's own split and defects, so no
test image is used). Each pipeline reconstructs the clean and the defective images at its working size with its
saved settings, and the script reports, inside the defect masks:

- ``defect_kept``: ``1 - mean|r - x_def| / mean|x_clean - x_def|``: 1 when the reconstruction copies the defect,
  0 when it restores the clean image (values below 0 are further from both);
- the same for the autoencoder's round trip of the defective image (what a model that changes nothing keeps);
- ``nominal_error``: mean |r - x| over clean images (how faithful the reconstruction of good parts is);
- the image and pixel AUROC of the pipeline's own map on these images (the recipe's objective).

Prints the table; ``--output`` also writes it (.json and .md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from results_io import write_results  # noqa: E402

from ddad_hub.data import find_categories, load_images, split_categories  # noqa: E402
from ddad_hub.hardware import machine_summary  # noqa: E402
from ddad_hub.pipelines.loading import load_pipeline  # noqa: E402
from ddad_hub.recipe import _synthetic_set, synthetic_objective  # noqa: E402


def _batched(fn, images: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    return torch.cat([fn(images[s : s + batch_size]).float().cpu() for s in range(0, images.shape[0], batch_size)])


@torch.no_grad()
def diagnose(pipe, nominal: torch.Tensor, seed: int = 0) -> dict:
    """The numbers above for one pipeline; ``nominal`` in [-1, 1] at map size."""
    defective, masks, _ = _synthetic_set(pipe, nominal, seed)
    size = pipe.sample_size
    clean = F.interpolate(nominal, size=size, mode="bilinear", antialias=True)
    broken = F.interpolate(defective, size=size, mode="bilinear", antialias=True)
    inside = torch.from_numpy(masks[nominal.shape[0] :]).float()[:, None]
    inside = F.interpolate(inside, size=size, mode="nearest").expand(-1, 3, -1, -1).bool()

    def kept(r: torch.Tensor) -> float:
        return float(1 - (r - broken).abs()[inside].mean() / (clean - broken).abs()[inside].mean())

    recon_broken = _batched(lambda x: pipe.reconstruct(x, show_progress=False), broken)
    recon_clean = _batched(lambda x: pipe.reconstruct(x, show_progress=False), clean)
    round_trip = _batched(lambda x: pipe.decode(pipe.encode(x)), broken)
    mode = "diad" if "sg_network" in pipe.components else "ddad"
    return {"mode": mode, "start_step": int(pipe.scheduler.config.start_step), "w": float(pipe.scheduler.config.w),
            "defect_kept": kept(recon_broken), "defect_kept_by_round_trip": kept(round_trip),
            "nominal_error": float((recon_clean - clean).abs().mean()),
            **synthetic_objective(pipe, nominal, seed, mode=mode)}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", nargs="+", required=True, help="pipeline folders (DiAD or DDAD)")
    p.add_argument("--data", nargs="+", required=True, help="the category folders the pipelines were trained on")
    p.add_argument("--holdout", type=float, default=0.1, help="the recipe's held-out share (default 0.1)")
    p.add_argument("--every", type=int, default=2, help="use every k-th held-out image (default 2)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output", default=None, help="path stem for .json and .md results (default: print only; the "
                   "table in docs/multiclass.md is benchmarks/results/multiclass/diad_diagnostic)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    machine = machine_summary()
    print(machine)
    _, held, _ = split_categories(find_categories(args.data), args.holdout, seed=0)
    held = held[:: args.every]
    rows = []
    for folder in args.pipeline:
        pipe = load_pipeline(folder)
        pipe.set_progress_bar_config(disable=True)
        nominal = load_images(held, pipe.map_hw[0])
        row = {"pipeline": folder, "held_out_images": len(held), **diagnose(pipe, nominal)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    lines = [f"Reconstruction diagnostic on {rows[0]['held_out_images']} held-out images with synthetic defects "
             f"({machine})", "",
             "| pipeline | mode | start step | defect kept | kept by the autoencoder alone | nominal error | "
             "image AUROC | pixel AUROC |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['pipeline']} | {r['mode']} | {r['start_step']} | {r['defect_kept']:.2f} | "
                     f"{r['defect_kept_by_round_trip']:.2f} | {r['nominal_error']:.3f} | {r['image_auroc']:.3f} | "
                     f"{r['pixel_auroc']:.3f} |")
    if args.output:
        write_results(args.output, {"machine": machine, "args": vars(args), "rows": rows}, "\n".join(lines))
    print("\n".join(lines))
    return rows


if __name__ == "__main__":
    main()
