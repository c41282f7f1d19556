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
and a separate scale, backward took twice as long). Where ``harness.native`` builds C, one compiled loop
writes that mask in one pass on torch's OpenMP threads (the torch ops take ~12 passes over the words,
3-5x its time), the same values bit for bit; else the torch ops. Other devices use F.dropout, whose fused
kernel is already cheap.
"""

from __future__ import annotations

import ctypes
import math
from functools import cache

import torch
from torch import nn

from harness.native import OPENMP_C_FLAG_SETS, compiled_library, openmp_threads

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


def torch_scaled_mask(
    shape: torch.Size, seed: int, threshold: int, scale: float, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """The mask by torch ops: element 4i + j is kept when lane j (15 bits) of word i is below
    ``threshold``; kept elements hold ``scale`` rounded to ``dtype``, dropped ones 0."""
    numel = math.prod(shape)
    words = splitmix64(-(-numel // LANES_PER_WORD), seed, device)
    lanes = words.view(torch.int16)[:numel].view(shape) & (2**LANE_BITS - 1)
    return (lanes < threshold).to(dtype).mul_(scale)


_SOURCE = r"""
#include <stdint.h>
/* torch_scaled_mask in one pass: SplitMix64 word i (counter seed + (i + 1) * gamma) gives elements 4i..4i+3
   their 15-bit lanes (low half first, as a little-endian int16 view); a kept element gets the bits of the
   scale in the output dtype, a dropped one 0. Words are split evenly over `threads` OpenMP threads. */
#define MASK(NAME, T)                                                                                 \
    static inline T NAME##_lane(uint64_t z, int j, uint32_t threshold, T kept) {                     \
        return ((z >> (16 * j)) & 0x7fffu) < threshold ? kept : (T)0;                                 \
    }                                                                                                 \
    static void NAME##_words(T *out, int64_t numel, uint64_t seed, uint32_t threshold, T kept,        \
                             int64_t first, int64_t last) {                                           \
        for (int64_t i = first; i < last; i++) {                                                      \
            uint64_t z = (uint64_t)(i + 1) * 0x9E3779B97F4A7C15ull + seed;                            \
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;                                              \
            z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;                                              \
            z ^= z >> 31;                                                                             \
            int64_t e = 4 * i;                                                                        \
            if (e + 4 <= numel) {                                                                     \
                out[e] = NAME##_lane(z, 0, threshold, kept);                                          \
                out[e + 1] = NAME##_lane(z, 1, threshold, kept);                                      \
                out[e + 2] = NAME##_lane(z, 2, threshold, kept);                                      \
                out[e + 3] = NAME##_lane(z, 3, threshold, kept);                                      \
            } else {                                                                                  \
                for (int j = 0; e + j < numel; j++) out[e + j] = NAME##_lane(z, j, threshold, kept);  \
            }                                                                                         \
        }                                                                                             \
    }                                                                                                 \
    void NAME(T *out, int64_t numel, uint64_t seed, uint32_t threshold, uint32_t kept,              \
              int64_t threads) {                                                                      \
        int64_t words = (numel + 3) / 4;                                                              \
        _Pragma("omp parallel for num_threads(threads) schedule(static)")                             \
        for (int64_t t = 0; t < threads; t++)                                                         \
            NAME##_words(out, numel, seed, threshold, (T)kept, words * t / threads,                   \
                         words * (t + 1) / threads);                                                  \
    }
MASK(mask32, uint32_t)
MASK(mask16, uint16_t)
"""
_FUNCTIONS = {torch.float32: "mask32", torch.bfloat16: "mask16", torch.float16: "mask16"}
_BITS = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}
_ARGTYPES = [
    ctypes.c_void_p,
    ctypes.c_int64,
    ctypes.c_uint64,
    ctypes.c_uint32,
    ctypes.c_uint32,
    ctypes.c_int64,
]
_MIN_WORDS_PER_THREAD = 1 << 14  # SplitMix64 words (harness.native.openmp_threads)


@cache
def _library() -> ctypes.CDLL | None:
    """The compiled mask; None without a compiler or where no build works (``harness.native``)."""
    library = compiled_library("dropout_mask", _SOURCE, "c", OPENMP_C_FLAG_SETS)
    if library is not None:
        for name in set(_FUNCTIONS.values()):
            getattr(library, name).argtypes = _ARGTYPES
    return library


@cache
def _kept_bits(dtype: torch.dtype, scale: float) -> int:
    """The bits of ``scale`` rounded to ``dtype`` as torch's mul_ rounds it, which a kept element holds
    (the same few (dtype, p) pairs come back at every LoRA target of every step)."""
    kept = torch.ones(1, dtype=dtype).mul_(scale)
    return int(kept.view(_BITS[dtype]).item()) % 2 ** (8 * kept.element_size())


def compiled_scaled_mask(
    shape: torch.Size, seed: int, threshold: int, scale: float, dtype: torch.dtype
) -> torch.Tensor | None:
    """``torch_scaled_mask`` on the CPU by the compiled loop, the same values bit for bit; None where it
    does not apply (another dtype, no compiler)."""
    function = _FUNCTIONS.get(dtype)
    if function is None or (library := _library()) is None:
        return None
    numel = math.prod(shape)
    out = torch.empty(shape, dtype=dtype)
    threads = openmp_threads(-(-numel // LANES_PER_WORD), _MIN_WORDS_PER_THREAD)
    kept = _kept_bits(dtype, scale)
    # ctypes releases the GIL for the call
    getattr(library, function)(out.data_ptr(), numel, seed % 2**64, threshold, kept, threads)
    return out


def scaled_keep_mask(shape: torch.Size, p: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A training mask in ``dtype``: each element kept with probability ~1-p and then holding the scale
    that keeps the output unbiased, else 0; one seed drawn from torch's generator per call."""
    seed = int(torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64))
    threshold = round((1 - p) * 2**LANE_BITS)
    scale = 2**LANE_BITS / threshold
    compiled = compiled_scaled_mask(shape, seed, threshold, scale, dtype) if device.type == "cpu" else None
    if compiled is not None:
        return compiled
    return torch_scaled_mask(shape, seed, threshold, scale, dtype, device)


def lora_dropout_mask_bytes(device: torch.device, dtype: torch.dtype) -> int:
    """Bytes per element a LoRA dropout keeps for backward: LoraDropout's mask is in the input's dtype on
    CPU; F.dropout's fused kernel elsewhere keeps a bool mask."""
    return torch.finfo(dtype).bits // 8 if device.type == "cpu" else 1


class LoraDropout(nn.Dropout):
    """nn.Dropout whose CPU training mask comes from ``keep_mask``; identical elsewhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.device.type != "cpu" or not 0 < self.p < 1:
            return super().forward(x)
        return x * scaled_keep_mask(x.shape, self.p, x.dtype, x.device)


def use_cheap_lora_dropout(model: nn.Module) -> None:
    """Swap every nn.Dropout peft placed on a LoRA input for a LoraDropout with the same p."""
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, nn.ModuleDict):
            continue
        for name, dropout in dropouts.items():
            if type(dropout) is nn.Dropout:
                dropouts[name] = LoraDropout(dropout.p)
