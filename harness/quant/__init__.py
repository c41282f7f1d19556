"""Storage types for frozen base weights (QLoRA: NF4/FP4 in blocks of 64, double-quantized constants).

Each storage type is one ``StorageSpec`` (``spec``); ``registry`` lists the built-ins and resolves any
``quant.storage`` name to its spec, a user's own ``package.module:Object`` included. ``quantize`` stores a
weight and measures what it occupies; ``frozen_linear`` builds the layer a model's nn.Linear is replaced
with. Families, one module each: ``bnb4`` (NF4/FP4 via bitsandbytes), ``int4`` (the harness's own
pure-torch Int4), ``codebook`` (4-bit types defined by their levels: NF4 from the paper's recipe,
FP4-E2M1/E3M0, user-defined), ``int8`` (LLM.int8 via bitsandbytes), ``floats`` (the bf16/fp16/fp32
references). ``weight`` (QuantizedWeight) and ``layer`` (QuantLinear, the reconstruction error) serve
them all.
"""

from harness.quant.codebook import validate_codebook
from harness.quant.floats import FLOAT_DTYPES
from harness.quant.layer import DequantMatmul, QuantLinear
from harness.quant.measure import (
    reconstruction_error,
    storage_bytes,
    stored_weight,
    weight_error_summary,
)
from harness.quant.registry import (
    FOUR_BIT_TYPES,
    SIXTEEN_BIT_TYPES,
    STORAGE_SPECS,
    STORAGE_TYPES,
    StorageError,
    frozen_linear,
    quantize,
    storage_args,
    storage_spec,
    validate_quant_args,
)
from harness.quant.spec import (
    ALLOWED_BLOCKSIZES,
    StorageArgs,
    StorageSpec,
    theoretical_bits_per_param,
    validate_weight,
)
from harness.quant.weight import QuantizedWeight

__all__ = [
    "ALLOWED_BLOCKSIZES",
    "FLOAT_DTYPES",
    "FOUR_BIT_TYPES",
    "SIXTEEN_BIT_TYPES",
    "STORAGE_SPECS",
    "STORAGE_TYPES",
    "DequantMatmul",
    "QuantLinear",
    "QuantizedWeight",
    "StorageArgs",
    "StorageError",
    "StorageSpec",
    "frozen_linear",
    "quantize",
    "reconstruction_error",
    "storage_args",
    "storage_bytes",
    "storage_spec",
    "stored_weight",
    "theoretical_bits_per_param",
    "validate_codebook",
    "validate_quant_args",
    "validate_weight",
    "weight_error_summary",
]
