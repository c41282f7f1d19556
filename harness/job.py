"""One job: a config in, one ``result.json`` out.

load → (validate) → quantize → [evaluate before] → LoRA → train → evaluate → result.json. Bad input is
rejected before any heavy work; any failure still writes ``status: failed`` with the reason.
Run directly as ``python -m harness.job CONFIG.yaml JOB_DIR`` (the sweep runs each job that way, in its
own process).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import torch
from omegaconf import DictConfig, OmegaConf

from harness.config import CpuHeap, JobConfig, config_dict, validate_config
from harness.data.instruct import load_records, tokenize_records
from harness.device import choose_compute_dtype, dtype_name, pick_device
from harness.env import environment
from harness.model.attention import choose_attention, runs_fp32_attention
from harness.model.loading import load_model
from harness.model.lora import attach_lora, resolve_targets
from harness.model.replace import quantizable_layer_names, replace_linear_layers
from harness.result import JobResult, config_hash
from harness.stats.samples import write_samples
from harness.train.loop import TrainResult, train
from harness.train.memory_model import ModelShape, estimate_peak_memory
from harness.train.meters import rss_bytes, set_heap_policy

log = logging.getLogger(__name__)
T = TypeVar("T")


class Timer:
    """Named wall-clock timings (``timings_s`` in the result)."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - start, 3)


def _inject_fault(fault: str | None) -> None:
    """Test-only: make this job die in a chosen way, to prove one failure never harms another job."""
    if fault is None:
        return
    if fault == "raise":
        raise RuntimeError("fault injected by config: raise")
    if fault == "exit":
        os._exit(3)
    os.kill(os.getpid(), signal.SIGKILL)


def _evaluation():
    """The evaluation layer, imported only when a job evaluates (lm-eval is slow to import)."""
    from harness import evaluate

    return evaluate


def _error_record(exc: BaseException) -> dict[str, str]:
    """Exception type, message and the tail of the traceback, as ``result.json`` stores them."""
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)[-12:]),
    }


def _auxiliary(result: JobResult, what: str, step: Callable[[], T]) -> T | None:
    """Run a step that is not the job's purpose (an estimate, a save, a probe): its failure becomes a
    caveat, and the job keeps its status and every measurement."""
    try:
        return step()
    except Exception as exc:
        log.warning("%s failed: %s: %s", what, type(exc).__name__, exc)
        result.caveats.append(f"{what} failed: {type(exc).__name__}: {exc}")
        return None


def run_job(cfg: DictConfig | dict[str, Any], job_dir: str | os.PathLike) -> JobResult:
    """Run one job and write ``job_dir/result.json`` once; returns it (``status`` ok or failed).

    Any failure is recorded with what was measured before it: an evaluation that fails after training
    keeps the training results.
    """
    values = config_dict(cfg) if isinstance(cfg, DictConfig) else cfg
    result = JobResult(status="failed", config=values, config_hash=config_hash(values))
    timer = Timer()
    start = time.perf_counter()
    try:
        _run(validate_config(values), Path(job_dir), result, timer)
        result.status = "ok"
    except Exception as exc:  # every failure is recorded, never lost
        result.error = _error_record(exc)
        log.error("job failed: %s: %s", type(exc).__name__, exc)
    finally:
        result.timings_s = {**timer.timings, "total": round(time.perf_counter() - start, 3)}
        result.save(job_dir)
    return result


