"""quant.weight_error (issue 13): the reconstruction error of the stored weights, measured while
replace_linear_layers quantizes the tiny model layer by layer."""

from __future__ import annotations

import math

import pytest
import torch

from harness.model.replace import replace_linear_layers
from harness.model.tiny import build_tiny_model
from harness.quant import weight_error_summary


def weight_error(storage: str, blocksize: int = 64, double_quant: bool = False) -> dict:
    model, _ = build_tiny_model(seed=0)
    summary = replace_linear_layers(
        model, storage, blocksize, double_quant, torch.float32, torch.device("cpu"), ["lm_head"]
    )
    return summary.weight_error


@pytest.fixture(scope="module")
def errors() -> dict[str, dict]:
    return {storage: weight_error(storage) for storage in ("nf4", "nf4_paper", "fp4", "int4", "bf16", "fp32")}


def test_weight_error_summary_pools_squares():
    """rel_rms pools squared errors over all parameters (not a mean of layer ratios); the worst layer is
    the one with the largest ratio; no layers gives zeros and no name."""
    summary = weight_error_summary({"a": (1.0, 4.0), "b": (0.0, 12.0)})
    assert summary == {"rel_rms": 0.25, "max_layer_rel_rms": 0.5, "worst_layer": "a"}
    assert weight_error_summary({}) == {"rel_rms": 0.0, "max_layer_rel_rms": 0.0, "worst_layer": None}


def test_nf4_has_lowest_error_on_normal_init(errors: dict[str, dict]):
    """The paper's lens: on the tiny model's normal-initialised weights NF4 beats FP4 and Int4, and the
    codebook NF4 equals bitsandbytes' NF4 exactly."""
    nf4 = errors["nf4"]["rel_rms"]
    assert nf4 < errors["fp4"]["rel_rms"] and nf4 < errors["int4"]["rel_rms"]
    assert errors["nf4_paper"] == errors["nf4"]


def test_float_references(errors: dict[str, dict]):
    """fp32 stores the weight itself: exactly 0, and no layer is worst. bf16 rounds to 8 significant
    bits: a relative RMS error of about 2^-9 (between 2^-10 and 2^-8)."""
    assert errors["fp32"] == {"rel_rms": 0.0, "max_layer_rel_rms": 0.0, "worst_layer": None}
    assert 2**-10 < errors["bf16"]["rel_rms"] < 2**-8


def test_worst_layer_and_determinism(errors: dict[str, dict]):
    """The worst layer is a quantized layer whose error bounds the pooled one; a second run of the same
    quantization gives the identical numbers (the value CI gates on)."""
    nf4 = errors["nf4"]
    assert nf4["worst_layer"].startswith("model.layers.") and math.isfinite(nf4["max_layer_rel_rms"])
    assert nf4["max_layer_rel_rms"] >= nf4["rel_rms"] > 0
    assert weight_error("nf4") == nf4
