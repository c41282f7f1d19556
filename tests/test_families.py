"""Every supported model family through the real job path, LoRA targets per family, GPT-2's Conv1D, and
the converted-model cache's damage check.

Each family is a tiny random model built in code (harness.model.tiny) and saved as a local model
directory, so loading goes through transformers' Auto classes exactly as a user's checkpoint would.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from tokenizers import pre_tokenizers

from harness.config import LoraConfig, ModelConfig
from harness.job import run_job
from harness.model import loading
from harness.model.loading import cache_damage, load_model
from harness.model.lora import attach_lora, resolve_targets
from harness.model.replace import linear_module_names, quantizable_layer_names, replace_linear_layers
from harness.model.tiny import TINY_FAMILIES, build_tiny_family, save_tiny_family
from harness.quant import QuantLinear
from harness.result import read_result

# Per family: the resolved lora.targets for attention and mlp; all-linear resolves to the leaf names.
EXPECTED_TARGETS = {
    "llama": (["k_proj", "o_proj", "q_proj", "v_proj"], ["down_proj", "gate_proj", "up_proj"]),
    "mistral": (["k_proj", "o_proj", "q_proj", "v_proj"], ["down_proj", "gate_proj", "up_proj"]),
    "qwen2": (["k_proj", "o_proj", "q_proj", "v_proj"], ["down_proj", "gate_proj", "up_proj"]),
    "gemma": (["k_proj", "o_proj", "q_proj", "v_proj"], ["down_proj", "gate_proj", "up_proj"]),
    "phi3": (["o_proj", "qkv_proj"], ["down_proj", "gate_up_proj"]),
    "opt": (["k_proj", "out_proj", "q_proj", "v_proj"], ["fc1", "fc2"]),
    "bloom": (["dense", "query_key_value"], ["dense_4h_to_h", "dense_h_to_4h"]),
    "gpt_neox": (["dense", "query_key_value"], ["dense_4h_to_h", "dense_h_to_4h"]),
    # c_proj is the output projection of both blocks: the leaf alone would select both
    "gpt2": (["attn.c_proj", "c_attn"], ["c_fc", "mlp.c_proj"]),
}


def _leaves(names: list[str]) -> list[str]:
    return sorted({name.rsplit(".", 1)[-1] for name in names})


def _selected(names: list[str], suffixes: list[str]) -> set[str]:
    return {n for n in names if any(n == s or n.endswith(f".{s}") for s in suffixes)}


def test_every_family_has_expected_targets():
    assert set(EXPECTED_TARGETS) == set(TINY_FAMILIES)


@pytest.mark.parametrize("family", sorted(TINY_FAMILIES))
def test_targets_resolve_per_family(family):
    """attention and mlp resolve to the expected names and split the family's linear layers (lm_head
    excluded) between them, under peft's matching rule (the name or a dotted suffix of it)."""
    model, _ = build_tiny_family(family)
    names = quantizable_layer_names(model, ["lm_head"])
    attention, mlp = EXPECTED_TARGETS[family]
    assert resolve_targets("attention", names) == attention
    assert resolve_targets("mlp", names) == mlp
    assert resolve_targets("all-linear", names) == _leaves(names)
    selected = {role: _selected(names, resolve_targets(role, names)) for role in ("attention", "mlp")}
    assert not selected["attention"] & selected["mlp"]
    assert selected["attention"] | selected["mlp"] == set(names)
    assert resolve_targets(mlp[-1:], names) == mlp[-1:]  # a list of names, dotted ones included


@pytest.mark.parametrize("family", sorted(TINY_FAMILIES))
def test_family_job_quantizes_trains_and_evaluates(job_config, tmp_path, family):
    """NF4 quantize -> LoRA -> 3 training steps -> synthetic_local evaluation via run_job on a local dir."""
    model_dir = save_tiny_family(family, tmp_path / "model")
    cfg = job_config(
        f"model.name_or_path={model_dir}",
        "quant=nf4",
        "train=smoke",
        "train.steps=3",
        "train.batch_size=4",
        "lora.r=8",
        "data.num_synthetic=32",
        "eval=synthetic",
        "eval.limit=4",
    )
    assert run_job(cfg, tmp_path / "job").ok
    result = read_result(tmp_path / "job" / "result.json")
    assert result["status"] == "ok", result.get("error")
    assert result["model"]["source"] == "local"
    names = quantizable_layer_names(build_tiny_family(family)[0], ["lm_head"])
    assert result["quant"]["layers"] == len(names)
    assert result["quant"]["storage"] == "nf4" and 4 < result["quant"]["bits_per_param"] < 6
    assert result["lora"]["targets"] == _leaves(names)
    assert result["lora"]["trainable_params"] > 0
    assert len(result["train"]["loss"]) == 3 and all(math.isfinite(x) for x in result["train"]["loss"])
    assert result["eval"]["synthetic_local"]["n"] == 4


