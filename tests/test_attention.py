"""CPU attention in fp32 for a bf16 model: chosen only where it applies, and the same outputs as SDPA."""

from __future__ import annotations

import pytest
import torch

from harness.model.attention import CPU_FP32_SDPA, choose_attention, runs_fp32_attention
from harness.model.tiny import TINY_FAMILIES, build_tiny_family, build_tiny_model

CPU = torch.device("cpu")


def _copies(n: int) -> list[torch.nn.Module]:
    """n copies of one tiny Llama (fp32, eval mode)."""
    torch.manual_seed(0)
    first, _ = build_tiny_model()
    copies = [first]
    for _ in range(n - 1):
        model, _ = build_tiny_model()
        model.load_state_dict(first.state_dict())
        copies.append(model)
    return [m.eval() for m in copies]


def test_a_bf16_cpu_model_switches_and_fp32_or_cuda_ones_do_not():
    model, other = _copies(2)
    assert choose_attention(model, CPU, torch.bfloat16) == CPU_FP32_SDPA
    assert model.config._attn_implementation == CPU_FP32_SDPA and runs_fp32_attention(model)
    assert choose_attention(other, CPU, torch.float32) == "sdpa" and not runs_fp32_attention(other)
    assert choose_attention(other, torch.device("cuda"), torch.bfloat16) == "sdpa"
    other.set_attn_implementation("eager")
    assert choose_attention(other, CPU, torch.bfloat16) == "eager"  # a user's choice is kept


def test_outputs_are_at_least_as_close_to_fp32_as_bf16_sdpa_and_padding_stays_masked():
    exact, sdpa, switched = _copies(3)
    sdpa, switched = sdpa.to(torch.bfloat16), switched.to(torch.bfloat16)
    choose_attention(switched, CPU, torch.bfloat16)
    ids = torch.randint(3, 200, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding: attending to it would change every later position of row 1
    keep = mask.bool()
    with torch.no_grad():
        want = exact(input_ids=ids, attention_mask=mask).logits[keep]
        bf16_error = (sdpa(input_ids=ids, attention_mask=mask).logits.float()[keep] - want).abs().mean()
        got = switched(input_ids=ids, attention_mask=mask).logits.float()
        unmasked = switched(input_ids=ids).logits.float()
    error = (got[keep] - want).abs().mean()
    assert error <= 1.1 * bf16_error and error < 0.05
    assert (got[1, 5:] - unmasked[1, 5:]).abs().mean() > 10 * error  # the mask was applied


def test_gradients_flow_through_the_fp32_attention_under_autocast():
    (switched,) = _copies(1)
    choose_attention(switched, CPU, torch.bfloat16)
    switched.train()
    ids = torch.randint(3, 200, (2, 10))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = switched(input_ids=ids, labels=ids).loss
    loss.backward()
    grad = switched.model.layers[0].self_attn.q_proj.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("family", sorted(TINY_FAMILIES))
def test_every_family_runs_a_forward_after_the_choice(family):
    model, _ = build_tiny_family(family)
    model = model.to(torch.bfloat16).eval()
    chosen = choose_attention(model, CPU, torch.bfloat16)
    assert chosen == model.config._attn_implementation
    with torch.no_grad():
        logits = model(input_ids=torch.randint(3, 200, (2, 8))).logits
    assert torch.isfinite(logits.float()).all()
