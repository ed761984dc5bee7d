"""The Accelerator the training scripts share, with precision and threads chosen for the machine."""

from __future__ import annotations

import os
import sys

import torch
from accelerate import Accelerator

from .hardware import cpu_name, default_threads, has_native_bf16, machine_summary, resolve_mixed_precision


def make_accelerator(mixed_precision: str | None = "auto", threads: int | None = None) -> Accelerator:
    """An Accelerator that also runs several processes on a machine without accelerators.

    ``mixed_precision="auto"`` becomes bf16 only where bf16 is native (see :mod:`ddad_hub.hardware`); emulated
    bf16 is about 20x slower than fp32. ``threads=None`` gives each process an equal share of the cores
    (``accelerate launch`` would leave one thread per process). ``accelerate launch --multi_gpu --num_processes N``
    starts N processes; on a CPU-only machine accelerate would leave each of them alone unless told to use the
    CPU, so they then join one gloo process group. The choices are printed and kept in ``accelerator.run_info``
    for the run's records.
    """
    has_accelerator = torch.cuda.is_available() or (
        hasattr(torch, "xpu") and torch.xpu.is_available()) or torch.backends.mps.is_available()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = resolve_mixed_precision(mixed_precision, device)
    accelerator = Accelerator(mixed_precision=resolved, cpu=not has_accelerator)
    if not has_accelerator:
        torch.set_num_threads(threads or default_threads(accelerator.num_processes))
    accelerator.run_info = {
        "cpu": cpu_name(), "native_bf16": has_native_bf16(device), "mixed_precision_requested": mixed_precision,
        "mixed_precision": resolved, "threads_per_process": torch.get_num_threads(),
        "processes": accelerator.num_processes,
    }
    accelerator.print(f"machine: {machine_summary()}; mixed precision {mixed_precision} -> {resolved}; "
                      f"{accelerator.num_processes} process(es)")
    return accelerator


def finish(accelerator: Accelerator) -> None:
    """End a run on every process together: wait for all, end the trackers and tear the process group down while
    every peer is still there. Scripts then leave through :func:`exit_process`."""
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
        # the accelerator holds the DDP-wrapped models: kept alive, their reducers are not destroyed when the
        # script's main() returns, only skipped by exit_process()
        _ended_runs.append(accelerator)


_ended_runs: list[Accelerator] = []


def exit_process() -> None:
    """Exit a training script's process; after a multi-process run, without the interpreter's teardown.

    With several processes, the DDP reducer's destructor (when ``main()`` returned, or at interpreter exit)
    sometimes blocked forever in gloo's process-group destructor, joining a worker thread after the peer process
    had left (seen with py-spy on this machine in about one run of five; every file had been written).
    :func:`finish` has synchronised the processes, closed the group and kept the models alive, so the process
    flushes its output and ends at once instead.
    """
    if _ended_runs:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
