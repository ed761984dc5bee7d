"""How often a multi-class pipeline calls an image "unknown product": on its products' test images, good and
defective (it should not), and on images of no trained product (it should).

    python benchmarks/unknown_products.py --pipeline models/ddad-multiclass-cpu-latent \
        --data ../shared/data/mvtec_ad_256/{transistor,bottle} ../shared/data/mvtec3d_256/tire \
        ../shared/data/mtd/magnetic_tile --save

The off-product images are scikit-image's bundled sample images (photos, textures, a chessboard, documents; read
from the installed package, not copied here), plus a flat grey image and uniform noise. Only the feature memory's
search runs (``DDADPipeline.recognise_products``) for the products' test images, as in every call of the pipeline;
the off-product images are also scored in each mode, for the verdicts such images get. Writes
``benchmarks/results/unknown_products.{md,json}`` with ``--save``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ddad_hub.data import find_categories, list_test_items
from ddad_hub.hardware import cpu_name
from ddad_hub.image_utils import open_image
from ddad_hub.pipelines.loading import load_pipeline

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import write_results  # noqa: E402


def off_product_images() -> dict[str, Image.Image]:
    """scikit-image's bundled samples, a flat grey image and uniform noise: images of none of the products."""
    import skimage

    folder = Path(skimage.__file__).parent / "data"
    images = {p.name: open_image(p) for p in sorted(folder.glob("*")) if p.suffix in (".png", ".jpg")}
    images["flat grey"] = Image.new("RGB", (256, 256), (128, 128, 128))
    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    images["uniform noise"] = Image.fromarray(noise)
    return images


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", required=True)
    p.add_argument("--data", nargs="+", required=True, help="the category folders of its products")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--save", action="store_true", help="write benchmarks/results/unknown_products.{md,json}")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.pipeline)
    pipe.set_progress_bar_config(disable=True)
    memory = pipe.feature_memory
    if memory is None or not memory.knows_unknowns:
        raise SystemExit(f"{args.pipeline} has no product limits: run training/fit_unknown_products.py on it first")
    record = {"pipeline": args.pipeline, "cpu": cpu_name(), "margin": memory.config.unknown_margin,
              "limits": dict(memory.config.group_limits), "products": {}, "off_product": {}}
    rows = ["| images | count | called unknown | recognised as the right product | ratio (median, max) |",
            "|---|---|---|---|---|"]
    for name, root in find_categories(args.data).items():
        items = list_test_items(root)
        for kind, chosen in (("good", [i for i in items if not i.is_anomalous]),
                             ("defective", [i for i in items if i.is_anomalous])):
            names, ratios, unknown = pipe.recognise_products([i.image for i in chosen])
            right = float(np.mean([n == name for n in names]))
            record["products"][f"{name} {kind}"] = {"count": len(chosen), "unknown": int(unknown.sum()),
                                                    "recognised": right, "ratios": ratios.tolist()}
            rows.append(f"| {name} test {kind} | {len(chosen)} | {int(unknown.sum())} | {right:.1%} | "
                        f"{ratios.median():.2f}, {ratios.max():.2f} |")
    off = off_product_images()
    names, ratios, unknown = pipe.recognise_products(list(off.values()))
    for (label, _), nearest, ratio, flag in zip(off.items(), names, ratios.tolist(), unknown.tolist()):
        record["off_product"][label] = {"nearest": nearest, "ratio": ratio, "unknown": flag}
    rows.append(f"| off-product images (scikit-image samples, grey, noise) | {len(off)} | {int(unknown.sum())} | "
                f"n/a | {ratios.median():.2f}, min {ratios.min():.2f} |")
    # the verdict does not read the check: how each mode judges these images as the product they are taken for
    verdicts = ["| mode | off-product images judged defective | judged good |", "|---|---|---|"]
    for mode in pipe.available_modes():
        out = pipe(list(off.values()), mode=mode, output_type="np", batch_size=8,
                   generator=torch.Generator().manual_seed(0))
        for label, flag in zip(off, out.is_anomalous.tolist()):
            record["off_product"][label][f"{mode}_defective"] = bool(flag)
        passed = [label for label, flag in zip(off, out.is_anomalous.tolist()) if not flag]
        record.setdefault("off_product_judged_good", {})[mode] = passed
        verdicts.append(f"| {mode} | {len(off) - len(passed)} of {len(off)} | {', '.join(passed) or 'none'} |")
    missed = [f"{k} ({v['ratio']:.2f}, taken for {v['nearest']})" for k, v in record["off_product"].items()
              if not v["unknown"]]
    table = (f"Unknown-product check of `{args.pipeline}` (margin {memory.config.unknown_margin:.3f}; "
             f"{record['cpu']}, {args.threads} threads):\n\n" + "\n".join(rows)
             + "\n\nThe verdicts of the off-product images, judged as the product each is taken for:\n\n"
             + "\n".join(verdicts)
             + ("\n\nOff-product images it did not call unknown: " + "; ".join(missed) if missed else ""))
    print(table)
    if args.save:
        write_results(Path(__file__).resolve().parent / "results" / "unknown_products", record, table)
    return record


if __name__ == "__main__":
    main()
