"""Frozen layers over stored weights: QuantLinear, the float and LLM.int8 references, storage_bytes."""

from __future__ import annotations

import bitsandbytes as bnb
import pytest
import torch
from torch import nn

from harness.quant import FOUR_BIT_TYPES, STORAGE_SPECS, QuantLinear, frozen_linear, quantize, storage_bytes
from harness.quant.codebook import normal_float_levels


def make_linear(in_features: int = 100, out_features: int = 40, seed: int = 0) -> nn.Linear:
    """in_features * out_features = 4000: not a multiple of any block size, so padding is exercised."""
    torch.manual_seed(seed)
    return nn.Linear(in_features, out_features)


@pytest.mark.parametrize("storage", FOUR_BIT_TYPES)
@pytest.mark.parametrize("double_quant", [False, True])
def test_forward_and_input_gradient_match_dequantized_weight(storage: str, double_quant: bool):
    """forward = x @ W.T + b and backward = grad @ W for W = dequantize(); nothing in the layer gets a
    gradient; extra positional/keyword arguments (as wrappers pass them) are ignored."""
    linear = make_linear()
    codebook = normal_float_levels(4).tolist() if STORAGE_SPECS[storage].takes_codebook else None
    layer = frozen_linear(linear, storage, 64, double_quant, torch.float32, codebook)
    weight = layer.qweight.dequantize(torch.float32)
    x = torch.randn(2, 5, 100, requires_grad=True)
    y = layer(x, "ignored", scale=2.0)
    torch.testing.assert_close(y, x @ weight.T + linear.bias)
    grad = torch.randn_like(y)
    y.backward(grad)
    torch.testing.assert_close(x.grad, grad @ weight)
    assert not any(p.requires_grad for p in layer.parameters())
    assert all(b.grad is None and not b.requires_grad for b in layer.buffers())
    assert layer.bias.grad is None


def test_unfrozen_bias_gets_its_gradient():
    """If a caller unfreezes the bias (peft bias="all"), it gets grad summed over all leading dims."""
    layer = frozen_linear(make_linear(), "int4", 64, True, torch.float32)
    layer.bias.requires_grad_(True)
    y = layer(torch.randn(2, 5, 100))
    grad = torch.randn_like(y)
    y.backward(grad)
    torch.testing.assert_close(layer.bias.grad, grad.sum(dim=(0, 1)))


def test_packed_weight_is_buffers_not_parameters():
    """The only parameter is the frozen bias; codes and constants are buffers, together qweight.nbytes."""
    layer = frozen_linear(make_linear(), "nf4", 64, True, torch.float32)
    assert [name for name, _ in layer.named_parameters()] == ["bias"]
    buffers = dict(layer.named_buffers())
    assert set(buffers) == {f"packed_{role}" for role in layer.qweight.tensors}
    assert sum(b.nbytes for b in buffers.values()) == layer.qweight.nbytes == storage_bytes(layer)[0]
    assert (layer.in_features, layer.out_features) == (100, 40)


def test_autograd_saves_no_dense_weight():
    """Like MatMul4Bit, backward dequantizes again: no tensor of the weight's size is saved for it."""
    layer = frozen_linear(make_linear(256, 128), "int4", 64, True, torch.float32)
    saved: list[torch.Size] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor.shape)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        layer(torch.randn(3, 256, requires_grad=True)).sum().backward()
    assert all(shape.numel() < 128 * 256 for shape in saved)


def test_compute_dtype_and_model_dtype_cast():
    """Output is in compute dtype whatever the input's; model.to(bf16) leaves the fp32 constants exact."""
    linear = make_linear()
    layer = frozen_linear(linear, "int4", 64, False, torch.bfloat16)
    assert layer(torch.randn(3, 100)).dtype == torch.bfloat16 and layer.bias.dtype == torch.bfloat16
    layer = frozen_linear(linear, "nf4", 64, False, torch.float32)
    before = layer.qweight.dequantize()
    x = torch.randn(3, 100)
    expected = layer(x)
    layer.to(torch.bfloat16)
    assert torch.equal(layer.qweight.dequantize(), before)
    assert layer(x).dtype == torch.float32
    torch.testing.assert_close(layer(x), expected, rtol=1e-2, atol=1e-2)  # only the bias was rounded


def test_state_dict_round_trip():
    """A layer built for the same layout loads another's state_dict and then computes the same output."""
    source = frozen_linear(make_linear(seed=0), "fp4", 128, True, torch.float32)
    target = frozen_linear(make_linear(seed=1), "fp4", 128, True, torch.float32)
    target.load_state_dict(source.state_dict())
    x = torch.randn(4, 100)
    assert torch.equal(target(x), source(x))


