"""torch's CPU tensors from plain malloc (harness.train.cpu_allocator): installed by the heap policy, aligned
as torch asks, a freed tensor's chunk served again to the next of its size (its pages still resident under
the fast heap), and a pointer from torch's own allocator handed back through it freed by torch's allocator."""

from __future__ import annotations

import ctypes
import resource

import pytest
import torch

from harness.train.cpu_allocator import malloc_allocations, raw_deallocate
from harness.train.meters import cpu_tensors_from_malloc, heap_policy

pytestmark = pytest.mark.skipif(
    not cpu_tensors_from_malloc(),
    reason="the malloc allocator needs glibc and a C++ compiler (without them torch's allocator stays)",
)
MIB = 2**20


def test_the_heap_policy_makes_cpu_tensors_come_from_malloc_64_byte_aligned():
    with heap_policy(lean=False):
        before = malloc_allocations()
        tensors = [torch.empty(n) for n in (1, 3, 1000, 5 * MIB)]
        assert malloc_allocations() - before == len(tensors)
        assert all(t.data_ptr() % 64 == 0 for t in tensors)
        assert torch.empty(0).data_ptr() == 0  # no bytes, no allocation, as torch's own allocator


def test_a_freed_tensor_is_served_again_to_the_next_of_its_size():
    """Under the fast heap: an 18 MiB tensor freed while a small one allocated after it stays live, round
    after round (glibc 2.36 with torch's posix_memalign grew the heap by 18 MiB every round,
    benchmarks/heap_reuse.py); through malloc the same chunk comes back each time."""
    kept, addresses = [], []
    with heap_policy(lean=False):
        for _ in range(6):
            big = torch.empty(18 * MIB // 4)
            kept.append(torch.empty(16 * 1024))
            addresses.append(big.data_ptr())
            del big
    assert len(set(addresses[1:])) == 1, [hex(a) for a in addresses]


def page_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def test_under_the_fast_heap_the_next_tensor_reuses_the_freed_ones_pages():
    """A 16 MiB tensor (4,096 pages) freed at the top of the heap stays resident under the fast heap (glibc's
    trim threshold fixed high, harness.train.meters.FAST_TRIM_THRESHOLD), so the next of its size faults in
    next to nothing; with glibc's 128 KiB default the heap shrank on every free and each one faulted in all
    4,096 pages again. The bound, an eighth of them, leaves room for whatever else the process touches."""
    pages = 16 * MIB // resource.getpagesize()
    with heap_policy(lean=False):
        torch.empty(16 * MIB // 4).fill_(1.0)  # the heap grows to hold one once
        faults = []
        for _ in range(3):
            before = page_faults()
            torch.empty(16 * MIB // 4).fill_(1.0)
            faults.append(page_faults() - before)
    assert max(faults) < pages // 8, (faults, pages)


def test_a_pointer_from_torchs_own_allocator_is_freed_by_it():
    """oneDNN frees its scratch buffers through the current allocator's raw deleter, so one allocated by
    torch's allocator before the switch (posix_memalign(64), as c10's alloc_cpu) can come back through this
    one: it must go to c10's free_cpu, not be read as one of ours (which would free a wild pointer)."""
    with heap_policy(lean=False):
        libc = ctypes.CDLL(None)
        for size in (64, 1 * MIB, 40 * MIB):  # a small chunk, a heap chunk, an mmapped one
            pointer = ctypes.c_void_p()
            assert libc.posix_memalign(ctypes.byref(pointer), 64, size) == 0
            ctypes.memset(pointer, 0xAB, size)
            raw_deallocate(pointer.value)
        ours = torch.empty(1000)
        assert ours.data_ptr() % 64 == 0  # the allocator still works after those frees
