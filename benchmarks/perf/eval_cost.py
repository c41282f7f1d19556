"""``python -m benchmarks.perf.eval_cost [--eval quick] [--tasks ...] [--limit ...] [--repeats 2]``

What evaluation costs against this machine's forward limit, on the quickstart's model: SmolLM2-135M in NF4
(block 64, double quantization, lm_head kept) with the paper's LoRA (r 64, all linear layers), evaluated
through ``harness.evaluate.evaluate_model`` on one eval group, once per way, side by side in one run:

- before: ``eval.dense_weights_mib=0`` (the default), every forward dequantizes every 4-bit weight, as
  training does;
- after: ``eval.dense_weights_mib=1024``, each 4-bit weight dequantized once for the evaluation.

Each run is a fresh process (its own peak resident set). lm-eval's HFLM is subclassed to count tokens and
time its forwards and to keep every log-likelihood it returns; the two ways' log-likelihoods must agree
within 1e-4 relative. A last, profiled run of the default way says where the time goes. Writes
``reports/perf/eval_cost.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from torch import device as torch_device  # noqa: E402

from benchmarks.perf.__main__ import training_limit  # noqa: E402
from benchmarks.perf.training_paths import MODEL, Settings  # noqa: E402
from benchmarks.perf.training_paths import quantized_model as job_model  # noqa: E402
from harness.device import cpu_has_native_bf16, device_name  # noqa: E402
from harness.env import git_commit, short_commit  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
WAYS = {"before": 0, "after": 1024}  # eval.dense_weights_mib
TOLERANCE = 1e-4
TOP_OPS = 12


def eval_config(args: argparse.Namespace, way: str):
    """The eval group as a job composes it, with the command's overrides and the way's budget."""
    from omegaconf import OmegaConf

    from harness.config import EvalConfig
    from harness.paths import CONF_DIR

    group = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "eval" / f"{args.eval}.yaml"))
    cfg = EvalConfig(**group)
    overrides = {"tasks": args.tasks, "limit": args.limit}
    return replace(cfg, dense_weights_mib=WAYS[way], **{k: v for k, v in overrides.items() if v is not None})


def measured_hflm():
    """lm-eval's HFLM, counting what it computes: real tokens (context + continuation of each forwarded
    row), padded tokens (the batch as the model sees it), seconds in the model's forward, and every
    log-likelihood in the order lm-eval asks for them."""
    import torch
    from lm_eval.models.huggingface import HFLM

    class MeasuredHFLM(HFLM):
        log = {"tokens": 0, "padded_tokens": 0, "forward_s": 0.0, "loglikelihood_s": 0.0, "values": []}

        def _model_call(self, inps: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            start = time.perf_counter()
            logits = super()._model_call(inps, *args, **kwargs)
            self.log["forward_s"] += time.perf_counter() - start
            self.log["padded_tokens"] += inps.numel()
            return logits

        def _loglikelihood_tokens(self, requests, *args, **kwargs):
            start = time.perf_counter()
            answers = super()._loglikelihood_tokens(requests, *args, **kwargs)
            self.log["loglikelihood_s"] += time.perf_counter() - start
            self.log["values"] += [answer[0] for answer in answers]
            # rows that share a context and a one-token continuation are forwarded once: count them once
            rows = {tuple((ctx + cont)[-(self.max_length + 1) :][:-1]) for _, ctx, cont in requests}
            self.log["tokens"] += sum(len(row) for row in rows)
            return answers

    return MeasuredHFLM


def quantized_model(dtype, device):
    """The quickstart's model as a job builds it: NF4 + DQ, block 64, lm_head kept, the paper's LoRA."""
    from harness.config import LoraConfig
    from harness.model.lora import attach_lora

    loaded, targets = job_model(dtype, device)
    return attach_lora(loaded.model, LoraConfig(), targets, seed=0), loaded.tokenizer


def top_ops(profile, wall_s: float) -> list[dict]:
    """The operators with the most self CPU time, as seconds and share of the evaluation's wall time."""
    averages = sorted(profile.key_averages(), key=lambda a: a.self_cpu_time_total, reverse=True)
    return [
        {
            "op": a.key,
            "calls": a.count,
            "s": a.self_cpu_time_total / 1e6,
            "share": a.self_cpu_time_total / 1e6 / wall_s,
        }
        for a in averages[:TOP_OPS]
    ]


