"""MXFP4 and NVFP4 (harness.quant.mx) against references written here from the specifications, with no
code shared with the implementation: scalar Python arithmetic (fp32 emulated through doubles, which is
exact for one fp32 +, -, *, / each since 53 >= 2 * 24 + 2), hand-worked spec examples, and torchao's
implementation where it is importable."""

from __future__ import annotations

import math
import struct

import pytest
import torch

from harness.quant.mx import (
    decode_mxfp4,
    decode_nvfp4,
    e2m1_values,
    encode_mxfp4,
    encode_nvfp4,
    mxfp4_bits_per_param,
    nvfp4_bits_per_param,
    round_to_e2m1,
)

E2M1_GRID = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def f32(x: float) -> float:
    """Round a double to the nearest fp32 (ties to even), as the hardware does."""
    return struct.unpack("f", struct.pack("f", x))[0]


def ref_e2m1(v: float) -> float:
    """OCP MX 6.3 / 5.3.3: round |v| to the nearest E2M1 value, ties to the even mantissa (even grid
    index), saturating at 6; the sign is kept."""
    magnitude = min(abs(v), 6.0)
    index = min(range(8), key=lambda i: (abs(E2M1_GRID[i] - magnitude), i % 2))
    return math.copysign(E2M1_GRID[index], v)


def ref_mxfp4_block(block: list[float]) -> list[float]:
    """OCP MX v1.0 6.3: X = 2^(floor(log2(max|v|)) - 2), clamped to E8M0's -127..127; P_i = E2M1(v_i / X)."""
    amax = max(abs(v) for v in block)
    exponent = -127 if amax == 0 else max(-127, min(127, math.frexp(amax)[1] - 1 - 2))
    scale = 2.0**exponent
    return [ref_e2m1(v / scale) * scale for v in block]


def ref_e4m3(s: float) -> float:
    """Round a positive normal value in [2^-6, 448] to float8 E4M3 (3 mantissa bits), ties to even."""
    step = 2.0 ** (math.frexp(s)[1] - 1 - 3)
    return round(s / step) * step  # Python's round() is round-half-even


def ref_nvfp4(values: list[float], blocksize: int = 16) -> list[float]:
    """NVFP4 with a per-tensor scale, step by step in fp32 as NVIDIA's recipe (torchao nvfp4_quantize)."""
    tensor_scale = f32(max(abs(v) for v in values) / f32(448.0 * 6.0))
    out = []
    for start in range(0, len(values), blocksize):
        block = values[start : start + blocksize]
        block_scale = f32(f32(max(abs(v) for v in block) / 6.0) / tensor_scale)
        block_scale = ref_e4m3(min(max(block_scale, 2.0**-6), 448.0))
        reciprocal = f32(f32(1.0 / tensor_scale) / block_scale)
        scale = f32(tensor_scale * block_scale)
        out += [f32(ref_e2m1(f32(v * reciprocal)) * scale) for v in block]
    return out


