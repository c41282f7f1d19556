"""Storage types for frozen base weights (QLoRA: NF4/FP4 in blocks of 64, double-quantized constants).

``quantize`` stores a weight and measures what it occupies; ``frozen_linear`` builds the layer a model's
nn.Linear is replaced with. Modules: ``registry`` (types, checks), ``int4`` (the harness's own pure-torch
Int4), ``bnb4`` (NF4/FP4 via bitsandbytes), ``int8`` (LLM.int8 via bitsandbytes), ``weight``
(QuantizedWeight), ``layer`` (QuantLinear and the references).
"""

from harness.quant.layer import DequantMatmul, QuantLinear, frozen_linear, storage_bytes
from harness.quant.registry import (
    ALLOWED_BLOCKSIZES,
    FOUR_BIT_TYPES,
    STORAGE_TYPES,
    theoretical_bits_per_param,
    validate_quant_args,
    validate_weight,
)
from harness.quant.weight import QuantizedWeight, quantize

__all__ = [
    "ALLOWED_BLOCKSIZES",
    "FOUR_BIT_TYPES",
    "STORAGE_TYPES",
    "DequantMatmul",
    "QuantLinear",
    "QuantizedWeight",
    "frozen_linear",
    "quantize",
    "storage_bytes",
    "theoretical_bits_per_param",
    "validate_quant_args",
    "validate_weight",
]
