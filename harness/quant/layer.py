"""Frozen linear layers over stored weights: QuantLinear (dequantize on the fly) and the references.

QuantLinear keeps only the packed weight in memory and, like bitsandbytes' MatMul4Bit, saves only that
for backward, so neither the module nor the autograd graph holds a full-precision copy of W.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import bitsandbytes as bnb
import torch
import torch.nn.functional as F
from torch import nn

from harness.quant.int8 import linear8bit, linear8bit_bytes, linear8bit_weight
from harness.quant.registry import FLOAT_DTYPES, validate_quant_args
from harness.quant.weight import QuantizedWeight, quantize

# Float tensors are held as integers of the same width: module.to(dtype) / .half() cast only float
# buffers, and rounding the fp32 constants to 16 bits would silently change the stored weight.
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _as_bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.view(_BITS[tensor.element_size()]) if tensor.is_floating_point() else tensor


class DequantMatmul(torch.autograd.Function):
    """y = x @ W.T + b with W dequantized on the fly, again in backward instead of being saved."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, qweight: QuantizedWeight, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.qweight = qweight
        return F.linear(x, qweight.dequantize(x.dtype), bias)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, None, torch.Tensor | None]:
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_output @ ctx.qweight.dequantize(grad_output.dtype)
        if ctx.needs_input_grad[2]:
            grad_bias = grad_output.reshape(-1, grad_output.shape[-1]).sum(0)
        return grad_x, None, grad_bias


class QuantLinear(nn.Module):
    """Frozen linear layer over a 2-D QuantizedWeight (any storage type), computing in `compute_dtype`.

    The packed tensors are buffers named ``packed_<role>`` (saved in state_dict, moved by .to(device), no
    gradient); `qweight` reassembles them. The input is cast to `compute_dtype` and so is the output.
    `compute_dtype` is fixed at construction: a later model.to(dtype) changes neither it nor the packed
    weight (only the bias, which forward casts back). `dense_weight`, when set (only evaluation does, for
    its duration: :func:`harness.evaluate.dense.dense_weights`), is that weight already dequantized in
    `compute_dtype`, used instead of decoding it again on every forward.
    """

    def __init__(self, qweight: QuantizedWeight, bias: torch.Tensor | None, compute_dtype: torch.dtype):
        super().__init__()
        if len(qweight.shape) != 2:
            raise ValueError(f"QuantLinear needs a 2-D weight, got shape {tuple(qweight.shape)}")
        self.out_features, self.in_features = qweight.shape
        self.compute_dtype = compute_dtype
        self._layout = replace(qweight, tensors={})
        self._packed_dtypes = {role: t.dtype for role, t in qweight.tensors.items()}
        for role, tensor in qweight.tensors.items():
            self.register_buffer(f"packed_{role}", _as_bits(tensor))
        self.bias = (
            None if bias is None else nn.Parameter(bias.detach().to(compute_dtype), requires_grad=False)
        )
        self.dense_weight: torch.Tensor | None = None

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        storage: str = "nf4",
        blocksize: int = 64,
        double_quant: bool = True,
        compute_dtype: torch.dtype | None = None,
        codebook: Sequence[float] | None = None,
    ) -> QuantLinear:
        """Quantize `linear`'s weight on its device; compute dtype defaults to the weight's dtype."""
        qweight = quantize(linear.weight, storage, blocksize, double_quant, codebook)
        return cls(qweight, linear.bias, compute_dtype or linear.weight.dtype)

    @property
    def qweight(self) -> QuantizedWeight:
        tensors = {
            role: getattr(self, f"packed_{role}").view(dtype) for role, dtype in self._packed_dtypes.items()
        }
        return replace(self._layout, tensors=tensors)

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        """Extra arguments are accepted and ignored, so wrappers (peft LoRA) may pass their own through."""
        bias = None if self.bias is None else self.bias.to(self.compute_dtype)
        if self.dense_weight is not None:
            return F.linear(x.to(self.compute_dtype), self.dense_weight, bias)
        return DequantMatmul.apply(x.to(self.compute_dtype), self.qweight, bias)

    def extra_repr(self) -> str:
        layout = self._layout
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"storage={layout.storage}, blocksize={layout.blocksize}, double_quant={layout.double_quant}, "
            f"compute_dtype={self.compute_dtype}"
        )


