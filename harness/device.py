"""Which device a job runs on and in which dtype it computes: chosen once, recorded with the reason."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

import torch

from harness.quant import FLOAT_DTYPES

_NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def pick_device(requested: str) -> torch.device:
    """``auto`` picks CUDA when available; an explicit ``cuda`` without one is an error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda was asked for but torch sees no CUDA device")
    return torch.device(str(requested))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


@functools.cache
def instruction_flags() -> dict[str, bool]:
    """The CPU's instruction-set flags as torch reads them (``{}`` on a torch without the probe); read once:
    the memory model asks on every estimate."""
    return torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}


def native_bf16(cpu_flags: dict[str, bool], aten_capability: str, onednn_bf16: bool) -> bool:
    """Whether bf16 matmuls run in hardware: the CPU has the instructions (AVX-512 BF16 or AMX) *and*
    torch's kernels may use them. ATen's vectorised kernels must dispatch to AVX-512 (not capped by
    ``ATEN_CPU_CAPABILITY=avx2``) and oneDNN must run bf16 (not capped by ``ONEDNN_MAX_CPU_ISA=AVX2``);
    capped, an AVX-512 machine computes as an AVX2 one does, so the emulated AVX2 class (``.ci/run``)
    picks fp32 like a real one."""
    has_instructions = any(bool(cpu_flags.get(flag)) for flag in _NATIVE_BF16_CPU_FLAGS)
    return has_instructions and aten_capability.startswith("AVX512") and onednn_bf16


def cpu_has_native_bf16() -> bool:
    """:func:`native_bf16` for this process, from torch's CPU probes (CPU flags, ATen's dispatch level,
    oneDNN's bf16 support; the last two honour the capping environment variables).

    There bf16 matmuls run ~2.3x faster than fp32 (394 vs 172 GFLOP/s measured on an AMD EPYC with
    AVX-512 BF16); on AVX2-only CPUs they are emulated and ~9x slower.
    """
    return native_bf16(
        instruction_flags(),
        torch.backends.cpu.get_cpu_capability(),
        torch.ops.mkldnn._is_mkldnn_bf16_supported(),
    )


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX for bf16 (Intel Xeon since Sapphire Rapids): oneDNN's bf16 kernels there
    are tile kernels of their own, with a larger cache per shape (``harness.train.memory_model``)."""
    return bool(instruction_flags().get("amx_bf16"))


def choose_compute_dtype(name: str, device: torch.device) -> tuple[torch.dtype, str]:
    """The compute dtype and why: ``auto`` is bf16 (the paper's) on CUDA and on CPUs with native bf16,
    fp32 on other CPUs; an explicit name is taken as given."""
    if name != "auto":
        return FLOAT_DTYPES[str(name)], "set by quant.compute_dtype"
    if device.type == "cuda":
        return torch.bfloat16, "auto: CUDA computes in bf16, as in the paper"
    if cpu_has_native_bf16():
        return torch.bfloat16, "auto: this CPU has native bf16 matmuls (AVX-512 BF16 or AMX)"
    return torch.float32, (
        "auto: no native bf16 here (an AVX2-class CPU, or torch's kernels capped to one; bf16 matmuls "
        "would be emulated, ~9x slower)"
    )


def dtype_name(dtype: torch.dtype) -> str:
    """``bf16``/``fp16``/``fp32``: the config's name for a torch dtype."""
    return {v: k for k, v in FLOAT_DTYPES.items()}[dtype]
