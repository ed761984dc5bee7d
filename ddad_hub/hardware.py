"""What this machine is good at: its CPU's name, whether bf16 is native there, how many threads to use.

CPUs differ in ways that change the best settings by an order of magnitude: with AMX (recent Intel) bf16 autocast
is 1.5-2x faster than fp32; without AVX512-BF16 or AMX (many AMD EPYC and desktop CPUs) torch emulates bf16 and
autocast is 4-21x *slower* (an AVX2-only AMD EPYC: 4-8x for an inference call, 11-21x for a training step).
Nothing in this project hard-codes a precision: "auto" resolves here, and every benchmark names the CPU it ran on.
"""

from __future__ import annotations

import functools
import os
import platform

import torch


@functools.lru_cache(maxsize=1)
def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else :func:`platform.processor`)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_bf16_features() -> dict[str, bool]:
    """The CPU features that make bf16 fast, as torch detects them."""
    return {"avx512_bf16": bool(torch.cpu._is_avx512_bf16_supported()),
            "amx": bool(torch.cpu._is_amx_tile_supported())}


# oneDNN's instruction-set caps below the first with bf16 instructions (AVX512_CORE_BF16): with
# ONEDNN_MAX_CPU_ISA at one of them, torch's and OpenVINO's kernels emulate bf16 whatever the CPU has
_ISA_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")


def isa_cap() -> str | None:
    """oneDNN's instruction-set cap, ``ONEDNN_MAX_CPU_ISA`` (or its older name ``DNNL_MAX_CPU_ISA``), if set."""
    return os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or None


def isa_cap_hides_bf16() -> bool:
    """True when oneDNN's instruction-set cap keeps it below its bf16 instructions."""
    return (isa_cap() or "").strip().upper() in _ISA_WITHOUT_BF16


def has_native_bf16(device: str | torch.device = "cpu") -> bool:
    """True where bf16 matrix products run in hardware: a CPU with AVX512-BF16 or AMX, a CUDA GPU that supports it.

    ``DDAD_NATIVE_BF16=0`` or ``=1`` overrides the detection (to test both code paths on one machine); a CPU whose
    bf16 instructions ``ONEDNN_MAX_CPU_ISA`` hides from oneDNN counts as one without them.
    """
    forced = os.environ.get("DDAD_NATIVE_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    kind = torch.device(device).type
    if kind == "cpu":
        return any(cpu_bf16_features().values()) and not isa_cap_hides_bf16()
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return False


def resolve_mixed_precision(choice: str | None, device: str | torch.device = "cpu") -> str:
    """accelerate's ``mixed_precision`` for a requested one: "auto" (or ``None``) becomes "bf16" where bf16 is
    native and "no" elsewhere; "no", "bf16" and "fp16" pass through."""
    if choice in (None, "auto"):
        return "bf16" if has_native_bf16(device) else "no"
    if choice not in ("no", "bf16", "fp16"):
        raise ValueError(f"mixed precision must be 'auto', 'no', 'bf16' or 'fp16', got {choice!r}")
    return choice


def default_threads(num_processes: int = 1) -> int:
    """Threads per process that use every core once: the cores this process may run on, split between processes.

    ``accelerate launch`` sets ``OMP_NUM_THREADS=1`` for the processes it starts, which would leave a one-process
    run on a single core; training scripts call ``torch.set_num_threads(default_threads(n))`` instead.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, num_processes))


def machine_summary(threads: int | None = None) -> str:
    """One line for logs and benchmark tables: CPU model, bf16 support, threads, torch version."""
    feats = cpu_bf16_features()
    native = "native bf16 (" + ", ".join(k for k, v in feats.items() if v) + ")" if any(feats.values()) \
        else "no native bf16 (no AVX512-BF16, no AMX)"
    if any(feats.values()) and isa_cap_hides_bf16():
        native += f", hidden by oneDNN's instruction-set cap {isa_cap()}"
    forced = os.environ.get("DDAD_NATIVE_BF16")
    if forced in ("0", "1"):
        native += f"; DDAD_NATIVE_BF16={forced} overrides"
    threads = torch.get_num_threads() if threads is None else threads
    return (f"{cpu_name()}, {os.cpu_count()} logical CPUs, {native}, {threads} torch thread(s), "
            f"torch {torch.__version__}")
