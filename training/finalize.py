"""Build the calibrated pipeline folder of a training run: settings selection, D3AD fit, threshold, model card.

    python training/finalize.py --run-dir runs/transistor
    python training/finalize.py --pipeline models/ddad-transistor-cpu --output-dir runs/refinalized \
        --encoder-padding same

``train_unet.py`` does this itself at the end; run it by hand after ``--no-finalize``, or to redo the recipe
(for example after it changed) on a run's newest checkpoint (EMA weights if present) or on a saved pipeline's
networks. The result goes to ``<output-dir>/pipeline``. A saved pipeline keeps its encoder as it is unless
``--encoder-padding`` says otherwise: ``same`` moves an encoder saved before the option to the padding its ImageNet
weights were trained with (a run's finalisation, ``--run-dir``, starts from those weights and has it already).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ddad_hub import DDADPipeline
from ddad_hub.checkpointing import latest_checkpoint
from ddad_hub.cli import run
from ddad_hub.data import categories_label, find_categories, held_out_split, split_categories
from ddad_hub.model_info import check_same_product, is_multiclass, redrawn_split, training_record
from ddad_hub.models.unet import unet_from_checkpoint
from ddad_hub.presets import fill_preset
from ddad_hub.recipe import finalize_run


def _setting(text: str) -> dict:
    key, _, value = text.partition("=")
    return {key: json.loads(value)}


def from_checkpoint(args: argparse.Namespace) -> Path:
    ckpt = Path(args.checkpoint) if args.checkpoint else latest_checkpoint(Path(args.run_dir) / "checkpoints")
    if ckpt is None:
        raise SystemExit(f"no checkpoint in {args.run_dir}/checkpoints")
    unet, vae, state, preset = unet_from_checkpoint(ckpt, args.vae)
    preset.update(args.set or {})
    categories = find_categories(args.data or state.get("categories") or state.get("data"))
    data = next(iter(categories.values())) if len(categories) == 1 else ", ".join(map(str, categories.values()))
    train_paths, held_out, _ = split_categories(categories, preset["holdout"], seed=state.get("seed", 0))
    training = {"steps": state["step"], "minutes": round(state["elapsed_seconds"] / 60, 2),
                "processes": state.get("processes", 1), "checkpoint": ckpt.name, "seed": state.get("seed", 0)}
    return finalize_run(args.output_dir or args.run_dir, unet, preset, data, held_out, training,
                        train_paths=train_paths, vae=vae, category=categories_label(categories))


def from_pipeline(args: argparse.Namespace) -> Path:
    if not args.output_dir:
        raise SystemExit("--pipeline needs --output-dir (the saved pipeline is not overwritten)")
    folder = Path(args.pipeline)
    if (Path(args.output_dir) / "pipeline").resolve() == folder.resolve():
        raise SystemExit(f"--output-dir {args.output_dir} would write over {folder}, the pipeline it starts from: "
                         "choose another folder")
    info = training_record(folder)
    if args.data and len(args.data) == 1:
        check_same_product(folder, args.data[0])
    preset = fill_preset({**info["preset"], **(args.set or {})})
    if is_multiclass(info):
        categories = find_categories(args.data or info["data"].split(", "))
        data = ", ".join(map(str, categories.values()))
        train_paths, held_out = redrawn_split(folder, info, categories, preset["holdout"])
        category = categories_label(categories)
    else:
        data = Path(args.data[0] if args.data else info["data"])
        train_paths, held_out = held_out_split(data, info["held_out_nominal"])
        category = None
    pipe = DDADPipeline.from_pretrained(folder)
    encoder = pipe.feature_encoder
    if args.encoder_padding and args.encoder_padding != encoder.config.padding:
        print(f"feature encoder padding: {encoder.config.padding} -> {args.encoder_padding}")
        encoder = encoder.with_padding(args.encoder_padding)
    training = {**info["training"], "refinalized_from": str(folder)}
    return finalize_run(args.output_dir, pipe.unet, preset, data, held_out, training,
                        encoder=encoder, train_paths=train_paths, vae=pipe.vae, category=category,
                        autoencoder_training=info.get("autoencoder", {}).get("training"))


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--run-dir", help="a train_unet.py output folder (its checkpoints/)")
    source.add_argument("--pipeline", help="a saved pipeline folder with training_info.json")
    p.add_argument("--checkpoint", default=None, help="with --run-dir: a step_* folder (default: the newest)")
    p.add_argument("--data", default=None, nargs="+",
                   help="the category folder(s) (default: the ones the run trained on)")
    p.add_argument("--output-dir", default=None, help="where to write pipeline/ (default: --run-dir)")
    p.add_argument("--vae", default=None, help="with --run-dir: the run's autoencoder (default: the one it used)")
    p.add_argument("--encoder-padding", default=None, choices=["same", "symmetric"],
                   help="with --pipeline: pad the feature encoder's strided convolutions this way (default: keep it)")
    p.add_argument("--set", nargs="+", default=None, type=_setting, metavar="KEY=JSON",
                   help="override preset entries, e.g. w=4 start_step=400 skip=40 d3ad=null to skip the settings "
                        "search and the D3AD fit (a cheaper finalisation), or memory='{...}' to refit the memory "
                        "another way")
    args = p.parse_args(argv)
    args.set = dict(item for pair in args.set for item in pair.items()) if args.set else None
    folder = from_pipeline(args) if args.pipeline else from_checkpoint(args)
    print(f"pipeline written to {folder}")
    return folder


if __name__ == "__main__":
    run(main)
