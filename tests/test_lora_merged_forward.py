"""Evaluation's shortcuts through LoRA layers (harness.model.lora). The merged forward (merged_weight): in an
fp32 forward with no gradient and no dropout an adapted layer runs one matmul over W + s·B·A instead of peft's
base-plus-adapter matmuls, the same function up to fp32 rounding, and nowhere else. Untrained adapters
(untrained_adapters_off): while every B is zero, evaluation runs without them, bit for bit the same.

Tolerance: both ways sum the same products in fp32, grouped differently: y = x·(W + s·B·A)ᵀ vs
x·Wᵀ + s·(x·Aᵀ)·Bᵀ. Each output is a sum of at most in + r terms (plus the r-term sums inside B·A or x·Aᵀ), so
either way is within γ_n · (|x|·|W|ᵀ + s·|x|·|A|ᵀ·|B|ᵀ) of the exact value, γ_n = n·u/(1 - n·u), u = 2⁻²⁴,
n = in + r + 2 (Higham, Accuracy and Stability of Numerical Algorithms, 3.1); the test allows twice that.
A wrong scale, a missing adapter or a transposed B·A moves outputs by the adapter's whole contribution.
"""

from __future__ import annotations

import pytest
import torch

from harness.config import EvalConfig, LoraConfig
from harness.data.paths import DataDirError, resolve_data_dir
from harness.evaluate import evaluate_model
from harness.model.lora import (
    attach_lora,
    merges_exactly,
    merging_is_cheaper,
    resolve_targets,
    separate_adapters,
    untrained_adapters_off,
)
from harness.model.precision import adapter_autocast, adapters_as_trained
from harness.model.replace import quantizable_layer_names, replace_linear_layers
from harness.model.tiny import TINY_FAMILIES, build_tiny_family

pytestmark = pytest.mark.usefixtures("single_thread")

UNIT_ROUNDOFF = 2.0**-24


def adapted_model(
    dtype: torch.dtype = torch.float32, trained: bool = True, family: str = "llama"
) -> torch.nn.Module:
    """A tiny model of ``family`` as a job builds it (NF4 blocks, lm_head kept), with LoRA whose B is nonzero
    (trained) or zero as peft initialises it."""
    model, _ = build_tiny_family(family)
    targets = resolve_targets("all-linear", quantizable_layer_names(model, ["lm_head"]))
    replace_linear_layers(model, "nf4", 64, True, dtype, torch.device("cpu"), ["lm_head"])
    if dtype != torch.float32:
        model.get_input_embeddings().to(dtype)
    peft_model = attach_lora(model, LoraConfig(r=8, alpha=16, dropout=0.1), targets, seed=0)
    torch.manual_seed(0)
    for name, parameter in peft_model.named_parameters():
        if "lora_B" in name and trained:
            torch.nn.init.normal_(parameter, std=0.1)
    return peft_model.eval()


def adapted_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if hasattr(m, "merge_when_exact")]


def test_merged_layer_output_is_peft_output_within_fp32_rounding() -> None:
    """Every adapted layer of the tiny Llama, on 64 tokens: merged and separate outputs agree within the
    a-priori bound above, and the adapter's contribution is far larger than that bound."""
    model = adapted_model()
    layers = adapted_layers(model)
    assert len(layers) == 7 * model.config.num_hidden_layers
    torch.manual_seed(1)
    for layer in layers:
        x = torch.randn(64, layer.in_features)
        with torch.no_grad():
            assert merges_exactly(layer, x, {}) and merging_is_cheaper(layer, x)
            merged = layer(x)
            with separate_adapters(model):
                assert not merges_exactly(layer, x, {})
                separate = layer(x)
            (name,) = layer.active_adapters
            a, b, s = layer.lora_A[name].weight, layer.lora_B[name].weight, layer.scaling[name]
            w = layer.base_layer.qweight.dequantize(torch.float32)
            scale = x.abs() @ w.abs().T + s * (x.abs() @ a.abs().T @ b.abs().T)
            adapter = s * (x @ a.T @ b.T)
        n = layer.in_features + a.shape[0] + 2
        bound = 2 * n * UNIT_ROUNDOFF / (1 - n * UNIT_ROUNDOFF) * scale
        assert ((merged - separate).abs() <= bound).all()
        assert adapter.abs().max() > 100 * bound.max()  # the check could see a lost adapter


