"""A compiled CPU decode for the pair-packed 4-bit types (codebooks, AF4/BOF4, MXFP4/NVFP4).

Decoding is level[code] * block scale. In torch it takes four passes over the weight (widen the bytes to
an index, gather, scale, cast), about 4x the memory traffic of bitsandbytes' fused kernel, which is what
kept the codebook types at 2.0-2.3x bitsandbytes NF4's layer time in bf16 (reports/quant/codebook.md).
This module compiles one small C loop with the system C compiler on first use (``harness.native``: plain C, no
torch headers, well under a second, cached per user) and runs it on torch's own OpenMP threads. Per block it
forms the 16 products level * scale in fp32 once and rounds each to the output dtype once (bf16 by
round-half-even, as torch's cast), then looks the codes up in that table: on CPUs with AVX-512 (checked at run
time; the file is built for any x86-64 or other CPU) the fp32 and bf16 tables are built in one register (one
multiply, an in-register rounding) and one permute yields 16 fp32 or 32 bf16/fp16 values, already interleaved,
else one store per byte for both values. The same values as the torch path, bit for bit (tested).

Where no compiler is found or compiling fails, ``decode_pairs`` returns None and callers keep the torch
path, so nothing needs the compiler to work. ``QLORA_BENCH_NATIVE=0`` turns the compiled path off.
"""

from __future__ import annotations

import ctypes
from functools import cache

import torch

from harness.native import OPENMP_C_FLAG_SETS, compiled_library, openmp_threads

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
/* AVX-512: a block's table is one register (16 fp32 products level * scale from one multiply, or those
   rounded to bf16 in-register), and one permute looks up 16 (32-bit) or 32 (16-bit) values in it; the
   indices are laid out so that the results come out interleaved (high nibble first). */
__attribute__((target("avx512f,avx512bw"))) static inline __m512i pair_index16(const uint8_t *p) {
    __m512i d = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p));
    __m512i lo = _mm512_slli_epi32(_mm512_and_si512(d, _mm512_set1_epi32(15)), 16);
    return _mm512_or_si512(_mm512_srli_epi32(d, 4), lo);
}
__attribute__((target("avx512f,avx512bw"))) static int64_t wide16(const uint8_t *p, __m512i tab, uint32_t *o,
                                                                   int64_t half) {
    int64_t j = 0;
    for (; j + 16 <= half; j += 16)
        _mm512_storeu_si512(o + j, _mm512_permutexvar_epi16(pair_index16(p + j), tab));
    return j;
}
__attribute__((target("avx512f"))) static int64_t wide32(const uint8_t *p, __m512i tab, uint64_t *o,
                                                         int64_t half) {
    __m512i low = _mm512_set1_epi64(15);
    int64_t j = 0;
    for (; j + 8 <= half; j += 8) {
        __m512i q = _mm512_cvtepu8_epi64(_mm_loadl_epi64((const __m128i *)(p + j)));
        __m512i lo = _mm512_slli_epi64(_mm512_and_si512(q, low), 32);
        __m512i idx = _mm512_or_si512(_mm512_srli_epi64(q, 4), lo);
        _mm512_storeu_si512(o + j, _mm512_permutexvar_epi32(idx, tab));
    }
    return j;
}
/* bits_bf16 on 16 lanes: round half to even, NaN stays NaN; the bf16 values in the low 16 bits. */
__attribute__((target("avx512f"))) static inline __m512i round_bf16(__m512 v) {
    __m512i u = _mm512_castps_si512(v), one = _mm512_set1_epi32(1);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), one);
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb)), 16);
    __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                            _mm512_set1_epi32(0x7f800000));
    return _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40)));
}
/* Whole blocks [first, first + count): the table in-register, then the permutes, the tail per byte. */
__attribute__((target("avx512f,avx512bw"))) static void blocks_bf16(const uint8_t *packed,
                                                                    const float *scale, const float *levels,
                                                                    uint32_t *out, int64_t first,
                                                                    int64_t count, int64_t half) {
    __m512 lv = _mm512_loadu_ps(levels);
    for (int64_t b = first; b < first + count; b++) {
        __m256i t16 = _mm512_cvtepi32_epi16(round_bf16(_mm512_mul_ps(lv, _mm512_set1_ps(scale[b]))));
        const uint8_t *p = packed + b * half;
        uint32_t *o = out + b * half;
        int64_t j = wide16(p, _mm512_zextsi256_si512(t16), o, half);
        if (j < half) {
            uint16_t table[16];
            _mm256_storeu_si256((__m256i *)table, t16);
            for (; j < half; j++) o[j] = table[p[j] >> 4] | ((uint32_t)table[p[j] & 15] << 16);
        }
    }
}
__attribute__((target("avx512f"))) static void blocks_f32(const uint8_t *packed, const float *scale,
                                                          const float *levels, uint64_t *out, int64_t first,
                                                          int64_t count, int64_t half) {
    __m512 lv = _mm512_loadu_ps(levels);
    for (int64_t b = first; b < first + count; b++) {
        __m512 t = _mm512_mul_ps(lv, _mm512_set1_ps(scale[b]));
        const uint8_t *p = packed + b * half;
        uint64_t *o = out + b * half;
        int64_t j = wide32(p, _mm512_castps_si512(t), o, half);
        if (j < half) {
            uint32_t table[16];
            _mm512_storeu_si512(table, _mm512_castps_si512(t));
            for (; j < half; j++) o[j] = table[p[j] >> 4] | ((uint64_t)table[p[j] & 15] << 32);
        }
    }
}
/* fp16 keeps the scalar table (its rounding is the compiler's); only the lookups are wide. */
__attribute__((target("avx512f,avx512bw"))) static int64_t table16(const uint8_t *p, const uint32_t *table,
                                                                    uint32_t *o, int64_t half) {
    uint16_t t16[32] = {0};
    for (int k = 0; k < 16; k++) t16[k] = (uint16_t)table[k];
    return wide16(p, _mm512_loadu_si512(t16), o, half);
}
static int has_avx512(void) {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
}
#define WIDE_F16(p, t, o, h) (wide ? table16(p, t, o, h) : 0)
#define BLOCKS_BF16(...) (wide ? (blocks_bf16(__VA_ARGS__), 1) : 0)
#define BLOCKS_F32(...) (wide ? (blocks_f32(__VA_ARGS__), 1) : 0)
#else
static int has_avx512(void) { return 0; }
#define WIDE_F16(p, t, o, h) 0
#define BLOCKS_BF16(...) 0
#define BLOCKS_F32(...) 0
#endif
#define NO_WIDE(p, t, o, h) 0
#define NO_BLOCKS(...) 0

