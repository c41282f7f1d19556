"""The Markdown report: setup, the paths side by side with their fraction of the training limit, the goals
(met or missed by how much), the harness job's memory breakdown against the memory model, losses."""

from __future__ import annotations

import os
import platform
import shlex
import statistics
import sys
from datetime import datetime, timezone

import torch

from benchmarks.perf.measure import training_flops_per_token
from benchmarks.perf.training_paths import MODEL, Settings, path_settings
from harness.device import device_name
from harness.env import git_commit

GOALS = {"speed": 1.5, "limit": 0.60, "memory": 0.7}  # harness vs standard, fraction of limit, peak ratio
HARNESS_PATHS = ("harness", "harness_lean", "harness_every2")


def path_ceiling(path: str, s: Settings, limit: dict) -> float:
    """The tokens/s the path's own matmul FLOPs allow at the measured rate: its recomputed share of the
    layers (all with checkpointing, half with every other layer checkpointed, none without) counts."""
    layers = limit["layers"]
    recomputed = path_settings(path, s).job_config().train.checkpointed_layers(layers) / layers
    return limit["rate"] / training_flops_per_token(limit["flops_per_token"], recomputed)


def table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.0f}"


def load(values) -> str:
    return "/".join(f"{v:.1f}" for v in values)


def job_setup(s: Settings) -> str:
    """What the benchmark's job is, read from its config: model, storage, LoRA, batches, optimizer, data."""
    job = s.job_config()
    quant, lora, train, data = job.quant, job.lora, job.train, job.data
    return (
        f"{MODEL}, {quant.storage}{' + double quant' if quant.double_quant else ''}, "
        f"block {quant.blocksize}, LoRA r {lora.r} alpha {lora.alpha:g} dropout {lora.dropout} "
        f"{lora.targets}, batch {train.batch_size}, seq len ≤ {train.seq_len}, {s.warmup} warm-up + "
        f"{s.steps} measured steps, gradient checkpointing {'on' if train.gradient_checkpointing else 'off'}"
        f", AdamW lr {train.lr}, max grad norm {train.max_grad_norm}, seed {job.seed}; data {data.source} "
        f"without its last {data.heldout} records (data=alpaca)"
    )


def header(s: Settings, limit: dict, seconds: float) -> str:
    device, dtype = s.device_and_dtype()
    memory = (
        "max_memory_allocated" if device.type == "cuda" else "peak resident set (VmHWM reset at train start)"
    )
    versions = ", ".join(
        f"{name} {__import__(name).__version__}" for name in ("torch", "transformers", "peft", "bitsandbytes")
    )
    setup = (
        f"{job_setup(s)}; {str(dtype).removeprefix('torch.')} compute on every path, the same batches in the "
        "same order on every path"
    )
    return "\n".join(
        [
            f"# Training throughput and memory: standard path vs qlora-bench ({device.type.upper()})",
            "",
            f"- date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}",
            f"- command: `{shlex.join(sys.orig_argv)}`; commit {git_commit()}",
            f"- machine: {device_name(device)}, {os.cpu_count()} cores, torch threads "
            f"{torch.get_num_threads()}, capability {torch.backends.cpu.get_cpu_capability()}; {versions}, "
            f"python {platform.python_version()}",
            f"- setup: {setup}; total run {seconds:.0f} s",
            f"- limit: F.linear on the model's layer shapes measured {limit['rate'] / 1e9:.0f} GFLOP/s in "
            f"{str(dtype).removeprefix('torch.')} in this run; {limit['flops_per_token'] / 1e6:.0f} MFLOP "
            f"per token forward (linear layers + head), so training reaches at most "
            f"**{limit['tokens_per_s']:.0f} tokens/s** with checkpointing (3x forward) and "
            f"{limit['tokens_per_s_no_ckpt']:.0f} without (2x); each path's fraction is of its own limit "
            "(2.5x forward with every other layer checkpointed); attention scores, norms and LoRA are left "
            "out",
            f"- tokens/s: non-padding tokens per second after the warm-up; peak memory: {memory}; load: "
            "1/5/15-min load average before → after the run (above the core count, other jobs shared the "
            "cores)",
        ]
    )


def results_table(results: dict[str, dict], ceilings: dict[str, float]) -> str:
    rows = [
        [
            name,
            f"**{r['tokens_per_s']:.1f}** ({', '.join(f'{v:.1f}' for v in r['tokens_per_s_rounds'] if v)})",
            f"{r['tokens_per_s'] / ceilings[name]:.0%}",
            f"{r['step_s_median']:.2f}",
            ", ".join(mib(v) for v in r["peak_memory_bytes_runs"]),
            f"{r['loss'][-1]:.4f}",
            load(r["load_before"]) + " → " + load(r["load_after"]),
        ]
        for name, r in results.items()
    ]
    headers = [
        "path",
        "tokens/s best (runs)",
        "of limit",
        "median step s",
        "peak MiB (runs)",
        "final loss",
        "load",
    ]
    return table(headers, rows)


def goal_line(what: str, value: float, goal: float, higher_is_better: bool, fmt: str) -> str:
    met = value >= goal if higher_is_better else value <= goal
    sign = "≥" if higher_is_better else "≤"
    status = "met" if met else f"**missed** by {abs(value - goal):{fmt}}"
    return f"- {what}: **{value:{fmt}}** (goal {sign} {goal:{fmt}}: {status})"


