"""Storage types the harness can put frozen base weights in, and the checks every entry point shares.

A bad sweep value should fail before a model is loaded, with a message that says what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

# Codebook types (harness.quant.codebook): built-in level sets, and the user-defined one whose 16 levels
# come from quant.codebook.
BUILTIN_CODEBOOKS: tuple[str, ...] = ("nf4_paper", "fp4_e2m1", "fp4_e3m0")
USER_CODEBOOK = "codebook"
CODEBOOK_TYPES: tuple[str, ...] = (*BUILTIN_CODEBOOKS, USER_CODEBOOK)
FOUR_BIT_TYPES: tuple[str, ...] = ("nf4", "fp4", "int4", *CODEBOOK_TYPES)
STORAGE_TYPES: tuple[str, ...] = (*FOUR_BIT_TYPES, "int8", "bf16", "fp16", "fp32")
CODEBOOK_SIZE = 16  # levels of a user-defined codebook: every pattern of a 4-bit code
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
    **{name: StorageSpec(name, blockwise=True, devices=None) for name in CODEBOOK_TYPES},
    "int8": StorageSpec("int8", blockwise=False, devices=_BNB_DEVICES),
    "bf16": StorageSpec("bf16", blockwise=False, devices=None),
    "fp16": StorageSpec("fp16", blockwise=False, devices=None),
    "fp32": StorageSpec("fp32", blockwise=False, devices=None),
}


def _listing(values: tuple[object, ...]) -> str:
    return ", ".join(str(v) for v in values)


def check_storage_device(storage: str, device: torch.device | str) -> None:
    """A known storage type on a device it has no kernels for raises NotImplementedError."""
    devices = STORAGE_SPECS[storage].devices
    if devices is not None and torch.device(device).type not in devices:
        raise NotImplementedError(
            f"storage {storage!r} runs on bitsandbytes kernels, which this harness supports on "
            f"{_listing(devices)}; this device is {torch.device(device).type}"
        )


def validate_quant_args(
    storage: str,
    blocksize: int,
    double_quant: bool,
    device: torch.device | str | None = None,
    codebook: Sequence[float] | None = None,
) -> StorageSpec:
    """Reject an unknown storage type, a non-bool double_quant, or a block size bitsandbytes would refuse,
    and for storage ``codebook`` a missing or malformed codebook (see validate_codebook).

    Block size and double quantization only apply to the 4-bit types, and the codebook only to
    ``codebook``; the others ignore them, so a sweep can keep one value for all. A device the type has no
    kernels for raises NotImplementedError.
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
    if device is not None:
        check_storage_device(storage, device)
    if storage == USER_CODEBOOK:
        validate_codebook(codebook)
    return spec


def validate_codebook(values: Sequence[float] | None) -> tuple[float, ...]:
    """A user-defined 4-bit codebook as floats: 16 finite, strictly increasing values in [-1, 1] with 0
    among them (zero must be exact: padding and pruned weights are zeros). Raises ValueError naming what
    is wrong."""
    allowed = f"{CODEBOOK_SIZE} finite, strictly increasing numbers in [-1, 1], one of them exactly 0"
    if values is None:
        raise ValueError(f"storage {USER_CODEBOOK!r} needs quant.codebook: {allowed}")
    values = list(values)
    bad_types = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float))]
    if bad_types:
        raise ValueError(f"codebook values {bad_types!r} are not numbers; allowed: {allowed}")
    if len(values) != CODEBOOK_SIZE:
        raise ValueError(f"codebook has {len(values)} values, not {CODEBOOK_SIZE}; allowed: {allowed}")
    problems = [f"{v!r} is not finite" for v in values if not math.isfinite(v)]
    problems += [f"{v!r} is outside [-1, 1]" for v in values if math.isfinite(v) and abs(v) > 1]
    problems += [
        f"{b!r} at position {position} does not exceed {a!r}"
        for position, (a, b) in enumerate(zip(values, values[1:], strict=False), start=2)
        if not b > a
    ]
    if 0 not in values:
        problems.append("no value is exactly 0")
    if problems:
        raise ValueError(f"codebook {values!r} is not allowed: {'; '.join(problems)}; allowed: {allowed}")
    return tuple(float(v) for v in values)


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
