"""LoRA dropout with a cheaper mask on CPU: the same per-element keep-or-drop, one random draw per call.

On CPU torch draws every random number from one sequential Mersenne Twister. nn.Dropout's bernoulli_ costs a
draw per element (and keeps a float mask for backward), and peft applies it to the input of every LoRA
target, in forward and again in the checkpointed recompute: about a fifth of a QLoRA step on a 2-core CPU
(reports/perf/). Here one draw from torch's generator seeds a counter-based SplitMix64 stream, computed
with parallel tensor ops; each 64-bit word gives four 15-bit lanes, an element is kept when its lane is
below round((1 - p) * 2^15), and kept values are scaled by the inverse of that exact keep probability
(unbiased; in bf16 the scale is rounded to bf16, as nn.Dropout's is). The seed comes from torch's
generator, so checkpointing's RNG-state restore recomputes the same mask. The mask is built in the
input's dtype with the scale folded in: forward and backward are one multiply each (with a bool mask
and a separate scale, backward took twice as long). Other devices use F.dropout, whose fused kernel is
already cheap.
"""

from __future__ import annotations

import math

import torch
from torch import nn

LANE_BITS = 15
LANES_PER_WORD = 4  # a 64-bit word viewed as four int16 lanes, 15 bits used in each (int16 is signed)
# SplitMix64 (Steele, Lea and Flood, 2014): its increment and its two finalizer multipliers, as int64
_GAMMA = 0x9E3779B97F4A7C15 - 2**64
_MIX1 = 0xBF58476D1CE4E5B9 - 2**64
_MIX2 = 0x94D049BB133111EB - 2**64


def _xor_shift_right(z: torch.Tensor, bits: int) -> torch.Tensor:
    """z ^= z >>> bits (a logical shift: torch's >> on int64 is arithmetic, so the sign bits are masked)."""
    return z.bitwise_xor_((z >> bits).bitwise_and_((1 << (64 - bits)) - 1))


def splitmix64(words: int, seed: int, device: torch.device) -> torch.Tensor:
    """``words`` pseudo-random int64: SplitMix64 for the counters seed + (i + 1) * gamma, all at once."""
    z = torch.arange(1, words + 1, dtype=torch.int64, device=device).mul_(_GAMMA).add_(seed)
    _xor_shift_right(z, 30).mul_(_MIX1)
    _xor_shift_right(z, 27).mul_(_MIX2)
    return _xor_shift_right(z, 31)


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> tuple[torch.Tensor, float]:
    """(bool mask, each element kept with probability ~1-p; the scale that keeps the output unbiased)."""
    numel = math.prod(shape)
    seed = int(torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64))  # from torch's generator
    words = splitmix64(-(-numel // LANES_PER_WORD), seed, device)
    lanes = words.view(torch.int16)[:numel].view(shape) & (2**LANE_BITS - 1)
    threshold = round((1 - p) * 2**LANE_BITS)
    return lanes < threshold, 2**LANE_BITS / threshold


def lora_dropout_mask_bytes(device: torch.device, dtype: torch.dtype) -> int:
    """Bytes per element a LoRA dropout keeps for backward: LoraDropout's mask is in the input's dtype on
    CPU; F.dropout's fused kernel elsewhere keeps a bool mask."""
    return torch.finfo(dtype).bits // 8 if device.type == "cpu" else 1


class LoraDropout(nn.Dropout):
    """nn.Dropout whose CPU training mask comes from ``keep_mask``; identical elsewhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.device.type != "cpu" or not 0 < self.p < 1:
            return super().forward(x)
        keep, scale = keep_mask(x.shape, self.p, x.device)
        return x * keep.to(x.dtype).mul_(scale)


def use_cheap_lora_dropout(model: nn.Module) -> None:
    """Swap every nn.Dropout peft placed on a LoRA input for a LoraDropout with the same p."""
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, nn.ModuleDict):
            continue
        for name, dropout in dropouts.items():
            if type(dropout) is nn.Dropout:
                dropouts[name] = LoraDropout(dropout.p)
