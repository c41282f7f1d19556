"""Evaluate the in-memory model (plain, quantized, or with LoRA adapters) with lm-eval's own API.

The model object is handed to ``HFLM`` (or its subclass ``PackedLM``, ``eval.backend=packed``) as is: no
saving and reloading, no ``.to()`` that would cast quantized buffers (HFLM keeps a pre-built model on its
device). A peft ``PeftModel`` is passed whole — HFLM holds one itself when it loads adapters — so its forward
runs through the injected LoRA layers.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import lm_eval
import lm_eval.evaluator
import pandas as pd
import torch
from lm_eval.models.huggingface import HFLM
from torch import nn

from harness.config import EvalBackend, EvalConfig
from harness.evaluate.dense import MIB, dense_weights
from harness.evaluate.metrics import task_metrics
from harness.evaluate.packed import PackedLM
from harness.evaluate.samples import sample_frame
from harness.evaluate.tasks import lm_eval_limit, manager_for, validate_tasks
from harness.model.lora import untrained_adapters_off
from harness.model.precision import adapters_as_trained, autocast_dtype, model_compute_dtype


class _DropCustomDatasetHint(logging.Filter):
    """lm-eval repeats a command-line hint for every ``custom_dataset`` task (57 times for MMLU)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Custom kwargs can be passed" not in record.getMessage()


logging.getLogger("lm_eval.api.task").addFilter(_DropCustomDatasetHint())


def lm_eval_version() -> str:
    """The installed lm-eval version, for the ``env`` block of ``result.json``."""
    return version("lm_eval")


# eval.backend -> the lm-eval model class that wraps the in-memory model
LM_CLASSES: dict[EvalBackend, type[HFLM]] = {EvalBackend.packed: PackedLM, EvalBackend.hflm: HFLM}


def precision_kwargs(model: nn.Module) -> dict[str, Any]:
    """HFLM's precision settings for the job's model: its forward under the autocast training ran it in
    (``harness.model.precision``: adapter matmuls in the compute dtype) and log-probabilities in fp32, as the
    training loss takes them. lm-eval's defaults would run the fp32 adapters in fp32 beside a bf16 model and
    take each log-likelihood's log_softmax and sum in bf16, which rounds a 5,000-token window's sum to a
    multiple of 32 nats. In fp32 both settings change nothing."""
    dtype = model_compute_dtype(model)
    return {"mixed_precision_dtype": autocast_dtype(dtype), "softmax_dtype": torch.float32}


@contextlib.contextmanager
def _keeps_train_mode(model: nn.Module) -> Iterator[None]:
    """HFLM switches the model to eval mode; a job that goes on training gets its mode back."""
    was_training = model.training
    try:
        yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _hub_hint() -> Iterator[None]:
    """An lm-eval task whose data set lives on the Hugging Face hub cannot load offline: say what to do."""
    try:
        yield
    except ConnectionError as exc:
        raise ConnectionError(
            f"{exc}. An lm-eval task that reads a hub data set needs network access or a cached copy; "
            "the *_local tasks (harness/tasks) read data.data_dir / $QLORA_DATA_DIR instead"
        ) from exc


# What simple_evaluate adds to its results about the run, which the harness drops (it keeps metrics and
# samples, and records its own environment and commit in ``harness.env``): torch's environment report
# (``pip list`` and friends in subprocesses, ~0.4 s an evaluation on a 2-core CPU) and ``git describe`` of
# the working directory (which prints "fatal: not a git repository" outside a checkout).
_LM_EVAL_RUN_METADATA = {"add_env_info": lambda storage: None, "get_git_commit_hash": lambda: None}


@contextlib.contextmanager
def _without_lm_eval_run_metadata() -> Iterator[None]:
    """simple_evaluate without :data:`_LM_EVAL_RUN_METADATA`'s work; lm-eval's functions are back after."""
    originals = {name: getattr(lm_eval.evaluator, name) for name in _LM_EVAL_RUN_METADATA}
    for name, skip in _LM_EVAL_RUN_METADATA.items():
        setattr(lm_eval.evaluator, name, skip)
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(lm_eval.evaluator, name, original)


@dataclass
class Evaluation:
    """One lm-eval run: the task metrics for ``result.json`` and, unless ``eval.log_samples`` is false, the
    per-document scores (:func:`harness.evaluate.samples.sample_frame`) for ``samples.parquet``."""

    metrics: dict[str, dict[str, float | int]]
    samples: pd.DataFrame | None = None


def evaluate_model(model: nn.Module, tokenizer: Any, cfg: EvalConfig, data_dir: str | None) -> Evaluation:
    """Run ``cfg.tasks`` on ``model``: ``{task: {metric: value, <metric>_stderr: value, "n": samples}}`` and,
    with ``cfg.log_samples``, lm-eval's own per-document scores.

    ``data_dir`` is ``data.data_dir`` (``None``: ``$QLORA_DATA_DIR`` or the default); the ``*_local``
    tasks read their files from it. Seeds, few-shot sampling included, all come from ``cfg.seed``. With
    ``cfg.dense_weights_mib`` > 0 the 4-bit weights are dequantized once for the run (see
    :mod:`harness.evaluate.dense`). ``cfg.backend`` picks the lm-eval model class (``LM_CLASSES``), which
    computes as training did (:func:`precision_kwargs`); adapters that are still zero (before training) are
    skipped, which changes no number (:func:`harness.model.lora.untrained_adapters_off`).
    """
    if not cfg.tasks:
        return Evaluation({})
    validate_tasks(cfg, data_dir)
    with (
        _keeps_train_mode(model),
        _hub_hint(),
        dense_weights(model, cfg.dense_weights_mib * MIB),
        adapters_as_trained(model),
        untrained_adapters_off(model),
        _without_lm_eval_run_metadata(),
    ):
        lm = LM_CLASSES[EvalBackend(cfg.backend)](
            pretrained=model, tokenizer=tokenizer, batch_size=cfg.batch_size, **precision_kwargs(model)
        )
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=list(cfg.tasks),
            task_manager=manager_for(cfg, data_dir),
            limit=lm_eval_limit(cfg.limit),
            num_fewshot=cfg.num_fewshot,
            bootstrap_iters=cfg.bootstrap_iters,
            random_seed=cfg.seed,
            numpy_random_seed=cfg.seed,
            torch_random_seed=cfg.seed,
            fewshot_random_seed=cfg.seed,
            log_samples=cfg.log_samples,
        )
    return Evaluation(task_metrics(results), sample_frame(results) if cfg.log_samples else None)
