"""Instruction records become training examples: prompt masked, response and EOS trained, cut at seq_len."""

from harness.config import DataConfig
from harness.data.instruct import IGNORE_INDEX, tokenize_records
from harness.data.prompts import format_prompt
from harness.model.tiny import build_tiny_tokenizer

RECORDS = [
    {"instruction": "Name a colour.", "input": "", "output": "Blue."},
    {"instruction": "Translate.", "input": "Guten Tag", "output": "Good day."},
    {"instruction": "x" * 300, "input": "", "output": "never reached"},  # prompt alone fills seq_len
    {"instruction": "Count.", "input": "", "output": "one two three " * 30},  # response cut at seq_len
]


def _alone(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_examples_equal_encoding_each_text_alone_with_the_prompt_masked():
    tokenizer = build_tiny_tokenizer()
    cfg = DataConfig(source="synthetic")
    examples = tokenize_records(RECORDS, tokenizer, cfg, seq_len=256)
    kept = [r for r in RECORDS if len(_alone(tokenizer, format_prompt(r["instruction"], r["input"]))) < 256]
    assert len(examples) == len(kept) == 3  # the record whose prompt fills seq_len trains nothing: dropped
    for example, record in zip(examples, kept, strict=True):
        source = _alone(tokenizer, format_prompt(record["instruction"], record["input"]))
        target = _alone(tokenizer, record["output"] + tokenizer.eos_token)
        assert example.input_ids == (source + target)[:256]
        assert example.labels == ([IGNORE_INDEX] * len(source) + target)[:256]
    assert len(examples[-1].input_ids) == 256 and examples[-1].labels[-1] != IGNORE_INDEX


def test_train_on_source_trains_the_prompt_too():
    tokenizer = build_tiny_tokenizer()
    cfg = DataConfig(source="synthetic", train_on_source=True)
    examples = tokenize_records(RECORDS[:2], tokenizer, cfg, seq_len=256)
    assert [e.labels for e in examples] == [e.input_ids for e in examples]
