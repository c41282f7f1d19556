"""Does glibc's fast heap reuse a freed activation? An MLP-shaped matmul pair, repeated, per dtype.

``python -m benchmarks.heap_reuse [--rounds 6]`` runs, in a fresh process per case (MKL reads its settings
at start), ``y = x @ up.T`` then ``z = y @ up`` with SmolLM2's MLP shapes at 8,192 tokens, freeing both,
``--rounds`` times under ``cpu_heap=fast`` (``harness.train.meters.heap_policy``), and prints how glibc's
heap (``mallinfo2``) grows per round. Identical rounds should reuse the same chunks (growth 0). In fp32 the
48 MiB ``y`` is mmapped and the 18 MiB ``z`` comes from the heap; when anything allocated during the
product stays live above ``z`` (a buffer MKL caches, a tensor), the freed ``z`` cannot merge into the
heap's top, and torch's 64-byte-aligned request for the next ``z`` is not served from it: a new chunk
each round. Which case grows depends on that layout (two runs of the fp32 cases differed: growth every
round with MKL's buffer cache on in one, with it off, ``MKL_DISABLE_FAST_MM=1``, in the other). The same
with glibc alone (``libc_rounds``) is deterministic: an 18 MiB ``posix_memalign(64)`` freed under a small
allocation kept after it is never reused, an 18 MiB ``malloc`` is. That is glibc before 2.38
(``harness.train.meters.ALIGNED_REUSE_GLIBC``): under 2.41 (``benchmarks/with_debian_glibc.sh trixie -m
benchmarks.heap_reuse``, 2026-12-06) the aligned chunk and both matmul cases are reused (0 MiB a round after
the first; docs/performance.md). The matmul cases run with torch's own allocator (``QLORA_BENCH_NATIVE=0``)
unless the row says ``malloc``: the harness's allocator (``harness.train.cpu_allocator``, which the heap
policy installs), whose plain ``malloc`` requests glibc reuses on any version.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys

from harness.train.meters import heap_policy, heap_stats

# (dtype, MKL_DISABLE_FAST_MM, CPU allocator)
CASES = [
    ("float32", False, "torch"),
    ("float32", True, "torch"),
    ("bfloat16", False, "torch"),
    ("float32", False, "malloc"),
    ("bfloat16", False, "malloc"),
]
TOKENS, HIDDEN, WIDEST = 8192, 576, 1536  # SmolLM2-135M's MLP at the quickstart's largest micro-batch
MIB = 2**20


def matmul_rounds(dtype_name: str, rounds: int) -> list[dict[str, int]]:
    """glibc's heap (``heap_stats``) after each round of ``z = (x @ up.T) @ up``, both freed."""
    import torch

    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    with heap_policy(lean=False):
        x = torch.randn(TOKENS, HIDDEN).to(dtype)
        up = torch.randn(WIDEST, HIDDEN).to(dtype)
        heap = []
        for _ in range(rounds):
            y = x @ up.T
            z = y @ up
            del y, z
            heap.append(heap_stats())
    return heap


def libc_rounds(aligned: bool, rounds: int, nbytes: int = 18 * MIB) -> list[float]:
    """Heap growth (MiB, from ``sbrk``) per round of: allocate ``nbytes`` (64-byte aligned as torch asks, or
    plain), allocate 64 KiB and keep it, free the first; under the fast heap, without torch."""
    libc = ctypes.CDLL(None)  # the C library this process already runs on
    libc.malloc.restype = libc.sbrk.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    kept = []
    with heap_policy(lean=False):
        tops = [libc.sbrk(0)]
        for _ in range(rounds):
            if aligned:
                chunk = ctypes.c_void_p()
                libc.posix_memalign(ctypes.byref(chunk), 64, nbytes)
                chunk = chunk.value
            else:
                chunk = libc.malloc(nbytes)
            kept.append(libc.malloc(64 * 1024))
            libc.free(chunk)
            tops.append(libc.sbrk(0))
    return [(b - a) / MIB for a, b in zip(tops[1:], tops[2:], strict=False)]


WORKERS = {
    "malloc": lambda rounds: libc_rounds(False, rounds),
    "memalign": lambda rounds: libc_rounds(True, rounds),
    "float32": lambda rounds: matmul_rounds("float32", rounds),
    "bfloat16": lambda rounds: matmul_rounds("bfloat16", rounds),
}


def spawn(worker: str, rounds: int, env: dict[str, str] | None = None):
    """``worker``'s result from a fresh process (MKL and glibc start from nothing)."""
    cmd = [sys.executable, "-m", "benchmarks.heap_reuse", "--worker", worker, "--rounds", str(rounds)]
    return json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout)


def joined(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=6, help="identical rounds per case")
    p.add_argument("--worker", choices=tuple(WORKERS), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args.rounds)))
        return
    print("| dtype | MKL_DISABLE_FAST_MM | allocator | heap growth per round (MiB) | free at the end (MiB) |")
    print("|---|---|---|---|---|")
    for dtype_name, no_fast_mm, allocator in CASES:
        native = "1" if allocator == "malloc" else "0"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "QLORA_BENCH_NATIVE": native}
        env |= {"MKL_DISABLE_FAST_MM": "1"} if no_fast_mm else {}
        heap = spawn(dtype_name, args.rounds, env)
        growth = [(b["heap"] - a["heap"]) / MIB for a, b in zip(heap, heap[1:], strict=False)]
        setting = "1" if no_fast_mm else "unset"
        print(f"| {dtype_name} | {setting} | {allocator} | {joined(growth)} | {heap[-1]['free'] / MIB:.1f} |")
    print("\n| glibc alone: 18 MiB chunk, 64 KiB kept after it | heap growth per round (MiB) |\n|---|---|")
    for way, name in (("malloc", "malloc"), ("memalign", "posix_memalign(64)")):
        print(f"| `{name}` | {joined(spawn(way, args.rounds))} |")


if __name__ == "__main__":
    main()
