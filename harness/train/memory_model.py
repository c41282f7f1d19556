"""Analytic peak training memory of a QLoRA job: say before a run whether a setting fits (``qlora-plan``),
and explain a measured peak term by term.

Everything is read from the model's module tree and config, for any family (no table of names): the linear
layers and their shapes (``q_proj``, ``query_key_value``, ``gate_up_proj``, GPT-2's Conv1D), the norms of a
block (RMSNorm keeps an fp32 input, LayerNorm one in the compute dtype), whether the MLP is gated (its
input layers write twice what its output layer reads) and every other parameter (embeddings, biases, a
tied or untied head). LoRA sits on the chosen linear layers, trained the way ``harness.train.loop`` trains
it. Activations count what autograd really saves: the harness's DequantMatmul saves no input for the
frozen weight, so a LoRA target costs its dropout mask and dropped input (saved by lora_A for its weight
gradient) plus the rank-r activation, and the frozen path saves what the norms, SDPA (or eager attention's
probabilities) and the MLP's activation need. With gradient checkpointing only each checkpointed layer's
input is kept (every layer's, or every k-th with ``train.checkpoint_every``), and one layer is recomputed at
a time in backward.

The peak is the largest of three moments of a step (every one after the first, when the optimizer state
exists): the end of the forward (all saved activations, the logits/cross-entropy buffers, autocast's
copies of the adapter weights), the backward of a recomputed layer, and the optimizer step. On CPU the
measured peak is the resident set, so two more terms count: the process's baseline (libraries, data;
measured before the model is loaded) and, under ``cpu_heap=fast``, what glibc's heap keeps of freed
memory (``heap_retained``; ``harness.train.meters``), a term only where torch's tensors do not come from
the harness's malloc allocator (``harness.train.cpu_allocator``: with it the fast heap holds ~100 MiB of
free chunks at the peak, which the measured runtime term covers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn

from harness.device import cpu_has_amx
from harness.model.dropout import lora_dropout_mask_bytes
from harness.model.lora import layer_role
from harness.model.replace import is_skipped
from harness.train.meters import (
    ALIGNED_REUSE_GLIBC,
    FAST_MMAP_THRESHOLD,
    cpu_tensors_from_malloc,
    glibc_version,
)

LORA_BYTES = 4  # peft keeps adapter weights in fp32 (get_peft_model's autocast_adapter_dtype)
LOSS_BYTES = 4  # logits are upcast to fp32 for the cross-entropy
# Optimizer state bytes per trainable parameter: AdamW keeps two states; bitsandbytes' 8-bit states hold
# one byte each plus an fp32 absmax per block of 256.
OPTIMIZER_STATE_BYTES = {"adamw": 8.0, "paged_adamw_32bit": 8.0, "paged_adamw_8bit": 2 * (1 + 4 / 256)}
MIB = 2**20
# CPU: what the resident set gains after the baseline beyond live tensors (library code and data pages first
# touched by training, autograd and allocator state), by compute bytes per element. bf16, measured on a
# SmolLM2 quickstart job (reports/plan/README.md): RssFile grew 73 MiB after the baseline (oneDNN's bf16
# code). fp32 runs MKL's sgemm, whose pages quantization and loading have touched already: RssFile grew 15-22
# MiB after the baseline in SmolLM2 jobs on an AVX2 EPYC (2026-12-07). 45 MiB balances the relative error
# above the baseline of the fp32 SmolLM2 jobs measured that day (bench-perf's harness and harness_every2
# paths; quickstart NF4 jobs of 4 and 10 steps, with and without evaluation, in process and forked by a
# sweep; the memory test's job under both heaps): -4.0 to +5.6 % from those measurements, where 74 MiB gave
# -2.6 to +15.1 % (docs/performance.md).
CPU_RUNTIME_BYTES = {4: 45 * MIB, 2: 74 * MIB}
# bf16/fp16 on CPU: the resident set grows with every new micro-batch shape; fp32 runs MKL's sgemm and has no
# such term. Two parts, measured by training SmolLM2 NF4 (r 16, batch 4, checkpointing) at new widths
# falling from 256, then again with oneDNN's primitive cache off (ONEDNN_PRIMITIVE_CACHE_CAPACITY=0):
# - oneDNN's compiled matmul kernels, whose size depends on the instructions they are compiled for: with AMX
#   tiles ~13 MiB per shape (an Intel Xeon: 170 MiB over 8 new widths, ~60 % of it the cache), with AVX-512
#   BF16 alone 6 MiB (an AMD EPYC: 89 MiB over 7 new widths with the cache, 47 without; 2026-12-07);
# - under cpu_heap=fast, heap the next shape's tensors did not fit into (6.7 MiB per shape on the EPYC, ~8.5
#   on the Xeon); the lean heap unmaps those tensors on free.
# Counted per distinct micro-batch shape a job trained; a plan, before any batch exists, counts every
# micro-batch as new (an upper bound).
KERNEL_CACHE_BYTES_PER_SHAPE = {"amx": 13 * MIB, "avx512": 6 * MIB}
FAST_HEAP_BYTES_PER_SHAPE = 7 * MIB
# cpu_heap=fast where torch's own allocator serves CPU tensors (no compiler for harness.train.cpu_allocator,
# or QLORA_BENCH_NATIVE=0): glibc keeps freed chunks below its 32 MiB mmap threshold resident; the heap's free
# bytes at the peak, per byte of the peak phase's transient tensors under that threshold, by whether the
# running glibc reuses freed aligned chunks (ALIGNED_REUSE_GLIBC). From 2.38, by compute bytes, fitted on
# eight SmolLM2 quickstart NF4 jobs on glibc 2.41 (with and without checkpointing and evaluation;
# docs/performance.md, 2026-12-08): bf16 held 0-150 MiB above the live-tensor terms (0.1x), fp32 230-370 MiB
# whatever its transients (111-1,479 MiB), for a reason not found (not MKL's buffer cache): 0.5x leaves the
# fp32 jobs at -14.8 to +13.7 %, the bf16 ones at -3.2 to +1.6 % (in sample), where one 0.75 for both had
# put the jobs without checkpointing at +27 to +29 %. A term of this form does not fit fp32 well: an open
# question. Before 2.38: fitted on SmolLM2 in bf16 under glibc 2.36, whose stranded chunks (heap_caveat) it
# partly absorbs. A GPT-NeoX's heap kept as much with few such tensors (reports/plan/README.md).
HEAP_RETAINED = {4: 0.5, 2: 0.1}
HEAP_RETAINED_BEFORE_ALIGNED_REUSE = 2.0
# Loss phase: the fp32 log-softmax output saved for backward, the gradient flowing into it and the gradient
# it produces are alive together while the cross-entropy runs backward.
LOSS_BUFFERS = 3


class UnmodelledFamilyError(ValueError):
    """The model has no list of decoder blocks the memory model can read (the job records a caveat)."""


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


def _is_layer(name: str) -> bool:
    """LoRA's own layers and peft's ``base_layer`` are parts of a wrapped layer, not layers."""
    return "lora_" not in name and not name.endswith(".base_layer")


def _decoder_blocks(model: nn.Module, layers: int) -> str:
    """Name of the first ModuleList of ``layers`` modules: the decoder blocks."""
    blocks = next(
        (name for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == layers),
        None,
    )
    if blocks is None:
        raise UnmodelledFamilyError(f"no list of {layers} decoder blocks in {type(model).__name__}")
    return blocks


def block_linears(model: nn.Module, layers: int) -> tuple[tuple[str, int, int], ...]:
    """The linear layers of the first decoder block, by full name: (name, in_features, out_features)."""
    prefix = f"{_decoder_blocks(model, layers)}.0."
    found = []
    for name, module in model.named_modules():
        shape = _linear_shape(module) if name.startswith(prefix) and _is_layer(name) else None
        if shape:
            found.append((name, *shape))
    return tuple(found)


def _outer_linears(model: nn.Module, blocks: str) -> tuple[tuple[str, int, int, bool], ...]:
    """Linear layers outside the decoder blocks (lm_head): (name, in, out, tied), ``tied`` when the weight
    is another module's parameter (GPT-2's and SmolLM2's lm_head is the input embedding)."""
    first_owner = {id(p): n for n, p in model.named_parameters()}
    found = []
    for name, module in model.named_modules():
        shape = _linear_shape(module) if _is_layer(name) and not name.startswith(f"{blocks}.") else None
        if shape:
            weight = getattr(module, "weight", None)
            tied = isinstance(weight, nn.Parameter) and first_owner.get(id(weight)) != f"{name}.weight"
            found.append((name, *shape, tied))
    return tuple(found)


