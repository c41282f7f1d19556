"""What the benchmark measures besides the paths themselves: the machine's matmul rate in the compute dtype,
FLOPs per trained token from the model's linear shapes, a step clock and the memory fields."""

from __future__ import annotations

import os
import time

import torch
import torch.nn.functional as F

from harness.train.meters import peak_memory, rss_bytes


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def linear_flops_per_token(shapes: list[tuple[int, int]], layers: int, head: tuple[int, int]) -> int:
    """Forward FLOPs of one token through every linear layer: 2·in·out per block layer, and the head."""
    return 2 * (layers * sum(i * o for i, o in shapes) + head[0] * head[1])


def training_flops_per_token(forward: int, recomputed: float) -> float:
    """Frozen base, trainable LoRA: forward (1x) + input gradients through the frozen weights (1x, no weight
    gradients), + the ``recomputed`` share of the forward that checkpointing runs again (1 with every layer
    checkpointed, 0 without). LoRA's own FLOPs (~r/hidden) left out."""
    return forward * (2 + recomputed)


def matmul_rate(
    shapes: list[tuple[int, int]], rows: int, dtype: torch.dtype, device: torch.device, seconds: float = 2.0
) -> float:
    """FLOP/s of F.linear over the model's own layer shapes at ``rows`` tokens, in ``dtype``: the roofline
    the training paths are measured against (same machine, same run)."""
    torch.manual_seed(0)
    pairs = [
        (torch.randn(rows, i, dtype=dtype, device=device), torch.randn(o, i, dtype=dtype, device=device))
        for i, o in dict.fromkeys(shapes)
    ]
    flops_per_round = sum(2 * rows * w.shape[0] * w.shape[1] for _, w in pairs)
    for x, w in pairs:  # warm-up
        F.linear(x, w)
    sync(device)
    rounds, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for x, w in pairs:
            F.linear(x, w)
        rounds += 1
    sync(device)
    return rounds * flops_per_round / (time.perf_counter() - start)


class StepClock:
    """End time of each step; tokens/s over the steps after the warm-up."""

    def __init__(self, device: torch.device):
        self.device = device
        self.start = time.perf_counter()
        self.ends: list[float] = []

    def step_done(self) -> None:
        sync(self.device)
        self.ends.append(time.perf_counter())

    def summary(self, tokens: list[int], warmup: int) -> dict:
        ends = self.ends
        begin = ends[warmup - 1] if warmup else self.start
        steps = [b - a for a, b in zip([self.start, *ends[:-1]], ends, strict=True)][warmup:]
        return {
            "tokens_per_s": sum(tokens[warmup : len(ends)]) / (ends[-1] - begin),
            "step_s_median": sorted(steps)[len(steps) // 2],
        }


def memory_fields(device: torch.device) -> dict:
    """Peak since the reset, plus (CPU) the file-backed part of the resident set now (mapped checkpoints)."""
    fields = peak_memory(device)
    if device.type == "cpu":
        fields["rss_file_bytes_end"] = rss_bytes("RssFile")
    return fields


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()
