"""Resumable training state written atomically, in safetensors and JSON only (nothing is unpickled on resume)."""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .hashing import file_sha256

_STEP_DIR = re.compile(r"^step_(\d+)$")
_HELD_LOCKS: dict[Path, object] = {}  # open lock files, kept for the life of the process


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
    # each file's digest, so damage that leaves a file readable (bytes overwritten in place) is found on resume
    digests = {file.name: file_sha256(file) for file in sorted(tmp.iterdir())}
    (tmp / "state.json").write_text(json.dumps({**state, "step": step, "file_sha256": digests}, indent=2))
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
    modules: dict[str, torch.nn.Module | dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer | None = None,
) -> dict:
    """Restore modules and optimizer from a checkpoint folder and return its JSON state.

    As in :func:`save_checkpoint`, a stem may map to a plain tensor dict (an EMA's shadow weights); it is refilled.
    """
    checkpoint = Path(checkpoint)
    state = json.loads((checkpoint / "state.json").read_text())
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise ValueError(f"{checkpoint / 'state.json'} is not a checkpoint's state")
    digests = state.pop("file_sha256", None) or {}  # checkpoints written before digests: unchecked
    if not isinstance(digests, dict):
        raise ValueError(f"{checkpoint / 'state.json'} is damaged (its file_sha256 is not a mapping)")
    for name, digest in digests.items():
        if (checkpoint / name).is_file() and file_sha256(checkpoint / name) != digest:
            raise ValueError(f"{name} is not the file that was written (its checksum differs)")
    for stem, module in modules.items():
        file = checkpoint / f"{stem}.safetensors"
        if not file.is_file():
            raise FileNotFoundError(f"checkpoint {checkpoint} has no {file.name}")
        tensors = load_file(str(file))
        broken = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if broken:  # a run that diverged, or damage: resuming would train on from NaN and prune the good ones
            raise ValueError(f"{file.name} holds NaN or infinite values ({', '.join(broken[:3])})")
        if isinstance(module, torch.nn.Module):
            module.load_state_dict(tensors)
        else:
            module.clear()
            module.update(tensors)
    if optimizer is not None:
        meta = json.loads((checkpoint / "optimizer.json").read_text())
        _optimizer_from_flat(optimizer, load_file(str(checkpoint / "optimizer.safetensors")), meta)
    return state


