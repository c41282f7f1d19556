"""int8: bitsandbytes' LLM.int8() storage (row-wise absmax int8 codes + one fp32 scale per row).

bitsandbytes 0.50 runs it on CPU (forward and input gradient; checked by tests/test_quant_layer.py) as
well as on CUDA, its primary target. bitsandbytes is imported where it is first called (see
``harness.quant.bnb4``).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import torch
from torch import nn

from harness.quant.spec import StorageArgs, StorageSpec

if TYPE_CHECKING:
    import bitsandbytes as bnb

OUTLIER_THRESHOLD = 6.0  # LLM.int8() paper: activation columns above this stay in 16 bit


def encode_int8(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """codes: int8 (rows, last dim); absmax: fp32 per row. Quantized from fp16, as Linear8bitLt does."""
    import bitsandbytes.functional as bnbf

    rows = weight.reshape(-1, weight.shape[-1]).to(torch.float16)
    codes, absmax, _ = bnbf.int8_vectorwise_quant(rows)
    return {"codes": codes, "absmax": absmax}


def decode_int8(tensors: dict[str, torch.Tensor], shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """Dequantized weight in its original shape."""
    import bitsandbytes.functional as bnbf

    return bnbf.int8_vectorwise_dequant(tensors["codes"], tensors["absmax"]).to(dtype).view(shape)


def linear8bit(linear: nn.Linear, compute_dtype: torch.dtype) -> bnb.nn.Linear8bitLt:
    """Frozen LLM.int8() layer on the linear's device; bnb computes in the input's dtype (bias follows it)."""
    import bitsandbytes as bnb

    layer = bnb.nn.Linear8bitLt(
        linear.in_features,
        linear.out_features,
        bias=linear.bias is not None,
        has_fp16_weights=False,
        threshold=OUTLIER_THRESHOLD,
    )
    layer.load_state_dict(linear.state_dict())
    # Int8Params quantizes when moved off the CPU copy it was loaded into (a move to "cpu" counts).
    layer = layer.to(linear.weight.device)
    if layer.bias is not None:
        layer.bias.data = layer.bias.data.to(compute_dtype)
        layer.bias.requires_grad_(False)
    return layer


def is_linear8bit(module: nn.Module) -> bool:
    """Whether ``module`` is bitsandbytes' Linear8bitLt, without importing bitsandbytes: no module can be one
    of its layers before it is imported."""
    bnb = sys.modules.get("bitsandbytes")
    return bnb is not None and isinstance(module, bnb.nn.Linear8bitLt)


def _row_scales(layer: bnb.nn.Linear8bitLt) -> torch.Tensor:
    """The fp32 row scales, which bnb moves from the weight to the layer state on first use."""
    return layer.weight.SCB if layer.weight.SCB is not None else layer.state.SCB


def linear8bit_bytes(layer: bnb.nn.Linear8bitLt) -> int:
    """Weight bytes incl. the row scales."""
    return layer.weight.nbytes + _row_scales(layer).nbytes


def linear8bit_weight(layer: bnb.nn.Linear8bitLt) -> torch.Tensor:
    """The weight the layer stores (int8 codes times row scales), dequantized to fp32."""
    import bitsandbytes.functional as bnbf

    return bnbf.int8_vectorwise_dequant(layer.weight.data, _row_scales(layer)).float()


class Int8Storage(StorageSpec):
    """``int8``: LLM.int8() through bitsandbytes' Linear8bitLt (no blocks; one scale per row)."""

    name = "int8"
    blockwise = False
    devices = ("cpu", "cuda")

    def encode(self, weight: torch.Tensor, args: StorageArgs) -> dict[str, torch.Tensor]:
        return encode_int8(weight)

    def decode(
        self, tensors: dict[str, torch.Tensor], shape: torch.Size, args: StorageArgs, dtype: torch.dtype
    ) -> torch.Tensor:
        return decode_int8(tensors, shape, dtype)

    def bits_per_param(self, args: StorageArgs, shape: torch.Size) -> float:
        """8-bit codes plus one fp32 scale per row."""
        return 8 + 32 / shape[-1]

    def frozen_layer(
        self, linear: nn.Linear, args: StorageArgs, compute_dtype: torch.dtype | None
    ) -> nn.Module:
        return linear8bit(linear, compute_dtype or linear.weight.dtype)


SPECS = (Int8Storage(),)
