"""Analytic peak training memory of a QLoRA job: say before a run whether a setting fits, and explain a
measured peak term by term.

The model is a Llama-style decoder (RMSNorm, attention with grouped KV heads, gated MLP) with LoRA on the
chosen linear layers, trained the way ``harness.train.loop`` trains it. Activations count what autograd
really saves: the harness's DequantMatmul saves no input for the frozen weight, so a LoRA target costs its
dropout mask and dropped input (saved by lora_A for its weight gradient) plus the rank-r activation, and the
frozen attention/MLP path saves what RMSNorm, RoPE, SDPA and SiLU·up need. With gradient checkpointing only
each layer's input is kept, and one layer is recomputed at a time in backward.

The peak is the largest of three moments of a step (every one after the first, when the optimizer state
exists): the loss (all saved activations plus the logits/cross-entropy buffers), the backward of a
recomputed layer, and the optimizer step. On CPU the measured peak is the resident set, so two more terms
count: the process's baseline (libraries, data; measured before the model is loaded) and what glibc's
heap keeps of freed activations (``HEAP_RETENTION``, fitted to measurements, see reports/perf/).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from harness.quant import FOUR_BIT_TYPES, theoretical_bits_per_param

LORA_BYTES = 4  # peft keeps adapter weights in fp32 (get_peft_model's autocast_adapter_dtype)
LOSS_BYTES = 4  # logits are upcast to fp32 for the cross-entropy
# Optimizer state bytes per trainable parameter: AdamW keeps two states; bitsandbytes' 8-bit states hold
# one byte each plus an fp32 absmax per block of 256.
OPTIMIZER_STATE_BYTES = {"adamw": 8.0, "paged_adamw_32bit": 8.0, "paged_adamw_8bit": 2 * (1 + 4 / 256)}
STORAGE_BITS = {"int8": 8.0, "bf16": 16.0, "fp16": 16.0, "fp32": 32.0}
# Which activation each linear layer of a block reads: targets sharing an input share it when dropout is 0.
LINEAR_INPUTS = {
    "q_proj": "attention_in",
    "k_proj": "attention_in",
    "v_proj": "attention_in",
    "o_proj": "attention_out",
    "gate_proj": "mlp_in",
    "up_proj": "mlp_in",
    "down_proj": "mlp_hidden",
}
# Loss phase: the fp32 log-softmax output saved for backward, the gradient flowing into it and the gradient
# it produces are alive together while the cross-entropy runs backward.
LOSS_BUFFERS = 3
# Backward of a recomputed layer: gradients of the MLP's intermediate activations (down_proj input, SiLU
# output, up and gate outputs) overlap before they are reduced to the hidden size.
BACKWARD_INTERMEDIATE_BUFFERS = 4
# CPU only, fitted: glibc's heap does not give back the chunks that a step's temporaries freed between
# longer-lived tensors, so a job's resident set stays above its live tensors by about the activations one
# forward pass without checkpointing would save: measured 0.87-1.09 of them over nine SmolLM2-135M jobs
# (r 16/64, checkpointing on/off, 4 x 199 tokens; reports/perf/). CUDA's allocator statistic counts live
# tensors only.
HEAP_RETENTION = 1.0


@dataclass(frozen=True)
class ModelShape:
    """The dimensions of a Llama-style causal LM that its memory depends on."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool

    @classmethod
    def from_config(cls, config) -> ModelShape:
        heads = config.num_attention_heads
        return cls(
            hidden=config.hidden_size,
            intermediate=config.intermediate_size,
            layers=config.num_hidden_layers,
            heads=heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            vocab=config.vocab_size,
            tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        )

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each linear layer of one decoder block, by leaf name."""
        h, i = self.hidden, self.intermediate
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }


@dataclass(frozen=True)
class BatchShape:
    """The largest micro-batch: ``rows`` x ``width`` padded tokens, ``logit_rows`` rows through lm_head."""

    rows: int
    width: int
    logit_rows: int

    @property
    def tokens(self) -> int:
        return self.rows * self.width


def current_rss_bytes() -> int:
    """The process's resident set now (0 where /proc is missing): the baseline before the model is loaded."""
    status = Path("/proc/self/status")
    if not status.exists():
        return 0
    line = next((x for x in status.read_text().splitlines() if x.startswith("VmRSS:")), None)
    return int(line.split()[1]) * 1024 if line else 0


