"""What a frozen layer stores, measured from the layer itself: its bytes and its error against the weight
it was built from (every storage type's layer: QuantLinear, bitsandbytes' Linear8bitLt, nn.Linear)."""

from __future__ import annotations

import math

import torch
from torch import nn

from harness.quant.int8 import is_linear8bit, linear8bit_bytes, linear8bit_weight
from harness.quant.layer import QuantLinear


def stored_weight(module: nn.Module) -> torch.Tensor:
    """The weight a frozen layer computes with, in fp32: a transient copy of this one layer."""
    if isinstance(module, QuantLinear):
        return module.qweight.dequantize(torch.float32)
    if is_linear8bit(module):
        return linear8bit_weight(module)
    if isinstance(module, nn.Linear):
        return module.weight.float()
    raise TypeError(
        f"stored_weight takes QuantLinear, Linear8bitLt or nn.Linear, not {type(module).__name__}"
    )


def reconstruction_error(weight: torch.Tensor, module: nn.Module) -> tuple[float, float]:
    """(sum of squared errors, sum of squares) of a frozen layer's stored weight against `weight`, the
    weight it was built from, both accumulated in fp64 so that sums over a model are exact enough to gate.
    """
    reference = weight.detach().float()
    error = stored_weight(module) - reference
    return error.square().sum(dtype=torch.float64).item(), reference.square().sum(dtype=torch.float64).item()


def _relative_rms(squared_error: float, squares: float) -> float:
    if squares > 0:
        return math.sqrt(squared_error / squares)
    return 0.0 if squared_error == 0 else math.inf


def weight_error_summary(errors: dict[str, tuple[float, float]]) -> dict[str, float | str | None]:
    """||W - deq(Q(W))|| / ||W|| over all quantized parameters together (``rel_rms``: summed squared errors
    over summed squares, so large layers weigh more) and for the worst layer, from each layer's
    (sum of squared errors, sum of squares) in module order. No layer is worst when none has an error."""
    per_layer = {name: _relative_rms(*sums) for name, sums in errors.items()}
    worst = max(per_layer, key=per_layer.__getitem__, default=None)
    max_error = per_layer[worst] if worst is not None else 0.0
    return {
        "rel_rms": _relative_rms(sum(e for e, _ in errors.values()), sum(s for _, s in errors.values())),
        "max_layer_rel_rms": max_error,
        "worst_layer": worst if max_error > 0 else None,
    }


def storage_bytes(module: nn.Module) -> tuple[int, int]:
    """(bytes, parameters) of a frozen layer's weight storage, measured from its tensors; bias excluded."""
    if isinstance(module, QuantLinear):
        return module.qweight.nbytes, module.qweight.numel
    if is_linear8bit(module):
        return linear8bit_bytes(module), module.weight.numel()
    if isinstance(module, nn.Linear):
        return module.weight.nbytes, module.weight.numel()
    raise TypeError(
        f"storage_bytes takes QuantLinear, Linear8bitLt or nn.Linear, not {type(module).__name__}"
    )