def goal_lines(results: dict[str, dict], ceilings: dict[str, float]) -> list[str]:
    """The issue's goals side by side: harness ≥ 1.5x standard, ≥ 60 % of the limit, peak ≤ 0.7x standard;
    for the default job (cpu_heap=fast) and, where they ran, the lean one and the one checkpointing every
    other layer."""
    standard, bare = results.get("standard"), results.get("bare")
    lines = []
    for path in HARNESS_PATHS:
        harness = results.get(path)
        if not harness:
            continue
        fraction = harness["tokens_per_s"] / ceilings[path]
        lines.append(goal_line(f"{path} of the limit", fraction, GOALS["limit"], True, ".0%"))
        if standard:
            speed = harness["tokens_per_s"] / standard["tokens_per_s"]
            memory = harness["peak_memory_bytes"] / standard["peak_memory_bytes"]
            lines.append(goal_line(f"tokens/s {path} / standard", speed, GOALS["speed"], True, ".2f"))
            lines.append(round_ratios(path, harness, standard))
            lines.append(goal_line(f"peak memory {path} / standard", memory, GOALS["memory"], False, ".2f"))
    if results.get("harness"):
        lines.append(
            "- outside the limit, which counts the linear layers' matmuls only: dequantizing every frozen "
            "weight three times a step (forward, recompute, backward), attention, norms, RoPE, the loss's "
            "softmax over the vocabulary, LoRA and its dropout, the optimizer"
        )
    if results.get("harness") and bare:
        overhead = bare["tokens_per_s"] / results["harness"]["tokens_per_s"] - 1
        lines.append(f"- harness overhead over the bare loop: {overhead:+.1%}")
    return lines


def round_ratios(path: str, harness: dict, standard: dict) -> str:
    """The speed ratio of each round (the paths run back to back, so a round's runs meet the same machine
    state; the best-of ratio above pairs runs from different rounds), and in how many the goal was met."""
    pairs = zip(harness["tokens_per_s_rounds"], standard["tokens_per_s_rounds"], strict=True)
    ratios = [h / s for h, s in pairs if h and s]
    if not ratios:
        return f"  - per round: no round where both {path} and standard ran"
    return "  - per round (runs in turns): " + per_round_summary(ratios, GOALS["speed"])


def per_round_summary(ratios: list[float], goal: float, unit: str = "") -> str:
    """Each round's ratio, their median and in how many rounds ``goal`` was reached (bench-perf's speed
    ratios, eval_cost's speedups)."""
    met = sum(ratio >= goal for ratio in ratios)
    return (
        f"{', '.join(f'{ratio:.2f}{unit}' for ratio in ratios)}; "
        f"median {statistics.median(ratios):.2f}{unit}; ≥ {goal:g}{unit} in {met} of {len(ratios)}"
    )


def breakdown(harness: dict) -> str:
    """The memory model's terms for the harness job beside its measured peak (above the same baseline)."""
    estimate = harness.get("memory_estimate")
    if not estimate:
        return "No memory estimate for the harness job: " + "; ".join(harness.get("caveats", []))
    terms = estimate["terms"]
    baseline = terms["baseline_rss"]
    measured, predicted = harness["peak_memory_bytes"] - baseline, estimate["total"] - baseline
    rows = [[name, mib(value)] for name, value in terms.items()]
    rows.append([f"total at the {estimate['peak_phase']} phase", mib(estimate["total"])])
    rows.append(["measured peak", mib(harness["peak_memory_bytes"])])
    error = f"{predicted / measured - 1:+.1%}" if measured > 0 else "n/a"
    return (
        table(["memory model term", "MiB"], rows)
        + f"\n\nAbove the baseline (resident set before any weight is read): model {mib(predicted)} MiB, "
        f"measured {mib(measured)} MiB, error "
        f"**{error}** (bound ±15 % under either cpu_heap policy: the model counts live tensors; under `fast` "
        "glibc's heap keeps freed chunks resident and reuses them, exactly so with CPU tensors from malloc "
        "(harness.train.cpu_allocator), else a heap_retained term counts what it keeps)."
        + (f" **Caveat:** {estimate['caveat']}." if "caveat" in estimate else "")
    )


def loss_table(results: dict[str, dict]) -> str:
    steps = max(len(r["loss"]) for r in results.values())
    rows = [
        [str(i + 1)] + [f"{r['loss'][i]:.4f}" if i < len(r["loss"]) else "" for r in results.values()]
        for i in range(steps)
    ]
    return table(["step", *results], rows)


def report(s: Settings, results: dict[str, dict], limit: dict, seconds: float) -> str:
    ceilings = {path: path_ceiling(path, s, limit) for path in results}
    sections = [
        header(s, limit, seconds),
        results_table(results, ceilings),
        "\n".join(goal_lines(results, ceilings)),
    ]
    for path in HARNESS_PATHS:
        if path in results:
            sections.append(f"## Memory: the {path} job, term by term\n\n" + breakdown(results[path]))
    sections.append("## Loss per step\n\n" + loss_table(results))
    return "\n\n".join(sections) + "\n"
