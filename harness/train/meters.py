"""Memory meters and the allocator policy: CUDA allocator statistics, or the process's resident set on CPU.

On CPU the measured peak is the resident set, which counts what glibc's malloc keeps of freed memory as
well as live tensors. ``heap_policy`` runs a stage under one of two glibc policies: giving large frees back
to the OS at once (the resident set follows the live tensors) or reusing them (much faster on CPU;
reports/perf/).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import resource
from collections.abc import Iterator
from pathlib import Path

import torch

from harness.train.cpu_allocator import malloc_allocator_available, use_malloc_allocator

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
# lean: allocations of 128 KiB or more get their own mapping, unmapped on free, so the resident set follows
# the live tensors (glibc's default starts there but raises itself to the largest freed mapping; after a
# model's weights are freed, activations then come from a heap whose freed chunks stay resident). Every
# fresh activation then faults its pages in: SmolLM2 NF4 training ran at 160 tokens/s against 285 with the
# fast heap, at 1,003 against 1,294 MiB peak RSS (reports/perf/bench_cpu.md).
LEAN_MMAP_THRESHOLD = 128 * 1024
# fast: glibc's own ceiling for its dynamic threshold, fixed: freed activations are reused from the heap,
# which keeps freed chunks resident.
FAST_MMAP_THRESHOLD = 32 * 2**20
# Free bytes at the top of the heap above which free() gives them back to the OS. Once the mmap threshold is
# fixed, glibc's dynamic thresholds are off and this one stays at its default, 128 KiB: under the fast heap
# each free that left more than that at the top shrank the heap, and the next tensor faulted the same pages
# in again (3.4 million page faults and ~10 s of kernel time in one quickstart evaluation in fp32; 0.6 million
# and ~2 s after, all from lm_head chunks above the mmap threshold). Lean keeps the default; fast never trims
# on free (the largest value mallopt takes), so freed chunks stay resident.
LEAN_TRIM_THRESHOLD = 128 * 1024
FAST_TRIM_THRESHOLD = 2**31 - 1


# glibc 2.38 first serves an aligned request (torch's CPU tensors are posix_memalign(64)) from a freed
# chunk in its bins. Before, it always asks for alignment + MINSIZE bytes more than the request, so a freed
# activation that cannot merge with a neighbour is never reused by the next one of its size: under the fast
# heap every such free strands its pages (``benchmarks/heap_reuse.py``: +18 MiB a round on 2.36, 0 on 2.41).
# ``harness.train.cpu_allocator`` avoids aligned requests altogether where it builds.
ALIGNED_REUSE_GLIBC = (2, 38)


@functools.cache
def glibc_version() -> tuple[int, int] | None:
    """(major, minor) of the glibc this process runs on (``gnu_get_libc_version``, not the one the executable
    was linked against); None under another C library."""
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
        major, minor = version.split(".")[:2]
        return (int(major), int(minor)) if name == "glibc" else None
    except (AttributeError, OSError, TypeError, ValueError):
        return None


def rss_bytes(field: str = "VmRSS") -> int:
    """A resident-set line of /proc/self/status in bytes: ``VmRSS`` (now), ``VmHWM`` (peak since the last
    reset), ``RssFile`` (file-backed: mapped checkpoints), ``RssAnon``; 0 where /proc is missing."""
    if not _STATUS.exists():
        return 0
    prefix = f"{field}:"
    line = next((x for x in _STATUS.read_text().splitlines() if x.startswith(prefix)), None)
    return int(line.split()[1]) * 1024 if line else 0


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """glibc, or None under another C library (musl, macOS), where the allocator policy is left as it is."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


def _set_heap_policy(lean: bool) -> bool:
    """Fix glibc's mmap and trim thresholds (``LEAN_*`` or ``FAST_*``) and trim the heap (``malloc_trim``
    returns its free pages); False where the C library is not glibc. Cheap, idempotent.
    The first call also makes torch's CPU tensors come from plain malloc, which glibc reuses exactly
    (``harness.train.cpu_allocator``)."""
    libc = _glibc()
    if libc is None:
        return False
    use_malloc_allocator()
    libc.mallopt(_M_MMAP_THRESHOLD, LEAN_MMAP_THRESHOLD if lean else FAST_MMAP_THRESHOLD)
    libc.mallopt(_M_TRIM_THRESHOLD, LEAN_TRIM_THRESHOLD if lean else FAST_TRIM_THRESHOLD)
    return trim_heap()


def cpu_tensors_from_malloc() -> bool:
    """Whether this process's jobs get their CPU tensors from the malloc allocator: on glibc, where
    ``_set_heap_policy`` installs it, and where it builds (``harness.train.cpu_allocator``)."""
    return _glibc() is not None and malloc_allocator_available()


_POLICIES: list[bool] = []  # the policies of the stages running now, innermost last


@contextlib.contextmanager
def heap_policy(lean: bool) -> Iterator[bool]:
    """Run a stage under the lean or the fast heap; after it the enclosing stage's policy is back, or the
    fast one outside every stage (glibc's own ceiling, fixed). A job loads lean (each full-precision tensor
    goes back to the OS once quantized), then trains and evaluates under its ``cpu_heap``. Yields False
    where the C library is not glibc (the policy is left as it is)."""
    _POLICIES.append(lean)
    try:
        yield _set_heap_policy(lean)
    finally:
        _POLICIES.pop()
        _set_heap_policy(_POLICIES[-1] if _POLICIES else False)


def trim_heap() -> bool:
    """Hand the heap's free pages back to the OS (``malloc_trim``); False where the C library is not glibc."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def reset_peak_memory(device: torch.device) -> None:
    """Start a fresh peak: CUDA resets its allocator stats; Linux resets the RSS high-water mark (VmHWM)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    elif _CLEAR_REFS.exists():
        # where this is not permitted the peak covers the whole process lifetime
        with contextlib.suppress(OSError):
            _CLEAR_REFS.write_text("5")


def peak_memory(device: torch.device) -> dict[str, int | str]:
    """Peak since the last reset: ``cuda_allocated`` (+ reserved) on CUDA, ``rss`` (resident set) on CPU."""
    if device.type == "cuda":
        return {
            "peak_memory_bytes": int(torch.cuda.max_memory_allocated(device)),
            "peak_memory_reserved_bytes": int(torch.cuda.max_memory_reserved(device)),
            "peak_memory_kind": "cuda_allocated",
        }
    # no /proc: fall back to the process-lifetime peak
    hwm = rss_bytes("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak_memory_bytes": int(hwm), "peak_memory_kind": "rss"}


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def heap_stats() -> dict[str, int]:
    """glibc's heap now (``mallinfo2``, every arena): ``heap`` bytes obtained for the heap (brk and arena
    mappings), ``in_use`` of them, ``free`` of them (kept resident unless trimmed), ``mapped`` bytes in
    chunks of their own mapping (at or above the mmap threshold); empty where the C library is not glibc
    or older than 2.33."""
    libc = _glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return {}
    libc.mallinfo2.restype = _Mallinfo2
    info = libc.mallinfo2()
    return {"heap": info.arena, "in_use": info.uordblks, "free": info.fordblks, "mapped": info.hblkhd}
