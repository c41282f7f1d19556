"""The 16- and 32-bit references: the weight cast to bf16, fp16 or fp32 and computed as a plain linear layer.

They are what the 4-bit types are measured against (the QLoRA paper's 16-bit baselines), so they take no
block settings and have no kernels of their own: any torch device.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.quant.spec import StorageArgs, StorageSpec

FLOAT_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class FloatStorage(StorageSpec):
    """``bf16`` / ``fp16`` / ``fp32``: the weight cast to the dtype; bf16 and fp16 are 16-bit references."""

    blockwise = False

    def __init__(self, name: str):
        self.name, self.dtype = name, FLOAT_DTYPES[name]
        self.sixteen_bit = self.dtype.itemsize == 2

    def encode(self, weight: torch.Tensor, args: StorageArgs) -> dict[str, torch.Tensor]:
        """A copy even when the dtype matches: a stored weight owns its memory, whatever its type."""
        return {"codes": weight.to(self.dtype, copy=True)}

    def decode(
        self, tensors: dict[str, torch.Tensor], shape: torch.Size, args: StorageArgs, dtype: torch.dtype
    ) -> torch.Tensor:
        return tensors["codes"].to(dtype)

    def bits_per_param(self, args: StorageArgs, shape: torch.Size) -> float:
        return 8.0 * self.dtype.itemsize

    def frozen_layer(
        self, linear: nn.Linear, args: StorageArgs, compute_dtype: torch.dtype | None
    ) -> nn.Module:
        """A frozen nn.Linear in the storage dtype when that is also the compute dtype; otherwise a
        QuantLinear over the cast weight, since an nn.Linear can only compute in its own dtype."""
        if compute_dtype not in (None, self.dtype):
            return super().frozen_layer(linear, args, compute_dtype)
        # skip_init: nn.Linear's random initialisation (kaiming_uniform_ over the whole weight, ~0.8 s for
        # SmolLM2-135M's 210 layers on a 2-core CPU) would be overwritten by the stored weight at once
        reference = nn.utils.skip_init(
            nn.Linear,
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            device=linear.weight.device,
            dtype=self.dtype,
        )
        reference.load_state_dict(linear.state_dict())
        return reference.requires_grad_(False)


SPECS = tuple(FloatStorage(name) for name in FLOAT_DTYPES)
