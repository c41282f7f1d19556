"""Analytic peak training memory of a QLoRA job: say before a run whether a setting fits, and explain a
measured peak term by term.

The model's linear layers and their shapes are read from the model itself (any names: ``q_proj``,
``query_key_value``, ``gate_up_proj``); what the frozen path between them saves for backward is modelled
for the decoder families in ``MODELLED_FAMILIES`` (RMSNorm, attention with grouped KV heads, gated MLP),
and any other family raises ``UnmodelledFamilyError`` (a job records it as a caveat). LoRA sits on the
chosen linear layers, trained the way ``harness.train.loop`` trains it. Activations count what autograd
really saves: the harness's DequantMatmul saves no input for the frozen weight, so a LoRA target costs its
dropout mask and dropped input (saved by lora_A for its weight gradient) plus the rank-r activation, and the
frozen attention/MLP path saves what RMSNorm, RoPE, SDPA and SiLU·up need. With gradient checkpointing only
each layer's input is kept, and one layer is recomputed at a time in backward.

The peak is the largest of three moments of a step (every one after the first, when the optimizer state
exists): the loss (all saved activations plus the logits/cross-entropy buffers), the backward of a
recomputed layer, and the optimizer step. On CPU the measured peak is the resident set, so one more term
counts: the process's baseline (libraries, data; measured before the model is loaded). The model counts
live tensors, which is what the resident set follows with ``cpu_heap=lean``; with the default ``fast``
glibc's heap also keeps freed activations (up to a forward pass's worth), which is not modelled
(``harness.train.meters``; reports/perf/).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from harness.model.dropout import lora_dropout_mask_bytes
from harness.model.replace import is_skipped
from harness.quant import FOUR_BIT_TYPES, theoretical_bits_per_param

LORA_BYTES = 4  # peft keeps adapter weights in fp32 (get_peft_model's autocast_adapter_dtype)
LOSS_BYTES = 4  # logits are upcast to fp32 for the cross-entropy
# Optimizer state bytes per trainable parameter: AdamW keeps two states; bitsandbytes' 8-bit states hold
# one byte each plus an fp32 absmax per block of 256.
OPTIMIZER_STATE_BYTES = {"adamw": 8.0, "paged_adamw_32bit": 8.0, "paged_adamw_8bit": 2 * (1 + 4 / 256)}
STORAGE_BITS = {"int8": 8.0, "bf16": 16.0, "fp16": 16.0, "fp32": 32.0}
# Families whose frozen path block_saved describes: RMSNorm, SDPA over grouped KV heads, SiLU-gated MLP.
MODELLED_FAMILIES = ("llama", "mistral", "qwen2")
# Loss phase: the fp32 log-softmax output saved for backward, the gradient flowing into it and the gradient
# it produces are alive together while the cross-entropy runs backward.
LOSS_BUFFERS = 3
# Backward of a recomputed layer: gradients of the MLP's intermediate activations (down_proj input, SiLU
# output, up and gate outputs) overlap before they are reduced to the hidden size.
BACKWARD_INTERMEDIATE_BUFFERS = 4


class UnmodelledFamilyError(ValueError):
    """The memory model does not describe this model family's frozen path (the job records a caveat)."""


@dataclass(frozen=True)
class ModelShape:
    """The dimensions of a causal LM that its memory depends on; ``linears`` are one block's linear layers
    as the model has them: (full name in the first block, in_features, out_features)."""

    linears: tuple[tuple[str, int, int], ...]
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool

    @classmethod
    def from_model(cls, model: nn.Module) -> ModelShape:
        """Read the shape from a model (plain, quantized or wrapped by peft); ``UnmodelledFamilyError`` for
        a family outside ``MODELLED_FAMILIES``."""
        config = model.config
        family = getattr(config, "model_type", type(model).__name__)
        if family not in MODELLED_FAMILIES:
            raise UnmodelledFamilyError(
                f"no memory estimate for model_type {family!r}: the memory model describes the frozen path "
                f"of {MODELLED_FAMILIES} (RMSNorm, grouped-KV attention, gated MLP) only"
            )
        heads = config.num_attention_heads
        return cls(
            linears=block_linears(model, config.num_hidden_layers),
            hidden=config.hidden_size,
            intermediate=config.intermediate_size,
            layers=config.num_hidden_layers,
            heads=heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            vocab=config.vocab_size,
            tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        )

    def leaf(self, name: str) -> str:
        return name.rsplit(".", 1)[-1]


