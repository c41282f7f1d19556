"""The fixed text behind ``fixed_text_local``: sampled once per process from the unquantized tiny model.

Why text the tiny model wrote itself: its expected negative log-likelihood under a model q is the entropy of
the tiny model p plus KL(p || q), so every error in the stored weights (quantization, a scaled dequantize, a
coarser grid) can only raise it on average — unlike human text, which a random-weight model fits no better
unquantized than with a little noise. The text is a deterministic function of the tiny model's seed and the
sampling seed; sampling starts from the end-of-text token, the prefix lm-eval puts before a rolling
loglikelihood, and is restricted to printable ASCII so that the text re-encodes to the same tokens.
"""

from __future__ import annotations

import functools
import string
from typing import Any

import torch
from datasets import Dataset, DatasetDict

from harness.model.tiny import build_tiny_model

NUM_DOCS = 32
DOC_TOKENS = 128
SAMPLING_SEED = 1234
PRINTABLE = set(string.printable) - set("\t\n\r\x0b\x0c")  # 95 characters: space to tilde


def printable_token_ids(tokenizer: Any) -> torch.Tensor:
    """Ids of the byte tokens that decode to one printable ASCII character."""
    return torch.tensor([i for i in range(len(tokenizer)) if tokenizer.decode([i]) in PRINTABLE])


@torch.no_grad()
def sample_texts(
    num_docs: int = NUM_DOCS, doc_tokens: int = DOC_TOKENS, seed: int = SAMPLING_SEED
) -> list[str]:
    """``num_docs`` texts of ``doc_tokens`` bytes each, sampled at temperature 1 from the fp32 tiny model.

    The global torch RNG is left as it was: the job that builds this task goes on training with it.
    """
    with torch.random.fork_rng():
        model, tokenizer = build_tiny_model()
    allowed = printable_token_ids(tokenizer)
    generator = torch.Generator().manual_seed(seed)
    ids = torch.full((num_docs, 1), tokenizer.eos_token_id)
    cache = None
    for _ in range(doc_tokens):
        out = model(input_ids=ids if cache is None else ids[:, -1:], cache=cache, use_cache=True)
        cache = out.cache
        probs = out.logits[:, -1, allowed].float().softmax(-1)
        ids = torch.cat([ids, allowed[torch.multinomial(probs, 1, generator=generator)]], dim=1)
    return [tokenizer.decode(row[1:].tolist()) for row in ids]


@functools.cache
def _texts() -> tuple[str, ...]:
    return tuple(sample_texts())


def fixed_text_dataset(**_: Any) -> DatasetDict:
    """The sampled texts as a ``test`` split of ``{"text": ...}`` rows (lm-eval ``custom_dataset``)."""
    return DatasetDict({"test": Dataset.from_list([{"text": text} for text in _texts()])})