def _run(job: JobConfig, job_dir: Path, result: JobResult, timer: Timer) -> None:
    """The recipe: check → data → load → quantize → [evaluate] → LoRA → train → evaluate."""
    device = pick_device(job.device)
    job.check_device(device)
    dtype, dtype_reason = choose_compute_dtype(job.quant.compute_dtype, device)
    evaluation = _evaluation() if job.eval.tasks else None
    if evaluation:
        evaluation.validate_tasks(job.eval, job.data.data_dir)
    result.env = _auxiliary(
        result, "environment probe", lambda: environment(device, dtype_name(dtype), dtype_reason)
    ) or {"device": device.type, "compute_dtype": dtype_name(dtype)}
    torch.manual_seed(job.seed)
    with timer("data"):
        records = load_records(job.data)

    set_heap_policy(lean=True)  # while loading, each full-precision tensor goes back to the OS once quantized
    baseline_rss = rss_bytes()  # libraries and data: the memory model's CPU baseline
    with timer("load"):
        loaded = load_model(job.model, dtype, stream_weights=True)
    result.caveats.extend(loaded.caveats)
    result.model = {"source": loaded.source, "max_seq_len": loaded.max_seq_len}
    if job.train.seq_len > loaded.max_seq_len:
        raise ValueError(
            f"train.seq_len={job.train.seq_len} exceeds the model's limit of {loaded.max_seq_len} tokens"
        )
    targets = resolve_targets(job.lora.targets, quantizable_layer_names(loaded.model, job.quant.skip_modules))
    with timer("data"):
        examples = tokenize_records(records, loaded.tokenizer, job.data, job.train.seq_len)
    if loaded.checkpoint is not None:  # streamed, no weight read yet: baseline takes tokenizer and data too
        baseline_rss = rss_bytes()

    with timer("quantize"):
        summary = replace_linear_layers(
            loaded.model,
            str(job.quant.storage),
            job.quant.blocksize,
            job.quant.double_quant,
            dtype,
            device,
            list(job.quant.skip_modules),
            job.quant.codebook,
            checkpoint=loaded.checkpoint,
        )
    result.quant = asdict(summary)
    result.model["attention"] = choose_attention(loaded.model, device, dtype)
    set_heap_policy(lean=job.cpu_heap == CpuHeap.lean)  # evaluation and training: the job's choice
    _inject_fault(job.fault)

    before = None
    if evaluation and job.eval.before:
        with timer("eval_before"):
            before = evaluation.evaluate_model(loaded.model, loaded.tokenizer, job.eval, job.data.data_dir)
        result.eval_before = before.metrics

    model = attach_lora(loaded.model, job.lora, targets, job.seed)
    with timer("train"):
        trained = train(model, examples, job.train, loaded.tokenizer.pad_token_id, device, job.seed)
    estimate = _auxiliary(
        result,
        "memory estimate",
        lambda: _memory_estimate(job, loaded.model, targets, trained, dtype, device, baseline_rss),
    )
    result.train = {**trained.to_json(), **(estimate or {})}
    result.lora = {
        "r": job.lora.r,
        "alpha": job.lora.alpha,
        "targets": targets,
        "trainable_params": trained.trainable_params,
    }
    if job.train.save_adapter:
        _auxiliary(
            result,
            "adapter save",
            lambda: model.save_pretrained(job_dir / "adapter", safe_serialization=True),
        )

    if evaluation:
        with timer("eval"):
            after = evaluation.evaluate_model(model, loaded.tokenizer, job.eval, job.data.data_dir)
        result.eval = after.metrics
        if result.eval_before is not None:
            result.eval_delta = evaluation.metric_delta(result.eval, result.eval_before)
        write_samples(job_dir, {"before": before.samples if before else None, "after": after.samples})


def _memory_estimate(
    job: JobConfig,
    model: torch.nn.Module,
    targets: list[str],
    trained: TrainResult,
    dtype: torch.dtype,
    device: torch.device,
    baseline_rss: int,
) -> dict[str, Any]:
    """The analytic peak (harness.train.memory_model) for the largest batch trained, beside the measured
    one; empty when no step trained."""
    if trained.largest_batch is None:
        return {}
    estimate = estimate_peak_memory(
        ModelShape.from_model(model),
        job.quant,
        job.lora,
        job.train,
        targets=targets,
        batch=trained.largest_batch,
        compute_dtype=dtype,
        device=device,
        baseline_bytes=baseline_rss,
        attention_fp32=runs_fp32_attention(model),
    )
    return {"memory_estimate": estimate, "memory_estimate_bytes": estimate["total"]}


def load_job_config(path: str | os.PathLike) -> dict[str, Any]:
    """A saved job config as plain values; :func:`run_job` checks it against the typed schema."""
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m harness.job CONFIG.yaml JOB_DIR``: exit 0 when the job is ok, 1 when it failed."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m harness.job CONFIG.yaml JOB_DIR", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
    try:
        cfg = load_job_config(args[0])
    except Exception as exc:  # an unreadable config file is still a recorded failure
        JobResult(status="failed", error=_error_record(exc)).save(args[1])
        print(f"job config {args[0]} rejected: {exc}", file=sys.stderr)
        return 1
    result = run_job(cfg, args[1])
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