def _other_params(model: nn.Module) -> int:
    """Parameter elements outside the linear layers' weights and LoRA: embeddings, norms, biases (each
    shared tensor once)."""
    linear_weights = {
        f"{name}.weight"
        for name, module in model.named_modules()
        if _linear_shape(module) and _is_layer(name)
    }
    return sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n and n not in linear_weights)


def _mlp_widths(linears: tuple[tuple[str, int, int], ...], hidden: int) -> tuple[int, int]:
    """(elements per token the frozen MLP saves for backward, elements of its gradient buffers).

    The MLP's input layers (role mlp, reading the hidden size) write ``up`` outputs; its output layer reads
    ``down`` inputs. Gated (SiLU(gate) * up, fused or not: up = 2 x down) saves gate, up and the activation;
    plain (GELU: up = down) saves the activation's input. In backward the gradients of every intermediate
    and of the output layer's input overlap.
    """
    up = sum(o for name, i, o in linears if layer_role(name) == "mlp" and i == hidden)
    down = sum(i for name, i, o in linears if layer_role(name) == "mlp" and o == hidden and i != hidden)
    if not up:  # no MLP layer by name: its widest layer, ungated
        up = down = max(o for _, _, o in linears)
    down = down or up
    saved = up + down if up > down else up
    return saved, saved + down