def weight_bits(storage: str, blocksize: int, double_quant: bool) -> float:
    """Stored bits per frozen weight parameter (codes and block constants; codebooks do not scale)."""
    if storage in FOUR_BIT_TYPES:
        return theoretical_bits_per_param(blocksize, double_quant)
    return STORAGE_BITS[storage]


def _is_skipped(leaf: str, skip_modules) -> bool:
    return any(leaf == skip or skip.endswith(f".{leaf}") for skip in skip_modules)


def weight_terms(shape: ModelShape, quant, compute_bytes: int) -> dict[str, int]:
    """Frozen weights: quantized linear layers at their storage's bits/param, the rest in compute dtype."""
    bits = weight_bits(quant.storage, quant.blocksize, quant.double_quant)
    quantized = skipped = 0
    for leaf, (fan_in, fan_out) in shape.linears().items():
        if _is_skipped(leaf, quant.skip_modules):
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
    return shape.layers * sum(rank * (i + o) for leaf, (i, o) in shape.linears().items() if leaf in targets)


def lora_saved(shape: ModelShape, lora, targets: list[str], tokens: int, mask_bytes: int) -> int:
    """Bytes one block's LoRA adapters save for backward.

    With dropout each target draws its own mask and keeps its own dropped input (lora_A needs it for its
    weight gradient); without, lora_A saves the shared input once per distinct input. Plus lora_A's output.
    """
    linears = shape.linears()
    if lora.dropout > 0:
        inputs = sum(linears[t][0] for t in targets) * (mask_bytes + LORA_BYTES)
    else:
        inputs = sum({LINEAR_INPUTS[t]: linears[t][0] for t in targets}.values()) * LORA_BYTES
    return tokens * (inputs + len(targets) * lora.r * LORA_BYTES)


def block_saved(shape: ModelShape, tokens: int, compute_bytes: int) -> int:
    """Bytes one block's frozen path saves for backward (LoRA excluded).

    Two RMSNorms keep their fp32 input; SDPA keeps q, k and v (k and v repeated to all heads when a padding
    mask is passed) and its output; the MLP keeps the gate output, its SiLU and the up output.
    """
    attention = 4 * shape.heads * shape.head_dim
    mlp = 3 * shape.intermediate
    return tokens * (2 * shape.hidden * 4 + (attention + mlp) * compute_bytes)


def activation_terms(
    shape: ModelShape,
    lora,
    targets: list[str],
    checkpointing: bool,
    batch: BatchShape,
    compute_bytes: int,
    mask_bytes: int,
    heap: bool,
) -> dict[str, int]:
    """Saved activations, the recomputed layer, its backward buffers, the loss buffers and (``heap``: on
    CPU) what the heap retains of freed activations."""
    n = batch.tokens
    layer = block_saved(shape, n, compute_bytes) + lora_saved(shape, lora, targets, n, mask_bytes)
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
        "heap_retention": round(HEAP_RETENTION * shape.layers * layer) if heap else 0,
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
    dropout_mask_bytes: int = 1,
) -> dict:
    """Peak training memory in bytes: ``{"terms": {...}, "phases": {...}, "peak_phase": name, "total": n}``.

    ``quant``, ``lora`` and ``train`` are the job's config groups; ``targets`` the LoRA leaf names;
    ``batch`` the largest micro-batch; ``baseline_bytes`` the resident set before loading (CPU only: the
    CUDA allocator starts empty). ``dropout_mask_bytes``: 1 for the harness's boolean LoRA dropout mask.
    Paged optimizer state lives in CUDA unified memory, outside the allocator that is measured, so it is
    reported beside the terms and left out of the total there.
    """
    compute_bytes = torch.finfo(compute_dtype).bits // 8
    trainable = lora_params(shape, lora.r, targets)
    state = round(trainable * OPTIMIZER_STATE_BYTES[train.optimizer])
    paged = device.type == "cuda" and train.optimizer.startswith("paged_")
    terms = {
        "baseline_rss": baseline_bytes if device.type == "cpu" else 0,
        **weight_terms(shape, quant, compute_bytes),
        "lora_params": trainable * LORA_BYTES,
        "optimizer_state": 0 if paged else state,
        "lora_grads": trainable * LORA_BYTES,
        "dequantized_weight": max(i * o for i, o in shape.linears().values()) * compute_bytes,
        **activation_terms(
            shape,
            lora,
            targets,
            train.gradient_checkpointing,
            batch,
            compute_bytes,
            dropout_mask_bytes,
            heap=device.type == "cpu",
        ),
    }
    resident = sum(
        terms[k]
        for k in ("baseline_rss", "heap_retention", "quantized_weights", "unquantized_params", "lora_params")
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
