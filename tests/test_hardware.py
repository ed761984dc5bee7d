"""Precision and threads are chosen per machine: detection, overrides, and what the training scripts get."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from ddad_hub.hardware import default_threads, has_native_bf16, machine_summary, resolve_mixed_precision


def test_auto_follows_the_hardware(monkeypatch):
    monkeypatch.setenv("DDAD_NATIVE_BF16", "0")
    assert not has_native_bf16() and resolve_mixed_precision("auto") == "no"
    assert resolve_mixed_precision(None) == "no"
    assert "overrides" in machine_summary()
    monkeypatch.setenv("DDAD_NATIVE_BF16", "1")
    assert has_native_bf16() and resolve_mixed_precision("auto") == "bf16"
    for explicit in ("no", "bf16", "fp16"):
        assert resolve_mixed_precision(explicit) == explicit
    with pytest.raises(ValueError, match="mixed precision"):
        resolve_mixed_precision("int8")
    monkeypatch.delenv("DDAD_NATIVE_BF16")
    feats = [torch.cpu._is_avx512_bf16_supported(), torch.cpu._is_amx_tile_supported()]
    assert has_native_bf16() == any(feats)


def test_pipeline_auto_dtype_follows_the_hardware(monkeypatch):
    from conftest import make_tiny_pipeline

    pipe = make_tiny_pipeline()
    monkeypatch.setenv("DDAD_NATIVE_BF16", "0")
    assert pipe.default_autocast_dtype() is None
    monkeypatch.setenv("DDAD_NATIVE_BF16", "1")
    assert pipe.default_autocast_dtype() == torch.bfloat16
    pipe.register_to_config(compute_dtype="float32")
    assert pipe.default_autocast_dtype() is None


def test_accelerate_single_thread_env_does_not_leave_cores_idle():
    """accelerate launch sets OMP_NUM_THREADS=1; one training process must still use every core."""
    code = ("import torch; from ddad_hub.distributed import make_accelerator; a = make_accelerator('auto'); "
            "print(torch.get_num_threads(), a.run_info['threads_per_process'], a.run_info['mixed_precision'])")
    env = {"OMP_NUM_THREADS": "1", "DDAD_NATIVE_BF16": "0", "PATH": ""}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    threads, recorded, precision = out.stdout.split()[-3:]
    assert int(threads) == int(recorded) == default_threads(1)
    assert precision == "no"
    assert "machine:" in out.stdout + out.stderr
