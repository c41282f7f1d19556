"""``python -m benchmarks.perf [--steps 8] [--warmup 2] [--rank 16] [--compute-dtype auto] [--paths ...]``"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from benchmarks.perf.measure import (  # noqa: E402
    linear_flops_per_token,
    load_average,
    matmul_rate,
    training_flops_per_token,
)
from benchmarks.perf.render import report  # noqa: E402
from benchmarks.perf.training_paths import RUNNERS, Settings, model_dir, path_settings  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def training_limit(s: Settings) -> dict:
    """This machine's training ceiling in tokens/s for the model's linear shapes, measured now."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir())
    h, i = config.hidden_size, config.intermediate_size
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    shapes = [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]
    device, dtype = s.device_and_dtype()
    rate = matmul_rate(shapes, s.batch_size * s.seq_len // 2, dtype, device)
    forward = linear_flops_per_token(shapes, config.num_hidden_layers, (h, config.vocab_size))
    return {
        "rate": rate,
        "flops_per_token": forward,
        "layers": config.num_hidden_layers,
        "tokens_per_s": rate / training_flops_per_token(forward, 1),
        "tokens_per_s_no_ckpt": rate / training_flops_per_token(forward, 0),
    }


def run_worker(path: str, s: Settings, out: Path) -> None:
    before = load_average()
    result = RUNNERS[path](path_settings(path, s))
    out.write_text(json.dumps({**result, "path": path, "load_before": before, "load_after": load_average()}))


def spawn(path: str, s: Settings) -> dict | None:
    """One path in a fresh process (its own peak memory); its JSON result, or None when it failed (the
    report names the failure, the other paths go on)."""
    with tempfile.TemporaryDirectory(prefix="bench-perf-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "benchmarks.perf", "--worker", path, "--result", str(out)]
        start = time.perf_counter()
        if subprocess.run([*cmd, "--settings", json.dumps(asdict(s))], cwd=ROOT).returncode != 0:
            print(f"[{path}] failed (its traceback is above)", flush=True)
            return None
        result = json.loads(out.read_text())
    result["wall_s"] = time.perf_counter() - start
    print(f"[{path}] {result['tokens_per_s']:.1f} tokens/s in {result['wall_s']:.0f} s", flush=True)
    return result


def best_run(runs: list[dict | None]) -> dict:
    """The fastest run (interference only ever slows a run down), with every run's peak and its tokens/s per
    round (None where that round's run failed), for the ratios of runs made side by side."""
    done = [r for r in runs if r]
    best = max(done, key=lambda r: r["tokens_per_s"])
    return {
        **best,
        "tokens_per_s_rounds": [r["tokens_per_s"] if r else None for r in runs],
        "peak_memory_bytes_runs": [r["peak_memory_bytes"] for r in done],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.perf", description=__doc__)
    p.add_argument("--steps", type=int, default=8, help="measured steps after the warm-up")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rank", type=int, default=16, help="LoRA r (16 keeps CPU time sane; the paper uses 64)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compute-dtype", choices=("auto", "bf16", "fp32"), default="auto")
    p.add_argument("--no-checkpointing", action="store_true")
    p.add_argument(
        "--paths", default=",".join(RUNNERS), help="comma-separated subset of " + ",".join(RUNNERS)
    )
    p.add_argument("--repeats", type=int, default=2, help="runs per path, in turns; the fastest is reported")
    p.add_argument("--out", type=Path, default=None, help="default reports/perf/bench_<device>.md")
    p.add_argument("--worker", choices=tuple(RUNNERS), help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--settings", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    unknown = set(args.paths.split(",")) - set(RUNNERS)
    if unknown:
        p.error(f"--paths {sorted(unknown)} not among {sorted(RUNNERS)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        run_worker(args.worker, Settings(**json.loads(args.settings)), args.result)
        return
    s = Settings(
        steps=args.steps,
        warmup=args.warmup,
        rank=args.rank,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        seed=args.seed,
        compute_dtype=args.compute_dtype,
        checkpointing=not args.no_checkpointing,
    )
    start = time.perf_counter()
    limit = training_limit(s)
    runs: dict[str, list[dict]] = {path: [] for path in args.paths.split(",")}
    for _ in range(args.repeats):  # in turns, so that load which comes and goes hits every path alike
        for path, path_runs in runs.items():
            path_runs.append(spawn(path, s))
    results = {path: best_run(rs) for path, rs in runs.items() if any(rs)}
    if not results:
        sys.exit("every run of every path failed (tracebacks above); no report written")
    text = report(s, results, limit, time.perf_counter() - start)
    failed = [path for path, rs in runs.items() if not all(rs)]
    if failed:
        text += f"\nFailed runs (see the benchmark's output): {', '.join(failed)}\n"
    print(text)
    device, _ = s.device_and_dtype()
    out = args.out or ROOT / "reports" / "perf" / f"bench_{device.type}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
