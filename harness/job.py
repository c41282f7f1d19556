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
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from harness.config import JobConfig
from harness.data.instruct import load_records, tokenize_records
from harness.env import environment
from harness.model.loading import load_model
from harness.model.lora import attach_lora, resolve_targets, validate_lora
from harness.model.replace import quantizable_layer_names, replace_linear_layers
from harness.quant import validate_quant_args
from harness.result import config_hash, write_result
from harness.train.loop import TrainResult, train
from harness.train.memory_model import ModelShape, current_rss_bytes, estimate_peak_memory
from harness.train.meters import pick_device
from harness.train.optim import validate_optimizer

log = logging.getLogger(__name__)

COMPUTE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
FAULTS = ("raise", "exit", "kill")


def compute_dtype_for(name: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on CUDA as in the paper; fp32 on CPU, where bf16 matmuls run ~9x slower (AVX2)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"quant.compute_dtype={name!r} is not one of {('auto', *COMPUTE_DTYPES)}")
    return COMPUTE_DTYPES[name]


def _dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in COMPUTE_DTYPES.items()}[dtype]


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
    if fault not in FAULTS:
        raise ValueError(f"fault={fault!r} is not one of {FAULTS}")
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


def run_job(cfg: DictConfig, job_dir: str | os.PathLike) -> dict[str, Any]:
    """Run one job and write ``job_dir/result.json``; returns the result (``status`` ok or failed)."""
    job_dir = Path(job_dir)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    result: dict[str, Any] = {"status": "failed", "config_hash": config_hash(resolved), "config": resolved}
    timer = Timer()
    start = time.perf_counter()
    try:
        _run(cfg, job_dir, result, timer)
        result["status"] = "ok"
    except Exception as exc:  # every failure is recorded, never lost
        result["error"] = _error_record(exc)
        log.error("job failed: %s: %s", type(exc).__name__, exc)
    finally:
        timer.timings["total"] = round(time.perf_counter() - start, 3)
        result["timings_s"] = timer.timings
        write_result(job_dir, result)
    return result


def _run(cfg: DictConfig, job_dir: Path, result: dict[str, Any], timer: Timer) -> None:
    device = pick_device(cfg.device)
    result["env"] = environment(device)
    dtype = compute_dtype_for(cfg.quant.compute_dtype, device)
    validate_quant_args(cfg.quant.storage, cfg.quant.blocksize, cfg.quant.double_quant, device=device)
    validate_lora(cfg.lora)
    validate_optimizer(cfg.train.optimizer, device)
    if cfg.eval.tasks:
        _evaluation().validate_tasks(cfg.eval, cfg.data.data_dir)
        result["env"]["lm_eval"] = _evaluation().lm_eval_version()
    torch.manual_seed(cfg.seed)
    with timer("data"):
        records = load_records(cfg.data)

    baseline_rss = current_rss_bytes()  # libraries and data: the memory model's CPU baseline
    with timer("load"):
        loaded = load_model(cfg.model, dtype)
    result["caveats"] = loaded.caveats
    result["model"] = {"source": loaded.source, "max_seq_len": loaded.max_seq_len}
    if cfg.train.seq_len > loaded.max_seq_len:
        raise ValueError(
            f"train.seq_len={cfg.train.seq_len} exceeds the model's limit of {loaded.max_seq_len} tokens"
        )
    targets_cfg = cfg.lora.targets
    if OmegaConf.is_config(targets_cfg):
        targets_cfg = OmegaConf.to_container(targets_cfg)
    targets = resolve_targets(targets_cfg, quantizable_layer_names(loaded.model, cfg.quant.skip_modules))
    with timer("data"):
        examples = tokenize_records(records, loaded.tokenizer, cfg.data, cfg.train.seq_len)

    with timer("quantize"):
        summary = replace_linear_layers(
            loaded.model,
            cfg.quant.storage,
            cfg.quant.blocksize,
            cfg.quant.double_quant,
            dtype,
            device,
            list(cfg.quant.skip_modules),
        )
    result["quant"] = vars(summary)
    _inject_fault(cfg.fault)

    if cfg.eval.tasks and cfg.eval.before:
        with timer("eval_before"):
            result["eval_before"] = _evaluation().evaluate_model(
                loaded.model, loaded.tokenizer, cfg.eval, cfg.data.data_dir
            )

    model = attach_lora(loaded.model, cfg.lora, targets, cfg.seed)
    with timer("train"):
        trained = train(model, examples, cfg.train, loaded.tokenizer.pad_token_id, device, cfg.seed)
    trained.compute_dtype = _dtype_name(dtype)
    result["train"] = trained.to_json()
    _store_memory_estimate(result, cfg, loaded.model.config, targets, trained, dtype, device, baseline_rss)
    result["lora"] = {
        "r": cfg.lora.r,
        "alpha": cfg.lora.alpha,
        "targets": targets,
        "trainable_params": trained.trainable_params,
    }
    if cfg.train.save_adapter:
        model.save_pretrained(job_dir / "adapter", safe_serialization=True)

    if cfg.eval.tasks:
        evaluation = _evaluation()
        with timer("eval"):
            result["eval"] = evaluation.evaluate_model(model, loaded.tokenizer, cfg.eval, cfg.data.data_dir)
        if "eval_before" in result:
            result["eval_delta"] = evaluation.metric_delta(result["eval"], result["eval_before"])


def _store_memory_estimate(
    result: dict[str, Any],
    cfg: DictConfig,
    model_config,
    targets: list[str],
    trained: TrainResult,
    dtype: torch.dtype,
    device: torch.device,
    baseline_rss: int,
) -> None:
    """The analytic peak (harness.train.memory_model) for the largest batch trained, beside the measured one;
    a model that is not Llama-style gets a caveat instead."""
    if trained.largest_batch is None:  # no step trained
        return
    try:
        shape = ModelShape.from_config(model_config)
    except AttributeError as exc:
        name = type(model_config).__name__
        result["caveats"].append(f"no memory estimate: {name} is not Llama-style ({exc})")
        return
    estimate = estimate_peak_memory(
        shape,
        cfg.quant,
        cfg.lora,
        cfg.train,
        targets=targets,
        batch=trained.largest_batch,
        compute_dtype=dtype,
        device=device,
        baseline_bytes=baseline_rss,
    )
    result["train"]["memory_estimate"] = estimate
    result["train"]["memory_estimate_bytes"] = estimate["total"]


def load_job_config(path: str | os.PathLike) -> DictConfig:
    """A saved job config, validated against the typed schema (a misspelt key fails here)."""
    schema = OmegaConf.structured(JobConfig)
    return OmegaConf.merge(schema, OmegaConf.load(path))


def main(argv: list[str] | None = None) -> int:
    """``python -m harness.job CONFIG.yaml JOB_DIR``: exit 0 when the job is ok, 1 when it failed."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m harness.job CONFIG.yaml JOB_DIR", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
    try:
        cfg = load_job_config(args[0])
    except Exception as exc:  # a config this code's schema rejects is still a recorded failure
        write_result(args[1], {"status": "failed", "error": _error_record(exc)})
        print(f"job config {args[0]} rejected: {exc}", file=sys.stderr)
        return 1
    result = run_job(cfg, args[1])
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
