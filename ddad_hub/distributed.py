"""The Accelerator the training scripts share."""

from __future__ import annotations

import torch
from accelerate import Accelerator


def make_accelerator(mixed_precision: str = "no") -> Accelerator:
    """An Accelerator that also runs several processes on a machine without accelerators.

    ``accelerate launch --multi_gpu --num_processes N`` starts N processes; on a CPU-only machine accelerate would
    leave each of them alone unless told to use the CPU, so they then join one gloo process group.
    """
    has_accelerator = torch.cuda.is_available() or (
        hasattr(torch, "xpu") and torch.xpu.is_available()) or torch.backends.mps.is_available()
    return Accelerator(mixed_precision=mixed_precision, cpu=not has_accelerator)
