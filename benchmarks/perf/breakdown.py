"""Where a SmolLM2-135M job's peak resident set goes, stage by stage, beside the memory model's terms.

``python -m benchmarks.perf.breakdown [--compute-dtype fp32 bf16] [--out reports/perf/memory_breakdown.md]``;
each dtype runs in its own process: the job's own steps (streamed load + NF4 quantization, LoRA, training
with checkpointing, r 16, batch 4 x ≤ 256 Alpaca tokens) with the resident set read after each stage. The
memory model's baseline is the resident set before any weight is read (libraries, tokenizer, data), as a
job with a streamed load takes it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchmarks.perf.render import job_setup, mib, table
from benchmarks.perf.training_paths import MODEL, Settings, harness_batches
from harness.device import device_name

SETTINGS = Settings(steps=4, warmup=1, rank=16, seq_len=256, batch_size=4, seed=0, compute_dtype="fp32")


def stages(s: Settings) -> dict:
    """Resident set after each stage of a job (the job's own stages, harness.recipe), the training peak, and
    the memory model's estimate."""
    from harness.config import CpuHeap
    from harness.data.collate import collate
    from harness.recipe import Timer, attach_adapters, finish, memory_estimate, prepare_model, setup
    from harness.train.loop import TrainedShapes, prepare_for_training, train_step
    from harness.train.meters import heap_policy, reset_peak_memory, rss_bytes

    job = s.job_config()
    runtime = setup(job)
    rss = {"baseline (libraries)": rss_bytes()}
    base = finish(prepare_model(job, runtime, Timer()))
    rss["+ data (tokenized Alpaca)"] = base.baseline_rss  # a streamed load: RSS before any weight is read
    rss["+ quantized model (streamed load)"] = rss_bytes()
    model, _ = attach_adapters(job, base)
    with heap_policy(lean=job.cpu_heap == CpuHeap.lean):
        setup_ = prepare_for_training(model, job.train)
        rss["+ LoRA (peft import, adapters), training setup"] = rss_bytes()
        reset_peak_memory(runtime.device)
        shapes = TrainedShapes()
        for step, indices in enumerate(harness_batches(base.examples, job)):
            batch = collate([base.examples[i] for i in indices], base.loaded.tokenizer.pad_token_id)
            shapes.add(batch, setup_.response_rows)
            train_step(setup_, [batch])
            if step == 0:
                rss["after the first step (optimizer state exists)"] = rss_bytes()
        rss["training peak (VmHWM)"] = rss_bytes("VmHWM")
    estimate = memory_estimate(job, runtime, base, shapes.largest, len(shapes.distinct))
    return {
        "rss": rss,
        "estimate": estimate["memory_estimate"],
        "dtype": str(runtime.dtype).removeprefix("torch."),
        "batch": vars(shapes.largest),
    }


def section(r: dict) -> str:
    stage_rows, previous = [], 0
    for name, value in r["rss"].items():
        stage_rows.append([name, mib(value), mib(value - previous) if previous else ""])
        previous = value if "peak" not in name else previous
    terms = r["estimate"]["terms"]
    baseline = terms["baseline_rss"]
    measured, predicted = r["rss"]["training peak (VmHWM)"] - baseline, r["estimate"]["total"] - baseline
    term_rows = [[name, mib(value)] for name, value in terms.items()]
    term_rows.append([f"**total** ({r['estimate']['peak_phase']} phase)", mib(r["estimate"]["total"])])
    return "\n\n".join(
        [
            f"## {r['dtype']} compute (largest batch {r['batch']})",
            table(["stage", "resident MiB", "added MiB"], stage_rows),
            table(["memory model term", "MiB"], term_rows),
            f"Above the baseline: memory model {mib(predicted)} MiB, measured {mib(measured)} MiB, error "
            f"**{predicted / measured - 1:+.1%}** (bound ±15 %).",
        ]
    )


def spawn(dtype: str) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.perf.breakdown", "--worker", "--compute-dtype", dtype]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.perf.breakdown", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--compute-dtype", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"])
    p.add_argument("--out", type=Path, default=Path("reports/perf/memory_breakdown.md"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(stages(replace(SETTINGS, compute_dtype=args.compute_dtype[0]))))
        return
    load_before = os.getloadavg()
    results = [spawn(dtype) for dtype in args.compute_dtype]
    header = (
        f"# Peak memory of a {MODEL} job, stage by stage (CPU)\n\n"
        f"- date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}; command: "
        f"`python -m benchmarks.perf.breakdown`; machine: {device_name(torch.device('cpu'))}, "
        f"{os.cpu_count()} cores; load {'/'.join(f'{v:.1f}' for v in load_before)} → "
        f"{'/'.join(f'{v:.1f}' for v in os.getloadavg())}\n"
        f"- setup: {job_setup(SETTINGS)}; resident set from /proc/self/status, peak = VmHWM reset at train "
        "start"
    )
    text = "\n\n".join([header, *map(section, results)]) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    main()
