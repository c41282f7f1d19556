"""Storage types for frozen base weights (QLoRA: NF4/FP4 in blocks of 64, double-quantized constants).

``quantize`` stores a weight and measures what it occupies; ``frozen_linear`` builds the layer a model's
nn.Linear is replaced with. Modules: ``registry`` (types, checks), ``int4`` (the harness's own pure-torch
Int4), ``codebook`` (4-bit types defined by their levels: NF4 from the paper's recipe, FP4-E2M1/E3M0,
user-defined), ``bnb4`` (NF4/FP4 via bitsandbytes), ``int8`` (LLM.int8 via bitsandbytes), ``weight``
(QuantizedWeight), ``layer`` (QuantLinear and the references, the reconstruction error).
"""

from harness.quant.layer import (
    DequantMatmul,
    QuantLinear,
    frozen_linear,
    reconstruction_error,
    storage_bytes,
    stored_weight,
    weight_error_summary,
)
from harness.quant.registry import (
    ALLOWED_BLOCKSIZES,
    BUILTIN_CODEBOOKS,
    CODEBOOK_TYPES,
    FOUR_BIT_TYPES,
    STORAGE_TYPES,
    theoretical_bits_per_param,
    validate_codebook,
    validate_quant_args,
    validate_weight,
)
from harness.quant.weight import QuantizedWeight, quantize

__all__ = [
    "ALLOWED_BLOCKSIZES",
    "BUILTIN_CODEBOOKS",
    "CODEBOOK_TYPES",
    "FOUR_BIT_TYPES",
    "STORAGE_TYPES",
    "DequantMatmul",
    "QuantLinear",
    "QuantizedWeight",
    "frozen_linear",
    "quantize",
    "reconstruction_error",
    "storage_bytes",
    "stored_weight",
    "theoretical_bits_per_param",
    "validate_codebook",
    "validate_quant_args",
    "validate_weight",
    "weight_error_summary",
]
