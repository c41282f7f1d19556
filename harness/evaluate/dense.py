"""Dequantize each frozen 4-bit weight once per evaluation instead of on every forward.

Training decodes a QuantLinear's packed weight on every forward and again in backward, so that no
full-precision copy is ever held. Evaluation runs many forwards over weights that do not change; there a copy
decoded once in the compute dtype (the very tensor each forward would decode, so the same products) costs a
bounded amount of memory: the layers whose copies fit ``budget_bytes``, in module order, hold one while the
evaluation runs (2 bytes per parameter in bf16, 4 in fp32); the others decode on the fly as before. The
copies are dropped on exit, so a job that trains afterwards runs exactly as without them.

Off by default (``eval.dense_weights_mib=0``): on a 2-core AMD EPYC it measured 0.8-0.95x the speed of
decoding on every forward (``reports/perf/eval_cost.md`` as of ``d84f29f``): there, reading a bf16 weight
from memory costs more than decoding the 4-bit one into cache just before its matmul.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from harness.quant.layer import QuantLinear

MIB = 2**20


def dense_bytes(layer: QuantLinear) -> int:
    """Bytes of the layer's weight dequantized in its compute dtype."""
    return layer.out_features * layer.in_features * layer.compute_dtype.itemsize


@contextlib.contextmanager
def dense_weights(model: nn.Module, budget_bytes: int) -> Iterator[int]:
    """Within the block, QuantLinear layers of ``model`` compute with their weight dequantized once, as many
    as fit ``budget_bytes`` in module order; yields the bytes held (0: budget 0 or nothing fits)."""
    held: list[QuantLinear] = []
    used = 0
    try:
        for layer in model.modules():
            if isinstance(layer, QuantLinear) and used + dense_bytes(layer) <= budget_bytes:
                layer.dense_weight = layer.qweight.dequantize(layer.compute_dtype)
                held.append(layer)
                used += dense_bytes(layer)
        yield used
    finally:
        for layer in held:
            layer.dense_weight = None
