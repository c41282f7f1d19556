"""qlora-plan against measured jobs: for every ``result.json`` under the given folders, the planner's peak for
the batch the job trained (from its config and the model's config.json alone) beside the measured peak.

``python -m benchmarks.plan_check RUNS... [--out reports/plan/measured.md]``. On CPU the measured peak is
the resident set: the plan's total (with its assumed pre-load baseline, ``CPU_BASELINE_BYTES``) and the part
above the baseline (the job's own measured baseline subtracted) are both compared. On CUDA the plan's
allocated peak (its total less the CUDA context and allocator reserve) is compared with
``torch.cuda.max_memory_allocated``, and allocated + reserve with ``max_memory_reserved``; the measured
efficiency is the step's FLOPs over its measured time and the device's peak rate.
``python -m benchmarks.plan_check --make-model DIR``: a random ~1.1B Llama (TinyLlama's shape) and the byte
tokenizer, for the GPU check.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path

from harness.config import validate_config
from harness.env import git_commit
from harness.plan.devices import DeviceSpec, host_cpu, known_device
from harness.plan.predict import CPU_BASELINE_BYTES, peak_terms, plan_targets, step_flops
from harness.plan.source import planned_model
from harness.result import RETIRED_KEYS
from harness.train.memory_model import BatchShape

MIB = 2**20
LLAMA_1B = {  # TinyLlama-1.1B's shape
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 22,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "vocab_size": 32000,
    "max_position_embeddings": 2048,
}


def _device(result: dict) -> DeviceSpec:
    env = result.get("env") or {}
    if env.get("device") != "cuda":
        return host_cpu()
    return known_device(env.get("device_name", "cuda"), env.get("device_memory_gib", 0.0))


def _measured_peak(path: Path, train: dict) -> int:
    """The job's peak; a job run by benchmarks.memory_phases reset VmHWM at every phase, so its peak is the
    largest phase peak in phases.json."""
    phases = path.parent / "phases.json"
    return json.loads(phases.read_text())["peak_rss"] if phases.exists() else train["peak_memory_bytes"]


def compare(path: Path) -> dict | None:
    """One job's predicted and measured peaks (bytes) and, on CUDA, the measured efficiency."""
    result = json.loads(path.read_text())
    train = result.get("train") or {}
    if result.get("status") != "ok" or not train.get("largest_batch"):
        return None
    job = validate_config({k: v for k, v in result["config"].items() if k not in RETIRED_KEYS})
    m = job.model
    model = planned_model(m.name_or_path, m.revision, m.cache_dir, m.trust_remote_code)
    device, batch = _device(result), BatchShape(**train["largest_batch"])
    estimate = peak_terms(model.shape, job, device, batch)
    row = {
        "job": str(path.parent),
        "device": device.name,
        "heap": str(job.cpu_heap),
        "terms": estimate["terms"],
    }
    row |= {"predicted": estimate["total"], "measured": _measured_peak(path, train)}
    if device.kind == "cpu":
        measured_baseline = ((train.get("memory_estimate") or {}).get("terms") or {}).get("baseline_rss")
        row["predicted_added"] = estimate["total"] - CPU_BASELINE_BYTES
        row["measured_added"] = row["measured"] - measured_baseline if measured_baseline else None
        return row
    terms = estimate["terms"]
    row["predicted"] = estimate["total"] - terms["cuda_context"] - terms["allocator_reserve"]
    row["predicted_reserved"] = row["predicted"] + terms["allocator_reserve"]
    row["measured_reserved"] = train.get("peak_memory_reserved_bytes")
    flops = step_flops(model.shape, plan_targets(model.shape, job), job.lora.r, batch, job.train)
    if device.peak_tflops and train.get("step_time_s_median"):
        row["efficiency"] = (
            flops * job.train.grad_accum / train["step_time_s_median"] / device.peak_tflops / 1e12
        )
    return row


def _mib(value: int | None) -> str:
    return f"{value / MIB:.0f}" if value else ""


def _error(predicted: int | None, measured: int | None) -> str:
    return f"{predicted / measured - 1:+.1%}" if predicted and measured else ""


def cells(r: dict) -> list[str]:
    """One table row: the totals, the part above the CPU baseline, the CUDA reserve, the efficiency."""
    return [
        r["job"],
        r["device"],
        r["heap"],
        _mib(r["predicted"]),
        _mib(r["measured"]),
        _error(r["predicted"], r["measured"]),
        _mib(r.get("predicted_added")),
        _mib(r.get("measured_added")),
        _error(r.get("predicted_added"), r.get("measured_added")),
        f"{_mib(r.get('predicted_reserved'))} / {_mib(r.get('measured_reserved'))}"
        if "measured_reserved" in r
        else "",
        f"{r['efficiency']:.1%}" if "efficiency" in r else "",
    ]


HEADERS = [
    "job",
    "device",
    "cpu_heap",
    "predicted MiB",
    "measured MiB",
    "error",
    "predicted above baseline",
    "measured above baseline",
    "error above baseline",
    "reserved MiB: predicted / measured",
    "measured efficiency",
]


def render(rows: list[dict], runs: list[str]) -> str:
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    return f"- date: {stamp}; commit: {git_commit()}; runs: {', '.join(runs)}\n\n" + "\n".join(lines) + "\n"


def make_model(directory: Path) -> None:
    """A random Llama of ``LLAMA_1B``'s shape in bf16 with the byte tokenizer (no download)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from harness.model.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(**LLAMA_1B, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.plan_check", description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="*", type=Path)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--make-model", type=Path, default=None, help="write the random ~1.1B Llama here")
    args = p.parse_args(argv)
    if args.make_model:
        make_model(args.make_model)
        return
    rows = [r for run in args.runs for path in sorted(run.rglob("result.json")) if (r := compare(path))]
    text = render(rows, [str(r) for r in args.runs])
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
