"""Which attention kernel a model runs: on CPU, SDPA in fp32 even when the model computes in bf16.

torch's CPU flash-attention kernel runs faster in fp32 than in bf16. On an AMD EPYC with AVX-512 BF16 a
SmolLM2-shaped call (batch 4, 9 heads, 160 tokens, head dim 64) took 5.9 ms forward+backward in fp32 and
10.0 ms in bf16, where the linear layers run ~2x faster in bf16. The upcast costs two small copies; the
softmax accumulates in fp32 either way, so attention only gets more exact. CUDA keeps transformers'
kernels as they are.
"""

from __future__ import annotations

import torch

CPU_FP32_SDPA = "sdpa_fp32"


def sdpa_in_fp32(module, query, key, value, attention_mask, **kwargs):
    """transformers' SDPA attention on q, k, v upcast to fp32 (autocast off), its output cast back."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    with torch.autocast(query.device.type, enabled=False):
        out, weights = sdpa_attention_forward(
            module, query.float(), key.float(), value.float(), attention_mask, **kwargs
        )
    return out.to(query.dtype), weights


def register_cpu_fp32_sdpa() -> None:
    """Make ``CPU_FP32_SDPA`` an attention implementation, with SDPA's mask (padding stays masked)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(CPU_FP32_SDPA, sdpa_in_fp32)
    AttentionMaskInterface.register(CPU_FP32_SDPA, sdpa_mask)


def runs_fp32_attention(model: torch.nn.Module) -> bool:
    """Whether ``choose_attention`` switched this model to ``CPU_FP32_SDPA`` (the memory model's question)."""
    return model.config._attn_implementation == CPU_FP32_SDPA


def choose_attention(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> str:
    """Switch a CPU model that computes below fp32 from SDPA to ``CPU_FP32_SDPA``; the implementation the
    model runs from here on (the job records it)."""
    current = model.config._attn_implementation
    if device.type != "cpu" or dtype == torch.float32 or current != "sdpa":
        return current
    register_cpu_fp32_sdpa()
    model.set_attn_implementation(CPU_FP32_SDPA)  # a model that cannot switch warns and keeps SDPA
    return model.config._attn_implementation
