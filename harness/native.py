"""Small native libraries: compiled on first use with the system compiler into the per-user cache, loaded
with ctypes (the way bitsandbytes loads its library; no Python extension module, no build step at install).

Three use it: the 4-bit decode (``harness.quant.native``) and the LoRA dropout mask
(``harness.model.dropout``), plain C loops on torch's OpenMP threads, and the CPU tensor allocator
(``harness.train.cpu_allocator``, C++ against torch's own headers). Where no compiler is found or every
build fails, :func:`compiled_library` returns None and the caller keeps its torch path, so nothing needs a
compiler to work. ``QLORA_BENCH_NATIVE=0`` turns every compiled path off.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from harness.paths import default_cache_dir

# How each language is built: (the compiler's environment variable, its default, the source file's suffix).
LANGUAGES = {"c": ("CC", "cc", ".c"), "c++": ("CXX", "c++", ".cpp")}
# A C loop split over OpenMP threads: -fopenmp links libgomp by its soname, so the loader hands the library
# the runtime torch already loaded: one thread team, which torch.set_num_threads sizes. A pool of our own
# threads had to share the cores with that team's threads while they spun after torch's last parallel op
# (+4 ms per 4096x4096 decode after a double-quantized absmax). Without OpenMP (e.g. clang without libomp)
# it builds serial.
OPENMP_C_FLAG_SETS = (("-O3", "-shared", "-fPIC", "-fopenmp"), ("-O3", "-shared", "-fPIC"))


def openmp_threads(work: int, min_work_per_thread: int) -> int:
    """Threads for a compiled loop over ``work`` units: torch's count, fewer where a thread would get less
    than ``min_work_per_thread`` (a hand-off then costs more than it saves), at least one."""
    return max(1, min(torch.get_num_threads(), work // min_work_per_thread))


def native_enabled() -> bool:
    """False when ``QLORA_BENCH_NATIVE=0`` asks for the torch paths only."""
    return os.environ.get("QLORA_BENCH_NATIVE", "1") != "0"


def compiled_library(
    name: str,
    source: str,
    language: str,
    flag_sets: Sequence[tuple[str, ...]],
    libraries: tuple[str, ...] = (),
) -> ctypes.CDLL | None:
    """``source`` built as a shared library and loaded; the first of ``flag_sets`` that builds wins (e.g.
    with OpenMP, then without). ``libraries`` are linked after the source. Built once per source, compiler
    and flags into ``default_cache_dir()/NAME-KEY.so``, written atomically (concurrent jobs never load a
    half-written file); None when disabled, without a compiler, or where no flag set builds."""
    variable, default, suffix = LANGUAGES[language]
    compiler = shutil.which(os.environ.get(variable, default))
    if not native_enabled() or compiler is None:
        return None
    for flags in flag_sets:
        library = _build(name, source, suffix, [compiler, *flags], libraries)
        if library is not None:
            return library
    return None


def _build(
    name: str, source: str, suffix: str, command: list[str], libraries: tuple[str, ...]
) -> ctypes.CDLL | None:
    """``command`` (compiler and flags) + the source file + ``libraries`` + ``-o`` the library."""
    key = hashlib.sha256("\0".join([source, *command, *libraries]).encode()).hexdigest()[:16]
    target = default_cache_dir() / f"{name}-{key}.so"
    try:
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
                file, built = Path(scratch) / f"{name}{suffix}", Path(scratch) / f"{name}.so"
                file.write_text(source)
                subprocess.run(
                    [*command, str(file), *libraries, "-o", str(built)], check=True, capture_output=True
                )
                os.replace(built, target)
        return ctypes.CDLL(str(target))
    except (OSError, subprocess.CalledProcessError):
        return None
