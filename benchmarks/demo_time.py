"""``python -m benchmarks.demo_time [--out reports/perf/demo_time_avx2.md] [OVERRIDE ...]``

How long ``make demo`` takes after set-up, and why: the quickstart sweep and its report, run as ``make demo``
runs them (``qlora-bench -m +sweep=quickstart``, then ``qlora-report``; here into ``runs/demo_time`` with
``+force=true``, so every job runs), with each job's stage times read from its ``result.json``. This CPU's
matmul rate on the model's layer shapes (``benchmarks.perf.training_limit``, the job's compute dtype) is
probed just before and just after: a shared 2-core machine's speed drifts by up to ~2x between hours, and the
probes say which hour a time was measured in. The goal is issue 25's: 8 minutes on a 2-core AVX2-only CPU
(fp32 compute), 4 on an AVX-512 BF16 one. Extra arguments are Hydra overrides for every job (e.g.
``train.gradient_checkpointing=true`` to time the paper's recomputation).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

from benchmarks.perf.__main__ import training_limit  # noqa: E402
from benchmarks.perf.eval_cost import LIMIT_SETTINGS  # noqa: E402
from harness.device import cpu_has_native_bf16, device_name  # noqa: E402
from harness.env import git_commit, short_commit  # noqa: E402
from harness.train.meters import glibc_version  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SWEEP_DIR = Path("runs/demo_time")
REPORT_DIR = Path("runs/reports/demo_time")
GOAL_S = {True: 240, False: 480}  # by whether the CPU computes bf16 natively (issue 25, item 2)
STAGES = ("data", "load", "quantize", "eval_before", "train", "eval")


def probe() -> float:
    """GFLOP/s of the evaluation benchmark's forward-limit probe (``benchmarks.perf.training_limit``: F.linear
    over the model's layer shapes at 512 rows, in the job's compute dtype), best of three 2-second reads."""
    return max(training_limit(LIMIT_SETTINGS)["rate"] for _ in range(3)) / 1e9


def timed(cmd: list[str]) -> float:
    """Run ``cmd`` in the checkout; its wall time in seconds (a failure stops the benchmark)."""
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    return time.perf_counter() - start


def job_rows(sweep_dir: Path) -> list[dict]:
    """Each job's storage type, status, stage times, training tokens/s and peak memory, by start time."""
    rows = []
    for path in sorted((ROOT / sweep_dir).glob("*/result.json"), key=lambda p: p.stat().st_mtime):
        result = json.loads(path.read_text())
        train = result.get("train") or {}
        rows.append(
            {
                "storage": result["config"]["quant"]["storage"],
                "status": result["status"],
                **{stage: result.get("timings_s", {}).get(stage) for stage in (*STAGES, "total")},
                "tokens_per_s": train.get("tokens_per_s"),
                "peak_mib": (train.get("peak_memory_bytes") or 0) / 2**20,
            }
        )
    return rows


def _cell(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def render(meta: dict, rows: list[dict]) -> str:
    native = meta["native_bf16"]
    compute = "native bf16 (AVX-512 BF16/AMX): bf16" if native else "no native bf16 (AVX2 class): fp32"
    goal = GOAL_S[native]
    demo = meta["sweep_s"] + meta["report_s"]
    verdict = "**met**" if demo <= goal else f"**missed by {demo - goal:.0f} s**"
    jobs = sum(r["total"] or 0 for r in rows)
    lines = [
        "# `make demo` time, after set-up",
        "",
        f"- command: `python -m benchmarks.demo_time {' '.join(meta['args'])}`".rstrip() + " (the quickstart "
        "sweep and its report, as `make demo` runs them, every job forced to run)",
        f"- commit `{meta['commit']}`, {meta['start']} – {meta['end']} UTC",
        f"- machine: {meta['cpu']}, {os.cpu_count()} cores, {compute} compute, glibc {meta['glibc']}, "
        f"torch {torch.__version__}",
        f"- this CPU's {meta['dtype']} matmul rate on SmolLM2's layer shapes: {meta['rate_before']:.0f} "
        f"GFLOP/s before, {meta['rate_after']:.0f} after (its hour: the same code ran up to ~2x apart on "
        "this class)",
        "- model: SmolLM2-135M-Instruct from the shipped Q4_1 GGUF (its weights were 4-bit quantized once "
        "already)",
        "",
        f"**`make demo`: {demo:.0f} s** (sweep {meta['sweep_s']:.0f} s + report {meta['report_s']:.0f} s; "
        f"the jobs themselves {jobs:.0f} s, start-up and launcher {meta['sweep_s'] - jobs:.0f} s). "
        f"Goal ≤ {goal} s on this class: {verdict}.",
        "",
        "| job | status | data | load | quantize | eval before | train | eval after | total (s) "
        "| train tokens/s | peak RSS (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [_cell(r[stage]) for stage in (*STAGES, "total")]
        lines.append(
            f"| {r['storage']} | {r['status']} | {' | '.join(cells)} | {_cell(r['tokens_per_s'])} "
            f"| {_cell(r['peak_mib'], 0)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", default="reports/perf/demo_time.md", help="the Markdown report (a path under reports/)"
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every job")
    args = parser.parse_args(argv)
    native = cpu_has_native_bf16()
    _, dtype = LIMIT_SETTINGS.device_and_dtype()
    bin_dir = Path(sys.executable).parent
    meta = {
        "args": ([f"--out {args.out}"] if args.out != parser.get_default("out") else []) + args.overrides,
        "commit": short_commit(git_commit()),
        "cpu": device_name(torch.device("cpu")),
        "native_bf16": native,
        "dtype": str(dtype).removeprefix("torch."),
        "glibc": ".".join(map(str, glibc_version() or ("none",))),
        "start": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "rate_before": probe(),
    }
    sweep = [str(bin_dir / "qlora-bench"), "-m", "+sweep=quickstart", f"hydra.sweep.dir={SWEEP_DIR}"]
    meta["sweep_s"] = timed([*sweep, "+force=true", *args.overrides])
    meta["report_s"] = timed([str(bin_dir / "qlora-report"), str(SWEEP_DIR), "-o", str(REPORT_DIR)])
    meta["rate_after"] = probe()
    meta["end"] = time.strftime("%H:%M", time.gmtime())
    text = render(meta, job_rows(SWEEP_DIR))
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
