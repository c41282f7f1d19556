"""StorageSpec: everything the harness knows about one storage type, in one object.

A storage type is how a frozen base weight is held: which tensors encode it, how they decode, which
settings (block size, double quantization, codebook) it takes, the layer it is computed with, what it
costs per parameter, and the devices it runs on. Each family of types is one module that builds its
specs (``bnb4``, ``int4``, ``codebook``, ``int8``, ``floats``); ``registry`` lists them and resolves a
``quant.storage`` name, a user's ``package.module:Object`` included, to its spec. Nothing else in the
harness asks which storage type it holds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace

import torch
from torch import nn

from harness.quant.layer import QuantLinear
from harness.quant.weight import QuantizedWeight

# What bitsandbytes 0.50 accepts for 4-bit (quantize_4bit rejects 16 and 8192 on CPU and CUDA alike);
# every blockwise built-in uses the same set so that they sweep over identical block sizes.
ALLOWED_BLOCKSIZES: tuple[int, ...] = (32, 64, 128, 256, 512, 1024, 2048, 4096)
# Second-level block size of double quantization (QLoRA paper; bitsandbytes' nested statistics).
ABSMAX_BLOCKSIZE = 256
WEIGHT_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16)


def listing(values: tuple[object, ...]) -> str:
    return ", ".join(str(v) for v in values)


@dataclass(frozen=True)
class StorageArgs:
    """The settings a weight is stored with: ``quant.blocksize``, ``quant.double_quant``,
    ``quant.codebook``. A stored weight records them as its type uses them (``StorageSpec.layout``)."""

    blocksize: int | None = 64
    double_quant: bool = True
    codebook: tuple[float, ...] | None = None


class StorageSpec(ABC):
    """One storage type. A new one subclasses this, implements ``encode``, ``decode`` and
    ``bits_per_param``, and sets the class attributes that differ from the defaults:

    - ``blockwise``: ``quant.blocksize`` and ``quant.double_quant`` apply; otherwise they are ignored and
      the stored weight records None / False.
    - ``blocksizes``: the block sizes ``check`` allows (default: ALLOWED_BLOCKSIZES, bitsandbytes' set).
    - ``takes_codebook``: ``quant.codebook`` applies (override ``check`` to validate it); otherwise a
      codebook is refused.
    - ``sixteen_bit``: a 16-bit reference, the row reports compare the others with by default.
    - ``devices``: device types it has kernels for; None: any torch device.

    ``name`` is what ``quant.storage`` says (the registry sets it for a plugin).
    """

    name: str = ""
    blockwise: bool = True
    blocksizes: tuple[int, ...] = ALLOWED_BLOCKSIZES
    takes_codebook: bool = False
    sixteen_bit: bool = False
    devices: tuple[str, ...] | None = None

    @abstractmethod
    def encode(self, weight: torch.Tensor, args: StorageArgs) -> dict[str, torch.Tensor]:
        """The tensors `weight` (fp32/fp16/bf16, any shape) is stored as, by role: ``codes`` (required,
        on the weight's device) and any others (``absmax``, ...). Memory is measured from them."""

    @abstractmethod
    def decode(
        self, tensors: dict[str, torch.Tensor], shape: torch.Size, args: StorageArgs, dtype: torch.dtype
    ) -> torch.Tensor:
        """The weight back from `tensors`, in `shape` and `dtype`."""

    @abstractmethod
    def bits_per_param(self, args: StorageArgs, shape: torch.Size) -> float:
        """Stored bits per parameter of a weight of `shape` by the type's formula (codes and per-block or
        per-row constants; tables that do not grow with the weight left out): the memory model's cost,
        known before anything is quantized."""

    def check(self, args: StorageArgs) -> None:
        """Raise ValueError naming the ``quant.<key>``, its value and what is allowed."""
        where = f"for quant.storage={self.name!r}"
        if not isinstance(args.double_quant, bool):
            raise ValueError(f"quant.double_quant={args.double_quant!r} is not allowed; allowed: True, False")
        integer = isinstance(args.blocksize, int) and not isinstance(args.blocksize, bool)
        if self.blockwise and not (integer and args.blocksize in self.blocksizes):
            raise ValueError(
                f"quant.blocksize={args.blocksize!r} is not allowed {where}; "
                f"allowed: {listing(self.blocksizes)}"
            )
        if args.codebook is not None and not self.takes_codebook:
            raise ValueError(
                f"quant.codebook={list(args.codebook)!r} is not allowed {where}, whose levels are fixed; "
                "allowed: null (only a type that takes levels reads it: quant.storage=codebook)"
            )

    def check_device(self, device: torch.device | str) -> None:
        """A device the type has no kernels for raises NotImplementedError."""
        kind = torch.device(device).type
        if self.devices is not None and kind not in self.devices:
            raise NotImplementedError(
                f"quant.storage={self.name!r} has kernels for {listing(self.devices)}; this device is {kind}"
            )

    def layout(self, args: StorageArgs) -> StorageArgs:
        """The settings a stored weight records: block settings only where they apply."""
        return args if self.blockwise else replace(args, blocksize=None, double_quant=False)

    def store(self, weight: torch.Tensor, args: StorageArgs) -> QuantizedWeight:
        """`weight` stored in this type on its own device (arguments already checked)."""
        validate_weight(weight)
        args = self.layout(args)
        weight = weight.detach()
        tensors = self.encode(weight, args)
        return QuantizedWeight(spec=self, shape=weight.shape, dtype=weight.dtype, args=args, tensors=tensors)

    def frozen_layer(
        self, linear: nn.Linear, args: StorageArgs, compute_dtype: torch.dtype | None
    ) -> nn.Module:
        """The frozen replacement for `linear`, on its device: by default a QuantLinear over the stored
        weight, dequantized on the fly. compute_dtype None means the weight's dtype."""
        return QuantLinear(self.store(linear.weight, args), linear.bias, compute_dtype or linear.weight.dtype)


def validate_weight(weight: torch.Tensor) -> None:
    """Only non-empty float weights can be quantized (bitsandbytes takes fp32/fp16/bf16 only)."""
    if weight.dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight dtype {weight.dtype} is not supported; allowed: {listing(WEIGHT_DTYPES)}")
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
