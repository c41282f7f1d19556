"""A compiled CPU decode for the pair-packed 4-bit types (codebooks, AF4/BOF4, MXFP4/NVFP4).

Decoding is level[code] * block scale. In torch it takes four passes over the weight (widen the bytes to
an index, gather, scale, cast), about 4x the memory traffic of bitsandbytes' fused kernel, which is what
kept the codebook types at 2.0-2.3x bitsandbytes NF4's layer time in bf16 (reports/quant/codebook.md).
This module compiles one small C loop with the system C compiler on first use (the way bitsandbytes
loads its library: ctypes, plain C, no torch headers, well under a second) into a per-user cache and
runs it on torch's CPU threads. Per block it forms the 16 products level * scale in fp32 once and
rounds each to the output dtype once (bf16 by round-half-even, as torch's cast), then looks the codes up
in that table: on CPUs with AVX-512 (checked at run time; the file is built for any x86-64 or other CPU)
one permute yields 16 fp32 or 32 bf16/fp16 values, already interleaved, else one store per byte for both
values. The same values as the torch path, bit for bit (tested).

Where no compiler is found or compiling fails, ``decode_pairs`` returns None and callers keep the torch
path, so nothing needs the compiler to work. ``QLORA_BENCH_NATIVE=0`` turns the compiled path off.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import torch

_SOURCE = r"""
#include <stdint.h>
#include <string.h>

static inline uint32_t bits_f32(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline uint32_t bits_bf16(float f) {
    uint32_t u = bits_f32(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u >> 16) | 0x40u; /* NaN stays NaN */
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;                 /* round half to even */
}
static inline uint32_t bits_f16(float f) {
    _Float16 h = (_Float16)f; /* round half to even */
    uint16_t u;
    memcpy(&u, &h, 2);
    return u;
}

#if defined(__x86_64__)
#include <immintrin.h>
/* AVX-512: one permute looks up 16 (32-bit) or 32 (16-bit) values in a register holding the block's
   table; the indices are laid out so that the results come out interleaved (high nibble first). */
__attribute__((target("avx512f,avx512bw"))) static int64_t wide16(const uint8_t *p, const uint32_t *table,
                                                                   uint32_t *o, int64_t half) {
    uint16_t t16[32] = {0};
    for (int k = 0; k < 16; k++) t16[k] = (uint16_t)table[k];
    __m512i tab = _mm512_loadu_si512(t16), low = _mm512_set1_epi32(15);
    int64_t j = 0;
    for (; j + 16 <= half; j += 16) {
        __m512i d = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(p + j)));
        __m512i lo = _mm512_slli_epi32(_mm512_and_si512(d, low), 16);
        __m512i idx = _mm512_or_si512(_mm512_srli_epi32(d, 4), lo);
        _mm512_storeu_si512(o + j, _mm512_permutexvar_epi16(idx, tab));
    }
    return j;
}
__attribute__((target("avx512f"))) static int64_t wide32(const uint8_t *p, const uint64_t *table, uint64_t *o,
                                                         int64_t half) {
    uint32_t t32[16];
    for (int k = 0; k < 16; k++) t32[k] = (uint32_t)table[k];
    __m512i tab = _mm512_loadu_si512(t32), low = _mm512_set1_epi64(15);
    int64_t j = 0;
    for (; j + 8 <= half; j += 8) {
        __m512i q = _mm512_cvtepu8_epi64(_mm_loadl_epi64((const __m128i *)(p + j)));
        __m512i lo = _mm512_slli_epi64(_mm512_and_si512(q, low), 32);
        __m512i idx = _mm512_or_si512(_mm512_srli_epi64(q, 4), lo);
        _mm512_storeu_si512(o + j, _mm512_permutexvar_epi32(idx, tab));
    }
    return j;
}
static int has_avx512(void) {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
}
#define WIDE16(p, t, o, h) (wide ? wide16(p, t, o, h) : 0)
#define WIDE32(p, t, o, h) (wide ? wide32(p, t, o, h) : 0)
#else
static int has_avx512(void) { return 0; }
#define WIDE16(p, t, o, h) 0
#define WIDE32(p, t, o, h) 0
#endif

/* Per block: the 16 values level * scale rounded once to the output type (as bits), then both values of
   a byte at once (element 2j, the high nibble, at the lower address): AVX-512 permutes where the CPU
   has them, else one scalar store per byte. */
