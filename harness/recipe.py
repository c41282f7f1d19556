"""The recipe of one job, in stages, as torchtune's single-device recipe reads.

setup → data → load → quantize → [evaluate before] → adapters → train → evaluate. Each stage is a small
function over typed inputs that returns a frozen value: the block ``result.json`` keeps
(:class:`harness.result.ModelBlock`, ``QuantBlock``, ``LoraBlock``, ``TrainBlock``, lm-eval's scores) or
what the next stage needs beside it (:class:`Base`: the model, its examples and targets). :func:`recipe`
runs the stages in order and yields each block as soon as it is measured; :func:`harness.job.run_job`
assembles the ``JobResult`` from what was yielded, so a failure keeps every block measured before it.
Benchmarks build their training paths from the same stages (:func:`prepare_model`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from harness.config import CpuHeap, JobConfig, QuantConfig
from harness.data.instruct import TokenizedExample, load_records, tokenize_records
from harness.device import choose_compute_dtype, dtype_name, pick_device
from harness.env import environment
from harness.model.attention import choose_attention, runs_fp32_attention
from harness.model.loading import LoadedModel, load_model
from harness.model.lora import attach_lora, resolve_targets
from harness.model.replace import quantizable_layer_names, replace_linear_layers
from harness.result import LoraBlock, ModelBlock, QuantBlock, TaskScores, TrainBlock
from harness.stats.samples import write_samples
from harness.train.loop import train
from harness.train.memory_model import BatchShape, ModelShape, estimate_peak_memory
from harness.train.meters import heap_policy, rss_bytes

log = logging.getLogger(__name__)
T = TypeVar("T")
CAVEATS = "caveats"  # what the recipe yields beside the blocks: notes a reader of the result must see
Measured = tuple[str, Any]  # (a harness.result.MEASURED key or CAVEATS, its value)


class Timer:
    """Named wall-clock timings (``timings_s`` in the result)."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - start, 3)


@dataclass(frozen=True)
class Runtime:
    """What a job decides once, before any heavy work: where it runs and in which compute dtype (and why)."""

    device: torch.device
    dtype: torch.dtype
    dtype_reason: str


@dataclass(frozen=True)
class Base:
    """The loaded base model (quantized in place by :func:`quantize`), its training examples and the
    linear layers LoRA adapts; ``baseline_rss`` is the memory model's CPU baseline (libraries and data)."""

    loaded: LoadedModel
    examples: list[TokenizedExample]
    targets: list[str]
    baseline_rss: int
    block: ModelBlock


def _evaluation():
    """The evaluation layer, imported only when a job evaluates (lm-eval is slow to import)."""
    from harness import evaluate

    return evaluate


def _auxiliary(what: str, step: Callable[[], T]) -> tuple[T | None, list[str]]:
    """Run a step that is not the job's purpose (an estimate, a save, a probe): its failure becomes a
    caveat, and the job keeps its status and every measurement."""
    try:
        return step(), []
    except Exception as exc:
        log.warning("%s failed: %s: %s", what, type(exc).__name__, exc)
        return None, [f"{what} failed: {type(exc).__name__}: {exc}"]


def setup(job: JobConfig) -> Runtime:
    """Device and compute dtype; the checks that need them and the evaluation tasks, before heavy work."""
    device = pick_device(job.device)
    job.check_device(device)
    dtype, reason = choose_compute_dtype(job.quant.compute_dtype, device)
    if job.eval.tasks:
        _evaluation().validate_tasks(job.eval, job.data.data_dir)
    return Runtime(device, dtype, reason)


def load(job: JobConfig, runtime: Runtime, records: list[dict], timer: Timer) -> Base:
    """Load the base model (streamed: weights are read layer by layer when quantized), resolve the LoRA
    targets and tokenize the records; the sequence length is checked against the model's limit."""
    baseline_rss = rss_bytes()  # libraries and data: the memory model's CPU baseline
    with timer("load"):
        loaded = load_model(job.model, runtime.dtype, stream_weights=True)
    if job.train.seq_len > loaded.max_seq_len:
        raise ValueError(
            f"train.seq_len={job.train.seq_len} exceeds the model's limit of {loaded.max_seq_len} tokens"
        )
    targets = resolve_targets(job.lora.targets, quantizable_layer_names(loaded.model, job.quant.skip_modules))
    with timer("data"):
        examples = tokenize_records(records, loaded.tokenizer, job.data, job.train.seq_len)
    if loaded.checkpoint is not None:  # streamed, no weight read yet: baseline takes tokenizer and data too
        baseline_rss = rss_bytes()
    block = ModelBlock(source=loaded.source, max_seq_len=loaded.max_seq_len)
    return Base(loaded, examples, targets, baseline_rss, block)


def quantize(quant: QuantConfig, runtime: Runtime, loaded: LoadedModel) -> QuantBlock:
    """Swap the model's linear layers for frozen ones of the configured storage type, layer by layer, in
    place (a streamed model's layers are read from its checkpoint one at a time)."""
    return replace_linear_layers(
        loaded.model,
        str(quant.storage),
        quant.blocksize,
        quant.double_quant,
        runtime.dtype,
        runtime.device,
        list(quant.skip_modules),
        quant.codebook,
        checkpoint=loaded.checkpoint,
    )


