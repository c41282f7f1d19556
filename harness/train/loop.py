"""The training loop: backprop through the frozen (dequantized) base into the LoRA parameters only."""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from tqdm.auto import tqdm
from transformers.modeling_layers import GradientCheckpointingLayer

from harness.config import TrainConfig
from harness.data.collate import collate
from harness.data.instruct import IGNORE_INDEX, TokenizedExample, batch_order
from harness.model.precision import adapter_autocast, adapters_as_trained, model_compute_dtype
from harness.train.memory_model import BatchShape
from harness.train.meters import peak_memory, reset_peak_memory, trim_heap
from harness.train.optim import build_optimizer

# Model types whose causal-LM logits are exactly lm_head(final hidden state), with nothing scaled or capped.
PLAIN_HEAD_MODELS = ("llama", "mistral", "qwen2", "qwen3")
# Response rows whose logits exist at once: lm_head and the fp32 cross-entropy run chunk by chunk, each chunk
# recomputed in backward, so a step holds 128 x vocab logits rather than all its response rows' (a third of
# a SmolLM2 step's peak above the baseline), for one more lm_head forward.
LOSS_CHUNK_ROWS = 128


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
    trainable_params: int = 0
    gradient_checkpointing: bool = True
    largest_batch: BatchShape | None = None  # widest micro-batch and most logit rows, for the memory model
    batch_shapes: int = 0  # distinct (rows, width) micro-batch shapes: the memory model's CPU kernel cache

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
            "gradient_checkpointing": self.gradient_checkpointing,
            "largest_batch": vars(self.largest_batch) if self.largest_batch else None,
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


def response_rows_only(model: torch.nn.Module) -> bool:
    """Whether the loss may run the head on the response rows alone (see causal_lm_loss)."""
    return getattr(model.config, "model_type", None) in PLAIN_HEAD_MODELS


def causal_lm_loss(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], response_rows: bool
) -> torch.Tensor:
    """Mean cross-entropy over the response tokens: the value ``model(**batch).loss`` returns.

    With ``response_rows`` lm_head and the cross-entropy run on the rows that have a label only, instead of
    on every position: prompt and padding rows (half of Alpaca's tokens) then cost no B·T·V fp32 logits,
    which on CPU are a tenth of a step's time and most of the loss's memory; and those rows go through the
    head ``LOSS_CHUNK_ROWS`` at a time (``chunked_head_loss``).
    """
    if not response_rows:
        return model(**batch).loss
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder()
    hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    labels = batch["labels"][:, 1:]
    rows = labels != IGNORE_INDEX
    return chunked_head_loss(base.get_output_embeddings(), hidden[:, :-1][rows], labels[rows])


def _head_loss_sum(head: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), labels, reduction="sum")


def chunked_head_loss(head: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``head(hidden)`` against ``labels``, ``LOSS_CHUNK_ROWS`` rows at a time, each
    chunk checkpointed: the same value and gradients as one call, with one chunk's logits alive."""
    if len(labels) <= LOSS_CHUNK_ROWS:
        return F.cross_entropy(head(hidden).float(), labels)
    chunks = zip(hidden.split(LOSS_CHUNK_ROWS), labels.split(LOSS_CHUNK_ROWS), strict=True)
    total = sum(checkpoint(_head_loss_sum, head, h, y, use_reentrant=False) for h, y in chunks)
    return total / len(labels)


def logit_rows_alive(batch: dict[str, torch.Tensor], response_rows: bool) -> int:
    """Rows of logits alive at once in ``causal_lm_loss`` (the memory model's ``BatchShape.logit_rows``)."""
    if not response_rows:
        return batch["labels"].numel()
    return min(int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()), LOSS_CHUNK_ROWS)


@dataclass
class TrainedShapes:
    """What the memory model needs of the micro-batches a run trained: the largest (rows, width and logit
    rows each at its maximum) and the distinct (rows, width) shapes (the CPU kernel cache grows per shape)."""

    largest: BatchShape | None = None
    distinct: set[tuple[int, int]] = field(default_factory=set)

    def add(self, batch: dict[str, torch.Tensor], response_rows: bool) -> None:
        rows, width = batch["input_ids"].shape
        logit_rows = logit_rows_alive(batch, response_rows)
        self.distinct.add((rows, width))
        seen = self.largest or BatchShape(rows, width, logit_rows)
        self.largest = BatchShape(
            max(seen.rows, rows), max(seen.width, width), max(seen.logit_rows, logit_rows)
        )


