"""Tiny random causal LMs of each supported family with a byte-level tokenizer, built in code (no download).

``build_tiny_model`` is the Llama behind ``model=tiny``; ``build_tiny_family`` builds the same size of
model for every family the harness supports, so tests can run each one through the real job path.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedModel, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>"]
HIDDEN, LAYERS, HEADS = 64, 2, 4
_DECODER = {
    "hidden_size": HIDDEN,
    "intermediate_size": 2 * HIDDEN,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS,
    "max_position_embeddings": 512,
}
# family: (transformers config class, its size arguments). The module names differ per family: fused
# qkv_proj/gate_up_proj (Phi-3), fc1/fc2 outside any "mlp" module (OPT), query_key_value/dense_h_to_4h
# (BLOOM, GPT-NeoX), Conv1D c_attn/c_fc/c_proj (GPT-2). Gemma and GPT-2 tie lm_head to the embeddings, as
# their released checkpoints do.
TINY_FAMILIES: dict[str, tuple[str, dict]] = {
    "llama": ("LlamaConfig", {**_DECODER, "num_key_value_heads": HEADS // 2}),
    "mistral": ("MistralConfig", {**_DECODER, "num_key_value_heads": HEADS // 2}),
    "qwen2": ("Qwen2Config", {**_DECODER, "num_key_value_heads": HEADS // 2}),
    "gemma": (
        "GemmaConfig",
        {**_DECODER, "num_key_value_heads": 1, "head_dim": HIDDEN // HEADS, "tie_word_embeddings": True},
    ),
    "phi3": ("Phi3Config", {**_DECODER, "original_max_position_embeddings": 512}),
    "opt": (
        "OPTConfig",
        {
            "hidden_size": HIDDEN,
            "ffn_dim": 2 * HIDDEN,
            "word_embed_proj_dim": HIDDEN,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS,
            "max_position_embeddings": 512,
        },
    ),
    "bloom": ("BloomConfig", {"hidden_size": HIDDEN, "n_layer": LAYERS, "n_head": HEADS}),
    "gpt_neox": ("GPTNeoXConfig", {**_DECODER, "rotary_pct": 0.25}),
    "gpt2": (
        "GPT2Config",
        {
            "n_embd": HIDDEN,
            "n_layer": LAYERS,
            "n_head": HEADS,
            "n_positions": 512,
            "tie_word_embeddings": True,
        },
    ),
}


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level tokenizer: 256 byte tokens plus end-of-text and padding; encodes any text losslessly."""
    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(byte_chars))}
    for tok in SPECIAL_TOKENS:
        vocab[tok] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token=SPECIAL_TOKENS[0],
        bos_token=SPECIAL_TOKENS[0],
        pad_token=SPECIAL_TOKENS[1],
        model_max_length=512,
    )


def build_tiny_family(family: str, seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A randomly initialised 2-layer model of ``family`` (a key of ``TINY_FAMILIES``) and its tokenizer;
    deterministic per seed."""
    if family not in TINY_FAMILIES:
        raise ValueError(f"tiny model family {family!r} is not one of {sorted(TINY_FAMILIES)}")
    config_name, sizes = TINY_FAMILIES[family]
    tokenizer = build_tiny_tokenizer()
    config = getattr(transformers, config_name)(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        # frozen random lm_head rows bound the logits at |h|·|w|: a wider init lets LoRA move them
        initializer_range=0.2,
        **{"tie_word_embeddings": False, **sizes},
    )
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.eval()
    return model, tokenizer


def build_tiny_model(seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """The tiny Llama behind ``model=tiny`` (~0.1 M parameters) and its tokenizer."""
    return build_tiny_family("llama", seed)


def save_tiny_family(family: str, directory: str | Path, seed: int = 0) -> Path:
    """Write a tiny ``family`` model and its tokenizer as a local model directory (``model.name_or_path``)."""
    model, tokenizer = build_tiny_family(family, seed)
    directory = Path(directory)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