@pytest.mark.parametrize(
    ("storage", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32)]
)
def test_float_references(storage: str, dtype: torch.dtype):
    """bf16/fp16/fp32 computed in their own dtype: a frozen nn.Linear cast to it, numel * width bytes.
    Computed in another dtype: a QuantLinear storing the cast weight (same bytes), output in compute dtype."""
    linear = make_linear()
    layer = frozen_linear(linear, storage, compute_dtype=dtype)
    assert type(layer) is nn.Linear and layer.weight.dtype == dtype
    assert not any(p.requires_grad for p in layer.parameters())
    assert torch.equal(layer.weight, linear.weight.detach().to(dtype))
    assert torch.equal(layer.bias, linear.bias.detach().to(dtype))  # built uninitialised, then loaded
    assert storage_bytes(layer) == (4000 * dtype.itemsize, 4000)
    other = torch.float32 if dtype != torch.float32 else torch.bfloat16
    mixed = frozen_linear(linear, storage, compute_dtype=other)
    assert isinstance(mixed, QuantLinear) and storage_bytes(mixed) == storage_bytes(layer)
    x = torch.randn(3, 100)
    # the same fused op on the same inputs: equal (x @ W.T + b in two steps rounds twice in bf16, so a value
    # near zero after cancellation can differ by more than bf16's relative tolerance)
    expected = torch.nn.functional.linear(x.to(other), layer.weight.to(other), linear.bias.to(other))
    assert torch.equal(mixed(x), expected)


def test_int8_works_on_cpu():
    """bitsandbytes 0.50 runs LLM.int8 on CPU: forward close to the fp32 layer, input gradient exactly
    grad @ dequantize(int8 weight), bytes = int8 codes + fp32 row scales."""
    linear = make_linear()
    layer = frozen_linear(linear, "int8", compute_dtype=torch.float32)
    assert isinstance(layer, bnb.nn.Linear8bitLt) and layer.weight.dtype == torch.int8
    assert storage_bytes(layer) == (4000 + 40 * 4, 4000)
    x = torch.randn(6, 100, requires_grad=True)
    y = layer(x)
    reference = linear(x)
    assert (y - reference).abs().max() < 0.02 * reference.abs().max()
    grad = torch.randn_like(y)
    y.backward(grad)
    torch.testing.assert_close(x.grad, grad @ quantize(linear.weight, "int8").dequantize())
    assert storage_bytes(layer) == (4000 + 40 * 4, 4000)  # scales moved to layer.state: still counted


def test_frozen_linear_four_bit_is_quant_linear():
    """4-bit storage gives a QuantLinear with the requested layout; compute dtype defaults to the weight's."""
    layer = frozen_linear(make_linear(), "int4", 128, False)
    assert isinstance(layer, QuantLinear) and layer.compute_dtype == torch.float32
    assert (layer.qweight.storage, layer.qweight.blocksize, layer.qweight.double_quant) == (
        "int4",
        128,
        False,
    )
    assert storage_bytes(layer) == (layer.qweight.nbytes, 4000)


def test_bad_arguments():
    """Bad storage type or block size fail before anything is built; other modules have no storage size."""
    with pytest.raises(ValueError, match="'int3'"):
        frozen_linear(make_linear(), "int3")
    with pytest.raises(ValueError, match="48"):
        frozen_linear(make_linear(), "nf4", 48)
    with pytest.raises(ValueError, match="2-D"):
        QuantLinear(quantize(torch.randn(64)), None, torch.float32)
    with pytest.raises(TypeError, match="Conv1d"):
        storage_bytes(nn.Conv1d(2, 2, 1))


@pytest.mark.parametrize("storage", ["nf4", "fp4"])
@pytest.mark.parametrize(
    ("shape", "blocksize"),
    [((96, 128), 64), ((48, 576), 64), ((40, 100), 64), ((8, 512), 1024), ((7, 63), 64)],
    ids=["rows-of-blocks", "smollm2-width", "rows-cut-blocks", "block-wider-than-row", "odd-width"],
)
def test_bnb_decode_in_weight_shape_equals_flat_decode(storage: str, shape: tuple, blocksize: int):
    """NF4/FP4 weights whose rows hold whole blocks are decoded in their shape (the CPU kernel's fast
    case), the others flat; every value equals the flat decode of the same codes."""
    import bitsandbytes.functional as bnbf

    from harness.quant.bnb4 import quant_state

    torch.manual_seed(0)
    qweight = quantize(torch.randn(shape), storage, blocksize, True)
    numel = qweight.numel
    flat = quant_state(qweight.tensors, torch.Size([numel + numel % 2]), blocksize, torch.bfloat16, storage)
    expected = bnbf.dequantize_4bit(qweight.tensors["codes"], flat).view(-1)[:numel].view(shape)
    assert torch.equal(qweight.dequantize(torch.bfloat16), expected)
