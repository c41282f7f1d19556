"""The compiled CPU decode (harness.quant.native) gives the torch path's values bit for bit."""

from __future__ import annotations

import pytest
import torch

import harness.quant.codebook as codebook
from harness.quant.codebook import dequantize_codebook_blockwise, fp4_e2m1_levels, normal_float_levels
from harness.quant.native import _library, decode_pairs


def torch_path(monkeypatch, *args) -> torch.Tensor:
    monkeypatch.setattr(codebook, "decode_pairs", lambda *a: None)  # the fallback callers keep
    return dequantize_codebook_blockwise(*args)


@pytest.mark.skipif(_library() is None, reason="no C compiler: the torch path is the only one")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("levels", [normal_float_levels(), fp4_e2m1_levels()], ids=["16 levels", "15 levels"])
@pytest.mark.parametrize("blocks, half", [(1, 8), (5, 24), (7, 32), (4099, 32), (3, 2048)])
def test_native_decode_equals_torch(monkeypatch, dtype, levels, blocks: int, half: int):
    """Random bytes, scales of both signs, zero and large ones, block counts that split unevenly over
    threads (4099 blocks of 64 values runs threaded): identical values, numel cut included."""
    generator = torch.Generator().manual_seed(blocks)
    packed = torch.randint(0, 256, (blocks, half), dtype=torch.uint8, generator=generator)
    scale = torch.randn(blocks, generator=generator) * torch.exp(4 * torch.randn(blocks, generator=generator))
    scale[::5] = 0.0
    numel = blocks * 2 * half - 3
    ours = dequantize_codebook_blockwise(packed, scale, levels, numel, dtype)
    assert ours.dtype == dtype and torch.equal(
        ours, torch_path(monkeypatch, packed, scale, levels, numel, dtype)
    )


def test_other_dtypes_and_devices_fall_back():
    packed, scale = torch.zeros(2, 4, dtype=torch.uint8), torch.ones(2)
    assert decode_pairs(packed, scale, normal_float_levels(), torch.float64) is None