def test_gpt2_conv1d_quantized_as_transposed_linear():
    """A Conv1D replaced by its transposed linear layer computes the same logits (fp32 storage: exact),
    the square c_proj included, where a missed transpose would go unnoticed by shapes."""
    model, _ = build_tiny_family("gpt2")
    ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(ids).logits
    conv_names = linear_module_names(model)
    replace_linear_layers(model, "fp32", 64, False, torch.float32, torch.device("cpu"), ["lm_head"])
    assert not any(type(m).__name__ == "Conv1D" for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, expected)
    assert len(conv_names) == 4 * 2 + 1  # four Conv1D per block and lm_head


def test_gpt2_lora_attaches_to_attention_only():
    """lora.targets=attention on GPT-2 puts adapters on attn.c_attn/attn.c_proj, not on mlp.c_proj, and
    peft treats the quantized layers as linear (fan_in_fan_out False)."""
    model, _ = build_tiny_family("gpt2")
    names = quantizable_layer_names(model, ["lm_head"])
    replace_linear_layers(model, "nf4", 64, True, torch.float32, torch.device("cpu"), ["lm_head"])
    peft_model = attach_lora(model, LoraConfig(r=4), resolve_targets("attention", names), seed=0)
    adapted = {n.split("transformer.")[-1]: m for n, m in peft_model.named_modules() if hasattr(m, "lora_A")}
    assert set(adapted) == {f"h.{i}.attn.{leaf}" for i in range(2) for leaf in ("c_attn", "c_proj")}
    assert all(not m.fan_in_fan_out and isinstance(m.base_layer, QuantLinear) for m in adapted.values())


def test_cache_damage_names_the_damaged_file(tmp_path):
    """A complete model directory passes; a truncated safetensors or JSON file is named."""
    model_dir = save_tiny_family("llama", tmp_path / "model")
    assert cache_damage(model_dir) == []
    weights = model_dir / "model.safetensors"
    os.truncate(weights, weights.stat().st_size - 100)
    tokenizer = model_dir / "tokenizer.json"
    os.truncate(tokenizer, tokenizer.stat().st_size // 2)
    damage = cache_damage(model_dir)
    assert len(damage) == 2
    assert damage[0].startswith("model.safetensors: ") and damage[1].startswith("tokenizer.json: ")


def write_tiny_gguf(path: Path, hidden: int = 32) -> Path:
    """A 1-layer Llama GGUF in the shipped SmolLM2 file's format (Q4_1 weights, a GPT-2 byte-level
    vocabulary in the metadata), converted in a second instead of SmolLM2's ~35 s."""
    tokens = sorted(pre_tokenizers.ByteLevel.alphabet()) + ["<|endoftext|>", "<|pad|>"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(512)
    writer.add_embedding_length(hidden)
    writer.add_block_count(1)
    writer.add_feed_forward_length(2 * hidden)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_rope_dimension_count(hidden // 4)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.NORMAL] * 256 + [gguf.TokenType.CONTROL] * 2)
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_merges([])
    writer.add_bos_token_id(256)
    writer.add_eos_token_id(256)
    rng = np.random.default_rng(0)
    shapes = {
        "token_embd.weight": (len(tokens), hidden),
        **{f"blk.0.attn_{n}.weight": (hidden, hidden) for n in ("q", "output")},
        **{f"blk.0.attn_{n}.weight": (hidden // 2, hidden) for n in ("k", "v")},
        **{f"blk.0.ffn_{n}.weight": (2 * hidden, hidden) for n in ("gate", "up")},
        "blk.0.ffn_down.weight": (hidden, 2 * hidden),
    }
    for name, shape in shapes.items():
        weight = (rng.standard_normal(shape) * 0.02).astype(np.float32)
        q4_1 = gguf.GGMLQuantizationType.Q4_1
        writer.add_tensor(name, gguf.quants.quantize(weight, q4_1), raw_dtype=q4_1)
    for name in ("blk.0.attn_norm.weight", "blk.0.ffn_norm.weight", "output_norm.weight"):
        writer.add_tensor(name, np.ones(hidden, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_damaged_gguf_cache_is_converted_again(tmp_path, monkeypatch):
    """A converted model cache whose model.safetensors was cut short (full disk, killed conversion) is
    moved aside and converted again from the GGUF, and the model loads. The GGUF is a tiny one in the
    shipped SmolLM2 file's format (the same conversion code, transformers' GGUF reader); `make demo`
    converts the real one."""
    gguf_file = write_tiny_gguf(tmp_path / "tiny.Q4_1.gguf")
    monkeypatch.setattr(loading, "_gguf_path", lambda package, filename: gguf_file)
    damaged = save_tiny_family("llama", tmp_path / "cache" / "smollm2-135m")
    weights = damaged / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    cache = tmp_path / "cache"
    loaded = load_model(ModelConfig(name_or_path="smollm2-135m", cache_dir=str(cache)), torch.float32)
    assert loaded.source == "shipped-gguf"
    assert loaded.model.config.hidden_size == 32  # the GGUF's, not the tiny model's (64) left in the cache
    assert cache_damage(cache / "smollm2-135m") == []
    assert [p.name for p in cache.iterdir() if p.name.startswith(".")] == []  # nothing left aside
