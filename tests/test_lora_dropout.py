"""The harness's CPU LoRA dropout: nn.Dropout's distribution, unbiased, reproducible under a seed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from harness.config import LoraConfig
from harness.model import dropout
from harness.model.dropout import (
    LANE_BITS,
    LoraDropout,
    compiled_scaled_mask,
    scaled_keep_mask,
    splitmix64,
    torch_scaled_mask,
)
from harness.model.lora import attach_lora, resolve_targets
from harness.model.replace import quantizable_layer_names, replace_linear_layers
from harness.model.tiny import build_tiny_model

CPU = torch.device("cpu")


def keep_mask(shape: torch.Size, p: float) -> torch.Tensor:
    return scaled_keep_mask(shape, p, torch.float32, CPU) != 0


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_keep_rate_and_scale_match_p(p):
    torch.manual_seed(0)
    mask = scaled_keep_mask(torch.Size([1000, 1000]), p, torch.float32, CPU)
    kept = mask[mask != 0]
    assert kept.numel() / mask.numel() == pytest.approx(1 - p, abs=2e-3)
    assert torch.all(kept == kept[0]) and kept[0].item() == pytest.approx(1 / (1 - p), rel=1e-4)


@pytest.mark.skipif(dropout._library() is None, reason="no C compiler: the torch path is the only one")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(4, 37, 576), (3, 7), (1,), (2, 70001)])
def test_the_compiled_mask_is_the_torch_ops_mask_bit_for_bit(dtype, shape):
    """The one-pass C loop writes the torch ops' mask exactly: the same SplitMix64 words and lanes (also
    for a length that ends inside a word, and seeds at both ends of int64) and the scale rounded to the
    dtype as torch's mul_ rounds it. Sizes over the per-thread minimum run split across threads."""
    for p, seed in [(0.1, 0), (0.05, -(2**63)), (0.5, 2**63 - 1), (0.1, 987654321)]:
        threshold = round((1 - p) * 2**LANE_BITS)
        scale = 2**LANE_BITS / threshold
        expected = torch_scaled_mask(torch.Size(shape), seed, threshold, scale, dtype, CPU)
        got = compiled_scaled_mask(torch.Size(shape), seed, threshold, scale, dtype)
        assert got.dtype == dtype and got.shape == expected.shape
        assert torch.equal(got.view(-1).view(torch.uint8), expected.view(-1).view(torch.uint8)), (p, seed)


def test_without_a_compiler_the_torch_ops_draw_the_same_mask(monkeypatch):
    """Where nothing compiles, the mask comes from the torch ops, drawn from the same seed."""
    torch.manual_seed(5)
    native = scaled_keep_mask(torch.Size([64, 96]), 0.1, torch.float32, CPU)
    monkeypatch.setattr(dropout, "compiled_scaled_mask", lambda *args: None)
    torch.manual_seed(5)
    assert torch.equal(scaled_keep_mask(torch.Size([64, 96]), 0.1, torch.float32, CPU), native)


def _splitmix64_reference(seed: int, count: int) -> list[int]:
    """SplitMix64 as published (unsigned 64-bit arithmetic in Python integers), outputs as int64."""
    mask, out, state = 2**64 - 1, [], seed % 2**64
    for _ in range(count):
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        z ^= z >> 31
        out.append(z - 2**64 if z >= 2**63 else z)
    return out


@pytest.mark.parametrize("seed", [0, 1234567, -(2**63), 2**63 - 1])
def test_splitmix64_matches_the_published_generator(seed):
    got = splitmix64(5, seed, torch.device("cpu")).tolist()
    assert got == _splitmix64_reference(seed, 5)


def test_every_lane_keeps_at_the_same_rate_and_neighbours_are_uncorrelated():
    torch.manual_seed(0)
    keep = keep_mask(torch.Size([4000, 400]), 0.1)
    per_lane = keep.view(-1, 4).float().mean(0)  # the four 15-bit lanes of each 64-bit word
    assert torch.allclose(per_lane, torch.full((4,), 0.9), atol=3e-3)
    flat = keep.flatten().float() - 0.9
    assert (flat[1:] * flat[:-1]).mean().item() == pytest.approx(0.0, abs=3e-3 * 0.09)


def test_successive_calls_draw_different_masks():
    torch.manual_seed(0)
    first = keep_mask(torch.Size([64, 64]), 0.5)
    second = keep_mask(torch.Size([64, 64]), 0.5)
    assert (first != second).float().mean().item() == pytest.approx(0.5, abs=0.05)


def test_output_is_unbiased_and_gradient_follows_the_mask():
    torch.manual_seed(0)
    x = torch.ones(512, 1024, requires_grad=True)
    out = LoraDropout(0.1).train()(x)
    kept = out != 0
    assert out.detach().mean().item() == pytest.approx(1.0, abs=3e-3)
    assert torch.all(out[kept] == out[kept][0])
    out.sum().backward()
    assert torch.equal(x.grad, out.detach())


def test_same_seed_same_mask_as_checkpoint_recompute_needs():
    x = torch.randn(64, 96)
    drop = LoraDropout(0.1).train()
    torch.manual_seed(3)
    first = drop(x)
    torch.manual_seed(3)
    assert torch.equal(first, drop(x))


def test_eval_mode_is_identity():
    x = torch.randn(8, 16)
    assert torch.equal(LoraDropout(0.1).eval()(x), x)


def test_attach_lora_uses_it_on_every_target():
    model, _ = build_tiny_model()
    names = quantizable_layer_names(model, ["lm_head"])
    replace_linear_layers(model, "nf4", 64, True, torch.float32, torch.device("cpu"), ["lm_head"])
    peft_model = attach_lora(model, LoraConfig(r=4, dropout=0.1), resolve_targets("all-linear", names), 0)
    dropouts = [m for m in peft_model.modules() if isinstance(m, nn.Dropout)]
    assert len(dropouts) == len(names) and all(isinstance(m, LoraDropout) for m in dropouts)
