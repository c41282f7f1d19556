"""Storage types the harness can put frozen base weights in, and the checks every entry point shares.

A bad sweep value should fail before a model is loaded, with a message that says what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

STORAGE_TYPES: tuple[str, ...] = ("nf4", "fp4", "int4", "int8", "bf16", "fp16", "fp32")
FOUR_BIT_TYPES: tuple[str, ...] = ("nf4", "fp4", "int4")
# What bitsandbytes 0.50 accepts for 4-bit (quantize_4bit rejects 16 and 8192 on CPU and CUDA alike);
# int4 uses the same set so that every 4-bit type sweeps over identical block sizes.
ALLOWED_BLOCKSIZES: tuple[int, ...] = (32, 64, 128, 256, 512, 1024, 2048, 4096)
# Second-level block size of double quantization (QLoRA paper; bitsandbytes' nested statistics).
ABSMAX_BLOCKSIZE = 256
FLOAT_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
WEIGHT_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class StorageSpec:
    """What a storage type needs: whether block size / double quantization apply, and where it runs."""

    name: str
    blockwise: bool
    devices: tuple[str, ...] | None  # device types it is supported on; None: any torch device


_BNB_DEVICES = ("cpu", "cuda")
STORAGE_SPECS: dict[str, StorageSpec] = {
    "nf4": StorageSpec("nf4", blockwise=True, devices=_BNB_DEVICES),
    "fp4": StorageSpec("fp4", blockwise=True, devices=_BNB_DEVICES),
    "int4": StorageSpec("int4", blockwise=True, devices=None),
    "int8": StorageSpec("int8", blockwise=False, devices=_BNB_DEVICES),
    "bf16": StorageSpec("bf16", blockwise=False, devices=None),
    "fp16": StorageSpec("fp16", blockwise=False, devices=None),
    "fp32": StorageSpec("fp32", blockwise=False, devices=None),
}


def _listing(values: tuple[object, ...]) -> str:
    return ", ".join(str(v) for v in values)


def validate_quant_args(
    storage: str, blocksize: int, double_quant: bool, device: torch.device | str | None = None
) -> StorageSpec:
    """Reject an unknown storage type, a non-bool double_quant, or a block size bitsandbytes would refuse.

    Block size and double quantization only apply to the 4-bit types; the others ignore them, so a sweep
    can keep one value for all. A device the type has no kernels for raises NotImplementedError.
    """
    if storage not in STORAGE_SPECS:
        raise ValueError(f"unknown storage type {storage!r}; allowed: {_listing(STORAGE_TYPES)}")
    if not isinstance(double_quant, bool):
        raise ValueError(f"double_quant must be a bool, got {double_quant!r}; allowed: True, False")
    spec = STORAGE_SPECS[storage]
    integer = isinstance(blocksize, int) and not isinstance(blocksize, bool)
    if spec.blockwise and not (integer and blocksize in ALLOWED_BLOCKSIZES):
        raise ValueError(
            f"block size {blocksize!r} is not allowed for storage {storage!r}; "
            f"allowed: {_listing(ALLOWED_BLOCKSIZES)}"
        )
    if device is not None and spec.devices is not None and torch.device(device).type not in spec.devices:
        raise NotImplementedError(
            f"storage {storage!r} runs on bitsandbytes kernels, which this harness supports on "
            f"{_listing(spec.devices)}; this device is {torch.device(device).type}"
        )
    return spec


def validate_weight(weight: torch.Tensor) -> None:
    """Only non-empty float weights can be quantized (bitsandbytes takes fp32/fp16/bf16 only)."""
    if weight.dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight dtype {weight.dtype} is not supported; allowed: {_listing(WEIGHT_DTYPES)}")
    if weight.dim() == 0 or weight.numel() == 0:
        raise ValueError(f"weight of shape {tuple(weight.shape)} has nothing to quantize; need numel >= 1")


def theoretical_bits_per_param(blocksize: int, double_quant: bool) -> float:
    """The QLoRA paper's accounting for a 4-bit type: code bits plus constant bits per parameter.

    Without double quantization one fp32 constant per block; with it one 8-bit constant per block plus one
    fp32 constant per 256 of those. The single offset and the codebooks are left out (they do not scale).
    """
    if double_quant:
        return 4 + 8 / blocksize + 32 / (blocksize * ABSMAX_BLOCKSIZE)
    return 4 + 32 / blocksize
