"""Peak-memory and device meters: CUDA allocator statistics, or the process's peak RSS on CPU."""

from __future__ import annotations

import contextlib
import resource
from pathlib import Path

import torch

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def reset_peak_memory(device: torch.device) -> None:
    """Start a fresh peak: CUDA resets its allocator stats; Linux resets the RSS high-water mark (VmHWM)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    elif _CLEAR_REFS.exists():
        # where this is not permitted the peak covers the whole process lifetime
        with contextlib.suppress(OSError):
            _CLEAR_REFS.write_text("5")


def _vm_hwm_bytes() -> int | None:
    if not _STATUS.exists():
        return None
    for line in _STATUS.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


def peak_memory(device: torch.device) -> dict[str, int | str]:
    """Peak since the last reset: ``cuda_allocated`` (+ reserved) on CUDA, ``rss`` (resident set) on CPU."""
    if device.type == "cuda":
        return {
            "peak_memory_bytes": int(torch.cuda.max_memory_allocated(device)),
            "peak_memory_reserved_bytes": int(torch.cuda.max_memory_reserved(device)),
            "peak_memory_kind": "cuda_allocated",
        }
    hwm = _vm_hwm_bytes()
    if hwm is None:  # no /proc: fall back to the process-lifetime peak
        hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak_memory_bytes": int(hwm), "peak_memory_kind": "rss"}