def test_the_separate_forward_runs_wherever_merging_would_change_the_function() -> None:
    """With gradients, in training mode (dropout), with adapters off and under bf16 autocast the layer keeps
    peft's forward; for fewer than in·out/(in + out) tokens merging would cost more than it saves."""
    model = adapted_model()
    layer = adapted_layers(model)[0]
    x = torch.randn(64, layer.in_features)
    assert not merges_exactly(layer, x, {})  # gradients on
    with torch.no_grad():
        assert merges_exactly(layer, x, {})
        assert not merges_exactly(layer, x, {"adapter_names": ["default"]})
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not merges_exactly(layer, x, {})
        with model.disable_adapter():
            assert not merges_exactly(layer, x, {})
        model.train()
        assert not merges_exactly(layer, x, {})
        model.eval()
        threshold = layer.in_features * layer.out_features / (layer.in_features + layer.out_features)
        assert merging_is_cheaper(layer, x[: int(threshold) + 1])
        assert not merging_is_cheaper(layer, x[: int(threshold) - 1])
    assert all(layer.merge_when_exact for layer in adapted_layers(model))  # separate_adapters restores


def test_a_bf16_model_never_merges() -> None:
    """Rounding W + s·B·A to bf16 would score another model than the one trained: bf16 keeps peft's way."""
    model = adapted_model(torch.bfloat16)
    layer = adapted_layers(model)[0]
    with torch.no_grad():
        assert not merges_exactly(layer, torch.randn(64, layer.in_features, dtype=torch.bfloat16), {})
        assert not merges_exactly(layer, torch.randn(64, layer.in_features), {})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_untrained_adapters_are_skipped_with_bit_identical_outputs(dtype: torch.dtype) -> None:
    """B = 0 (before training): the model runs without its adapters inside the block, and its logits under
    the forward evaluation runs (training's autocast) are the very same bits; a trained adapter stays on."""
    model = adapted_model(dtype, trained=False)
    ids = torch.randint(0, model.config.vocab_size, (2, 24))
    device = torch.device("cpu")

    def logits() -> torch.Tensor:
        with torch.no_grad(), adapter_autocast(device, dtype), adapters_as_trained(model):
            return model(input_ids=ids).logits

    with_adapters = logits()
    with untrained_adapters_off(model) as skipped:
        assert skipped and all(layer.disable_adapters for layer in adapted_layers(model))
        without = logits()
    assert not any(layer.disable_adapters for layer in adapted_layers(model))
    assert torch.equal(with_adapters, without)
    with untrained_adapters_off(adapted_model(dtype, trained=True)) as skipped:
        assert not skipped


def test_evaluate_model_skips_untrained_adapters() -> None:
    """evaluate_model runs an untrained model's adapted layers with their adapters off (seen by a forward
    hook on one of them) and a trained model's with them on."""
    try:
        data_dir = str(resolve_data_dir())
    except DataDirError as exc:
        pytest.skip(f"no real data directory: {exc}")
    _, tokenizer = build_tiny_family("llama")
    cfg = EvalConfig(tasks=["arc_easy_local"], limit=2, bootstrap_iters=0, log_samples=False)
    for trained in (False, True):
        model = adapted_model(trained=trained)
        seen: list[bool] = []
        layer = adapted_layers(model)[0]
        layer.register_forward_hook(lambda module, *_, seen=seen: seen.append(module.disable_adapters))
        evaluate_model(model, tokenizer, cfg, data_dir)
        assert seen and set(seen) == {not trained}


@pytest.mark.parametrize("family", sorted(TINY_FAMILIES))
def test_merged_forward_matches_peft_in_every_tiny_family(family: str) -> None:
    """Fused projections (BLOOM's and GPT-NeoX's query_key_value, Phi-3's qkv_proj and gate_up_proj), GPT-2's
    Conv1D turned QuantLinear, biases: the merged model's logits equal peft's within 1e-4 relative to the
    largest logit (fp32 sums regrouped, compounded over the tiny models' layers: ~2e-6 seen), while the
    adapters move them by far more (checked, so a merge that dropped them would fail)."""
    model = adapted_model(family=family)
    lora_layers = [m for m in model.modules() if isinstance(getattr(m, "lora_A", None), torch.nn.ModuleDict)]
    assert lora_layers and all(m in adapted_layers(model) for m in lora_layers)  # every one can merge
    ids = torch.randint(0, model.config.vocab_size, (2, 64))
    with torch.no_grad():
        assert all(merging_is_cheaper(m, torch.empty(128, m.in_features)) for m in lora_layers)
        merged = model(input_ids=ids).logits
        with separate_adapters(model):
            separate = model(input_ids=ids).logits
        with model.disable_adapter():
            base = model(input_ids=ids).logits
    scale = separate.abs().max()
    assert (merged - separate).abs().max() <= 1e-4 * scale
    assert (separate - base).abs().max() >= 1e-2 * scale
