"""Attach peft LoRA adapters on top of the harness's frozen (quantized) layers.

peft knows ``nn.Linear`` and bitsandbytes' layers natively; for the harness's own ``QuantLinear`` it uses
peft's documented extension point, a custom module mapping (``LoraConfig._register_custom_module``), to
a thin subclass of peft's LoRA ``Linear``: no fork or copy of peft.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
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
        """peft's LoRA ``Linear`` over a ``QuantLinear``: base output from the packed weight, plus B·A·x, or
        one matmul over the merged weight where that is the same function (:func:`merges_exactly`)."""

        merge_when_exact = True  # False: peft's separate adapter matmuls always (:func:`separate_adapters`)

        def _get_in_out_features(self, module: nn.Module) -> tuple[int, int]:
            return module.in_features, module.out_features

        def _get_base_layer_device_and_dtype(self, base_layer: nn.Module):
            return base_layer.qweight.device, base_layer.compute_dtype

        def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            if merges_exactly(self, x, kwargs) and merging_is_cheaper(self, x):
                return F.linear(x, merged_weight(self), self.base_layer.bias)
            return super().forward(x, *args, **kwargs)

    return QuantLoraLinear


def merges_exactly(layer, x: torch.Tensor, kwargs: dict) -> bool:
    """Whether ``layer`` (a QuantLoraLinear) may run as one matmul over W + s·B·A: an fp32 forward with no
    gradient, no dropout (eval mode), plain LoRA on every active adapter and none switched off or merged
    already. Only there is it the same function up to fp32 rounding; under bf16 the merged weight would
    round the adapter's update to bf16, a model other than the one trained."""
    if not (
        layer.merge_when_exact
        and not torch.is_grad_enabled()  # first: training stops here, on every forward of every layer
        and not layer.training
        and x.dtype == torch.float32
        and layer.base_layer.compute_dtype == torch.float32
        and not torch.is_autocast_enabled(x.device.type)
        and not layer.disable_adapters
        and not layer.merged
        and kwargs.get("adapter_names") is None
    ):
        return False
    active = present_active_adapters(layer)
    return (
        bool(active)
        and not any(name in layer.lora_variant or layer.lora_bias[name] for name in active)
        and all(layer.lora_A[name].weight.dtype == torch.float32 for name in active)
    )


def present_active_adapters(layer) -> list[str]:
    """The active adapters this layer holds (peft's forward skips an active name a layer lacks)."""
    return [name for name in layer.active_adapters if name in layer.lora_A]


def merging_is_cheaper(layer, x: torch.Tensor) -> bool:
    """Building B·A costs r·out·in multiply-adds per forward, the adapter matmuls r·(in + out) per token:
    merge for inputs of at least in·out / (in + out) tokens (432 for a 576 x 1,536 layer)."""
    base = layer.base_layer
    tokens = x.numel() // base.in_features
    return tokens * (base.in_features + base.out_features) >= base.in_features * base.out_features


@contextlib.contextmanager
def separate_adapters(model: nn.Module) -> Iterator[None]:
    """Within the block every adapted QuantLinear runs peft's own forward (base, then B·A·x beside it), as
    before :func:`merged_weight`: what tests and benchmarks compare the merged forward with."""
    layers = [m for m in model.modules() if hasattr(m, "merge_when_exact")]
    for layer in layers:
        layer.merge_when_exact = False
    try:
        yield
    finally:
        for layer in layers:
            del layer.merge_when_exact


@contextlib.contextmanager
def untrained_adapters_off(model: nn.Module) -> Iterator[bool]:
    """Within the block a peft model whose every LoRA B is zero (peft's initialisation, i.e. before training)
    runs without its adapters, and the block gets True: each adds exactly zero, so the output is the same
    while the r-wide matmuls, scale and sum are skipped (a third of a bf16 SmolLM2 forward)."""
    b_weights = [
        weight
        for m in model.modules()
        if isinstance(getattr(m, "lora_B", None), nn.ModuleDict)
        for weight in m.lora_B.parameters()
    ]
    if not b_weights or any(weight.any() for weight in b_weights) or not hasattr(model, "disable_adapter"):
        yield False
        return
    with model.disable_adapter():
        yield True


def merged_weight(layer) -> torch.Tensor:
    """W + Σ scaling · B·A in fp32 over the active adapters, built for one forward and dropped after it.

    Evaluation runs each adapted layer over thousands of tokens at once: the r-wide matmuls x·Aᵀ and ·Bᵀ
    and the scale-and-add cost SmolLM2-135M's fp32 forward half as much again as its frozen matmuls
    (3.79 vs 2.43 s for 2,048 tokens, r 64, 2-core Xeon), while B·A costs r·out·in once per forward."""
    base = layer.base_layer
    weight = base.dense_weight if base.dense_weight is not None else base.qweight.dequantize(torch.float32)
    for name in present_active_adapters(layer):
        weight = torch.addmm(
            weight, layer.lora_B[name].weight, layer.lora_A[name].weight, alpha=layer.scaling[name]
        )
    return weight


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