#define DECODE(NAME, PAIR, WIDTH, BITS, WIDE)                                                  \
    void NAME(const uint8_t *restrict packed, const float *restrict scale,                     \
              const float *restrict levels, PAIR *restrict out, int64_t first, int64_t count,  \
              int64_t half) {                                                                  \
        int wide = has_avx512();                                                               \
        for (int64_t b = first; b < first + count; b++) {                                      \
            PAIR table[16];                                                                    \
            for (int k = 0; k < 16; k++) table[k] = BITS(levels[k] * scale[b]);                \
            const uint8_t *p = packed + b * half;                                              \
            PAIR *o = out + b * half;                                                          \
            for (int64_t j = WIDE(p, table, o, half); j < half; j++)                           \
                o[j] = table[p[j] >> 4] | (table[p[j] & 15] << WIDTH);                         \
        }                                                                                      \
    }

DECODE(decode_f32, uint64_t, 32, bits_f32, WIDE32)
DECODE(decode_bf16, uint32_t, 16, bits_bf16, WIDE16)
DECODE(decode_f16, uint32_t, 16, bits_f16, WIDE16)
"""
_FUNCTIONS = {torch.float32: "decode_f32", torch.bfloat16: "decode_bf16", torch.float16: "decode_f16"}
_FLAGS = ("-O3", "-shared", "-fPIC")
_MIN_BYTES_PER_THREAD = 1 << 16  # below this, one thread: a pool hand-off costs more than it saves


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qlora-bench"


@cache
def _library() -> ctypes.CDLL | None:
    """The compiled decode, built once per source and compiler into the cache; None without one."""
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if os.environ.get("QLORA_BENCH_NATIVE", "1") == "0" or compiler is None:
        return None
    key = hashlib.sha256("\0".join([_SOURCE, compiler, *_FLAGS]).encode()).hexdigest()[:16]
    target = _cache_dir() / f"decode-{key}.so"
    try:
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
                source, built = Path(scratch) / "decode.c", Path(scratch) / "decode.so"
                source.write_text(_SOURCE)
                subprocess.run(
                    [compiler, *_FLAGS, str(source), "-o", str(built)], check=True, capture_output=True
                )
                os.replace(built, target)  # atomic: concurrent jobs never load a half-written file
        library = ctypes.CDLL(str(target))
    except (OSError, subprocess.CalledProcessError):
        return None
    for name in _FUNCTIONS.values():
        getattr(library, name).argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3
    return library


@cache
def _pool(threads: int, pid: int) -> ThreadPoolExecutor:
    """One pool per process: a forked child inherits the parent's pool object but not its threads."""
    return ThreadPoolExecutor(threads, thread_name_prefix="qlora-decode")


def decode_pairs(
    packed: torch.Tensor, scale: torch.Tensor, levels: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor | None:
    """(blocks, 2 * half) values level[code] * scale[block] in `dtype` from pair-packed codes (blocks,
    half) (element 2i in the high nibble), fp32 per-block `scale` and at most 16 fp32 `levels`; None
    where the compiled path does not apply (not CPU, another dtype, no compiler)."""
    function = _FUNCTIONS.get(dtype)
    if function is None or packed.device.type != "cpu" or (library := _library()) is None:
        return None
    packed = packed.contiguous()
    scale = scale.to(torch.float32).contiguous()
    table = torch.zeros(16, dtype=torch.float32)
    table[: levels.numel()] = levels.to(torch.float32)
    blocks, half = packed.shape
    out = torch.empty(blocks, 2 * half, dtype=dtype)
    pointers = (packed.data_ptr(), scale.data_ptr(), table.data_ptr(), out.data_ptr())
    kernel = getattr(library, function)
    threads = max(1, min(torch.get_num_threads(), packed.numel() // _MIN_BYTES_PER_THREAD))
    if threads == 1:
        kernel(*pointers, 0, blocks, half)
        return out
    bounds = [blocks * i // threads for i in range(threads + 1)]
    chunks = zip(bounds[:-1], bounds[1:], strict=True)
    jobs = [
        _pool(threads, os.getpid()).submit(kernel, *pointers, first, last - first, half)
        for first, last in chunks
    ]
    for job in jobs:
        job.result()  # ctypes releases the GIL for the call, so the chunks run in parallel
    return out