def run_worker(way: str, profiled: bool, args: argparse.Namespace, out: Path) -> None:
    """One evaluation in this process: timings, token counts, log-likelihoods, peak resident set."""
    import contextlib

    import torch
    from torch.profiler import ProfilerActivity, profile

    import harness.evaluate.runner as runner
    from harness.device import choose_compute_dtype, pick_device
    from harness.evaluate.dense import MIB, dense_bytes
    from harness.quant import QuantLinear
    from harness.train.meters import peak_memory, reset_peak_memory

    device = pick_device("auto")
    dtype = choose_compute_dtype("auto", device)[0]
    model, tokenizer = quantized_model(dtype, device)
    cfg = eval_config(args, way)
    runner.HFLM = hflm = measured_hflm()  # evaluate_model builds its HFLM from this name
    reset_peak_memory(device)
    rss_start = peak_memory(device)["peak_memory_bytes"]
    profiler = profile(activities=[ProfilerActivity.CPU]) if profiled else contextlib.nullcontext()
    start = time.perf_counter()
    with profiler:
        evaluation = runner.evaluate_model(model, tokenizer, cfg, None)
    wall_s = time.perf_counter() - start
    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    result = {
        **hflm.log,
        "way": way,
        "wall_s": wall_s,
        "dtype": str(dtype).removeprefix("torch."),
        "dense_weights_mib": cfg.dense_weights_mib,
        "dense_bytes_all": sum(dense_bytes(layer) for layer in layers),
        "dense_budget_bytes": cfg.dense_weights_mib * MIB,
        "rss_start_bytes": rss_start,
        "peak_rss_bytes": peak_memory(device)["peak_memory_bytes"],
        "metrics": evaluation.metrics,
        "threads": torch.get_num_threads(),
        "batch_size": cfg.batch_size,
        "vocab": model.config.vocab_size,
    }
    if profiled:
        result["top_ops"] = top_ops(profiler, wall_s)
    out.write_text(json.dumps(result))


def spawn(way: str, profiled: bool, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="eval-cost-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.perf.eval_cost",
            *args.argv,
            "--worker",
            way,
            "--result",
            str(out),
        ]
        subprocess.run([*cmd, *(["--profiled"] if profiled else [])], cwd=ROOT, check=True)
        result = json.loads(out.read_text())
    print(
        f"[{way}{' profiled' if profiled else ''}] {result['tokens'] / result['wall_s']:.0f} tokens/s, "
        f"{result['wall_s']:.1f} s",
        flush=True,
    )
    return result


def max_relative_difference(a: list[float], b: list[float]) -> float:
    if len(a) != len(b):
        raise SystemExit(f"the two ways made different requests: {len(a)} vs {len(b)} log-likelihoods")
    return max((abs(x - y) / max(abs(x), abs(y), 1e-30) for x, y in zip(a, b, strict=True)), default=0.0)


