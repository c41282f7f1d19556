"""Summarise the GPU check's runs (benchmarks/gpu_check.sh) into reports/gpu/report.md: per job tokens/s,
``max_memory_allocated``, the memory model's estimate and error, and the paged vs non-paged AdamW peak.

``python -m benchmarks.perf.gpu RUNS_DIR [-o reports/gpu/report.md]``: every ``result.json`` under RUNS_DIR.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.perf.render import mib, table


def job_row(path: Path, runs: Path) -> list[str]:
    result = json.loads(path.read_text())
    config, train = result.get("config", {}), result.get("train") or {}
    estimate, peak = train.get("memory_estimate_bytes"), train.get("peak_memory_bytes")
    error = f"{estimate / peak - 1:+.1%}" if estimate and peak else "n/a"
    return [
        str(path.parent.relative_to(runs)),
        result.get("status", "?"),
        str(config.get("quant", {}).get("storage")),
        str(config.get("train", {}).get("optimizer")),
        f"{train.get('tokens_per_s', 0):.0f}",
        mib(peak),
        mib(train.get("peak_memory_reserved_bytes")),
        mib(estimate),
        error,
        mib((train.get("memory_estimate") or {}).get("paged_optimizer_state")),
    ]


def summary(runs: Path) -> str:
    results = sorted(runs.rglob("result.json"))
    if not results:
        raise SystemExit(f"no result.json under {runs}")
    headers = [
        "job",
        "status",
        "storage",
        "optimizer",
        "tokens/s",
        "max allocated MiB",
        "max reserved MiB",
        "memory model MiB",
        "model error",
        "paged state MiB (outside the allocator)",
    ]
    rows = [job_row(path, runs) for path in results]
    env = json.loads(results[0].read_text()).get("env", {})
    return "\n\n".join(
        [
            "# GPU check: smoke sweep and quickstart, bf16 compute, paged AdamW",
            f"- date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}; runs: `{runs}`; "
            f"machine: {env.get('device_name', env.get('device', '?'))}",
            "- max allocated: `torch.cuda.max_memory_allocated` over training; paged optimizer state lives "
            "in unified memory outside it, so the paged rows' peak omits it (its size is the last column)",
            table(headers, rows),
        ]
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.perf.gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", type=Path)
    p.add_argument("-o", "--out", type=Path, default=Path("reports/gpu/report.md"))
    args = p.parse_args(argv)
    text = summary(args.runs) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
