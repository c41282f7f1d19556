"""Benchmark the 4-bit storage types on one 4096x4096 N(0, 0.02) fp32 weight (seed 0).

For every 4-bit type (bitsandbytes nf4/fp4, Int4, the codebook types) x block size x double quant: MSE,
bits/param (measured from the stored tensors), and the median quantize, dequantize and frozen-layer
forward (dequantize + matmul, x: 1x256x4096 in the compute dtype) times after a warm-up, plus every type's
time over bitsandbytes NF4's. The types of one (block size, double quant) cell are timed in turns
(round-robin), so a ratio is never skewed by load that came and went between them. Prints a Markdown
report and writes it to --out; it asserts nothing about time. The user-defined ``codebook`` type runs the
same code as the built-in codebooks and is left out.

Usage: ``python benchmarks/bench_quant.py [--repeats 3] [--blocksizes 32 64 ...] [--dtype fp32|bf16]
[--out PATH]``
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import bitsandbytes
import torch

from harness.quant import (
    ALLOWED_BLOCKSIZES,
    FLOAT_DTYPES,
    FOUR_BIT_TYPES,
    STORAGE_SPECS,
    QuantLinear,
    quantize,
)

SIZE = 4096
TOKENS = 256
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "reports" / "quant" / "bench_cpu.md"
TYPES = tuple(s for s in FOUR_BIT_TYPES if not STORAGE_SPECS[s].takes_codebook)
# Forward (dequantize + matmul) over bitsandbytes NF4's: the codebook types within 1.2x (issues 18, 25),
# the formats after NF4 within 1.5x (issue 28); by the module that defines the type's spec.
GOALS = {"harness.quant.codebook": 1.2, "harness.quant.block_optimal": 1.5, "harness.quant.mx": 1.5}


@dataclass
class Row:
    storage: str
    blocksize: int
    double_quant: bool
    mse: float
    bits_per_param: float
    theory: float
    quantize_ms: float
    dequantize_ms: float
    forward_ms: float


def timed_in_turns(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1
) -> tuple[dict[str, float], dict[str, object]]:
    """Median milliseconds per function and its last result, calling the functions in turns so that
    they share the machine's state."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    results: dict[str, object] = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            results[name] = fn()
            samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in samples.items()}, results


def bench_cell(
    weight: torch.Tensor, x: torch.Tensor, blocksize: int, double_quant: bool, repeats: int
) -> list[Row]:
    """All 4-bit types at one block size and double-quant setting; dequantize and forward in x's dtype."""
    quantize_ms, qweights = timed_in_turns(
        {
            s: lambda s=s: quantize(weight, s, blocksize, double_quant)
            for s in TYPES
            if blocksize in STORAGE_SPECS[s].blocksizes  # e.g. 16: NVFP4's, which bitsandbytes refuses
        },
        repeats,
        warmup=0,
    )
    dequantize_ms, _ = timed_in_turns(
        {s: lambda q=q: q.dequantize(x.dtype) for s, q in qweights.items()}, repeats
    )
    layers = {s: QuantLinear(q, None, x.dtype) for s, q in qweights.items()}
    with torch.inference_mode():
        forward_ms, _ = timed_in_turns({s: lambda m=m: m(x) for s, m in layers.items()}, repeats)
    return [
        Row(
            storage=s,
            blocksize=blocksize,
            double_quant=double_quant,
            mse=(q.dequantize() - weight).pow(2).mean().item(),
            bits_per_param=q.bits_per_param,
            theory=q.spec.bits_per_param(q.args, q.shape),
            quantize_ms=quantize_ms[s],
            dequantize_ms=dequantize_ms[s],
            forward_ms=forward_ms[s],
        )
        for s, q in qweights.items()
    ]


def cpu_model() -> str:
    """lscpu's model name (platform.processor() is often empty or just the architecture)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    names = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")]
    return names[0] if names else "unknown"


def git_commit() -> str:
    """The checkout's commit, marked dirty when the harness or benchmarks differ from it."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "harness", "benchmarks"], cwd=root)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + (" (with uncommitted changes)" if dirty.returncode else "")


