"""compute_dtype=auto (harness.device): bf16 where the CPU multiplies bf16 natively, fp32 where it does not,
both outcomes through the real selection function and torch's real CPU probes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from harness.device import choose_compute_dtype, native_bf16

CPU = torch.device("cpu")
BF16_CPU = {"avx2": True, "avx512_bf16": True, "amx_bf16": False}
# The emulated AVX2 class of .ci/run: ATen's and oneDNN's kernels capped to AVX2 (MKL too, for timings).
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
PROBE = """
import json, torch
from harness.device import choose_compute_dtype
dtype, reason = choose_compute_dtype("auto", torch.device("cpu"))
print(json.dumps({"aten": torch.backends.cpu.get_cpu_capability(), "dtype": str(dtype), "reason": reason}))
"""


def test_native_bf16_needs_the_instructions_and_kernels_that_use_them():
    assert native_bf16(BF16_CPU, "AVX512", onednn_bf16=True)
    assert native_bf16({"amx_bf16": True}, "AVX512", onednn_bf16=True)
    assert not native_bf16({"avx2": True, "avx512_f": True}, "AVX512", onednn_bf16=True)  # no BF16 ops
    assert not native_bf16(BF16_CPU, "AVX2", onednn_bf16=True)  # ATEN_CPU_CAPABILITY=avx2
    assert not native_bf16(BF16_CPU, "AVX512", onednn_bf16=False)  # ONEDNN_MAX_CPU_ISA=AVX2


def test_auto_follows_this_cpu_and_an_explicit_dtype_is_kept():
    """Natively: bf16 exactly when torch's probes report native bf16 here (AVX-512 BF16 or AMX)."""
    capabilities = torch.cpu.get_capabilities()
    native = native_bf16(
        capabilities, torch.backends.cpu.get_cpu_capability(), torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )
    dtype, reason = choose_compute_dtype("auto", CPU)
    assert dtype == (torch.bfloat16 if native else torch.float32) and reason.startswith("auto")
    assert choose_compute_dtype("fp32", CPU) == (torch.float32, "set by quant.compute_dtype")
    assert choose_compute_dtype("auto", torch.device("cuda"))[0] == torch.bfloat16


def test_auto_picks_fp32_under_the_emulated_avx2_class():
    """In a process with torch's kernels capped to AVX2 (how .ci/run emulates an AVX2-only CPU on an
    AVX-512 one; on a real AVX2 CPU the caps change nothing), auto computes in fp32 and says why."""
    env = {**os.environ, **AVX2_ENV}
    proc = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    probe = json.loads(proc.stdout.strip().splitlines()[-1])
    assert probe["aten"] in ("AVX2", "DEFAULT"), probe  # the cap took effect
    assert probe["dtype"] == "torch.float32" and "no native bf16" in probe["reason"], probe