/* Per block: the 16 values level * scale rounded once to the output type (as bits), then both values of
   a byte at once (element 2j, the high nibble, at the lower address). With AVX-512, fp32 and bf16 run
   whole blocks in registers (BLOCKS) and fp16 its lookups (WIDE); else one scalar store per byte. */
#define DECODE(NAME, PAIR, WIDTH, BITS, WIDE, BLOCKS)                                          \
    void NAME(const uint8_t *restrict packed, const float *restrict scale,                     \
              const float *restrict levels, PAIR *restrict out, int64_t first, int64_t count,  \
              int64_t half) {                                                                  \
        int wide = has_avx512();                                                               \
        if (BLOCKS(packed, scale, levels, out, first, count, half)) return;                    \
        for (int64_t b = first; b < first + count; b++) {                                      \
            PAIR table[16];                                                                    \
            for (int k = 0; k < 16; k++) table[k] = BITS(levels[k] * scale[b]);                \
            const uint8_t *p = packed + b * half;                                              \
            PAIR *o = out + b * half;                                                          \
            for (int64_t j = WIDE(p, table, o, half); j < half; j++)                           \
                o[j] = table[p[j] >> 4] | (table[p[j] & 15] << WIDTH);                         \
        }                                                                                      \
    }

DECODE(decode_f32, uint64_t, 32, bits_f32, NO_WIDE, BLOCKS_F32)
DECODE(decode_bf16, uint32_t, 16, bits_bf16, NO_WIDE, BLOCKS_BF16)
DECODE(decode_f16, uint32_t, 16, bits_f16, WIDE_F16, NO_BLOCKS)

/* All blocks, split evenly over `threads` threads of the OpenMP runtime torch runs on (built without
   OpenMP the pragma is ignored and the chunks run one after another). */
#define SPLIT(NAME, PAIR)                                                                      \
    void NAME##_split(const uint8_t *packed, const float *scale, const float *levels, PAIR *out, \
                      int64_t blocks, int64_t half, int64_t threads) {                         \
        _Pragma("omp parallel for num_threads(threads) schedule(static)")                      \
        for (int64_t t = 0; t < threads; t++) {                                                \
            int64_t first = blocks * t / threads, last = blocks * (t + 1) / threads;           \
            NAME(packed, scale, levels, out, first, last - first, half);                       \
        }                                                                                      \
    }
SPLIT(decode_f32, uint64_t)
SPLIT(decode_bf16, uint32_t)
SPLIT(decode_f16, uint32_t)
"""
_FUNCTIONS = {
    torch.float32: "decode_f32_split",
    torch.bfloat16: "decode_bf16_split",
    torch.float16: "decode_f16_split",
}
_MIN_BYTES_PER_THREAD = 1 << 16  # packed bytes (harness.native.openmp_threads)


@cache
def _library() -> ctypes.CDLL | None:
    """The compiled decode (with OpenMP where the compiler has it); None without a compiler or where no
    build works (``harness.native``)."""
    library = compiled_library("decode", _SOURCE, "c", OPENMP_C_FLAG_SETS)
    if library is not None:
        for name in _FUNCTIONS.values():
            getattr(library, name).argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3
    return library


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
    threads = openmp_threads(packed.numel(), _MIN_BYTES_PER_THREAD)
    getattr(library, function)(*pointers, blocks, half, threads)  # ctypes releases the GIL for the call
    return out
