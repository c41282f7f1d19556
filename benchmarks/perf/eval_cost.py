"""``python -m benchmarks.perf.eval_cost [--eval quick zeroshot:40] [--repeats 2]``

What evaluation costs against this machine's forward limit, on the quickstart's model: SmolLM2-135M in NF4
(block 64, double quantization, lm_head kept) with the paper's LoRA (r 64, all linear layers), evaluated
through ``harness.evaluate.evaluate_model`` on each eval group (``GROUP`` or ``GROUP:LIMIT``), once per way,
side by side in one run:

- before: ``eval.backend=hflm``, lm-eval's HFLM: every request forwards its whole context, batches of
  ``eval.batch_size`` requests padded to their longest, lm_head and log_softmax at every position; each
  adapter as peft runs it, two r-wide matmuls beside the frozen one
  (``harness.model.lora.separate_adapters``);
- separate: ``eval.backend=packed``, ``harness.evaluate.packed.PackedLM``: each distinct token once, the
  adapters still separate;
- after: the same with the harness's default forward, where an fp32 model runs each adapted layer as one
  matmul over W + s·B·A (``harness.model.lora.merged_weight``; bf16 keeps the separate matmuls).

Each run is a fresh process and evaluates under a job's default heap policy (``cpu_heap=fast``). The LM
class of each way is subclassed to count what it computes (tokens as requested, as computed, as padded;
scored rows through lm_head), time its log-likelihood calls and keep every log-likelihood and per-document
sample, which must agree between the ways (1e-4 relative; accuracies identical). A last, profiled run of
the default way per group says where the time goes. Writes ``reports/perf/eval_cost.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from torch import device as torch_device  # noqa: E402

from benchmarks.perf.__main__ import training_limit  # noqa: E402
from benchmarks.perf.render import per_round_summary  # noqa: E402
from benchmarks.perf.training_paths import MODEL, Settings  # noqa: E402
from benchmarks.perf.training_paths import quantized_model as job_model  # noqa: E402
from harness.device import cpu_has_native_bf16, device_name  # noqa: E402
from harness.env import git_commit, short_commit  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Way:
    backend: str  # eval.backend
    separate_adapters: bool  # run under harness.model.lora.separate_adapters
    label: str  # the report's row


WAYS = {
    "before": Way("hflm", True, "before: `eval.backend=hflm` (lm-eval's HFLM), adapters separate"),
    "separate": Way("packed", True, "`eval.backend=packed`, adapters separate"),
    "after": Way(
        "packed", False, "after: `eval.backend=packed` (default), adapters as the harness runs them"
    ),
}
TOLERANCE = 1e-4
# The forward limit's settings: F.linear over the block shapes at batch_size * seq_len // 2 = 512 rows.
LIMIT_SETTINGS = Settings(steps=0, warmup=0, rank=64, seq_len=128, batch_size=8, seed=0, compute_dtype="auto")
LIMIT_ROWS = LIMIT_SETTINGS.batch_size * LIMIT_SETTINGS.seq_len // 2
ADAPTER_STD = 0.01
TOP_OPS = 10


def eval_config(group: str, limit: int | float | None, way: str):
    """The eval group as a job composes it, with the command's limit and the way's backend."""
    from omegaconf import OmegaConf

    from harness.config import EvalConfig
    from harness.paths import CONF_DIR

    cfg = EvalConfig(**OmegaConf.to_container(OmegaConf.load(CONF_DIR / "eval" / f"{group}.yaml")))
    return replace(cfg, backend=WAYS[way].backend, **({"limit": limit} if limit is not None else {}))


def measured(cls):
    """``cls`` (HFLM or PackedLM) counting what it computes and keeping every log-likelihood it returns."""
    import torch
    from lm_eval.models.huggingface import HFLM

    from harness.evaluate.packed import model_input

    class Measured(cls):
        log = {"requested": 0, "real": 0, "padded": 0, "head_rows": 0, "attended": 0, "values": []}
        log |= {"requests_s": 0.0, "forward_s": 0.0, "head_s": 0.0}

        def _loglikelihood_tokens(self, requests, *args, **kwargs):
            start = time.perf_counter()
            answers = super()._loglikelihood_tokens(requests, *args, **kwargs)
            self.log["requests_s"] += time.perf_counter() - start
            self.log["values"] += [answer[0] for answer in answers]
            rows = [tuple(model_input(c, k, self.max_length)) for _, c, k in requests]
            self.log["requested"] += sum(len(row) for row in rows)
            if cls is HFLM:  # HFLM forwards each distinct row once (its one-token-continuation cache)
                distinct = set(rows)
                self.log["real"] += sum(len(row) for row in distinct)
                self.log["attended"] += sum(causal_pairs(len(row)) for row in distinct)
            return answers

        def _model_call(self, inps: torch.Tensor, *args, **kwargs) -> torch.Tensor:  # HFLM's forward
            self.log["padded"] += inps.numel()
            self.log["head_rows"] += inps.numel()
            return self.timed("forward_s", super()._model_call, inps, *args, **kwargs)

        def _hidden_states(self, trees):  # PackedLM's forward
            self.log["real"] += sum(len(tree.tokens) for tree in trees)
            self.log["padded"] += len(trees) * max(len(tree.tokens) for tree in trees)
            self.log["attended"] += sum(tree_pairs(tree) for tree in trees)
            return self.timed("forward_s", super()._hidden_states, trees)

        def _scored_log_probs(self, states, *args, **kwargs):  # PackedLM's lm_head rows
            self.log["head_rows"] += len(states)
            return self.timed("head_s", super()._scored_log_probs, states, *args, **kwargs)

        def timed(self, key: str, call, *args, **kwargs):
            start = time.perf_counter()
            out = call(*args, **kwargs)
            self.log[key] += time.perf_counter() - start
            return out

    return Measured


def causal_pairs(length: int) -> int:
    """(query, key) pairs a causal row of ``length`` real tokens must score: each token sees itself and
    every token before it."""
    return length * (length + 1) // 2


def tree_pairs(tree) -> int:
    """(query, key) pairs a token tree must score: each node sees itself and its ancestors (``depth + 1``
    nodes); the masked-off rest of its row is work done, not work needed."""
    return sum(depth + 1 for depth in tree.depth)


def quantized_model(dtype, device):
    """The quickstart's model as a job builds it: NF4 + DQ, block 64, lm_head kept, the paper's LoRA, with B
    drawn from N(0, ``ADAPTER_STD``²) as a stand-in for a trained adapter, so that the ways' numbers are
    compared with the adapters contributing (B = 0, as before training, would hide a wrong merge)."""
    import torch

    from harness.config import LoraConfig
    from harness.model.lora import attach_lora

    loaded, targets = job_model(dtype, device)
    model = attach_lora(loaded.model, LoraConfig(), targets, seed=0)
    generator = torch.Generator().manual_seed(0)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            parameter.data.copy_(torch.randn(parameter.shape, generator=generator) * ADAPTER_STD)
    return model, loaded.tokenizer


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


def parse_group(spec: str) -> tuple[str, int | float | None]:
    """``GROUP`` or ``GROUP:LIMIT`` (an int: examples per task; a float < 1: a fraction)."""
    group, _, limit = spec.partition(":")
    if not limit:
        return group, None
    return group, float(limit) if "." in limit else int(limit)


def run_worker(spec: str, way: str, profiled: bool, compute_dtype: str, out: Path) -> None:
    """One evaluation in this process: timings, token counts, log-likelihoods, samples, peak resident set."""
    import contextlib

    import torch
    from torch.profiler import ProfilerActivity, profile

    import harness.evaluate.runner as runner
    from harness.config import EvalBackend
    from harness.device import choose_compute_dtype, pick_device
    from harness.model.lora import separate_adapters
    from harness.train.meters import heap_policy, peak_memory, reset_peak_memory

    device = pick_device("auto")
    dtype = choose_compute_dtype(compute_dtype, device)[0]
    model, tokenizer = quantized_model(dtype, device)
    cfg = eval_config(*parse_group(spec), way)
    backend = EvalBackend(cfg.backend)
    lm_class = runner.LM_CLASSES[backend] = measured(runner.LM_CLASSES[backend])
    profiler = profile(activities=[ProfilerActivity.CPU]) if profiled else contextlib.nullcontext()
    adapters = separate_adapters(model) if WAYS[way].separate_adapters else contextlib.nullcontext()
    # As a job evaluates: under cpu_heap=fast, its default, set before the peak and the clock start (its
    # first use loads the malloc allocator and trims the heap, which a job does before its stages).
    with heap_policy(lean=False):
        reset_peak_memory(device)
        rss_start = peak_memory(device)["peak_memory_bytes"]
        start = time.perf_counter()
        with profiler, adapters:
            evaluation = runner.evaluate_model(model, tokenizer, cfg, None)
        wall_s = time.perf_counter() - start
    # this machine's speed drifts within minutes: each run is set against the limit measured right after it
    limit = training_limit(replace(LIMIT_SETTINGS, compute_dtype=compute_dtype))
    result = {
        "forward_limit": {"rate": limit["rate"], "flops_per_token": limit["flops_per_token"]},
        **lm_class.log,
        "way": way,
        "backend": cfg.backend,
        "wall_s": wall_s,
        "dtype": str(dtype).removeprefix("torch."),
        "rss_start_bytes": rss_start,
        "peak_rss_bytes": peak_memory(device)["peak_memory_bytes"],
        "metrics": evaluation.metrics,
        "samples": evaluation.samples.to_dict("records"),
        "limit": cfg.limit,
        "tasks": list(cfg.tasks),
        "threads": torch.get_num_threads(),
        "batch_size": cfg.batch_size,
        "hidden": model.config.hidden_size,
        "vocab": model.config.vocab_size,
        "attention_width": attention_width(model.config),
        "layers": model.config.num_hidden_layers,
    }
    if profiled:
        result["top_ops"] = top_ops(profiler, wall_s)
    out.write_text(json.dumps(result))


def spawn(spec: str, way: str, profiled: bool, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="eval-cost-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "benchmarks.perf.eval_cost", "--compute-dtype", args.compute_dtype]
        cmd += ["--worker", way, "--group", spec, "--result", str(out), *(["--profiled"] if profiled else [])]
        subprocess.run(cmd, cwd=ROOT, check=True)
        result = json.loads(out.read_text())
    print(f"[{spec} {way}{' profiled' if profiled else ''}] {result['wall_s']:.1f} s", flush=True)
    return result


def max_relative_difference(a: list[float], b: list[float]) -> float:
    if len(a) != len(b):
        raise SystemExit(f"the two ways made different requests: {len(a)} vs {len(b)} log-likelihoods")
    return max((abs(x - y) / max(abs(x), abs(y), 1e-30) for x, y in zip(a, b, strict=True)), default=0.0)


def sample_differences(before: list[dict], after: list[dict]) -> tuple[int, float]:
    """Per-document samples (``samples.parquet`` rows): how many accuracy-like (mean) values differ, and the
    largest relative difference of the others (summed log-likelihoods); every other column must match."""
    keys = ("task", "doc_id", "doc_hash", "metric", "aggregation", "weight")
    if [[r[k] for k in keys] for r in before] != [[r[k] for k in keys] for r in after]:
        raise SystemExit("the two ways logged different samples (documents, metrics or weights)")
    mean = [
        (b["value"], a["value"]) for b, a in zip(before, after, strict=True) if b["aggregation"] == "mean"
    ]
    other = [
        (b["value"], a["value"]) for b, a in zip(before, after, strict=True) if b["aggregation"] != "mean"
    ]
    return sum(b != a for b, a in mean), max_relative_difference(
        *map(list, zip(*other, strict=True))
    ) if other else 0.0


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


def attention_width(config) -> int:
    """Query heads x head size: the width of one (query, key) pair's products in every layer."""
    heads = config.num_attention_heads
    return heads * (getattr(config, "head_dim", None) or config.hidden_size // heads)


def useful_flops(r: dict) -> float:
    """Linear-layer FLOPs of the tokens that had to be computed: every real (unpadded) token through the
    blocks, and through lm_head each real row (HFLM runs it at every position) or each scored row (packed)."""
    head = 2 * r["hidden"] * r["vocab"]
    head_rows = r["real"] if r["backend"] == "hflm" else r["head_rows"]
    return (r["forward_limit"]["flops_per_token"] - head) * r["real"] + head * head_rows


def attention_flops(r: dict) -> float:
    """The attention products that had to be computed: per layer, q·k and the probability-weighted sum of v
    (2 FLOPs per multiply-add each) for every (query, key) pair a real token attends to."""
    return 4 * r["attention_width"] * r["layers"] * r["attended"]


def way_row(label: str, r: dict) -> str:
    flops, rate = useful_flops(r), r["forward_limit"]["rate"]
    with_attention = flops + attention_flops(r)
    cells = [
        label,
        f"{r['wall_s']:.2f}",
        f"{r['requested']:,}",
        f"{r['real']:,} / {r['padded']:,}",
        f"{r['head_rows']:,}",
        f"{r['real'] / r['wall_s']:.0f}",
        f"{r['requested'] / r['wall_s']:.0f}",
        f"{rate / 1e9:.0f}",
        f"{flops / r['wall_s'] / rate:.1%}",
        f"{flops / r['requests_s'] / rate:.1%}",
        f"{with_attention / r['wall_s'] / rate:.1%}",
        mib(r["peak_rss_bytes"]),
    ]
    return "| " + " | ".join(cells) + " |"


TABLE_HEAD = [
    "| way | eval s | tokens requested | computed: real / padded | lm_head rows | computed tokens/s "
    "| requested tokens/s | limit GFLOP/s | of limit (eval wall) | of limit (in requests) "
    "| of limit, attention counted (eval wall) | peak RSS |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
]


def group_section(spec: str, runs: dict[str, list[dict]], profiled: dict) -> list[str]:
    best = {way: min(runs[way], key=lambda r: r["wall_s"]) for way in WAYS}
    before, separate, after = best["before"], best["separate"], best["after"]
    values = max_relative_difference(before["values"], after["values"])
    changed, sample_rel = sample_differences(before["samples"], after["samples"])
    speed = before["wall_s"] / after["wall_s"]
    verdict = "met" if values <= TOLERANCE else f"not met in {after['dtype']}"
    all_runs = ", ".join(f"{way} " + " / ".join(f"{r['wall_s']:.2f}" for r in runs[way]) for way in WAYS)
    return [
        f"## `eval={spec}` (tasks {', '.join(after['tasks'])}; limit {after['limit']})",
        "",
        *TABLE_HEAD,
        *(way_row(WAYS[way].label, best[way]) for way in WAYS),
        "",
        f"- **Evaluation wall time**: {speed:.2f}x {'faster' if speed > 1 else 'SLOWER'} "
        f"({before['wall_s']:.2f} s → {after['wall_s']:.2f} s; all runs, s: {all_runs}); packing alone "
        f"{before['wall_s'] / separate['wall_s']:.2f}x, the adapters as the harness runs them "
        f"{separate['wall_s'] / after['wall_s']:.2f}x more ({MERGE_NOTE[after['dtype'] == 'float32']}).",
        round_speedups(runs["before"], runs["after"]),
        f"- **Tokens**: HFLM computes {before['padded'] / before['requested']:.2f}x the requested tokens "
        f"(padding included), packed {after['padded'] / after['requested']:.2f}x "
        f"({after['padded'] / after['real'] - 1:.1%} padding); lm_head rows {before['head_rows']:,} → "
        f"{after['head_rows']:,}.",
        f"- **Same numbers** ({after['dtype']}): {len(after['values']):,} log-likelihoods, max relative "
        f"difference **{values:.2e}** (≤ {TOLERANCE:g}: {verdict}); per-document samples: {changed} "
        f"accuracy values differ, summed log-likelihoods within {sample_rel:.2e} relative; task metrics "
        f"identical: {before['metrics'] == after['metrics']}.",
        "",
        *where_time_goes(profiled),
    ]


SPEEDUP_GOAL = 2.0  # evaluation wall time halved or better


def round_speedups(before: list[dict], after: list[dict]) -> str:
    """before / after wall time in each round (the ways of a round run back to back, so they meet the same
    machine state; the best-of ratio pairs runs from different rounds), and in how many it is halved."""
    ratios = [b["wall_s"] / a["wall_s"] for b, a in zip(before, after, strict=True)]
    return f"- **Per round** (the ways in turns): {per_round_summary(ratios, SPEEDUP_GOAL, 'x')}."


MERGE_NOTE = {
    True: "fp32: each adapted layer one matmul over W + s·B·A",
    False: "bf16 keeps the separate adapter matmuls: the same forward twice, so the ratio is noise",
}


def where_time_goes(where: dict) -> list[str]:
    wall, forward, head = where["wall_s"], where["forward_s"], where["head_s"]
    scoring, outside = where["requests_s"] - forward - head, wall - where["requests_s"]
    return [
        f"Where the time goes (one more run of `packed` under torch.profiler, so slower: {wall:.2f} s): "
        f"decoder forward {forward:.2f} s ({forward / wall:.0%}), lm_head + log_softmax at the scored rows "
        f"{head:.2f} s ({head / wall:.0%}), trees and batches {scoring:.2f} s ({scoring / wall:.0%}), "
        f"lm-eval outside the requests (tasks, documents, metrics, bootstrap) {outside:.2f} s "
        f"({outside / wall:.0%}).",
        "",
        "| operator (self CPU time) | calls | s | share of eval |",
        "|---|---|---|---|",
        *(f"| `{o['op']}` | {o['calls']} | {o['s']:.2f} | {o['share']:.0%} |" for o in where["top_ops"]),
    ]


def header(args: argparse.Namespace, first: dict, rates: list[float]) -> list[str]:
    p = provenance()
    return [
        "# Evaluation cost: lm-eval's HFLM against the packed log-likelihood path (each token once)",
        "",
        f"- **Command**: `.venv/bin/python -m benchmarks.perf.eval_cost"
        f"{''.join(' ' + a for a in args.argv)}`",
        f"- **Commit**: `{p['commit']}`. **Machine**: {p['machine']}; torch on {first['threads']} threads. "
        f"**Date**: {p['date']}.",
        f"- **Model**: {MODEL} (the shipped Q4_1 GGUF) in NF4, block 64, double quantization, lm_head "
        f"kept, the paper's LoRA (r 64, all linear layers, B ~ N(0, {ADAPTER_STD}²) standing in for a "
        f"trained adapter); compute dtype {first['dtype']}.",
        f"- **Evaluation**: `harness.evaluate.evaluate_model`; HFLM batch size {first['batch_size']}, "
        f"packed {BATCH_TOKENS_NOTE}. {args.repeats} runs per way in turns, each in a fresh process under a "
        "job's default heap policy (`cpu_heap=fast`); the fastest is shown.",
        f"- **Forward limit**: `F.linear` in {first['dtype']} over the model's block shapes at {LIMIT_ROWS} "
        "rows (`benchmarks.perf` `training_limit`), measured by each run right after its evaluation, since "
        f"this machine's speed drifts within minutes: {min(rates) / 1e9:.0f}–{max(rates) / 1e9:.0f} GFLOP/s "
        f"in this run; {first['forward_limit']['flops_per_token'] / 1e6:.0f} MFLOP per token forward (every "
        "linear layer and the head; attention's own FLOPs and LoRA's left out). *Of limit* = the "
        "linear FLOPs that had to be computed (real tokens through the blocks; lm_head at every real "
        "position for HFLM, at the scored ones for packed) per second of evaluation wall time, or of "
        "time inside the log-likelihood requests, over that run's limit. *Attention counted* adds the "
        "attention products that had to be computed (q·k and the weighted sum of v, 4 x heads x head size "
        "FLOPs per layer for each (query, key) pair a real token attends to: HFLM's rows causal, packed "
        "trees a node's ancestors; masked and padded pairs not counted) at the same rate: the share of "
        "this machine's matmul rate spent on work the forward needs.",
        "- **Tokens**: *requested* = Σ over requests of the input HFLM builds (context + continuation, "
        "last token dropped); *computed real* = what the model ran (HFLM: distinct rows; packed: tree "
        "nodes), *padded* = the batches as shaped.",
    ]


BATCH_TOKENS_NOTE = "batches of up to `harness.evaluate.packed.BATCH_TOKENS` padded tokens"


def report(args: argparse.Namespace, runs: dict, profiled: dict) -> str:
    first = runs[args.eval[0]]["after"][0]
    rates = [r["forward_limit"]["rate"] for group in runs.values() for way in group.values() for r in way]
    sections = [header(args, first, rates)]
    sections += [group_section(spec, runs[spec], profiled[spec]) for spec in args.eval]
    return "\n\n".join("\n".join(section) for section in sections) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.perf.eval_cost", description=__doc__)
    p.add_argument("--eval", nargs="+", default=["quick"], help="GROUP or GROUP:LIMIT from harness/conf/eval")
    p.add_argument("--repeats", type=int, default=2, help="runs per way, in turns; the fastest is reported")
    p.add_argument("--compute-dtype", default="auto", choices=("auto", "fp32", "bf16"), help="as quant.*")
    p.add_argument("--out", type=Path, default=ROOT / "reports" / "perf" / "eval_cost.md")
    p.add_argument("--worker", choices=tuple(WAYS), help=argparse.SUPPRESS)
    p.add_argument("--group", help=argparse.SUPPRESS)
    p.add_argument("--profiled", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        run_worker(args.group, args.worker, args.profiled, args.compute_dtype, args.result)
        return
    runs = {spec: {way: [] for way in WAYS} for spec in args.eval}
    profiled = {}
    for spec in args.eval:
        for _ in range(args.repeats):  # in turns, so that load which comes and goes hits both ways alike
            for way, way_runs in runs[spec].items():
                way_runs.append(spawn(spec, way, False, args))
        profiled[spec] = spawn(spec, "after", True, args)
    text = report(args, runs, profiled)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