def heavy_tailed(numel: int, seed: int) -> torch.Tensor:
    """Normal weights times log-normal block gains: many scales, exact zeros and a tie or two."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(numel, generator=generator) * torch.exp(2 * torch.randn(numel, generator=generator))
    values[::97] = 0.0
    return values


def test_e2m1_rounding_hand_examples():
    """Every tie of the E2M1 grid goes to the even mantissa; beyond 6 saturates; the sign survives."""
    x = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.9, 1e9, -0.3, -5.1, 0.26, -0.0])
    expected = [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, 6.0, -0.5, -6.0, 0.5, -0.0]
    decoded = e2m1_values()[round_to_e2m1(x).long()]
    assert decoded.tolist() == expected
    assert torch.equal(torch.signbit(decoded), torch.signbit(torch.tensor(expected)))


def test_mxfp4_hand_worked_block():
    """max |v| = 7: floor(log2 7) = 2, so X = 2^0 = 1 and 7 saturates to 6 (the spec's known clip);
    0.3 -> 0.5; a second block with max 1 gets X = 2^-2: 0.3125 = 1.25 X ties to 1.0 X and
    0.4375 = 1.75 X ties to 2 X (both even mantissas)."""
    first = [1.0, 0.3, -7.0] + [0.0] * 29
    second = [1.0, 0.3125, 0.4375] + [0.0] * 29
    tensors = encode_mxfp4(torch.tensor(first + second))
    assert tensors["absmax"].tolist() == [127, 125]
    restored = decode_mxfp4(tensors, torch.Size([64]), torch.float32).tolist()
    assert restored[:3] == [1.0, 0.5, -6.0] and restored[32:35] == [1.0, 0.25, 0.5]


@pytest.mark.parametrize("seed", [0, 1])
def test_mxfp4_equals_scalar_reference(seed: int):
    """Bit-identical dequantized values on 32 x 96 heavy-tailed weights (scales 2^-20 .. 2^10)."""
    weight = heavy_tailed(32 * 96, seed)
    restored = decode_mxfp4(encode_mxfp4(weight), weight.shape, torch.float32)
    values = weight.tolist()
    expected = [v for start in range(0, len(values), 32) for v in ref_mxfp4_block(values[start : start + 32])]
    assert restored.tolist() == expected


@pytest.mark.parametrize("seed", [0, 1])
def test_nvfp4_equals_scalar_reference(seed: int):
    """Bit-identical dequantized values on 2048 heavy-tailed values, two blocks shrunk so far that their
    scale relative to the tensor's falls below E4M3's smallest normal 2^-6 (clamped there)."""
    weight = heavy_tailed(2048, seed)
    weight[16:32] *= 1e-6
    weight[32:48] *= 1e-5
    restored = decode_nvfp4(encode_nvfp4(weight), weight.shape, torch.float32)
    assert restored.tolist() == ref_nvfp4(weight.tolist())


def test_nvfp4_hand_worked_block():
    """A tensor whose max is 448 * 6 has tensor scale 1; a block with max 2688 has E4M3 scale 448 and
    stores 2688 = 6 * 448 and 1344 = 3 * 448 exactly; 100 / 448 = 0.223 rounds to 0 (below 0.25)."""
    weight = torch.tensor([2688.0, 1344.0, 100.0] + [0.0] * 13)
    tensors = encode_nvfp4(weight)
    assert tensors["absmax2"].item() == 1.0
    assert tensors["absmax"].view(torch.float8_e4m3fn).float().tolist() == [448.0]
    assert decode_nvfp4(tensors, weight.shape, torch.float32)[:3].tolist() == [2688.0, 1344.0, 0.0]


def test_zero_tensor_round_trips():
    for encode, decode in ((encode_mxfp4, decode_mxfp4), (encode_nvfp4, decode_nvfp4)):
        zeros = torch.zeros(64)
        assert torch.equal(decode(encode(zeros), zeros.shape, torch.float32), zeros)


def test_bits_per_param_formulas():
    """Stored bytes: 4.25 bits for MXFP4 and 4.5 + 32 / numel for NVFP4 when blocks divide numel."""
    weight = torch.randn(96, 64)
    mx_bytes = sum(t.nbytes for t in encode_mxfp4(weight).values())
    nv_bytes = sum(t.nbytes for t in encode_nvfp4(weight).values())
    assert mx_bytes * 8 / weight.numel() == mxfp4_bits_per_param() == 4.25
    assert nv_bytes * 8 / weight.numel() == nvfp4_bits_per_param(weight.numel()) == 4.5 + 32 / weight.numel()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_in_compute_dtype_rounds_once(dtype):
    """Decoding into bf16 equals decoding into fp32 then one cast (the product is formed in fp32)."""
    weight = heavy_tailed(4096, 3)
    for encode, decode in ((encode_mxfp4, decode_mxfp4), (encode_nvfp4, decode_nvfp4)):
        tensors = encode(weight)
        assert torch.equal(
            decode(tensors, weight.shape, dtype), decode(tensors, weight.shape, torch.float32).to(dtype)
        )


def test_agrees_with_torchao():
    """torchao's MX (to_mx, FLOOR scale) and NVFP4 (nvfp4_quantize with a per-tensor scale): the same
    scales and element codes. Skipped where torchao is not installed (it is not a dependency)."""
    mx = pytest.importorskip("torchao.prototype.mx_formats.mx_tensor")
    nv = pytest.importorskip("torchao.prototype.mx_formats.nvfp4_tensor")
    kernels = pytest.importorskip("torchao.prototype.mx_formats.kernels")
    weight = heavy_tailed(64 * 128, 4).view(64, 128)
    scale, data = mx.to_mx(weight, torch.float4_e2m1fn_x2, 32)
    ours = encode_mxfp4(weight)
    assert torch.equal(scale.view(torch.uint8).view(-1), ours["absmax"])
    theirs = kernels.f4_unpacked_to_f32(kernels.unpack_uint4(data.view(torch.uint8))).view(-1)
    assert torch.equal(theirs, e2m1_values()[_unpack(ours["codes"]).long()])
    tensor_scale = nv.per_tensor_amax_to_scale(weight.abs().amax())
    block_scale, data = nv.nvfp4_quantize(weight, 16, tensor_scale)
    ours = encode_nvfp4(weight)
    assert torch.equal(block_scale.view(torch.uint8).view(-1), ours["absmax"])
    theirs = kernels.f4_unpacked_to_f32(kernels.unpack_uint4(data.view(torch.uint8))).view(-1)
    assert torch.equal(theirs, e2m1_values()[_unpack(ours["codes"]).long()])


def _unpack(packed: torch.Tensor) -> torch.Tensor:
    return torch.stack([packed >> 4, packed & 15], dim=-1).view(-1)
