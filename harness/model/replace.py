"""Replace a model's linear layers by frozen layers of one storage type (the harness quantizes them).

transformers' ``BitsAndBytesConfig`` has no block-size option, so every storage type goes through this
one path: walk the ``nn.Linear`` modules, quantize each weight on the target device, swap the module.
GPT-2's ``Conv1D`` layers go the same way, as the linear layer they are (see ``as_linear``).
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers.pytorch_utils import Conv1D

from harness.model.checkpoint import ShardedCheckpoint
from harness.quant import frozen_linear, reconstruction_error, storage_bytes, weight_error_summary
from harness.result import QuantBlock

LINEAR_TYPES = (nn.Linear, Conv1D)


def linear_module_names(model: nn.Module) -> list[str]:
    """Full names of every linear layer (``nn.Linear``, GPT-2's ``Conv1D``) in the model, in module order."""
    return [name for name, module in model.named_modules() if isinstance(module, LINEAR_TYPES)]


def as_linear(module: nn.Module) -> nn.Linear:
    """The layer as an ``nn.Linear``: itself, or for a ``Conv1D`` (y = x @ W + b, W stored in x out) the
    ``nn.Linear`` whose weight is W transposed (a copy of this one layer).

    Supporting Conv1D this way rather than refusing it follows transformers' bitsandbytes integration
    (``integrations/bitsandbytes.py``: "Support models using `Conv1D` in place of `nn.Linear` (e.g.
    openai-community/gpt2) by transposing the weight matrix prior to quantization"; its replace function
    takes ``in_features, out_features = module.weight.shape`` for the ``Linear4bit`` it builds).
    Every storage type then sees one weight layout, and the frozen layer is a plain linear layer to peft:
    LoRA attaches with ``fan_in_fan_out=False`` (peft sets it True only for a module that is still Conv1D).
    """
    if not isinstance(module, Conv1D):
        return module
    in_features, out_features = module.weight.shape
    linear = nn.Linear(in_features, out_features, bias=module.bias is not None, device="meta")
    linear.weight = nn.Parameter(module.weight.detach().T.contiguous(), requires_grad=False)
    if module.bias is not None:
        linear.bias = nn.Parameter(module.bias.detach(), requires_grad=False)
    return linear


def is_skipped(name: str, skip_modules: list[str]) -> bool:
    """Whether layer ``name`` (a full module name) is one of ``skip_modules`` (full names or suffixes)."""
    return any(name == skip or name.endswith(f".{skip}") for skip in skip_modules)


def quantizable_layer_names(model: nn.Module, skip_modules: list[str]) -> list[str]:
    """The linear layers a storage type will replace: all but ``skip_modules`` (lm_head by default)."""
    return [name for name in linear_module_names(model) if not is_skipped(name, skip_modules)]


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def replace_linear_layers(
    model: nn.Module,
    storage: str,
    blocksize: int,
    double_quant: bool,
    compute_dtype: torch.dtype,
    device: torch.device,
    skip_modules: list[str],
    codebook: list[float] | None = None,
    checkpoint: ShardedCheckpoint | None = None,
) -> QuantBlock:
    """Quantize every linear layer except ``skip_modules`` in place, one layer at a time on ``device``.

    Layer-by-layer keeps peak memory near the quantized size instead of holding a full-precision copy
    of the whole model on the accelerator. Everything else (embeddings, norms, skipped layers) is frozen
    and moved to ``device`` in ``compute_dtype``. ``codebook``: the levels of storage ``codebook``.
    ``checkpoint`` (a model loaded with ``stream_weights``, parameters on meta): each layer is read from it
    just before it is quantized, shard by shard, so the full-precision model is never in memory at once.
    """
    targets = quantizable_layer_names(model, skip_modules)
    skipped = [n for n in linear_module_names(model) if n not in targets]
    total_bytes = total_params = 0
    errors: dict[str, tuple[float, float]] = {}
    order = sorted(targets, key=lambda n: checkpoint.shard_position(f"{n}.weight")) if checkpoint else targets
    for name in tqdm(order, desc=f"quantize {storage}", unit="layer", leave=False):
        linear = as_linear(_materialized(model.get_submodule(name), name, checkpoint)).to(device)
        frozen = frozen_linear(linear, storage, blocksize, double_quant, compute_dtype, codebook)
        errors[name] = reconstruction_error(linear.weight, frozen)
        _set_submodule(model, name, frozen)
        nbytes, nparams = storage_bytes(frozen)
        total_bytes += nbytes
        total_params += nparams
    for param in model.parameters():
        param.requires_grad_(False)
    _move_unquantized(model, device, compute_dtype, quantized=set(targets), checkpoint=checkpoint)
    return QuantBlock(
        storage=storage,
        blocksize=blocksize,
        double_quant=double_quant,
        weight_bytes=total_bytes,
        quantized_params=total_params,
        bits_per_param=8 * total_bytes / total_params if total_params else float("nan"),
        layers=len(targets),
        skipped=skipped,
        weight_error=weight_error_summary(errors),
    )


def _materialized(module: nn.Module, name: str, checkpoint: ShardedCheckpoint | None) -> nn.Module:
    """``module`` with its own parameters read from ``checkpoint`` in the dtype it was built in (the eager
    path's numbers); as it is when the model is in memory already."""
    if checkpoint is None:
        return module
    for key, param in module._parameters.items():
        if param is not None:
            stored = checkpoint.read(f"{name}.{key}").to(param.dtype)
            module._parameters[key] = nn.Parameter(stored, requires_grad=False)
    return module


def _stored_names(model: nn.Module, checkpoint: ShardedCheckpoint | None) -> dict[int, str]:
    """Parameter id -> the name its tensor is stored under (tied parameters are stored once)."""
    if checkpoint is None:
        return {}
    names = model.named_parameters(remove_duplicate=False)
    return {id(param): name for name, param in names if name in checkpoint.files}


def _move_unquantized(
    model: nn.Module,
    device: torch.device,
    dtype: torch.dtype,
    quantized: set[str],
    checkpoint: ShardedCheckpoint | None = None,
) -> None:
    """Move the layers that were not quantized to ``device`` and cast their floating parameters to ``dtype``.

    The quantized layers were built on ``device`` already and are left alone: ``model.to(dtype)`` would
    cast their fp32 quantization constants. Tied parameters (lm_head and embeddings) stay tied. Each kept
    parameter is a copy: a view into the checkpoint's memory map would keep the whole file (the replaced
    full-precision weights included) resident. Parameters still on meta are read from ``checkpoint``.
    """
    stored = _stored_names(model, checkpoint)
    moved: dict[int, nn.Parameter] = {}
    for name, module in model.named_modules():
        if name in quantized:
            continue
        for key, param in module._parameters.items():
            if param is None:
                continue
            if id(param) not in moved:
                data = checkpoint.read(stored[id(param)]) if param.is_meta else param.data
                target = dtype if param.is_floating_point() else param.dtype
                copied = data.to(device, target, copy=not param.is_meta)  # a read tensor is fresh already
                moved[id(param)] = nn.Parameter(copied, requires_grad=False)
            module._parameters[key] = moved[id(param)]
        for key, buf in module._buffers.items():
            if buf is not None:
                module._buffers[key] = buf.to(device)
