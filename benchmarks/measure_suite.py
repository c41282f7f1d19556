"""Time an eval group (conf/eval/<group>.yaml) task by task on the shipped SmolLM2-135M, fp32, this CPU.

Usage: ``HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/measure_suite.py paper [task ...]``
(only the named tasks of the group, when given); prints a Markdown table. The model is the plain loaded
model (no re-quantization, no LoRA): the numbers size ``limit``.
"""

from __future__ import annotations

import dataclasses
import sys
import time

import torch
from omegaconf import OmegaConf

from harness.config import EvalConfig, ModelConfig
from harness.evaluate import evaluate_model
from harness.model.loading import load_model
from harness.paths import CONF_DIR

CONF_EVAL = CONF_DIR / "eval"


def group_config(group: str) -> EvalConfig:
    """The eval group as the job would see it (schema defaults + the group file)."""
    merged = OmegaConf.merge(OmegaConf.structured(EvalConfig), OmegaConf.load(CONF_EVAL / f"{group}.yaml"))
    return OmegaConf.to_object(merged)


def main(group: str, only: list[str]) -> None:
    """Evaluate each task of ``group`` (or those in ``only``) on its own, so each gets its own wall time."""
    cfg = group_config(group)
    loaded = load_model(ModelConfig(), torch.float32)
    print(f"| task | n | seconds | metrics (limit={cfg.limit}) |\n|---|---|---|---|")
    total = 0.0
    for task in [t for t in cfg.tasks if not only or t in only]:
        start = time.perf_counter()
        evaluation = evaluate_model(
            loaded.model, loaded.tokenizer, dataclasses.replace(cfg, tasks=[task]), None
        )
        scores = evaluation.metrics
        seconds = time.perf_counter() - start
        total += seconds
        metrics = ", ".join(f"{k} {v:.4g}" for k, v in scores[task].items() if k != "n")
        print(f"| {task} | {scores[task]['n']} | {seconds:.0f} | {metrics} |", flush=True)
    print(f"| **total** | | **{total:.0f}** | |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "paper", sys.argv[2:])