def _linear_shape(module: nn.Module) -> tuple[int, int] | None:
    """(in, out) of a linear layer of any kind: nn.Linear, QuantLinear, bitsandbytes' layers, peft's LoRA
    wrappers (they carry in/out_features), GPT-2's Conv1D (weight stored in x out)."""
    if isinstance(getattr(module, "in_features", None), int) and isinstance(
        getattr(module, "out_features", None), int
    ):
        return module.in_features, module.out_features
    if hasattr(module, "nf") and getattr(module, "weight", None) is not None:
        return tuple(module.weight.shape)
    return None


def block_linears(model: nn.Module, layers: int) -> tuple[tuple[str, int, int], ...]:
    """The linear layers of the first decoder block (the first ModuleList of ``layers`` blocks), by full
    name; LoRA's own layers and peft's ``base_layer`` are parts of a wrapped layer, not layers."""
    blocks = next(
        (name for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == layers),
        None,
    )
    if blocks is None:
        raise UnmodelledFamilyError(f"no list of {layers} decoder blocks in {type(model).__name__}")
    prefix = f"{blocks}.0."
    found = []
    for name, module in model.named_modules():
        if not name.startswith(prefix) or "lora_" in name or name.endswith(".base_layer"):
            continue
        shape = _linear_shape(module)
        if shape:
            found.append((name, *shape))
    return tuple(found)


@dataclass(frozen=True)
class BatchShape:
    """The largest micro-batch: ``rows`` x ``width`` padded tokens, ``logit_rows`` rows of logits alive at
    once (``harness.train.loop.logit_rows_alive``)."""

    rows: int
    width: int
    logit_rows: int

    @property
    def tokens(self) -> int:
        return self.rows * self.width


def weight_bits(storage: str, blocksize: int, double_quant: bool) -> float:
    """Stored bits per frozen weight parameter (codes and block constants; codebooks do not scale)."""
    if storage in FOUR_BIT_TYPES:
        return theoretical_bits_per_param(blocksize, double_quant)
    return STORAGE_BITS[storage]


def weight_terms(shape: ModelShape, quant, compute_bytes: int) -> dict[str, int]:
    """Frozen weights: quantized linear layers at their storage's bits/param, the rest in compute dtype."""
    bits = weight_bits(quant.storage, quant.blocksize, quant.double_quant)
    quantized = skipped = 0
    for name, fan_in, fan_out in shape.linears:
        if is_skipped(name, list(quant.skip_modules)):
            skipped += fan_in * fan_out
        else:
            quantized += fan_in * fan_out
    embeddings = shape.vocab * shape.hidden * (1 if shape.tied_embeddings else 2)
    norms = (2 * shape.layers + 1) * shape.hidden
    return {
        "quantized_weights": round(shape.layers * quantized * bits / 8),
        "unquantized_params": (embeddings + norms + shape.layers * skipped) * compute_bytes,
    }


def lora_params(shape: ModelShape, rank: int, targets: list[str]) -> int:
    """Trainable parameters: r x (in + out) per targeted linear layer of every block."""
    return shape.layers * sum(rank * (i + o) for name, i, o in shape.linears if shape.leaf(name) in targets)


def lora_saved(
    shape: ModelShape, lora, targets: list[str], tokens: int, compute_bytes: int, mask_bytes: int
) -> int:
    """Bytes one block's LoRA adapters save for backward.

    With dropout each target draws its own mask and keeps its own dropped input (lora_A needs it, in the
    compute dtype autocast runs it in, for its weight gradient); without, lora_A saves its input, counted
    once per target (targets reading the same tensor, q/k/v, share it: an upper bound of a few MiB). Plus
    lora_A's output.
    """
    fan_ins = [i for name, i, _ in shape.linears if shape.leaf(name) in targets]
    per_input = mask_bytes + compute_bytes if lora.dropout > 0 else compute_bytes
    return tokens * (sum(fan_ins) * per_input + len(fan_ins) * lora.r * compute_bytes)


