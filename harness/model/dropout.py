"""LoRA dropout with a cheaper mask on CPU: the same per-element keep-or-drop, a quarter of the random draws.

On CPU torch draws every random number from one sequential Mersenne Twister. nn.Dropout's bernoulli_ costs a
draw per element (and keeps a float mask for backward), and peft applies it to the input of every LoRA
target, in forward and again in the checkpointed recompute: about a fifth of a QLoRA step on a 2-core CPU
(reports/perf/). Here one 64-bit draw yields four 15-bit lanes; an element is kept when its lane is below
round((1 - p) * 2^15) and kept values are scaled by the inverse of that exact keep probability, so the
output stays unbiased. The mask is kept as bool (1 byte per element). Other devices use F.dropout, whose
fused kernel is already cheap.
"""

from __future__ import annotations

import math

import torch
from torch import nn

LANE_BITS = 15
LANES_PER_DRAW = 4  # random_() fills 63 bits of an int64: four 16-bit lanes, 15 random bits used in each


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> tuple[torch.Tensor, float]:
    """(bool mask, each element kept with probability ~1-p; the scale that keeps the output unbiased)."""
    numel = math.prod(shape)
    draws = torch.empty(-(-numel // LANES_PER_DRAW), dtype=torch.int64, device=device).random_()
    lanes = draws.view(torch.int16)[:numel].view(shape) & (2**LANE_BITS - 1)
    threshold = round((1 - p) * 2**LANE_BITS)
    return lanes < threshold, 2**LANE_BITS / threshold


class LoraDropout(nn.Dropout):
    """nn.Dropout whose CPU training mask comes from ``keep_mask``; identical elsewhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.device.type != "cpu" or not 0 < self.p < 1:
            return super().forward(x)
        keep, scale = keep_mask(x.shape, self.p, x.device)
        return torch.where(keep, x, 0.0).mul_(scale)  # where keeps the bool mask; x.mul(keep) casts it


def use_cheap_lora_dropout(model: nn.Module) -> None:
    """Swap every nn.Dropout peft placed on a LoRA input for a LoraDropout with the same p."""
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, nn.ModuleDict):
            continue
        for name, dropout in dropouts.items():
            if type(dropout) is nn.Dropout:
                dropouts[name] = LoraDropout(dropout.p)