def provenance() -> dict:
    """Commit (with -dirty when tracked files differ from it), machine and date, for the report header."""
    bf16 = ", native bf16" if cpu_has_native_bf16() else ""
    return {
        "commit": short_commit(git_commit()),
        "machine": f"{device_name(torch_device('cpu'))}, {os.cpu_count()} cores{bf16}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def seconds(runs: list[dict]) -> str:
    return ", ".join(f"{r['wall_s']:.2f}" for r in runs)


def way_row(way: str, r: dict, limit_tps: float) -> str:
    rate, forward_rate = r["tokens"] / r["wall_s"], r["padded_tokens"] / r["forward_s"]
    cells = [
        way,
        str(r["dense_weights_mib"]),
        f"{r['wall_s']:.2f}",
        f"{rate:.0f}",
        f"{rate / limit_tps:.1%}",
        f"{r['forward_s']:.2f}",
        f"{forward_rate:.0f}",
        f"{forward_rate / limit_tps:.1%}",
        mib(r["peak_rss_bytes"]),
        mib(r["peak_rss_bytes"] - r["rss_start_bytes"]),
    ]
    return "| " + " | ".join(cells) + " |"


def header(args: argparse.Namespace, after: dict, limit: dict, rows: int) -> list[str]:
    p = provenance()
    evaluation = f"`eval={args.eval}`" + (f", tasks {' '.join(args.tasks)}" if args.tasks else "")
    evaluation += f", limit {args.limit}" if args.limit is not None else ""
    return [
        "# Evaluation cost: tokens/s against the forward limit, before/after dense weights",
        "",
        f"- **Command**: `flock /tmp/qlora-heavy.lock .venv/bin/python -m benchmarks.perf.eval_cost"
        f"{''.join(' ' + a for a in args.argv)}`",
        f"- **Commit**: `{p['commit']}`. **Machine**: {p['machine']}; torch on {after['threads']} threads. "
        f"**Date**: {p['date']}.",
        f"- **Model**: {MODEL} (the shipped Q4_1 GGUF) in NF4, block 64, double quantization, lm_head "
        "kept, the paper's LoRA (r 64, all linear layers, B = 0 as before training); compute dtype "
        f"{after['dtype']}.",
        f"- **Evaluation**: {evaluation} through `harness.evaluate.evaluate_model` (lm-eval's HFLM, batch "
        f"size {after['batch_size']}). {args.repeats} runs per way in turns, each in a fresh process; the "
        "fastest is shown.",
        f"- **Forward limit**: `F.linear` in {after['dtype']} over the model's block shapes at {rows} rows "
        f"(`benchmarks.perf` `training_limit`, measured in this run): {limit['rate'] / 1e9:.0f} GFLOP/s; "
        f"{limit['flops_per_token'] / 1e6:.0f} MFLOP per token forward (every linear layer and the head; "
        f"attention's own FLOPs and LoRA's left out), so **{limit['rate'] / limit['flops_per_token']:.0f} "
        "tokens/s** at most.",
    ]


def findings(runs: dict[str, list[dict]], before: dict, after: dict) -> list[str]:
    difference = max_relative_difference(before["values"], after["values"])
    verdict = "met" if difference <= TOLERANCE else "MISSED"
    fits = after["dense_bytes_all"] <= after["dense_budget_bytes"]
    padding = after["padded_tokens"] / after["tokens"] - 1
    speed = before["wall_s"] / after["wall_s"]
    return [
        f"- **Speed of after vs before**: {speed:.2f}x ({'faster' if speed > 1 else 'SLOWER'}) in evaluation "
        f"wall time ({before['wall_s']:.2f} s → {after['wall_s']:.2f} s); all runs: before "
        f"{seconds(runs['before'])} s, after {seconds(runs['after'])} s.",
        f"- **Tokens**: {after['tokens']:,} real tokens (context + continuation of each forwarded row), "
        f"{after['padded_tokens']:,} as batched ({padding:.1%} padding). tokens/s = real tokens / evaluation "
        "wall time; forward tokens/s = padded tokens / seconds inside the model's forward.",
        f"- **Memory**: the dense copies of all 4-bit layers take {mib(after['dense_bytes_all'])} "
        f"({'within' if fits else 'more than'} the budget of {mib(after['dense_budget_bytes'])}). "
        "Peak RSS: the worker's high-water mark from just before the evaluation (model loaded) to its end.",
        f"- **Same numbers**: {len(after['values'])} log-likelihoods, max relative difference before vs "
        f"after **{difference:.2e}** (required ≤ {TOLERANCE:g}: {verdict}); "
        f"task metrics identical: {before['metrics'] == after['metrics']}.",
    ]


def where_time_goes(where: dict) -> list[str]:
    wall, forward = where["wall_s"], where["forward_s"]
    scoring, outside = where["loglikelihood_s"] - forward, wall - where["loglikelihood_s"]
    return [
        "## Where the time goes (one more run of the default way, under torch.profiler)",
        "",
        f"Evaluation {wall:.2f} s (profiled, so slower): the model's forward {forward:.2f} s "
        f"({forward / wall:.0%}); "
        f"lm-eval's scoring of each row (log_softmax in fp32 over the {where['vocab']:,}-token vocabulary, "
        f"argmax, gather) {scoring:.2f} s ({scoring / wall:.0%}); lm-eval outside the requests (tasks, "
        f"documents, metrics, bootstrap) {outside:.2f} s ({outside / wall:.0%}).",
        "",
        "| operator (self CPU time) | calls | s | share of eval |",
        "|---|---|---|---|",
        *(f"| `{o['op']}` | {o['calls']} | {o['s']:.2f} | {o['share']:.0%} |" for o in where["top_ops"]),
    ]


def report(
    args: argparse.Namespace, runs: dict[str, list[dict]], profiled: dict, limit: dict, rows: int
) -> str:
    before, after = (min(runs[way], key=lambda r: r["wall_s"]) for way in ("before", "after"))
    limit_tps = limit["rate"] / limit["flops_per_token"]
    table = [
        "| way | eval.dense_weights_mib | eval s | tokens/s | of limit | forward s "
        "| forward tokens/s (padded) | of limit | peak RSS | RSS added by eval |",
        "|---|---|---|---|---|---|---|---|---|---|",
        way_row("before: dequantize every forward (default)", before, limit_tps),
        way_row("after: dequantize once", after, limit_tps),
    ]
    sections = [
        header(args, after, limit, rows),
        table,
        findings(runs, before, after),
        where_time_goes(profiled),
    ]
    return "\n\n".join("\n".join(section) for section in sections) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.perf.eval_cost", description=__doc__)
    p.add_argument("--eval", default="quick", help="eval group in harness/conf/eval (default quick)")
    p.add_argument("--tasks", nargs="+", help="override the group's tasks")
    p.add_argument("--limit", type=float, help="override the group's limit (a fraction; >= 1 is a count)")
    p.add_argument("--repeats", type=int, default=2, help="runs per way, in turns; the fastest is reported")
    p.add_argument("--out", type=Path, default=ROOT / "reports" / "perf" / "eval_cost.md")
    p.add_argument("--worker", choices=tuple(WAYS), help=argparse.SUPPRESS)
    p.add_argument("--profiled", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.limit is not None and args.limit >= 1:
        args.limit = int(args.limit)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        run_worker(args.worker, args.profiled, args, args.result)
        return
    runs: dict[str, list[dict]] = {way: [] for way in WAYS}
    for _ in range(args.repeats):  # in turns, so that load which comes and goes hits both ways alike
        for way, way_runs in runs.items():
            way_runs.append(spawn(way, False, args))
    profiled = spawn("before", True, args)
    settings = Settings(steps=0, warmup=0, rank=64, seq_len=128, batch_size=8, seed=0, compute_dtype="auto")
    limit = training_limit(settings)
    text = report(args, runs, profiled, limit, settings.batch_size * settings.seq_len // 2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
