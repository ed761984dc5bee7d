"""Build the calibrated pipeline folder of a training run from its newest checkpoint (EMA weights if present).

    python training/finalize.py --run-dir runs/transistor

``train_unet.py`` does this itself at the end; run it by hand after ``--no-finalize`` or to redo calibration.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from safetensors.torch import load_file

from ddad_hub.checkpointing import latest_checkpoint
from ddad_hub.data import list_train_images, split_nominal
from ddad_hub.models.unet import build_unet
from ddad_hub.presets import PRESETS, load_preset
from ddad_hub.recipe import finalize_run


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--checkpoint", default=None, help="a step_* folder (default: the newest)")
    p.add_argument("--data", default=None, help="the category folder (default: the one the run trained on)")
    p.add_argument("--output-dir", default=None, help="where to write pipeline/ (default: --run-dir)")
    args = p.parse_args(argv)
    import json

    ckpt = Path(args.checkpoint) if args.checkpoint else latest_checkpoint(Path(args.run_dir) / "checkpoints")
    if ckpt is None:
        raise SystemExit(f"no checkpoint in {args.run_dir}/checkpoints")
    state = json.loads((ckpt / "state.json").read_text())
    preset = state["preset"]
    if preset.get("name") in PRESETS:  # settings added to the preset since the run started fill the gaps
        preset = {**load_preset(preset["name"]), **preset}
    data = Path(args.data or state.get("data") or "")
    unet = build_unet(preset)
    weights = ckpt / ("ema.safetensors" if (ckpt / "ema.safetensors").exists() else "unet.safetensors")
    unet.load_state_dict(load_file(str(weights)))
    train_paths, held_out = split_nominal(list_train_images(data), preset["holdout"], seed=state.get("seed", 0))
    training = {"steps": state["step"], "minutes": round(state["elapsed_seconds"] / 60, 2),
                "processes": state.get("processes", 1), "checkpoint": ckpt.name}
    folder = finalize_run(args.output_dir or args.run_dir, unet.eval(), preset, data, held_out, training,
                          train_paths=train_paths)
    print(f"pipeline written to {folder}")
    return folder


if __name__ == "__main__":
    main()
