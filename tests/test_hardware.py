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
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    feats = [torch.cpu._is_avx512_bf16_supported(), torch.cpu._is_amx_tile_supported()]
    assert has_native_bf16() == any(feats)


def test_a_cap_on_onednns_instruction_set_below_bf16_means_no_native_bf16(monkeypatch):
    """ONEDNN_MAX_CPU_ISA=AVX2 makes torch's (and OpenVINO's) kernels emulate bf16 on any CPU: 4x slower autocast
    here, and OpenVINO's bf16 Softmax does not compile at all, so "auto" must pick fp32 there."""
    from ddad_hub import hardware

    monkeypatch.delenv("DDAD_NATIVE_BF16", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(hardware, "cpu_bf16_features", lambda: {"avx512_bf16": True, "amx": False})
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert has_native_bf16() and resolve_mixed_precision("auto") == "bf16"
    for cap in ("AVX2", "avx512_core", "AVX512_CORE_VNNI"):
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        assert not has_native_bf16() and resolve_mixed_precision("auto") == "no", cap
        assert f"hidden by oneDNN's instruction-set cap {cap}" in machine_summary()
    for cap in ("AVX512_CORE_BF16", "AVX512_CORE_AMX", "ALL", "DEFAULT"):
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        assert has_native_bf16(), cap
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "AVX2")  # its older name, which oneDNN still reads
    assert not has_native_bf16()
    monkeypatch.setenv("DDAD_NATIVE_BF16", "1")  # the explicit override still wins
    assert has_native_bf16()


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