def _float_reference(linear: nn.Linear, storage: str, compute_dtype: torch.dtype | None) -> nn.Module:
    """A frozen nn.Linear cast to the storage dtype when that is also the compute dtype; otherwise a
    QuantLinear over the cast weight, since an nn.Linear can only compute in its own dtype."""
    dtype = FLOAT_DTYPES[storage]
    if compute_dtype not in (None, dtype):
        return QuantLinear(quantize(linear.weight, storage), linear.bias, compute_dtype)
    reference = nn.Linear(
        linear.in_features,
        linear.out_features,
        bias=linear.bias is not None,
        device=linear.weight.device,
        dtype=dtype,
    )
    reference.load_state_dict(linear.state_dict())
    return reference.requires_grad_(False)


def frozen_linear(
    linear: nn.Linear,
    storage: str = "nf4",
    blocksize: int = 64,
    double_quant: bool = True,
    compute_dtype: torch.dtype | None = None,
    codebook: Sequence[float] | None = None,
) -> nn.Module:
    """The frozen replacement for `linear` in `storage`, on the linear's device: QuantLinear for the 4-bit
    types, bitsandbytes' Linear8bitLt for int8, and for the bf16/fp16/fp32 references a frozen nn.Linear
    in that dtype (a QuantLinear over the cast weight when the compute dtype differs).

    compute_dtype None means the weight's dtype (the storage dtype for the float references); `codebook`
    holds the 16 levels of storage ``codebook`` and is ignored by the other types.
    """
    validate_quant_args(storage, blocksize, double_quant, linear.weight.device, codebook)
    if storage in FLOAT_DTYPES:
        return _float_reference(linear, storage, compute_dtype)
    if storage == "int8":
        return linear8bit(linear, compute_dtype or linear.weight.dtype)
    return QuantLinear.from_linear(linear, storage, blocksize, double_quant, compute_dtype, codebook)


def stored_weight(module: nn.Module) -> torch.Tensor:
    """The weight a frozen layer computes with, in fp32: a transient copy of this one layer."""
    if isinstance(module, QuantLinear):
        return module.qweight.dequantize(torch.float32)
    if isinstance(module, bnb.nn.Linear8bitLt):
        return linear8bit_weight(module)
    if isinstance(module, nn.Linear):
        return module.weight.float()
    raise TypeError(
        f"stored_weight takes QuantLinear, Linear8bitLt or nn.Linear, not {type(module).__name__}"
    )


def reconstruction_error(weight: torch.Tensor, module: nn.Module) -> tuple[float, float]:
    """(sum of squared errors, sum of squares) of a frozen layer's stored weight against `weight`, the
    weight it was built from, both accumulated in fp64 so that sums over a model are exact enough to gate.
    """
    reference = weight.detach().float()
    error = stored_weight(module) - reference
    return error.square().sum(dtype=torch.float64).item(), reference.square().sum(dtype=torch.float64).item()


def _relative_rms(squared_error: float, squares: float) -> float:
    if squares > 0:
        return math.sqrt(squared_error / squares)
    return 0.0 if squared_error == 0 else math.inf


def weight_error_summary(errors: dict[str, tuple[float, float]]) -> dict[str, float | str | None]:
    """||W - deq(Q(W))|| / ||W|| over all quantized parameters together (``rel_rms``: summed squared errors
    over summed squares, so large layers weigh more) and for the worst layer, from each layer's
    (sum of squared errors, sum of squares) in module order. No layer is worst when none has an error."""
    per_layer = {name: _relative_rms(*sums) for name, sums in errors.items()}
    worst = max(per_layer, key=per_layer.__getitem__, default=None)
    max_error = per_layer[worst] if worst is not None else 0.0
    return {
        "rel_rms": _relative_rms(sum(e for e, _ in errors.values()), sum(s for _, s in errors.values())),
        "max_layer_rel_rms": max_error,
        "worst_layer": worst if max_error > 0 else None,
    }


def storage_bytes(module: nn.Module) -> tuple[int, int]:
    """(bytes, parameters) of a frozen layer's weight storage, measured from its tensors; bias excluded."""
    if isinstance(module, QuantLinear):
        return module.qweight.nbytes, module.qweight.numel
    if isinstance(module, bnb.nn.Linear8bitLt):
        return linear8bit_bytes(module), module.weight.numel()
    if isinstance(module, nn.Linear):
        return module.weight.nbytes, module.weight.numel()
    raise TypeError(
        f"storage_bytes takes QuantLinear, Linear8bitLt or nn.Linear, not {type(module).__name__}"
    )
