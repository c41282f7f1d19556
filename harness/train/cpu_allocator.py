"""torch's CPU tensors from plain ``malloc``, so that glibc's fast heap reuses each freed tensor exactly.

torch allocates every CPU tensor with ``posix_memalign(64, n)``. glibc before 2.38 serves that by asking
its allocator for n + 64 + MINSIZE bytes and trimming both ends, so a freed chunk of exactly n bytes never
serves the next request of that size (``benchmarks/heap_reuse.py``: an 18 MiB aligned chunk freed under a
small live one grows the heap 18 MiB every round); once a small allocation takes a trimmed sliver, the
freed tensor's pages are stranded. Under ``cpu_heap=fast`` (freed chunks kept resident) the SmolLM2
quickstart NF4 job in fp32 peaked at 2,126 MiB with 1,224 MiB of it free heap (docs/performance.md). From
2.38 glibc looks for a fitting freed chunk first, yet still kept ~2 bytes of free heap per transient byte
in fp32.

This module compiles a c10 CPU allocator (C++ against torch's own headers, ~1.5 s, once per torch build,
``harness.native``) that takes n + 64 bytes from ``malloc`` and returns the first 64-byte boundary inside
them: torch gets the alignment it asks for, and glibc sees plain requests of one size, which its bins serve
again exactly. It becomes torch's CPU allocator for the rest of the process (``use_malloc_allocator``, called
on glibc when a job first sets its heap policy, ``harness.train.meters``); tensors allocated before keep their
own deleter, and a raw pointer from the previous allocator handed back to this one (oneDNN's scratch buffers
go through the current allocator's raw deleter) is recognised and freed by c10's ``free_cpu``. Values are
untouched: only where the bytes live changes. Without a compiler, off glibc, or with ``QLORA_BENCH_NATIVE=0``
torch's allocator stays, and the memory estimate says so (``harness.train.memory_model.heap_caveat``).
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch

from harness.native import compiled_library

_SOURCE = r"""
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>

namespace {
constexpr std::uintptr_t kAlign = 64;                  // c10's alignment for CPU tensors
constexpr std::uint64_t kMagic = 0x716c622d6d616c63ull; // marks the 16 bytes below a pointer handed out here
std::atomic<std::uint64_t> allocations{0};

// [raw from malloc] ... [magic][raw] [p: 64-byte aligned, n bytes]; p - raw is 16, 32, 48 or 64 (malloc
// returns 16-byte-aligned memory), so the two words always fit below p inside the n + 64 bytes.
void release(void* p) {
    if (p == nullptr) return;
    auto words = static_cast<std::uint64_t*>(p);
    if (words[-2] == kMagic) {
        words[-2] = 0;
        std::free(reinterpret_cast<void*>(words[-1]));
    } else {
        c10::free_cpu(p);  // allocated before this allocator took over
    }
}

struct MallocAllocator final : c10::Allocator {
    c10::DataPtr allocate(std::size_t n) override {
        if (n == 0) return {nullptr, nullptr, &release, c10::Device(c10::DeviceType::CPU)};  // as c10's
        void* raw = std::malloc(n + kAlign);
        if (raw == nullptr) throw std::bad_alloc();
        auto address = (reinterpret_cast<std::uintptr_t>(raw) + kAlign) & ~(kAlign - 1);
        auto words = reinterpret_cast<std::uint64_t*>(address);
        words[-2] = kMagic;
        words[-1] = reinterpret_cast<std::uint64_t>(raw);
        allocations.fetch_add(1, std::memory_order_relaxed);
        void* p = reinterpret_cast<void*>(address);
        return {p, p, &release, c10::Device(c10::DeviceType::CPU)};
    }
    c10::DeleterFnPtr raw_deleter() const override { return &release; }
    void copy_data(void* dest, const void* src, std::size_t count) const override {
        default_copy_data(dest, src, count);
    }
};
MallocAllocator allocator;
}  // namespace

extern "C" void qlora_bench_use_malloc_allocator() { c10::SetCPUAllocator(&allocator, 1); }
extern "C" std::uint64_t qlora_bench_malloc_allocations() { return allocations.load(); }
// What oneDNN does with a scratch buffer: hand it back through the current CPU allocator's raw deleter.
extern "C" void qlora_bench_raw_deallocate(void* p) { c10::GetCPUAllocator()->raw_deallocate(p); }
"""


def _flags() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Compile flags (torch's headers and C++ ABI; its version, which keys the cached build) and what to
    link (torch's libc10, found at run time)."""
    root = Path(torch.__file__).parent
    abi = int(torch.compiled_with_cxx11_abi())
    compile_flags = ("-O2", "-shared", "-fPIC", "-std=c++17", f"-D_GLIBCXX_USE_CXX11_ABI={abi}")
    compile_flags += ("-I", str(root / "include"), f"-DQLORA_BENCH_TORCH={torch.__version__}")
    return compile_flags, ("-L", str(root / "lib"), f"-Wl,-rpath,{root / 'lib'}", "-lc10")


@functools.cache
def _library() -> ctypes.CDLL | None:
    compile_flags, libraries = _flags()
    library = compiled_library("cpu_allocator", _SOURCE, "c++", [compile_flags], libraries)
    if library is not None:
        library.qlora_bench_malloc_allocations.restype = ctypes.c_uint64
        library.qlora_bench_raw_deallocate.argtypes = [ctypes.c_void_p]
    return library


def raw_deallocate(pointer: int) -> None:
    """Free ``pointer`` through torch's current CPU allocator, as oneDNN frees its scratch buffers."""
    library = _library()
    if library is None:
        raise RuntimeError("the malloc allocator is not built here")
    library.qlora_bench_raw_deallocate(pointer)


def malloc_allocations() -> int:
    """Tensors this process's malloc allocator has handed out (0 where it is not built)."""
    library = _library()
    return 0 if library is None else library.qlora_bench_malloc_allocations()


@functools.cache
def use_malloc_allocator() -> bool:
    """Make the malloc allocator torch's CPU allocator for the rest of this process (idempotent); True when
    new CPU tensors come from it (checked by allocating one)."""
    library = _library()
    if library is None:
        return False
    library.qlora_bench_use_malloc_allocator()
    before = malloc_allocations()
    probe = torch.empty(1)
    return malloc_allocations() > before and probe.data_ptr() % 64 == 0


def malloc_allocator_available() -> bool:
    """Whether the malloc allocator builds here (or was built); whether jobs use it is
    ``harness.train.meters.cpu_tensors_from_malloc``."""
    return _library() is not None