@dataclass
class TrainingSetup:
    """A model ready to train: its trainable parameters, their optimizer, and how the loss is taken."""

    model: torch.nn.Module
    trainable: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    response_rows: bool
    max_grad_norm: float
    compute_dtype: torch.dtype


def checkpoint_selected_layers(model: torch.nn.Module, cfg: TrainConfig) -> None:
    """Keep checkpointing on the decoder layers ``cfg.checkpoints_layer`` selects and turn it off on the
    others, which then keep their activations and are not run again in backward (transformers does this
    as ``every_n_layers`` from 5.16; the harness supports 5.0)."""
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    for index, layer in enumerate(layers):
        layer.gradient_checkpointing = cfg.checkpoints_layer(index)


def prepare_for_training(model: torch.nn.Module, cfg: TrainConfig) -> TrainingSetup:
    """Optimizer over the trainable (LoRA) parameters, checkpointing as configured, train mode; frees what
    loading and evaluation left behind, so the training peak starts from the live model (``trim_heap``)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(trainable, cfg)
    if cfg.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        # transformers also hooks the embeddings' output to require grad, which only reentrant checkpointing
        # needs; left on, backward computes an unused input gradient through the first block
        model.disable_input_require_grads()
        checkpoint_selected_layers(model, cfg)
    model.config.use_cache = False
    model.train()
    trim_heap()
    return TrainingSetup(
        model, trainable, optimizer, response_rows_only(model), cfg.max_grad_norm, model_compute_dtype(model)
    )


def train_step(setup: TrainingSetup, micro_batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    """One optimizer step over ``micro_batches`` (on the device), gradients accumulated; returns the mean
    loss, detached and left on the device (reading it would synchronise)."""
    device = micro_batches[0]["input_ids"].device
    total = torch.zeros((), device=device)
    # peft's cast of each adapter input to fp32 stays off through backward, where checkpointing recomputes
    with adapters_as_trained(setup.model):
        for batch in micro_batches:
            with adapter_autocast(device, setup.compute_dtype):
                loss = causal_lm_loss(setup.model, batch, setup.response_rows) / len(micro_batches)
            loss.backward()
            total += loss.detach()
    torch.nn.utils.clip_grad_norm_(setup.trainable, setup.max_grad_norm)
    setup.optimizer.step()
    setup.optimizer.zero_grad(set_to_none=True)
    return total


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
    setup = prepare_for_training(model, cfg)
    batches = batch_order(examples, cfg.batch_size, cfg.group_by_length, seed)
    reset_peak_memory(device)
    pending: list[torch.Tensor] = []
    losses: list[float] = []
    step_times: list[float] = []
    tokens = target_tokens = measured_tokens = 0
    shapes = TrainedShapes()
    measure_from = min(cfg.warmup_steps_excluded, max(cfg.steps - 1, 0))
    bar = tqdm(range(cfg.steps), desc="train", unit="step")
    _sync(device)
    start = measured_start = time.perf_counter()
    for step in bar:
        if step == measure_from:
            _sync(device)
            measured_start = time.perf_counter()
        step_start = time.perf_counter()
        micro_batches = []
        for _ in range(cfg.grad_accum):
            cpu_batch = collate([examples[i] for i in next(batches)], pad_token_id)
            n = int(cpu_batch["attention_mask"].sum())  # counted on the host: no device sync
            targets = int((cpu_batch["labels"] != IGNORE_INDEX).sum())
            tokens += n
            target_tokens += targets
            measured_tokens += n if step >= measure_from else 0
            shapes.add(cpu_batch, setup.response_rows)
            micro_batches.append({k: v.to(device, non_blocking=True) for k, v in cpu_batch.items()})
        pending.append(train_step(setup, micro_batches))
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
        trainable_params=sum(p.numel() for p in setup.trainable),
        gradient_checkpointing=cfg.gradient_checkpointing,
        largest_batch=shapes.largest,
        batch_shapes=len(shapes.distinct),
    )
