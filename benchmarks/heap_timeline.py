"""``python -m benchmarks.heap_timeline OUT_DIR [--layers N] [OVERRIDE ...]``

The resident set and glibc's heap (``harness.train.meters.heap_stats``: mallinfo2) sampled every 0.1 s
through one job, run in this process (``harness.job.run_job``; the config is the quickstart NF4 job without
evaluation, plus the overrides). ``benchmarks.memory_phases`` reads the heap at phase ends from the second
step on, as the memory model's phases are defined; this timeline also shows the first step, where on glibc
before 2.38 the fast heap grows while the live bytes stay flat (docs/performance.md). Writes
``OUT_DIR/heap_timeline.json`` (rows: seconds, rss, heap, in_use, free, mapped) beside the job's
``result.json`` and prints the sample at the resident-set peak. ``--layers N`` also reads the heap at each of
the first N decoder-layer forwards of the forward passes (a global forward pre-hook, which leaves autograd
as it is; checkpointing's recompute in backward does not pass through it) and prints them, heap and in use
in MiB.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from torch import nn
from torch.nn.modules.module import register_module_forward_pre_hook

from harness.config import register_configs
from harness.job import run_job
from harness.paths import CONF_DIR
from harness.train.meters import heap_stats, rss_bytes

BASE = ["+sweep=quickstart", "quant=nf4", "eval.tasks=[]"]
FIELDS = ("rss", "heap", "in_use", "free", "mapped")


def sample(rows: list[tuple], stop: threading.Event, every: float = 0.1) -> None:
    start = time.perf_counter()
    while not stop.is_set():
        heap = heap_stats()
        rows.append((time.perf_counter() - start, rss_bytes(), *(heap.get(k, 0) for k in FIELDS[1:])))
        stop.wait(every)


def layer_events(limit: int) -> list[tuple[int, int, int]]:
    """(layer, heap MiB, in use MiB) as each decoder layer's forward starts, appended by a global forward
    pre-hook (a decoder layer: a module whose class name ends in ``DecoderLayer``, numbered in the order
    of their first forward)."""
    events: list[tuple[int, int, int]] = []
    index: dict[int, int] = {}

    def record(module: nn.Module, args: tuple) -> None:
        if len(events) < limit and type(module).__name__.endswith("DecoderLayer"):
            heap = heap_stats()
            layer = index.setdefault(id(module), len(index))
            events.append((layer, heap.get("heap", 0) >> 20, heap.get("in_use", 0) >> 20))

    register_module_forward_pre_hook(record)
    return events


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path, help="the job directory")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides after " + " ".join(BASE))
    parser.add_argument("--layers", type=int, default=0, help="heap at the first N decoder-layer forwards")
    args = parser.parse_intermixed_args(argv)
    events = layer_events(args.layers) if args.layers else []
    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[*BASE, *args.overrides])
    rows: list[tuple] = []
    stop = threading.Event()
    sampler = threading.Thread(target=sample, args=(rows, stop), daemon=True)
    sampler.start()
    result = run_job(cfg, args.out)
    stop.set()
    sampler.join()
    timeline = {"fields": ["seconds", *FIELDS], "rows": rows, "layer_events": events}
    (args.out / "heap_timeline.json").write_text(json.dumps(timeline))
    for layer, heap, in_use in events:
        print(f"layer {layer}: heap {heap}, in use {in_use}")
    peak = max(rows, key=lambda r: r[1])
    mib = ", ".join(f"{name} {value / 2**20:,.0f}" for name, value in zip(FIELDS, peak[1:], strict=True))
    print(f"status {result.status}; timings {result.timings_s}")
    print(f"resident-set peak at {peak[0]:.1f} s (MiB): {mib}")
    if result.train is not None:
        estimate = result.train.memory_estimate or {}
        print(
            f"job's peak {result.train.peak_memory_bytes / 2**20:,.0f} MiB, "
            f"estimate {estimate.get('total', 0) / 2**20:,.0f} MiB"
        )


if __name__ == "__main__":
    main()