def resume(
    checkpoint_dir: str | os.PathLike,
    modules: dict[str, torch.nn.Module | dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer | None,
    log=print,
    resume_requested: bool = True,
    data: str | None = None,
    lock: bool = True,
    seed: int | None = None,
) -> tuple[dict, Path] | None:
    """Start or continue a training run (steps or epochs) in ``checkpoint_dir``.

    Without ``resume_requested`` (no ``--resume``) the folder must hold no checkpoint: a new run would delete its own
    checkpoints in favour of the earlier run's higher steps, so that is refused. With it, the newest checkpoint
    that loads is restored (a damaged newer one is named and passed over) and its state (``step``,
    ``elapsed_seconds``...) and folder are returned; ``None`` (said through ``log``) when there is none yet, so the
    run starts fresh. A checkpoint of another network, of other ``data`` or of another ``seed`` (which draws the
    held-out images: another one would hold out images the run trained on) is refused: its run is not this one.
    The optimizer keeps its moments from the checkpoint but this run's settings (``--learning-rate``...): a changed
    one is said through ``log``. With ``lock`` (the main process of a run) the folder is locked for the rest of the
    process (:func:`lock_run_folder`): a second run into it is refused while this one lives.
    """
    if lock:
        lock_run_folder(checkpoint_dir)
    found = list_checkpoints(checkpoint_dir)
    settings = _group_settings(optimizer)  # this run's learning rate etc., before the checkpoint's overwrite them
    if not resume_requested:
        if found:
            raise SystemExit(f"{checkpoint_dir} holds checkpoints of an earlier run (newest: {found[-1].name}); pass "
                             "--resume to continue it, or choose another --output-dir")
        return None
    if not found:
        log(f"--resume: no checkpoint in {checkpoint_dir}, starting fresh")
        return None
    for ckpt in reversed(found):
        try:
            state = load_checkpoint(ckpt, modules, optimizer)
        except RuntimeError as err:
            if "size mismatch" in str(err) or "Missing key" in str(err) or "Unexpected key" in str(err):
                raise SystemExit(f"{ckpt} holds another network than this run builds (another preset or "
                                 f"--resolution?): resume with the settings it was trained with, or choose another "
                                 f"--output-dir ({str(err).splitlines()[0]})") from err
            log(f"--resume: {ckpt} is damaged ({err}); trying the checkpoint before it")
            continue
        except (SafetensorError, OSError, ValueError, KeyError) as err:  # damaged files; a missing one
            log(f"--resume: {ckpt} is damaged ({type(err).__name__}: {err}); trying the checkpoint before it")
            continue
        if data is not None and state.get("data") not in (None, data):
            raise SystemExit(f"{ckpt} is of a run on {state['data']}, this run is on {data}: resume with the same "
                             "--data, or choose another --output-dir")
        if seed is not None and state.get("seed") not in (None, seed):
            raise SystemExit(f"{ckpt} is of a run with --seed {state['seed']}, this run has --seed {seed}: resume with "
                             "the same --seed (it draws the held-out images), or choose another --output-dir")
        if optimizer is not None:
            _restore_group_settings(optimizer, settings, log)
        trained = f" ({state['elapsed_seconds'] / 60:.1f} min trained)" if "elapsed_seconds" in state else ""
        log(f"resumed from {ckpt} at step {state['step']}{trained}")
        return state, Path(ckpt)
    raise SystemExit(f"every checkpoint in {checkpoint_dir} is damaged; delete them to start afresh")


def _group_settings(optimizer: torch.optim.Optimizer | None) -> list[dict]:
    if optimizer is None:
        return []
    return [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]


def _restore_group_settings(optimizer: torch.optim.Optimizer, settings: list[dict], log) -> None:
    """Put this run's settings back into the param groups a checkpoint overwrote, naming those that differed."""
    def plain(value):
        return list(value) if isinstance(value, tuple) else value

    for group, own in zip(optimizer.param_groups, settings):
        for key, value in own.items():
            if plain(group.get(key)) != plain(value):
                log(f"--resume: {key} {value} (this run's setting) replaces the checkpoint's {group.get(key)}")
            group[key] = value


def lock_run_folder(directory: str | os.PathLike) -> None:
    """Hold an exclusive lock on ``directory`` (created if needed) until this process ends.

    Two runs writing checkpoints into one folder delete each other's files as they prune old checkpoints; this
    happens when ``--resume`` is started while an interrupted run is still writing its last checkpoint (``accelerate
    launch`` returns the prompt at Ctrl-C before its training process has finished). The operating system releases
    the lock when the process ends, however it ends. Where ``fcntl`` is missing (Windows) or the file system has
    no locks, nothing is locked (the latter with a warning).
    """
    try:
        import fcntl
    except ImportError:
        return
    directory = Path(directory).resolve()
    if directory in _HELD_LOCKS:
        return
    directory.mkdir(parents=True, exist_ok=True)
    handle = open(directory / ".run.lock", "a+")  # noqa: SIM115 - held open on purpose, until the process ends
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # held by another process
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise SystemExit(f"{directory} is in use by another training run ({owner}): wait until it has ended (an "
                         "interrupted run writes its checkpoint first), or choose another --output-dir") from None
    except OSError as err:  # a file system without locks (NFS without lockd, Lustre without -o flock)
        handle.close()
        warnings.warn(f"{directory} cannot be locked ({err}); two runs into it at once would not be noticed",
                      stacklevel=2)
        return
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    _HELD_LOCKS[directory] = handle
