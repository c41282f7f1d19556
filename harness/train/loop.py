"""The training loop: backprop through the frozen (dequantized) base into the LoRA parameters only."""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from harness.config import TrainConfig
from harness.data.collate import collate
from harness.data.instruct import IGNORE_INDEX, TokenizedExample, batch_order
from harness.train.meters import peak_memory, reset_peak_memory
from harness.train.optim import build_optimizer


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite: the job fails with this reason instead of training on garbage."""


@dataclass
class TrainResult:
    steps: int
    tokens: int  # non-padding tokens through forward and backward, all steps
    target_tokens: int  # of those, the response tokens the loss is taken on
    tokens_per_s: float  # non-padding tokens per second, warm-up steps excluded
    step_time_s_median: float
    loss: list[float] = field(default_factory=list)
    memory: dict = field(default_factory=dict)
    compute_dtype: str = ""
    trainable_params: int = 0
    gradient_checkpointing: bool = True

    def to_json(self) -> dict:
        return {
            "steps": self.steps,
            "tokens": self.tokens,
            "target_tokens": self.target_tokens,
            "tokens_per_s": self.tokens_per_s,
            "step_time_s_median": self.step_time_s_median,
            "loss": self.loss,
            "loss_start": self.loss[0] if self.loss else None,
            "loss_end": self.loss[-1] if self.loss else None,
            "compute_dtype": self.compute_dtype,
            "gradient_checkpointing": self.gradient_checkpointing,
            **self.memory,
        }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _check_finite(losses: list[torch.Tensor], first_step: int) -> list[float]:
    values = torch.stack(losses).float().tolist()
    for offset, value in enumerate(values):
        if not math.isfinite(value):
            raise NonFiniteLossError(f"training loss became {value} at step {first_step + offset}")
    return values


def train(
    model: torch.nn.Module,
    examples: list[TokenizedExample],
    cfg: TrainConfig,
    pad_token_id: int,
    device: torch.device,
    seed: int,
    log_every: int = 5,
) -> TrainResult:
    """Train ``cfg.steps`` optimizer steps and measure loss, throughput and peak memory.

    Losses stay on the device and are read back every ``log_every`` steps, so CUDA is not synchronised
    on every step; tokens/s is total trained tokens over wall time after ``warmup_steps_excluded``.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(trainable, cfg)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model.train()
    batches = batch_order(examples, cfg.batch_size, cfg.group_by_length, seed)
    reset_peak_memory(device)
    pending: list[torch.Tensor] = []
    losses: list[float] = []
    step_times: list[float] = []
    tokens = target_tokens = measured_tokens = 0
    measure_from = min(cfg.warmup_steps_excluded, max(cfg.steps - 1, 0))
    bar = tqdm(range(cfg.steps), desc="train", unit="step")
    _sync(device)
    start = measured_start = time.perf_counter()
    for step in bar:
        if step == measure_from:
            _sync(device)
            measured_start = time.perf_counter()
        step_start = time.perf_counter()
        step_loss = torch.zeros((), device=device)
        for _ in range(cfg.grad_accum):
            cpu_batch = collate([examples[i] for i in next(batches)], pad_token_id)
            n = int(cpu_batch["attention_mask"].sum())  # counted on the host: no device sync
            tokens += n
            target_tokens += int((cpu_batch["labels"] != IGNORE_INDEX).sum())
            batch = {k: v.to(device, non_blocking=True) for k, v in cpu_batch.items()}
            loss = model(**batch).loss / cfg.grad_accum
            loss.backward()
            step_loss += loss.detach()
            measured_tokens += n if step >= measure_from else 0
        torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        pending.append(step_loss)
        step_times.append(time.perf_counter() - step_start)
        if (step + 1) % log_every == 0 or step + 1 == cfg.steps:
            losses += _check_finite(pending, step + 1 - len(pending))
            pending = []
            elapsed = time.perf_counter() - start
            bar.set_postfix(loss=f"{losses[-1]:.4f}", tok_s=f"{tokens / elapsed:.0f}")
    _sync(device)
    measured_time = time.perf_counter() - measured_start
    model.eval()
    measured = step_times[measure_from:] or step_times
    return TrainResult(
        steps=cfg.steps,
        tokens=tokens,
        target_tokens=target_tokens,
        tokens_per_s=measured_tokens / measured_time if cfg.steps and measured_time > 0 else 0.0,
        step_time_s_median=statistics.median(measured) if measured else 0.0,
        loss=losses,
        memory=peak_memory(device),
        trainable_params=sum(p.numel() for p in trainable),
        gradient_checkpointing=cfg.gradient_checkpointing,
    )