@dataclass(frozen=True)
class ModelShape:
    """The dimensions of a causal LM that its memory depends on, read from its module tree and config
    (any family: no table of names). ``linears`` are one block's linear layers as the model has them
    (full name in the first block, in_features, out_features); ``outer_linears`` the others (lm_head),
    with whether each is tied to another parameter; ``other_params`` every other parameter element
    (embeddings, norms, biases); ``rms_norms``/``other_norms`` the norms of a block (RMSNorm keeps its
    input in fp32, LayerNorm in the compute dtype); ``mlp_saved``/``mlp_backward`` per-token widths
    (``_mlp_widths``); ``eager_attention``: attention probabilities are materialized (no SDPA)."""

    linears: tuple[tuple[str, int, int], ...]
    outer_linears: tuple[tuple[str, int, int, bool], ...]
    other_params: int
    hidden: int
    layers: int
    heads: int
    head_dim: int
    vocab: int
    rms_norms: int
    other_norms: int
    mlp_saved: int
    mlp_backward: int
    eager_attention: bool = False

    @classmethod
    def from_model(cls, model: nn.Module) -> ModelShape:
        """Read the shape from a model: plain, on the meta device, quantized, or wrapped by peft."""
        config = model.config
        layers, hidden, heads = config.num_hidden_layers, config.hidden_size, config.num_attention_heads
        blocks = _decoder_blocks(model, layers)
        linears = block_linears(model, layers)
        norms = [type(m).__name__.lower() for n, m in model.named_modules() if n.startswith(f"{blocks}.0.")]
        norms = [n for n in norms if "norm" in n]
        mlp_saved, mlp_backward = _mlp_widths(linears, hidden)
        return cls(
            linears=linears,
            outer_linears=_outer_linears(model, blocks),
            other_params=_other_params(model),
            hidden=hidden,
            layers=layers,
            heads=heads,
            head_dim=getattr(config, "head_dim", None) or hidden // heads,
            vocab=config.vocab_size,
            rms_norms=sum("rms" in n for n in norms),
            other_norms=sum("rms" not in n for n in norms),
            mlp_saved=mlp_saved,
            mlp_backward=mlp_backward,
            eager_attention=getattr(config, "_attn_implementation", None) == "eager",
        )


def targeted(name: str, targets: list[str]) -> bool:
    """peft's rule for ``target_modules``: the full name, or a suffix after a dot."""
    return any(name == t or name.endswith(f".{t}") for t in targets)


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


def weight_bytes(quant, fan_in: int, fan_out: int) -> float:
    """Stored bytes of one frozen fan_out x fan_in weight by its storage type's formula (codes and
    constants; code tables do not scale)."""
    bits = quant.spec().bits_per_param(quant.args(), torch.Size((fan_out, fan_in)))
    return bits * fan_in * fan_out / 8


