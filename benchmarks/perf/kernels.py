"""``python -m benchmarks.perf.kernels [--out reports/perf/cpu_kernels.md]``

The CPU kernels the harness picks instead of the defaults, timed side by side in one run on SmolLM2-135M's
shapes (batch 4 x 160 tokens, bf16): attention (SDPA in bf16 vs upcast to fp32, harness.model.attention)
and LoRA dropout (nn.Dropout, the Mersenne-Twister lane mask the harness used before, and today's
SplitMix64 mask, harness.model.dropout), forward and forward+backward. Variants alternate in every round,
so drift of the machine's speed hits them alike; the median of the rounds is reported.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.perf.render import table
from harness.device import device_name
from harness.env import git_commit
from harness.model.dropout import LoraDropout, keep_mask

ROOT = Path(__file__).resolve().parents[2]
ROWS, TOKENS, HEADS, KV_HEADS, HEAD_DIM = 4, 160, 9, 3, 64  # SmolLM2-135M attention at a typical batch
WIDTHS = (576, 1536)  # LoRA inputs: the hidden size (q/k/v/o/gate/up) and the MLP width (down)
P = 0.1


def mersenne_lane_dropout(x: torch.Tensor) -> torch.Tensor:
    """The harness's dropout before the SplitMix64 mask: four 15-bit lanes per int64 from torch's
    Mersenne Twister (random_), applied with where + an in-place scale."""
    numel = x.numel()
    draws = torch.empty(-(-numel // 4), dtype=torch.int64).random_()
    lanes = draws.view(torch.int16)[:numel].view(x.shape) & (2**15 - 1)
    threshold = round((1 - P) * 2**15)
    return torch.where(lanes < threshold, x, 0.0).mul_(2**15 / threshold)


def attention(dtype: torch.dtype) -> Callable[[list[torch.Tensor]], torch.Tensor]:
    def run(qkv: list[torch.Tensor]) -> torch.Tensor:
        q, k, v = (t.to(dtype) for t in qkv)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    return run


def timed(
    fn: Callable[[list[torch.Tensor]], torch.Tensor], inputs: list[torch.Tensor], backward: bool
) -> float:
    start = time.perf_counter()
    out = fn(inputs)
    if backward:
        out.float().sum().backward()
    return time.perf_counter() - start


def measure(
    variants: dict[str, Callable], make_inputs: Callable[[], list[torch.Tensor]], rounds: int
) -> list:
    """Median ms forward and forward+backward per variant, the variants alternating every round."""
    times = {name: ([], []) for name in variants}
    for r in range(rounds + 1):  # round 0 warms up
        for name, fn in variants.items() if r % 2 else reversed(variants.items()):
            for backward in (False, True):
                inputs = make_inputs()
                elapsed = timed(fn, inputs, backward)
                if r:
                    times[name][backward].append(elapsed)
    return [
        [name, f"{statistics.median(fwd) * 1e3:.2f}", f"{statistics.median(both) * 1e3:.2f}"]
        for name, (fwd, both) in times.items()
    ]


def report(rounds: int) -> str:
    torch.manual_seed(0)

    def qkv() -> list[torch.Tensor]:
        shapes = [(ROWS, HEADS, TOKENS, HEAD_DIM), *[(ROWS, KV_HEADS, TOKENS, HEAD_DIM)] * 2]
        return [torch.randn(s, dtype=torch.bfloat16, requires_grad=True) for s in shapes]

    sections = [
        f"## Attention: SDPA, causal, {ROWS} x {HEADS} heads ({KV_HEADS} KV) x {TOKENS} tokens x {HEAD_DIM}, "
        "bf16 inputs\n\n"
        + table(
            ["variant", "forward ms", "forward+backward ms"],
            measure(
                {
                    "bf16 (transformers' sdpa)": attention(torch.bfloat16),
                    "upcast to fp32 (harness)": attention(torch.float32),
                },
                qkv,
                rounds,
            ),
        )
    ]
    dropouts = {
        "nn.Dropout (peft's)": torch.nn.Dropout(P).train(),
        "Mersenne-Twister lanes (harness before)": mersenne_lane_dropout,
        "SplitMix64 mask (harness)": LoraDropout(P).train(),
    }
    for width in WIDTHS:

        def lora_input(width: int = width) -> list[torch.Tensor]:
            return [torch.randn(ROWS, TOKENS, width, dtype=torch.bfloat16, requires_grad=True)]

        variants = {name: (lambda xs, d=d: d(xs[0])) for name, d in dropouts.items()}
        sections.append(
            f"## LoRA dropout p = {P}: {ROWS} x {TOKENS} x {width} bf16\n\n"
            + table(["variant", "forward ms", "forward+backward ms"], measure(variants, lora_input, rounds))
        )
    keep, _ = keep_mask(torch.Size([4000, 1000]), P, torch.device("cpu"))
    sections.append(
        f"SplitMix64 mask keep rate over 4M elements: {keep.float().mean().item():.4f} (1 - p = {1 - P})"
    )
    header = (
        "# CPU kernels: the harness's attention and LoRA dropout against the defaults\n\n"
        f"- date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}; command: "
        f"`python -m benchmarks.perf.kernels --rounds {rounds}`; commit {git_commit()}\n"
        f"- machine: {device_name(torch.device('cpu'))}, torch threads {torch.get_num_threads()}, "
        f"capability {torch.backends.cpu.get_cpu_capability()}; torch {torch.__version__}\n"
        f"- median of {rounds} rounds, variants alternating each round"
    )
    return "\n\n".join([header, *sections]) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.perf.kernels", description=__doc__.split("\n\n")[1]
    )
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--out", type=Path, default=ROOT / "reports" / "perf" / "cpu_kernels.md")
    args = p.parse_args()
    text = report(args.rounds)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
