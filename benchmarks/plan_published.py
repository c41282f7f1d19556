"""qlora-plan against published QLoRA memory figures: each case is a qlora-plan command line with the
source's settings, the figure the source gives, and what the planner says about it.

``python -m benchmarks.plan_published [--out reports/plan/published.md]``: plans only (config.json files
shipped in harness/plan/configs; no weights, no GPU).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from harness.env import git_commit
from harness.plan.cli import plan_jobs
from harness.plan.devices import GIB

PAPER_65B = (
    "model=llama-65b quant=nf4 lora.r=64 lora.alpha=16 lora.dropout=0.05 train.optimizer=paged_adamw_32bit "
    "train.batch_size=1 train.grad_accum=16 train.seq_len=528"
)


@dataclass(frozen=True)
class Case:
    name: str
    source: str  # where the figure is published
    figure: str  # what it says
    args: str  # the qlora-plan command line with the source's settings


CASES = [
    Case(
        "QLoRA paper: LLaMA-65B on one 48 GB GPU",
        "Dettmers et al. 2023, arXiv:2305.14314, abstract; settings from artidoro/qlora "
        "scripts/finetune_guanaco_65b.sh (commit 86ac601): NF4 + DQ, r 64 all linear, dropout 0.05, "
        "batch 1 x 16 accumulation, source 16 + target 512 tokens, paged_adamw_32bit (qlora.py default)",
        "fits in 48 GB",
        f"{PAPER_65B} plan.device=a6000",
    ),
    Case(
        "issue 27's check: LLaMA-65B, this harness's defaults",
        "issue 27 done-when (batch 4 x 256, AdamW, r 64)",
        "fits in 48 GiB, peak 34..48 GiB",
        "model=llama-65b quant=nf4 lora.r=64 plan.memory_gib=48",
    ),
    Case(
        "the same on 24 GiB",
        "issue 27 done-when",
        "does not fit: weights alone exceed it",
        "model=llama-65b quant=nf4 lora.r=64 plan.memory_gib=24",
    ),
    Case(
        "torchtune: Llama2-7B QLoRA in under 10 GB",
        "pytorch.org/torchtune/stable/tutorials/qlora_finetune.html ('finetune a Llama2-7b model in <10 GB "
        "of memory'); settings from recipes/configs/llama2/7B_qlora_single_device.yaml: r 8, q/k/v/o + MLP, "
        "dropout 0, batch 2, activation checkpointing, fused AdamW, bf16 (sequence length: Alpaca-cleaned, "
        "not capped; 512 assumed)",
        "< 10 GB",
        "model=llama-2-7b quant=nf4 lora.r=8 lora.dropout=0 train.batch_size=2 train.seq_len=512 "
        "plan.device=a100-40",
    ),
    *(
        Case(
            f"LLaMA-{size} QLoRA on a 24 GB card (RTX 4090), the paper's settings",
            "the recipe card's hardware rows (issue 27 quotes its 65B row: '~24 GB (RTX 4090)'); settings as "
            "the paper's 65B run, batch 1 x 512 tokens",
            "65B: ~24 GB" if size == "65b" else "(the card's row for this size)",
            f"model=llama-{size} quant=nf4 lora.r=64 lora.dropout=0.05 train.optimizer=paged_adamw_32bit "
            "train.batch_size=1 train.seq_len=512 plan.device=rtx4090",
        )
        for size in ("7b", "13b", "33b", "65b")
    ),
]


def row(case: Case) -> list[str]:
    _, (plan,) = plan_jobs(case.args.split())
    weights = (plan.terms["quantized_weights"] + plan.terms["unquantized_params"]) / GIB
    return [
        case.name,
        case.figure,
        f"`qlora-plan {case.args}`",
        f"{plan.predicted_peak / GIB:.1f} GiB ({plan.predicted_peak / 1e9:.1f} GB)",
        f"{weights:.1f} GiB ({weights * GIB / 1e9:.1f} GB)",
        "yes" if plan.fits else "**no**",
        str(plan.max_batch_size),
        plan.reason(),
        case.source,
    ]


HEADERS = [
    "case",
    "published",
    "plan",
    "predicted peak",
    "frozen weights",
    "fits",
    "max batch",
    "planner",
    "source",
]


# Google Cloud's QLoRA batch sizes for openLLaMA-7B (cloud.google.com/vertex-ai/generative-ai/docs/
# model-garden/lora-qlora, 'Higher batch size'); the page gives neither rank nor sequence length.
GOOGLE_BATCH = {"a100-40": 24, "l4": 12, "v100-16": 8}
GOOGLE_ARGS = "model=open-llama-7b quant=nf4 lora.r=16 train.batch_size=1"


def google_table(seq_lens=(512, 1024, 2048)) -> str:
    """The largest batch the planner allows on each device at each sequence length, beside Google's."""
    head = ["train.seq_len", *(f"{d} (Google: {b})" for d, b in GOOGLE_BATCH.items())]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for seq in seq_lens:
        cells = [str(seq)]
        for device in GOOGLE_BATCH:
            _, (plan,) = plan_jobs([*GOOGLE_ARGS.split(), f"train.seq_len={seq}", f"plan.device={device}"])
            cells.append(str(plan.max_batch_size))
        lines.append("| " + " | ".join(cells) + " |")
    return f"`qlora-plan {GOOGLE_ARGS} train.seq_len=<n> plan.device=<d>`: max batch size\n\n" + "\n".join(
        lines
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.plan_published", description=__doc__.split("\n")[0]
    )
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(row(case)) + " |" for case in CASES]
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    text = f"- date: {stamp}; commit: {git_commit()}; command: `python -m benchmarks.plan_published`\n\n"
    text += "\n".join(lines) + "\n\n" + google_table() + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