def weight_terms(shape: ModelShape, quant, compute_bytes: int) -> dict[str, int]:
    """Frozen weights: quantized linear layers at their storage's bits/param (exact: codes and constants),
    everything else (embeddings, norms, biases, skipped layers such as lm_head) in the compute dtype."""
    skip = list(quant.skip_modules)
    block = [(is_skipped(name, skip), i, o) for name, i, o in shape.linears]
    outer = [(is_skipped(name, skip), i, o, tied) for name, i, o, tied in shape.outer_linears]
    quantized = shape.layers * sum(weight_bytes(quant, i, o) for s, i, o in block if not s) + sum(
        weight_bytes(quant, i, o) for s, i, o, _ in outer if not s
    )
    skipped = shape.layers * sum(i * o for s, i, o in block if s) + sum(
        i * o for s, i, o, tied in outer if s and not tied
    )
    return {
        "quantized_weights": round(quantized),
        "unquantized_params": (shape.other_params + skipped) * compute_bytes,
    }


def lora_params(shape: ModelShape, rank: int, targets: list[str]) -> int:
    """Trainable parameters: r x (in + out) per targeted linear layer, in every block and outside."""
    per_block = sum(rank * (i + o) for name, i, o in shape.linears if targeted(name, targets))
    outer = sum(rank * (i + o) for name, i, o, _ in shape.outer_linears if targeted(name, targets))
    return shape.layers * per_block + outer


def lora_saved(
    shape: ModelShape, lora, targets: list[str], tokens: int, compute_bytes: int, mask_bytes: int
) -> int:
    """Bytes one block's LoRA adapters save for backward.

    With dropout each target draws its own mask and keeps its own dropped input (lora_A needs it, in the
    compute dtype autocast runs it in, for its weight gradient); without, lora_A saves its input, counted
    once per target (targets reading the same tensor, q/k/v, share it: an upper bound of a few MiB). Plus
    lora_A's output.
    """
    fan_ins = [i for name, i, _ in shape.linears if targeted(name, targets)]
    per_input = mask_bytes + compute_bytes if lora.dropout > 0 else compute_bytes
    return tokens * (sum(fan_ins) * per_input + len(fan_ins) * lora.r * compute_bytes)


def block_saved(shape: ModelShape, batch: BatchShape, compute_bytes: int, attention_bytes: int) -> int:
    """Bytes one block's frozen path saves for backward (LoRA excluded).

    Each RMSNorm keeps its input in fp32, a LayerNorm in the compute dtype; SDPA keeps q, k and v (k and v
    repeated to all heads when a padding mask is passed) and its output, in ``attention_bytes`` per element
    (fp32 where harness.model.attention upcasts them), and eager attention also its probabilities and
    their softmax input; the MLP what ``_mlp_widths`` says. The frozen matmuls keep no input
    (harness.quant.DequantMatmul).
    """
    norms = shape.hidden * (shape.rms_norms * 4 + shape.other_norms * compute_bytes)
    attention = 4 * shape.heads * shape.head_dim * attention_bytes
    if shape.eager_attention:
        attention += 2 * shape.heads * batch.width * compute_bytes
    return batch.tokens * (norms + attention + shape.mlp_saved * compute_bytes)


