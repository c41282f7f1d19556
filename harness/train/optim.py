"""Optimizers the paper uses: AdamW, and bitsandbytes' paged AdamW (32-bit or 8-bit state) on CUDA."""

from __future__ import annotations

import torch

from harness.config import TrainConfig


def build_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with the paper's beta2 0.999; constant learning rate (no scheduler object needed).

    Plain AdamW runs fused (one kernel per dtype over all LoRA tensors, CPU and CUDA): on a 2-core CPU the
    default per-tensor loop takes ~50 ms a step at r 16 and ~80 ms at r 64, the fused one 9 and 19 ms.
    """
    kwargs = {"lr": cfg.lr, "betas": (0.9, cfg.adam_beta2), "weight_decay": cfg.weight_decay}
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, **kwargs, fused=True)
    import bitsandbytes as bnb

    paged = {"paged_adamw_32bit": bnb.optim.PagedAdamW32bit, "paged_adamw_8bit": bnb.optim.PagedAdamW8bit}
    return paged[cfg.optimizer](params, **kwargs)