def prepare_model(job: JobConfig, runtime: Runtime, timer: Timer) -> Generator[Measured, None, Base]:
    """Data, load and quantize under the lean heap (each full-precision tensor goes back to the OS once
    quantized), then the attention the model runs; yields the blocks as measured, returns :class:`Base`."""
    with timer("data"):
        records = load_records(job.data)
    with heap_policy(lean=True):
        base = load(job, runtime, records, timer)
        yield CAVEATS, base.loaded.caveats
        yield "model", base.block
        with timer("quantize"):
            yield "quant", quantize(job.quant, runtime, base.loaded)
    attention = choose_attention(base.loaded.model, runtime.device, runtime.dtype)
    yield "model", dataclasses.replace(base.block, attention=attention)
    return base


def attach_adapters(job: JobConfig, base: Base) -> tuple[torch.nn.Module, LoraBlock]:
    """peft's LoRA adapters on the resolved targets of the quantized model: the model to train, its block."""
    model = attach_lora(base.loaded.model, job.lora, base.targets, job.seed)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    block = LoraBlock(r=job.lora.r, alpha=job.lora.alpha, targets=base.targets, trainable_params=trainable)
    return model, block


def train_adapters(
    job: JobConfig, runtime: Runtime, base: Base, model: torch.nn.Module
) -> tuple[TrainBlock, list[str]]:
    """Train the adapters; the block holds what training measured and the memory model's estimate beside it
    (an estimate that fails is a caveat, returned with the block)."""
    trained = train(
        model, base.examples, job.train, base.loaded.tokenizer.pad_token_id, runtime.device, job.seed
    )
    estimate, caveats = _auxiliary(
        "memory estimate",
        lambda: memory_estimate(job, runtime, base, trained.largest_batch, trained.batch_shapes),
    )
    return TrainBlock.from_json({**trained.to_json(), **(estimate or {})}, "train"), caveats


def memory_estimate(
    job: JobConfig, runtime: Runtime, base: Base, batch: BatchShape | None, batch_shapes: int
) -> dict[str, Any]:
    """The analytic peak (harness.train.memory_model) for the largest batch trained and the number of
    distinct batch shapes, beside the measured one; empty when no step trained."""
    if batch is None:
        return {}
    model = base.loaded.model
    estimate = estimate_peak_memory(
        ModelShape.from_model(model),
        job.quant,
        job.lora,
        job.train,
        targets=base.targets,
        batch=batch,
        compute_dtype=runtime.dtype,
        device=runtime.device,
        baseline_bytes=base.baseline_rss,
        attention_fp32=runs_fp32_attention(model),
        cpu_heap=str(job.cpu_heap),
        batch_shapes=batch_shapes,
    )
    return {"memory_estimate": estimate, "memory_estimate_bytes": estimate["total"]}


def finish(stages: Generator[Measured, None, T]) -> T:
    """Run ``stages`` to their end and return what they return, dropping the blocks they yield (for
    benchmarks, which build their paths from the job's stages but keep no result)."""
    while True:
        try:
            next(stages)
        except StopIteration as done:
            return done.value


def evaluate(job: JobConfig, model: torch.nn.Module, base: Base):
    """lm-eval's tasks on the in-memory model: a ``harness.evaluate.Evaluation`` (scores and samples)."""
    return _evaluation().evaluate_model(model, base.loaded.tokenizer, job.eval, job.data.data_dir)


def metric_delta(after: TaskScores, before: TaskScores) -> TaskScores:
    """What training changed: after − before for every metric both evaluations have."""
    return _evaluation().metric_delta(after, before)


def recipe(job: JobConfig, job_dir: Path, timer: Timer) -> Iterator[Measured]:
    """The job's stages in order, each block yielded as soon as it is measured (see the module doc)."""
    runtime = setup(job)
    env, caveats = _auxiliary(
        "environment probe",
        lambda: environment(runtime.device, dtype_name(runtime.dtype), runtime.dtype_reason),
    )
    yield CAVEATS, caveats
    yield "env", env or {"device": runtime.device.type, "compute_dtype": dtype_name(runtime.dtype)}
    torch.manual_seed(job.seed)
    base = yield from prepare_model(job, runtime, timer)
    with heap_policy(lean=job.cpu_heap == CpuHeap.lean):  # training and evaluation: the job's choice
        yield from _tune_and_evaluate(job, job_dir, runtime, base, timer)


def _tune_and_evaluate(
    job: JobConfig, job_dir: Path, runtime: Runtime, base: Base, timer: Timer
) -> Iterator[Measured]:
    """[evaluate before] → adapters → train → [save the adapter] → evaluate."""
    before = None
    if job.eval.tasks and job.eval.before:
        with timer("eval_before"):
            before = evaluate(job, base.loaded.model, base)
        yield "eval_before", before.metrics
    model, lora = attach_adapters(job, base)
    yield "lora", lora
    with timer("train"):
        trained, caveats = train_adapters(job, runtime, base, model)
    yield CAVEATS, caveats
    yield "train", trained
    if job.train.save_adapter:
        save = lambda: model.save_pretrained(job_dir / "adapter", safe_serialization=True)  # noqa: E731
        yield CAVEATS, _auxiliary("adapter save", save)[1]
    if job.eval.tasks:
        with timer("eval"):
            after = evaluate(job, model, base)
        yield "eval", after.metrics
        if before is not None:
            yield "eval_delta", metric_delta(after.metrics, before.metrics)
        write_samples(job_dir, {"before": before.samples if before else None, "after": after.samples})
