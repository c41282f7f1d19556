"""One job's plan on one device: peak memory term by term, whether it fits, the largest batch and sequence
that fit, and the step time the device's rate predicts.

Memory is ``harness.train.memory_model``'s estimate (the same one a job stores beside its measured peak)
for the job's largest possible micro-batch (``train.batch_size`` rows of ``train.seq_len`` tokens), plus
what the CUDA allocator's counters do not see. Assumptions, stated once here:

- ``CUDA_CONTEXT_BYTES``: the CUDA context and kernels' own buffers, ~0.5 GiB for torch 2.x with CUDA 12's
  lazy module loading (outside ``torch.cuda.max_memory_allocated``; the GPU check measures it).
- ``ALLOCATOR_RESERVE``: the caching allocator reserves more than it hands out (block rounding and
  fragmentation): 5 % of the allocated peak, assumed until a GPU run measures reserved / allocated.
- ``CPU_BASELINE_BYTES``: on CPU the process's resident set before the model is loaded (libraries,
  tokenizer, Alpaca data): 686 MiB measured for the SmolLM2 quickstart job on 2026-12-06
  (reports/plan/README.md); a job measures its own.
- Time: training FLOPs (``step_flops``) at the device's dense bf16 peak times ``EFFICIENCY``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from harness.config import JobConfig, TrainConfig
from harness.device import choose_compute_dtype
from harness.model.lora import resolve_targets
from harness.model.replace import is_skipped
from harness.plan.devices import GIB, DeviceSpec
from harness.plan.source import PlannedModel
from harness.train.loop import LOSS_CHUNK_ROWS, PLAIN_HEAD_MODELS
from harness.train.memory_model import BatchShape, ModelShape, estimate_peak_memory, targeted

MIB = 2**20
CUDA_CONTEXT_BYTES = 512 * MIB
ALLOCATOR_RESERVE = 0.05
CPU_BASELINE_BYTES = 686 * MIB
# Fraction of the device's peak a QLoRA training step reaches. CPU (cpu_heap fast / lean): measured, 30 %
# and 17 % of the F.linear limit (reports/perf/bench_cpu.md, c6fc730). CUDA: assumed equal to the CPU's
# fast figure until benchmarks/gpu_check.sh measures it (plan.efficiency overrides both).
EFFICIENCY = {"cuda": 0.30, "cpu_fast": 0.30, "cpu_lean": 0.17}
MAX_SEARCH = 2**16  # the largest batch size the search tries


@dataclass
class JobPlan:
    """What the planner says about one job on one device (bytes unless named otherwise)."""

    job: str
    device: DeviceSpec
    terms: dict[str, int]
    peak_phase: str
    predicted_peak: int
    paged_optimizer_state: int
    max_batch_size: int
    max_seq_len: int
    step_flops: float
    tokens_per_step: int
    tflops: float | None = None  # the rate the time is predicted at (peak x efficiency)
    efficiency: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.predicted_peak <= self.device.memory_bytes

    @property
    def step_time_s(self) -> float | None:
        return self.step_flops / (self.tflops * 1e12) if self.tflops else None

    @property
    def tokens_per_s(self) -> float | None:
        return self.tokens_per_step / self.step_time_s if self.step_time_s else None

    def reason(self) -> str:
        """Why it does or does not fit, in one sentence."""
        memory = f"{self.device.memory_gib:.1f} GiB"
        weights = self.terms["quantized_weights"] + self.terms["unquantized_params"]
        if weights > self.device.memory_bytes:
            return f"does not fit: the frozen weights alone are {weights / GIB:.1f} GiB, over {memory}"
        if self.fits:
            return f"fits: {self.predicted_peak / GIB:.1f} of {memory}"
        if self.max_batch_size == 0:
            longest = f"{self.max_seq_len} tokens" if self.max_seq_len else "none"
            return (
                f"does not fit: {self.predicted_peak / GIB:.1f} GiB over {memory}, and even batch size 1 "
                f"does not fit (the longest sequence that fits at this batch size: {longest})"
            )
        return (
            f"does not fit: {self.predicted_peak / GIB:.1f} GiB over {memory} at this batch; "
            f"the largest train.batch_size that fits is {self.max_batch_size}"
        )

    def row(self) -> dict[str, object]:
        """One CSV row: the job, the verdict, the searches, the time, then every term in GiB."""
        gib = {f"{name}_gib": round(value / GIB, 4) for name, value in self.terms.items()}
        return {
            "job": self.job,
            "device": self.device.name,
            "memory_gib": round(self.device.memory_gib, 2),
            "predicted_peak_gib": round(self.predicted_peak / GIB, 3),
            "fits": self.fits,
            "peak_phase": self.peak_phase,
            "max_batch_size": self.max_batch_size,
            "max_seq_len": self.max_seq_len,
            "predicted_step_time_s": _round(self.step_time_s),
            "predicted_tokens_per_s": _round(self.tokens_per_s),
            "efficiency": self.efficiency,
            **gib,
            "paged_optimizer_state_gib": round(self.paged_optimizer_state / GIB, 4),
            "reason": self.reason(),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.4g}")


def plan_targets(shape: ModelShape, job: JobConfig) -> list[str]:
    """The LoRA target suffixes the job would resolve (harness.model.lora.resolve_targets)."""
    skip = list(job.quant.skip_modules)
    names = [n for n, *_ in shape.linears] + [n for n, *_ in shape.outer_linears]
    return resolve_targets(job.lora.targets, [n for n in names if not is_skipped(n, skip)])


def batch_shape(model_type: str, rows: int, width: int) -> BatchShape:
    """The micro-batch a plan assumes: every row ``width`` tokens, every token a target; the loss holds
    ``LOSS_CHUNK_ROWS`` rows of logits where it runs the head chunk by chunk, else all of them."""
    tokens = rows * width
    logit_rows = min(tokens, LOSS_CHUNK_ROWS) if model_type in PLAIN_HEAD_MODELS else tokens
    return BatchShape(rows, width, logit_rows)


def peak_terms(shape: ModelShape, job: JobConfig, device: DeviceSpec, batch: BatchShape) -> dict:
    """``estimate_peak_memory`` for this device, plus the CUDA context and allocator reserve on CUDA."""
    torch_device = torch.device(device.kind)
    dtype, _ = choose_compute_dtype(str(job.quant.compute_dtype), torch_device)
    on_cpu = device.kind == "cpu"
    estimate = estimate_peak_memory(
        shape,
        job.quant,
        job.lora,
        job.train,
        targets=plan_targets(shape, job),
        batch=batch,
        compute_dtype=dtype,
        device=torch_device,
        baseline_bytes=CPU_BASELINE_BYTES if on_cpu else 0,
        attention_fp32=on_cpu and dtype != torch.float32,  # harness.model.attention.choose_attention
        cpu_heap=str(job.cpu_heap),
    )
    if not on_cpu:
        estimate["terms"]["cuda_context"] = CUDA_CONTEXT_BYTES
        estimate["terms"]["allocator_reserve"] = round(ALLOCATOR_RESERVE * estimate["total"])
        estimate["total"] += CUDA_CONTEXT_BYTES + estimate["terms"]["allocator_reserve"]
    return estimate


def _largest(fits, low: int, high: int) -> int:
    """The largest n in [low, high] with fits(n) (fits is monotone in n); 0 when none fits."""
    if not fits(low):
        return 0
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    return low


def step_flops(
    shape: ModelShape, targets: list[str], rank: int, batch: BatchShape, train: TrainConfig
) -> float:
    """Training FLOPs of one micro-batch. Forward: 2 per weight per token through the frozen linear layers
    and LoRA, the causal attention's QK and AV (2 x 2 x width/2 x heads x head_dim per token and layer)
    and the head on the logit rows. Backward: the frozen layers need input gradients only (one more
    forward's worth), LoRA and attention two; checkpointing runs the forward once more, its checkpointed
    share of the layers (``train.checkpoint_every``) with the head in proportion."""
    frozen = sum(i * o for _, i, o in shape.linears)
    lora = sum(rank * (i + o) for n, i, o in shape.linears if targeted(n, targets))
    attention = 2 * batch.width * shape.heads * shape.head_dim
    per_token = 2 * shape.layers * (frozen + lora + attention)
    head = 2 * shape.hidden * shape.vocab * batch.logit_rows
    forward = per_token * batch.tokens + head
    backward = 2 * shape.layers * batch.tokens * (frozen + 2 * lora + 2 * attention) + head
    return forward * (1 + train.checkpointed_layers(shape.layers) / shape.layers) + backward


def cpu_tflops(dtype: torch.dtype, size: int = 1024) -> float:
    """This CPU's F.linear rate in ``dtype`` (best of 5 after a warm-up), TFLOP/s."""
    x, w = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    F.linear(x, w)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        F.linear(x, w)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e12


def _efficiency(job: JobConfig, device: DeviceSpec, given: float | None) -> float:
    return (
        given if given is not None else EFFICIENCY["cuda" if device.kind == "cuda" else f"cpu_{job.cpu_heap}"]
    )


def plan_job(
    label: str,
    job: JobConfig,
    device: DeviceSpec,
    model: PlannedModel,
    efficiency: float | None = None,
) -> JobPlan:
    """The plan of ``job`` (a validated config) on ``device`` for ``model``."""
    shape, model_type = model.shape, model.model_type
    rows, width = job.train.batch_size, job.train.seq_len

    def peak(r: int, w: int) -> int:
        return peak_terms(shape, job, device, batch_shape(model_type, r, w))["total"]

    batch = batch_shape(model_type, rows, width)
    estimate = peak_terms(shape, job, device, batch)
    limit = device.memory_bytes
    longest = model.max_positions or 64 * width
    plan = JobPlan(
        job=label,
        device=device,
        terms=estimate["terms"],
        peak_phase=estimate["peak_phase"],
        predicted_peak=estimate["total"],
        paged_optimizer_state=estimate.get("paged_optimizer_state", 0),
        max_batch_size=_largest(lambda r: peak(r, width) <= limit, 1, MAX_SEARCH),
        max_seq_len=_largest(lambda w: peak(rows, w) <= limit, 8, longest),
        step_flops=job.train.grad_accum
        * step_flops(shape, plan_targets(shape, job), job.lora.r, batch, job.train),
        tokens_per_step=job.train.grad_accum * batch.tokens,
    )
    plan.efficiency = _efficiency(job, device, efficiency)
    peak_rate = device.peak_tflops
    if peak_rate is None and device.kind == "cpu":
        peak_rate = cpu_tflops(choose_compute_dtype(str(job.quant.compute_dtype), torch.device("cpu"))[0])
        plan.notes.append(f"CPU rate measured now: F.linear at {peak_rate:.2f} TFLOP/s")
    plan.tflops = peak_rate * plan.efficiency if peak_rate else None
    if plan.paged_optimizer_state:
        plan.notes.append(
            f"paged optimizer state {plan.paged_optimizer_state / GIB:.2f} GiB lives in CUDA unified memory "
            "and pages out to CPU RAM when the GPU is full (not in the peak)"
        )
    if device.note:
        plan.notes.append(f"{device.name}: {device.note}")
    if "caveat" in estimate:
        plan.notes.append(estimate["caveat"])
    return plan
