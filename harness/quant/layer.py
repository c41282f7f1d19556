"""QuantLinear: the frozen linear layer over a stored weight, dequantized on the fly.

QuantLinear keeps only the packed weight in memory and, like bitsandbytes' MatMul4Bit, saves only that
for backward, so neither the module nor the autograd graph holds a full-precision copy of W.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from harness.quant.weight import QuantizedWeight

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
        # an owned copy: a bias viewing an eagerly loaded checkpoint's memory map (same dtype: no cast)
        # would keep the whole file resident, every replaced weight included
        self.bias = (
            None
            if bias is None
            else nn.Parameter(bias.detach().to(compute_dtype, copy=True), requires_grad=False)
        )
        self.dense_weight: torch.Tensor | None = None

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