def header(dense_ms: float, load_before: tuple[float, ...], seconds: float, x: torch.Tensor) -> str:
    load_after = os.getloadavg()
    return "\n".join(
        [
            "# Storage-type benchmark (CPU)",
            "",
            f"- date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}",
            f"- command: `{shlex.join(sys.orig_argv)}`, commit {git_commit()}",
            f"- cpu: {cpu_model()} (platform.processor: {platform.processor() or 'empty'}, "
            f"{platform.machine()}), {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
            f"capability {torch.backends.cpu.get_cpu_capability()}",
            f"- torch {torch.__version__}, bitsandbytes {bitsandbytes.__version__}, "
            f"python {platform.python_version()}",
            f"- load average (1/5/15 min) before {fmt_load(load_before)}, after {fmt_load(load_after)}; "
            f"a load above the core count ({os.cpu_count()}) means other jobs shared the cores: absolute "
            "times are then noisy, the ratios less so (the types are timed in turns)",
            f"- weight {SIZE}x{SIZE} fp32 N(0, 0.02), seed 0; compute dtype {x.dtype} (dequantize output and "
            f"forward input 1x{TOKENS}x{SIZE}); dense forward in it (x @ W.T) {dense_ms:.1f} ms; "
            f"total run {seconds:.0f} s",
            "- times: median ms after one warm-up (quantize: no warm-up); bits/param measured from the "
            "stored tensors (codebooks included), theory = the type's formula (StorageSpec.bits_per_param); "
            "dq: the setting asked for (types with 8-bit scales, mxfp4/nvfp4, ignore it)",
        ]
    )


def fmt_load(load: tuple[float, ...]) -> str:
    return "/".join(f"{v:.1f}" for v in load)


def markdown(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def main_table(rows: list[Row]) -> str:
    headers = [
        "type",
        "block",
        "dq",
        "bits/param",
        "theory",
        "MSE",
        "quantize ms",
        "dequantize ms",
        "forward ms",
    ]
    body = [
        [
            r.storage,
            str(r.blocksize),
            "yes" if r.double_quant else "no",
            f"{r.bits_per_param:.4f}",
            f"{r.theory:.4f}",
            f"{r.mse:.3e}",
            f"{r.quantize_ms:.0f}",
            f"{r.dequantize_ms:.1f}",
            f"{r.forward_ms:.1f}",
        ]
        for r in rows
    ]
    return markdown(headers, body)


def goal_verdict(storage: str, forward_ratio: float) -> str:
    """Whether a type meets its forward goal over NF4 (GOALS), and by how much it misses."""
    goal = GOALS.get(type(STORAGE_SPECS[storage]).__module__)
    if goal is None:
        return "-"
    if forward_ratio <= goal:
        return f"met (<= {goal}x)"
    return f"MISSED {goal}x by {forward_ratio / goal - 1:.0%}"


def ratio_table(rows: list[Row]) -> str:
    """Every type over bitsandbytes NF4, per (block size, double quant); below 1 means faster than NF4."""
    cells = {(r.storage, r.blocksize, r.double_quant): r for r in rows}
    body = []
    for r in rows:
        if r.storage == "nf4" or ("nf4", r.blocksize, r.double_quant) not in cells:
            continue
        nf4 = cells["nf4", r.blocksize, r.double_quant]
        forward_ratio = r.forward_ms / nf4.forward_ms
        body.append(
            [
                r.storage,
                str(r.blocksize),
                "yes" if r.double_quant else "no",
                f"{nf4.dequantize_ms:.1f}",
                f"{r.dequantize_ms:.1f}",
                f"{r.dequantize_ms / nf4.dequantize_ms:.2f}",
                f"{nf4.forward_ms:.1f}",
                f"{r.forward_ms:.1f}",
                f"{forward_ratio:.2f}",
                goal_verdict(r.storage, forward_ratio),
            ]
        )
    headers = [
        "type",
        "block",
        "dq",
        "NF4 deq ms",
        "type deq ms",
        "type/NF4 deq",
        "NF4 fwd ms",
        "type fwd ms",
        "type/NF4 fwd",
        "goal fwd (codebooks 1.2x, new formats 1.5x)",
    ]
    return markdown(headers, body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--blocksizes", type=int, nargs="+", default=list(ALLOWED_BLOCKSIZES))
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="compute dtype")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    start, load_before = time.perf_counter(), os.getloadavg()
    weight = torch.randn(SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 0.02
    x = torch.randn(1, TOKENS, SIZE, generator=torch.Generator().manual_seed(1)).to(FLOAT_DTYPES[args.dtype])
    dense = weight.to(x.dtype)
    with torch.inference_mode():
        dense_ms = timed_in_turns({"dense": lambda: x @ dense.T}, args.repeats)[0]["dense"]
    rows: list[Row] = []
    for blocksize in args.blocksizes:
        for double_quant in (False, True):
            rows += bench_cell(weight, x, blocksize, double_quant, args.repeats)
            print(f"done: block {blocksize}, double quant {double_quant}", file=sys.stderr, flush=True)

    report = "\n\n".join(
        [
            header(dense_ms, load_before, time.perf_counter() - start, x),
            "## All types\n\n" + main_table(rows),
            "## Each type / bitsandbytes NF4 (same run, timed in turns)\n\n" + ratio_table(rows),
        ]
    )
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report + "\n")


if __name__ == "__main__":
    main()