def block_saved(shape: ModelShape, tokens: int, compute_bytes: int, attention_bytes: int) -> int:
    """Bytes one block's frozen path saves for backward (LoRA excluded).

    Two RMSNorms keep their fp32 input; SDPA keeps q, k and v (k and v repeated to all heads when a padding
    mask is passed) and its output, in ``attention_bytes`` per element (fp32 where harness.model.attention
    upcasts them); the MLP keeps the gate output, its SiLU and the up output.
    """
    attention = 4 * shape.heads * shape.head_dim * attention_bytes
    mlp = 3 * shape.intermediate * compute_bytes
    return tokens * (2 * shape.hidden * 4 + attention + mlp)


def activation_terms(
    shape: ModelShape,
    lora,
    targets: list[str],
    checkpointing: bool,
    batch: BatchShape,
    compute_bytes: int,
    mask_bytes: int,
    attention_bytes: int,
) -> dict[str, int]:
    """Saved activations, the recomputed layer, its backward buffers and the loss buffers."""
    n = batch.tokens
    layer = block_saved(shape, n, compute_bytes, attention_bytes)
    layer += lora_saved(shape, lora, targets, n, compute_bytes, mask_bytes)
    final_norm = n * shape.hidden * 4
    if checkpointing:
        saved = shape.layers * n * shape.hidden * compute_bytes + final_norm
    else:
        saved = shape.layers * layer + final_norm
    upcast = 0 if compute_bytes == LOSS_BYTES else compute_bytes  # bf16 logits and their gradient
    return {
        "saved_activations": saved,
        "layer_recompute": layer if checkpointing else 0,
        "layer_backward_buffers": BACKWARD_INTERMEDIATE_BUFFERS * n * shape.intermediate * compute_bytes,
        "loss_buffers": batch.logit_rows * shape.vocab * (LOSS_BUFFERS * LOSS_BYTES + upcast),
    }


def estimate_peak_memory(
    shape: ModelShape,
    quant,
    lora,
    train,
    *,
    targets: list[str],
    batch: BatchShape,
    compute_dtype: torch.dtype,
    device: torch.device,
    baseline_bytes: int = 0,
    attention_fp32: bool = False,
) -> dict:
    """Peak training memory in bytes: ``{"terms": {...}, "phases": {...}, "peak_phase": name, "total": n}``.

    ``quant``, ``lora`` and ``train`` are the job's config groups; ``targets`` the LoRA leaf names;
    ``batch`` the largest micro-batch; ``baseline_bytes`` the resident set before loading (CPU only: the
    CUDA allocator starts empty). ``attention_fp32``: SDPA runs upcast to fp32 (harness.model.attention).
    Paged optimizer state lives in CUDA unified memory, outside the allocator that is measured, so it is
    reported beside the terms and left out of the total there.
    """
    compute_bytes = torch.finfo(compute_dtype).bits // 8
    attention_bytes = 4 if attention_fp32 else compute_bytes
    trainable = lora_params(shape, lora.r, targets)
    state = round(trainable * OPTIMIZER_STATE_BYTES[train.optimizer])
    paged = device.type == "cuda" and train.optimizer.startswith("paged_")
    terms = {
        "baseline_rss": baseline_bytes if device.type == "cpu" else 0,
        **weight_terms(shape, quant, compute_bytes),
        "lora_params": trainable * LORA_BYTES,
        "optimizer_state": 0 if paged else state,
        "lora_grads": trainable * LORA_BYTES,
        "dequantized_weight": max(i * o for _, i, o in shape.linears) * compute_bytes,
        **activation_terms(
            shape,
            lora,
            targets,
            train.gradient_checkpointing,
            batch,
            compute_bytes,
            lora_dropout_mask_bytes(device, compute_dtype),
            attention_bytes,
        ),
    }
    resident = sum(
        terms[k] for k in ("baseline_rss", "quantized_weights", "unquantized_params", "lora_params")
    )
    resident += terms["optimizer_state"]
    phases = {
        "loss": resident + terms["saved_activations"] + terms["loss_buffers"],
        "layer_backward": resident
        + max(terms["saved_activations"], terms["lora_grads"])
        + terms["layer_recompute"]
        + terms["layer_backward_buffers"]
        + terms["dequantized_weight"],
        "optimizer_step": resident + terms["lora_grads"],
    }
    peak = max(phases, key=phases.get)
    estimate = {"terms": terms, "phases": phases, "peak_phase": peak, "total": phases[peak]}
    if paged:
        estimate["paged_optimizer_state"] = state
    return estimate
