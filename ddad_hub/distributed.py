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
    bf16 is 11-21x slower than fp32 for a training step (measured on an AVX2-only AMD EPYC). ``threads=None``
    gives each process an equal share of the cores
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
    every peer is still there. Call it last in a training script's ``main()``, after every file is written.

    After a multi-process run the process then exits here, without returning and without the interpreter's
    teardown. Freeing the run's objects (the DDP reducer, gloo's process-group state), whether when ``main()``
    returns or at interpreter exit, sometimes blocked forever joining a gloo worker thread after the peer process
    had left. py-spy (``--native``) showed the deadlock, in about one run in 20 on this machine: the main thread,
    holding the GIL, frees the DDP ``Reducer`` and with it ``ProcessGroupGloo``, whose destructor joins gloo's run
    loop thread, which waits for the GIL to free a finished barrier's tensors. A single-process run returns normally
    (the scripts' ``main()`` is also called in-process).
    """
    accelerator.wait_for_everyone()
    several = accelerator.num_processes > 1
    accelerator.end_training()  # recent accelerate versions tear the process group down here themselves
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    if several:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
