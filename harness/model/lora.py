"""Attach peft LoRA adapters on top of the harness's frozen (quantized) layers.

peft knows ``nn.Linear`` and bitsandbytes' layers natively; for the harness's own ``QuantLinear`` it uses
peft's documented extension point, a custom module mapping (``LoraConfig._register_custom_module``), to
a thin subclass of peft's LoRA ``Linear``: no fork or copy of peft.
"""

from __future__ import annotations

from torch import nn

from harness.config import LoraConfig
from harness.model.dropout import use_cheap_lora_dropout
from harness.quant import QuantLinear

ATTENTION_HINTS = ("attn", "attention")
MLP_HINTS = ("mlp", "feed_forward", "ffn")
TARGET_PRESETS = ("all-linear", "attention", "mlp")


class LoraTargetError(ValueError):
    """``lora.targets`` matches no linear layer, or ``lora.r``/``alpha`` are out of range."""


def _peft_linear():
    from peft.tuners.lora.layer import Linear as PeftLoraLinear

    class QuantLoraLinear(PeftLoraLinear):
        """peft's LoRA ``Linear`` over a ``QuantLinear``: base output from the packed weight, plus B·A·x."""

        def _get_in_out_features(self, module: nn.Module) -> tuple[int, int]:
            return module.in_features, module.out_features

        def _get_base_layer_device_and_dtype(self, base_layer: nn.Module):
            return base_layer.qweight.device, base_layer.compute_dtype

    return QuantLoraLinear


def resolve_targets(targets, frozen_layer_names: list[str]) -> list[str]:
    """Leaf names (``q_proj``, ...) of the layers that get adapters; matching nothing is an error."""
    leaves = sorted({name.rsplit(".", 1)[-1] for name in frozen_layer_names})
    if isinstance(targets, str):
        if targets not in TARGET_PRESETS:
            raise LoraTargetError(
                f"lora.targets={targets!r} is not one of {TARGET_PRESETS} nor a list of module names; "
                f"this model's linear layers are {leaves}"
            )
        hints = {"attention": ATTENTION_HINTS, "mlp": MLP_HINTS}.get(targets)
        chosen = [n for n in frozen_layer_names if hints is None or any(h in n.lower() for h in hints)]
    else:
        wanted = list(targets)
        missing = [t for t in wanted if not any(n == t or n.endswith(f".{t}") for n in frozen_layer_names)]
        if missing:
            raise LoraTargetError(
                f"lora.targets {missing} match no linear layer; this model's linear layers are {leaves} "
                f"(or use one of {TARGET_PRESETS})"
            )
        chosen = [n for n in frozen_layer_names if any(n == t or n.endswith(f".{t}") for t in wanted)]
    if not chosen:
        raise LoraTargetError(f"lora.targets={targets!r} matches no linear layer among {leaves}")
    return sorted({name.rsplit(".", 1)[-1] for name in chosen})


def validate_lora(cfg: LoraConfig) -> None:
    if cfg.r <= 0:
        raise LoraTargetError(f"lora.r={cfg.r} must be a positive integer (the paper uses 8 to 256)")
    if cfg.alpha <= 0:
        raise LoraTargetError(f"lora.alpha={cfg.alpha} must be positive")
    if not 0 <= cfg.dropout < 1:
        raise LoraTargetError(f"lora.dropout={cfg.dropout} must be in [0, 1)")


def attach_lora(model: nn.Module, cfg: LoraConfig, target_leaves: list[str], seed: int):
    """Wrap ``model`` in a peft ``PeftModel`` with trainable LoRA adapters on ``target_leaves``."""
    import torch
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_config = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=target_leaves,
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_config._register_custom_module({QuantLinear: _peft_linear()})
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, peft_config)
    use_cheap_lora_dropout(peft_model)
    return peft_model