def activation_terms(
    shape: ModelShape,
    lora,
    targets: list[str],
    checkpointed: int,
    batch: BatchShape,
    compute_bytes: int,
    mask_bytes: int,
    attention_bytes: int,
) -> dict[str, int]:
    """Saved activations (a checkpointed layer keeps its input, every other layer what autograd saves), the
    recomputed layer, its backward buffers and the loss buffers; ``checkpointed`` layers of the model's."""
    n = batch.tokens
    layer = block_saved(shape, batch, compute_bytes, attention_bytes)
    layer += lora_saved(shape, lora, targets, n, compute_bytes, mask_bytes)
    final_norm = n * shape.hidden * 4
    layer_inputs = checkpointed * n * shape.hidden * compute_bytes
    saved = layer_inputs + (shape.layers - checkpointed) * layer + final_norm
    upcast = 0 if compute_bytes == LOSS_BYTES else compute_bytes  # bf16 logits and their gradient
    return {
        "saved_activations": saved,
        "layer_recompute": layer if checkpointed else 0,
        "layer_backward_buffers": n * shape.mlp_backward * compute_bytes,
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
    cpu_heap: str = "lean",
    batch_shapes: int | None = None,
) -> dict:
    """Peak training memory in bytes: ``{"terms": {...}, "phases": {...}, "peak_phase": name, "total": n}``.

    ``quant``, ``lora`` and ``train`` are the job's config groups; ``targets`` the LoRA leaf names;
    ``batch`` the largest micro-batch; ``baseline_bytes`` the resident set before loading (CPU only: the
    CUDA allocator starts empty). ``attention_fp32``: SDPA runs upcast to fp32 (harness.model.attention).
    ``batch_shapes``: distinct micro-batch shapes trained (CPU kernel cache; None: one per micro-batch).
    Paged optimizer state lives in CUDA unified memory, outside the allocator that is measured, so it is
    reported beside the terms and left out of the total there. ``caveat``: where the estimate may not hold
    (``heap_caveat``).
    """
    compute_bytes = torch.finfo(compute_dtype).bits // 8
    attention_bytes = 4 if attention_fp32 else compute_bytes
    trainable = lora_params(shape, lora.r, targets)
    state = round(trainable * OPTIMIZER_STATE_BYTES[str(train.optimizer)])
    paged = device.type == "cuda" and str(train.optimizer).startswith("paged_")
    terms = {
        "baseline_rss": baseline_bytes if device.type == "cpu" else 0,
        **weight_terms(shape, quant, compute_bytes),
        "lora_params": trainable * LORA_BYTES,
        "optimizer_state": 0 if paged else state,
        "lora_grads": trainable * LORA_BYTES,
        # autocast keeps a compute-dtype copy of every adapter weight it cast until the forward ends
        "adapter_casts": trainable * compute_bytes if compute_bytes < LORA_BYTES else 0,
        "dequantized_weight": max(i * o for _, i, o in shape.linears) * compute_bytes,
        **activation_terms(
            shape,
            lora,
            targets,
            train.checkpointed_layers(shape.layers),
            batch,
            compute_bytes,
            lora_dropout_mask_bytes(device, compute_dtype),
            attention_bytes,
        ),
    }
    if device.type == "cpu":
        terms.update(cpu_terms(train, compute_bytes, cpu_heap, batch_shapes))
    phases = step_phases(terms)
    if device.type == "cpu" and cpu_heap == "fast" and not cpu_tensors_from_malloc():
        peak = max(phases, key=phases.get)
        transient = heap_transient(terms, peak, shape, batch, compute_bytes)
        terms["heap_retained"] = round(heap_retained_per_transient_byte(compute_bytes) * transient)
        phases = {name: total + terms["heap_retained"] for name, total in phases.items()}
    peak = max(phases, key=phases.get)
    estimate = {"terms": terms, "phases": phases, "peak_phase": peak, "total": phases[peak]}
    if paged:
        estimate["paged_optimizer_state"] = state
    if caveat := heap_caveat(device, cpu_heap):
        estimate["caveat"] = caveat
    return estimate


T = TypeVar("T")


def by_precision(table: dict[int, T], compute_bytes: int) -> T:
    """The entry of a constant measured per precision (keys 4: fp32, 2: bf16/fp16) for ``compute_bytes``."""
    return table[4 if compute_bytes >= 4 else 2]


def reuses_aligned_chunks() -> bool | None:
    """Whether the running glibc reuses a freed 64-byte-aligned chunk (2.38+); None off glibc."""
    version = glibc_version()
    return None if version is None else version >= ALIGNED_REUSE_GLIBC


def heap_retained_per_transient_byte(compute_bytes: int) -> float:
    """``HEAP_RETAINED`` for the running C library and the compute dtype's bytes; off glibc, the larger
    (the estimate errs high)."""
    if reuses_aligned_chunks():
        return by_precision(HEAP_RETAINED, compute_bytes)
    return HEAP_RETAINED_BEFORE_ALIGNED_REUSE


