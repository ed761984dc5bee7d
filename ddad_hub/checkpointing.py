"""Resumable training state written atomically, in safetensors and JSON only (nothing is unpickled on resume)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

_STEP_DIR = re.compile(r"^step_(\d+)$")


def _optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{index}/{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{index}/{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_from_flat(optimizer: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state: dict[int, dict] = {}
    for name, value in {**tensors, **meta["scalars"]}.items():
        index, key = name.split("/", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(
    directory: str | os.PathLike,
    step: int,
    modules: dict[str, torch.nn.Module | dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer | None,
    state: dict,
    keep: int = 2,
) -> Path:
    """Write ``<directory>/step_<N>`` atomically: a temporary folder is filled, synced, then renamed.

    ``modules`` maps file stems to modules (their state dicts are saved) or to plain tensor dicts.
    ``state`` is JSON (step, elapsed time, RNG seeds...). Older checkpoints beyond ``keep`` are removed.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step_{step:08d}"
    tmp = directory / f".tmp_step_{step:08d}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for stem, module in modules.items():
        tensors = module.state_dict() if isinstance(module, torch.nn.Module) else module
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / f"{stem}.safetensors"))
    if optimizer is not None:
        tensors, meta = _optimizer_to_flat(optimizer)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "optimizer.json").write_text(json.dumps(meta))
    (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=2))
    for file in tmp.iterdir():
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(directory)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of interrupted writes are ignored)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if p.is_dir() and _STEP_DIR.match(p.name) and (p / "state.json").exists()]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def load_checkpoint(
    checkpoint: str | os.PathLike,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer | None = None,
) -> dict:
    """Restore modules and optimizer from a checkpoint folder and return its JSON state."""
    checkpoint = Path(checkpoint)
    for stem, module in modules.items():
        file = checkpoint / f"{stem}.safetensors"
        if not file.is_file():
            raise FileNotFoundError(f"checkpoint {checkpoint} has no {file.name}")
        module.load_state_dict(load_file(str(file)))
    if optimizer is not None:
        meta = json.loads((checkpoint / "optimizer.json").read_text())
        _optimizer_from_flat(optimizer, load_file(str(checkpoint / "optimizer.safetensors")), meta)
    return json.loads((checkpoint / "state.json").read_text())


def resume(
    checkpoint_dir: str | os.PathLike,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer | None,
    log=print,
) -> tuple[dict, Path] | None:
    """``--resume`` of a step-based training script: restore the newest checkpoint in ``checkpoint_dir``.

    Returns its state (with ``step`` and ``elapsed_seconds``) and folder, or ``None`` (said through ``log``) when
    there is none yet, so the run starts fresh.
    """
    ckpt = latest_checkpoint(checkpoint_dir)
    if ckpt is None:
        log(f"--resume: no checkpoint in {checkpoint_dir}, starting fresh")
        return None
    state = load_checkpoint(ckpt, modules, optimizer)
    log(f"resumed from {ckpt} at step {state['step']} ({state['elapsed_seconds'] / 60:.1f} min trained)")
    return state, Path(ckpt)
