"""Attach peft LoRA adapters on top of the harness's frozen (quantized) layers.

peft knows ``nn.Linear`` and bitsandbytes' layers natively; for the harness's own ``QuantLinear`` it uses
peft's documented extension point, a custom module mapping (``LoraConfig._register_custom_module``), to
a thin subclass of peft's LoRA ``Linear``: no fork or copy of peft.
"""

from __future__ import annotations

import warnings

from torch import nn

from harness.config import TARGET_PRESETS, LoraConfig
from harness.model.dropout import use_cheap_lora_dropout
from harness.quant import QuantLinear

# A layer's role comes from the nearest enclosing module whose name says it (self_attn, attention,
# self_attention, attn; mlp, feed_forward, ffn): that covers Llama/Mistral/Qwen2/Gemma/Phi-3, BLOOM,
# GPT-NeoX and GPT-2. ROLE_BY_LEAF names the layers whose path does not say it: OPT (like XGLM and BioGPT)
# hangs its feed-forward fc1/fc2 directly off the decoder layer.
ROLE_HINTS = {"attention": ("attn", "attention"), "mlp": ("mlp", "feed_forward", "ffn")}
ROLE_BY_LEAF = {"fc1": "mlp", "fc2": "mlp"}


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


def layer_role(name: str) -> str | None:
    """``attention``, ``mlp`` or None for a linear layer's full module name."""
    *parents, leaf = name.lower().split(".")
    if leaf in ROLE_BY_LEAF:
        return ROLE_BY_LEAF[leaf]
    for parent in reversed(parents):
        for role, hints in ROLE_HINTS.items():
            if any(hint in parent for hint in hints):
                return role
    return None


def _matches(name: str, suffix: str) -> bool:
    """peft's rule for a list of ``target_modules``: the full name, or a suffix after a dot."""
    return name == suffix or name.endswith(f".{suffix}")


def _shortest_suffixes(chosen: list[str], all_names: list[str]) -> list[str]:
    """The shortest name suffixes that select exactly ``chosen`` among ``all_names`` under peft's rule:
    the leaf (``q_proj``) unless an unchosen layer shares it, as GPT-2's ``c_proj`` is in both attention
    and MLP; then ``attn.c_proj``."""
    others = [n for n in all_names if n not in set(chosen)]
    suffixes = set()
    for name in chosen:
        parts = name.split(".")
        for k in range(1, len(parts) + 1):
            suffix = ".".join(parts[-k:])
            if not any(_matches(other, suffix) for other in others):
                suffixes.add(suffix)
                break
    return sorted(suffixes)


def resolve_targets(targets, frozen_layer_names: list[str]) -> list[str]:
    """Name suffixes of the layers that get adapters (leaf names such as ``q_proj`` where they are
    unambiguous), as peft's ``target_modules`` takes them; matching nothing is an error."""
    leaves = sorted({name.rsplit(".", 1)[-1] for name in frozen_layer_names})
    if isinstance(targets, str):
        if targets not in TARGET_PRESETS:
            raise LoraTargetError(
                f"lora.targets={targets!r} is not one of {TARGET_PRESETS} nor a list of module names; "
                f"this model's linear layers are {leaves}"
            )
        chosen = [n for n in frozen_layer_names if targets == "all-linear" or layer_role(n) == targets]
    else:
        wanted = list(targets)
        missing = [t for t in wanted if not any(_matches(n, t) for n in frozen_layer_names)]
        if missing:
            raise LoraTargetError(
                f"lora.targets {missing} match no linear layer; this model's linear layers are {leaves} "
                f"(or use one of {TARGET_PRESETS})"
            )
        chosen = [n for n in frozen_layer_names if any(_matches(n, t) for t in wanted)]
    if not chosen:
        raise LoraTargetError(f"lora.targets={targets!r} matches no linear layer among {leaves}")
    return _shortest_suffixes(chosen, frozen_layer_names)


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
    with warnings.catch_warnings():
        # peft 0.21 probes transformers' deprecated alias; the harness itself calls the v6 names
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        peft_model = get_peft_model(model, peft_config)
    use_cheap_lora_dropout(peft_model)
    return peft_model