def heap_caveat(device: torch.device, cpu_heap: str) -> str | None:
    """What a reader of a CPU estimate under the fast heap must know where this glibc strands freed chunks
    (``harness.train.meters.ALIGNED_REUSE_GLIBC``) and torch's own allocator serves them; None where the
    estimate holds."""
    if device.type != "cpu" or cpu_heap != "fast" or reuses_aligned_chunks() is not False:
        return None
    if cpu_tensors_from_malloc():  # torch's tensors come from plain malloc, which glibc reuses exactly
        return None
    older = ".".join(map(str, glibc_version()))
    newer = ".".join(map(str, ALIGNED_REUSE_GLIBC))
    return (
        f"glibc {older} (before {newer}) does not reuse a freed 64-byte-aligned chunk for the next request "
        "of its size, so under cpu_heap=fast the peak resident set can stray from the memory estimate either "
        "way (SmolLM2 in fp32: up to half above it with gradient checkpointing, ~40 % below it without; "
        "docs/performance.md); a C++ compiler (for harness.train.cpu_allocator), cpu_heap=lean or "
        f"glibc {newer}+ makes the estimate hold"
    )


RESIDENT = ("baseline_rss", "cpu_runtime", "kernel_cache", "quantized_weights", "unquantized_params")


def kernel_cache_bytes_per_shape(cpu_heap: str, amx: bool) -> int:
    """What each new micro-batch shape adds below fp32: oneDNN's kernels for this CPU, and under the fast heap
    the chunks the shape's tensors did not fit into."""
    return KERNEL_CACHE_BYTES_PER_SHAPE["amx" if amx else "avx512"] + (
        FAST_HEAP_BYTES_PER_SHAPE if cpu_heap == "fast" else 0
    )


def cpu_terms(train, compute_bytes: int, cpu_heap: str, batch_shapes: int | None = None) -> dict[str, int]:
    """What a CPU job's resident set holds beyond its tensors: the runtime, and below fp32 what each distinct
    micro-batch shape adds (``batch_shapes``; unknown before a run: every micro-batch)."""
    shapes = train.steps * train.grad_accum if batch_shapes is None else batch_shapes
    per_shape = kernel_cache_bytes_per_shape(cpu_heap, cpu_has_amx())
    return {
        "cpu_runtime": by_precision(CPU_RUNTIME_BYTES, compute_bytes),
        "kernel_cache": per_shape * shapes if compute_bytes < LORA_BYTES else 0,
    }


def step_phases(terms: dict[str, int]) -> dict[str, int]:
    """The three moments of a step: the end of the forward, the backward of a recomputed layer, the
    optimizer step; each on top of what stays resident (weights, adapters, optimizer state)."""
    resident = sum(terms.get(k, 0) for k in RESIDENT) + terms["lora_params"] + terms["optimizer_state"]
    return {
        "loss": resident + terms["saved_activations"] + terms["loss_buffers"] + terms["adapter_casts"],
        "layer_backward": resident
        + max(terms["saved_activations"], terms["lora_grads"])
        + terms["layer_recompute"]
        + terms["layer_backward_buffers"]
        + terms["dequantized_weight"],
        "optimizer_step": resident + terms["lora_grads"],
    }


# The transient terms of each phase (what is alive above the resident state at that moment).
PHASE_TRANSIENTS = {
    "loss": ("saved_activations", "loss_buffers", "adapter_casts"),
    "layer_backward": (
        "saved_activations",
        "layer_recompute",
        "layer_backward_buffers",
        "dequantized_weight",
    ),
    "optimizer_step": ("lora_grads",),
}


def heap_transient(
    terms: dict[str, int], phase: str, shape: ModelShape, batch: BatchShape, nbytes: int
) -> int:
    """The bytes of ``phase``'s transient tensors that glibc's fast heap serves (tensors below its mmap
    threshold: larger ones get their own mapping, returned on free). Each term is judged by its largest
    tensor: a logits buffer, a layer's input, a layer's widest MLP activation, the widest weight."""
    widest = max(o for _, _, o in shape.linears)
    largest = {
        "loss_buffers": batch.logit_rows * shape.vocab * LOSS_BYTES,
        "saved_activations": batch.tokens * shape.hidden * nbytes,
        "layer_recompute": batch.tokens * widest * nbytes,
        "layer_backward_buffers": batch.tokens * widest * nbytes,
        "dequantized_weight": terms["dequantized_weight"],
    }
    small = [t for t in PHASE_TRANSIENTS[phase] if largest.get(t, 0) < FAST_MMAP_THRESHOLD]
    return sum(terms[t] for t in small)
