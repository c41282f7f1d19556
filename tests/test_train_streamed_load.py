"""Loading with ``stream_weights``: a sharded safetensors model is read layer by layer into the quantized
model, which then computes exactly what the eagerly loaded and quantized model computes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from harness.config import ModelConfig
from harness.model.checkpoint import ShardedCheckpoint
from harness.model.loading import load_model
from harness.model.replace import replace_linear_layers
from harness.model.tiny import build_tiny_family, build_tiny_model

CPU = torch.device("cpu")


@pytest.fixture
def sharded_model_dir(tmp_path):
    model, tokenizer = build_tiny_model()
    model.save_pretrained(tmp_path, max_shard_size="40KB")
    tokenizer.save_pretrained(tmp_path)
    return tmp_path


def quantized_logits(path, dtype: torch.dtype, stream: bool) -> tuple[torch.Tensor, object]:
    loaded = load_model(ModelConfig(name_or_path=str(path)), dtype, stream_weights=stream)
    replace_linear_layers(
        loaded.model, "nf4", 64, True, dtype, CPU, ["lm_head"], checkpoint=loaded.checkpoint
    )
    assert not any(p.is_meta for p in loaded.model.parameters())
    with torch.no_grad():
        return loaded.model(torch.arange(3, 40)[None]).logits, loaded


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_streamed_load_computes_what_the_eager_load_computes(sharded_model_dir, dtype):
    assert len(ShardedCheckpoint.find(sharded_model_dir).shards) > 1
    streamed, loaded = quantized_logits(sharded_model_dir, dtype, stream=True)
    eager, eager_loaded = quantized_logits(sharded_model_dir, dtype, stream=False)
    assert loaded.checkpoint is not None and eager_loaded.checkpoint is None
    assert torch.equal(streamed, eager)


def test_checkpoint_reads_each_tensor_as_stored(sharded_model_dir):
    model, _ = build_tiny_model()
    checkpoint = ShardedCheckpoint.find(sharded_model_dir)
    for name, param in model.named_parameters():
        assert torch.equal(checkpoint.read(name), param.detach()), name


def test_a_directory_without_safetensors_has_no_checkpoint(tmp_path):
    assert ShardedCheckpoint.find(tmp_path) is None


def test_a_shard_cut_short_is_an_error_naming_the_file(sharded_model_dir):
    """A truncated shard (a full disk, a killed copy) must not load as whatever memory held."""
    checkpoint = ShardedCheckpoint.find(sharded_model_dir)
    last = max(checkpoint.shards, key=lambda shard: shard.stat().st_size)
    last.write_bytes(last.read_bytes()[:-4096])
    with pytest.raises(ValueError, match="is cut short"):
        for name in checkpoint.files:
            checkpoint.read(name)


def file_mapped_ranges() -> list[tuple[int, int]]:
    """Address ranges of this process's file-backed .safetensors mappings (Linux /proc/self/maps)."""
    lines = Path("/proc/self/maps").read_text().splitlines()
    spans = [line.split()[0].split("-") for line in lines if ".safetensors" in line]
    return [(int(start, 16), int(end, 16)) for start, end in spans]


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads Linux's /proc/self/maps")
def test_an_eagerly_loaded_model_keeps_no_view_of_its_checkpoint_after_quantization(tmp_path):
    """A model loaded eagerly (``stream_weights=False``, as a hub id or a checkpoint whose names do not map
    onto the model) has its tensors as views into the safetensors memory map when the file's dtype is the
    compute dtype. After quantization no parameter or buffer may still view it (a GPT-NeoX's linear biases
    once did): one view keeps the whole file resident, every replaced weight included (a Pythia-160M-shaped
    job held 619 MiB of file pages in its resident set)."""
    model, tokenizer = build_tiny_family("gpt_neox")
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = load_model(ModelConfig(name_or_path=str(tmp_path)), torch.float32, stream_weights=False)
    ranges = file_mapped_ranges()

    def viewing(tensors) -> list[str]:
        return [n for n, t in tensors if any(a <= t.data_ptr() < b for a, b in ranges)]

    assert viewing(loaded.model.named_parameters()), "the eager load no longer maps the file: test moot"
    replace_linear_layers(loaded.model, "nf4", 64, True, torch.float32, CPU, ["embed_out"])
    tensors = [*loaded.model.named_parameters(), *loaded.model.named_buffers()]
    assert any(n.endswith(".bias") for n, _ in tensors)
    assert viewing(tensors) == []
