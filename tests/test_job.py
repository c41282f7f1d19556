"""One job end to end on the tiny model: real quantization, real LoRA training, a valid result.json."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from harness.config import DataConfig, LoraConfig, TrainConfig
from harness.data.instruct import batch_order, load_records, tokenize_records
from harness.device import cpu_has_native_bf16
from harness.job import run_job
from harness.model.lora import attach_lora, resolve_targets
from harness.model.replace import quantizable_layer_names, replace_linear_layers
from harness.model.tiny import build_tiny_model
from harness.quant import QuantLinear
from harness.result import JobResult, read_result
from harness.train import meters
from harness.train.loop import train

TINY_JOB = ("model=tiny", "train=smoke", "eval=none", "data.num_synthetic=128")

FOUR_BIT_BITS = {True: 4 + 8 / 64 + 32 / (64 * 256), False: 4 + 32 / 64}


@pytest.mark.parametrize("storage", ["nf4", "fp4", "int4", "bf16", "fp32"])
def test_job_writes_valid_result_for_each_storage(job_config, tmp_path, storage):
    """Each storage type trains on the tiny model and records metrics in result.json."""
    cfg = job_config(*TINY_JOB, f"quant.storage={storage}", "quant.double_quant=false", "train.steps=6")
    result = run_job(cfg, tmp_path)
    assert result.ok, result.error
    record = read_result(tmp_path / "result.json")
    assert JobResult.from_json(record) == result  # what is written is what the job returned
    assert record["config"]["quant"]["storage"] == storage
    assert record["train"]["steps"] == 6 and record["train"]["tokens_per_s"] > 0
    assert len(record["train"]["loss"]) == 6
    assert record["train"]["peak_memory_bytes"] > 0 and record["train"]["peak_memory_kind"] == "rss"
    assert record["lora"]["trainable_params"] > 0
    assert record["env"]["device"] == "cpu" and record["env"]["torch"]
    started = datetime.strptime(record["env"]["started_utc"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert timedelta(0) <= datetime.now(UTC) - started < timedelta(hours=1)  # the job's own start, in UTC
    expected_bits = {"bf16": 16, "fp32": 32}.get(storage, FOUR_BIT_BITS[False])
    # the tiny model's weights are small, so the codebook's fixed bytes add a little
    assert expected_bits <= record["quant"]["bits_per_param"] < expected_bits * 1.03
    assert set(record["timings_s"]) >= {"load", "quantize", "train", "total"}


def test_loss_falls_on_synthetic_task(job_config, tmp_path):
    """A few dozen steps of NF4 QLoRA on the memorisable task clearly lower the loss."""
    cfg = job_config(*TINY_JOB, "lora.dropout=0.0")
    result = run_job(cfg, tmp_path)
    assert result.ok, result.error
    loss = result.train.loss
    assert sum(loss[-4:]) / 4 < 0.6 * sum(loss[:4]) / 4


def test_only_lora_moves_and_base_stays_packed():
    """After training, the base weights are the same packed bytes and only LoRA parameters changed."""
    model, tokenizer = build_tiny_model()
    names = quantizable_layer_names(model, ["lm_head"])
    summary = replace_linear_layers(model, "nf4", 64, True, torch.float32, torch.device("cpu"), ["lm_head"])
    packed = {n: b.clone() for n, b in model.named_buffers() if ".packed_" in n}
    # all weight storage is the packed buffers; tiny layers pay the fixed DQ codebook (1 KiB each) on top
    assert summary.layers == len(names)
    assert summary.weight_bytes == sum(b.numel() * b.element_size() for b in packed.values())
    assert 4.127 < summary.bits_per_param < 6
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()}
    peft_model = attach_lora(model, LoraConfig(r=8, dropout=0.0), resolve_targets("all-linear", names), 0)
    data_cfg = DataConfig(num_synthetic=64)
    examples = tokenize_records(load_records(data_cfg), tokenizer, data_cfg, 256)
    train(
        peft_model,
        examples,
        TrainConfig(steps=3, batch_size=4, lr=1e-2, seq_len=256),
        tokenizer.pad_token_id,
        torch.device("cpu"),
        seed=0,
    )
    quant_layers = [m for m in peft_model.modules() if isinstance(m, QuantLinear)]
    assert len(quant_layers) == len(names)
    for name, buf in peft_model.named_buffers():
        if ".packed_" not in name:
            continue
        key = name.replace("base_model.model.", "").replace(".base_layer", "")
        assert torch.equal(buf, packed[key]), name
    moved = {n for n, p in peft_model.named_parameters() if "lora_" in n}
    for name, param in peft_model.named_parameters():
        key = name.replace("base_model.model.", "").replace(".base_layer", "")
        if name in moved:
            assert param.requires_grad
        else:
            assert not param.requires_grad and torch.equal(param, frozen[key]), name
    assert any(not torch.all(p == 0) for n, p in peft_model.named_parameters() if "lora_B" in n)


def test_training_counts_the_distinct_micro_batch_shapes_it_ran():
    """The memory model's CPU kernel cache grows per new batch shape: the loop reports how many distinct
    (rows, width) shapes it trained, as the batch order and right-padding to the longest row make them."""
    model, tokenizer = build_tiny_model()
    names = quantizable_layer_names(model, ["lm_head"])
    replace_linear_layers(model, "nf4", 64, True, torch.float32, torch.device("cpu"), ["lm_head"])
    peft_model = attach_lora(model, LoraConfig(r=4, dropout=0.0), resolve_targets("all-linear", names), 0)
    data_cfg = DataConfig(num_synthetic=64)
    examples = tokenize_records(load_records(data_cfg), tokenizer, data_cfg, 256)
    cfg = TrainConfig(steps=4, batch_size=3, grad_accum=2, seq_len=256)
    result = train(peft_model, examples, cfg, tokenizer.pad_token_id, torch.device("cpu"), seed=0)
    order = batch_order(examples, cfg.batch_size, cfg.group_by_length, 0)
    batches = [next(order) for _ in range(cfg.steps * cfg.grad_accum)]
    expected = {(len(rows), max(len(examples[i].input_ids) for i in rows)) for rows in batches}
    assert result.batch_shapes == len(expected) and 1 <= len(expected) <= cfg.steps * cfg.grad_accum


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("quant.blocksize=48", "48"),
        ("quant.storage=nf5", "quant.storage='nf5' is not a storage type; allowed: nf4, fp4"),
        ("lora.r=0", "lora.r=0"),
        ("lora.targets=[nope_proj]", "q_proj"),
        ("train.seq_len=100000", "100000"),
        ("train.steps=-5", "train.steps=-5"),
        ("train.grad_accum=0", "train.grad_accum=0"),
        ("train.batch_size=0", "train.batch_size=0"),
        ("train.seq_len=4", "train.seq_len=4"),
        ("train.lr=0", "train.lr=0"),
        ("train.checkpoint_every=0", "train.checkpoint_every=0"),
        (
            "train.checkpoint_every=2 train.gradient_checkpointing=false",
            "train.checkpoint_every=2 is not allowed; allowed: 1 while train.gradient_checkpointing=false",
        ),
        ("lora.dropout=1.0", "lora.dropout=1.0"),
        ("eval.limit=1.5", "eval.limit=1.5"),
        ("eval.limit=0", "eval.limit=0"),
        ("eval.num_fewshot=-1", "eval.num_fewshot=-1"),
        ("eval.include_path=[/no/such/dir]", "/no/such/dir"),
        ("+quant.typo=1", "quant.typo"),
        ("model.name_or_path=/does/not/exist", "/does/not/exist"),
        ("data.source=/does/not/exist.json", "/does/not/exist.json"),
        ("train.optimizer=paged_adamw_8bit", "CUDA"),
    ],
)
def test_bad_input_fails_with_clear_message(job_config, tmp_path, override, message):
    """Bad input is a failed result naming the key and value, written before any training happens."""
    result = run_job(job_config(*TINY_JOB, *override.split()), tmp_path)
    assert result.status == "failed"
    assert message in result.error.message
    assert result.train is None and read_result(tmp_path / "result.json")["status"] == "failed"


def test_unknown_key_names_close_matches(job_config, tmp_path):
    """A key added with ``+`` that the schema does not know fails in a single run too, with suggestions."""
    result = run_job(job_config(*TINY_JOB, "+train.step=5"), tmp_path)
    assert result.status == "failed" and "did you mean train.steps" in result.error.message


@pytest.mark.parametrize("override", ["train.optimizer=sgd", "quant.compute_dtype=fp8", "cpu_heap=small"])
def test_bad_choice_fails_at_composition(job_config, override):
    """Choices are enums in the schema: Hydra rejects a bad one when it composes, listing the allowed."""
    with pytest.raises(ConfigCompositionException) as failure:
        job_config(*TINY_JOB, override)
    assert "expected one of" in str(failure.value.__cause__)


def test_dataset_missing_field_is_named(job_config, tmp_path):
    """A record without the output field names the field and what the record has."""
    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"instruction": "hi", "response": "there"}]))
    result = run_job(job_config(*TINY_JOB, f"data.source={data}"), tmp_path / "job")
    assert result.status == "failed" and "['output']" in result.error.message


def test_misspelt_key_fails_at_composition(job_config):
    """A typo in a key or a wrong type fails when Hydra composes the config, before anything runs."""
    with pytest.raises((ConfigCompositionException, ConfigKeyError)):
        job_config("quant.storag=nf4")
    with pytest.raises((ConfigCompositionException, ValidationError)):
        job_config("lora.r=many")


def test_auxiliary_failure_keeps_the_run(job_config, tmp_path, monkeypatch):
    """A failing step that is not the job's purpose (here the memory estimate) becomes a caveat: the job
    stays ok and keeps its training measurements."""

    def broken(*args, **kwargs):
        raise KeyError("dense")

    monkeypatch.setattr("harness.recipe.estimate_peak_memory", broken)
    result = run_job(job_config(*TINY_JOB, "train.steps=2"), tmp_path)
    assert result.ok, result.error
    assert result.train.steps == 2 and result.train.memory_estimate is None
    assert any(c.startswith("memory estimate failed: KeyError") for c in result.caveats)


def test_failed_evaluation_keeps_training_results(job_config, tmp_path, monkeypatch):
    """An evaluation that fails after training fails the job but keeps what training measured."""

    def broken(*args, **kwargs):
        raise RuntimeError("evaluation broke")

    monkeypatch.setattr("harness.evaluate.evaluate_model", broken)
    result = run_job(job_config(*TINY_JOB, "eval=synthetic", "train.steps=2"), tmp_path)
    assert result.status == "failed" and result.error.message == "evaluation broke"
    assert read_result(tmp_path / "result.json")["train"]["steps"] == 2


def test_compute_dtype_is_recorded_with_its_reason(job_config, tmp_path):
    """``auto`` picks bf16 where the CPU multiplies bf16 natively, fp32 elsewhere, and says why."""
    result = run_job(job_config(*TINY_JOB, "train.steps=1"), tmp_path)
    expected = "bf16" if cpu_has_native_bf16() else "fp32"
    assert result.env["compute_dtype"] == expected and result.env["compute_dtype_reason"].startswith("auto")


def test_failed_job_exits_nonzero_from_cli(tmp_path):
    """The console app exits non-zero and leaves status: failed when its job fails."""
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from harness.cli import bench; bench()",
            *TINY_JOB,
            "model.name_or_path=/does/not/exist",
            f"hydra.run.dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert read_result(tmp_path / "result.json")["status"] == "failed"


def test_lean_heap_job_runs_and_records_its_choice(job_config, tmp_path):
    """cpu_heap=lean changes glibc's allocator policy only: the job trains and records the choice."""
    result = run_job(job_config(*TINY_JOB, "cpu_heap=lean"), tmp_path)
    assert result.ok, result.error
    assert result.config["cpu_heap"] == "lean" and result.train.tokens_per_s > 0


def test_failed_stage_keeps_every_block_measured_before_it(job_config, tmp_path, monkeypatch):
    """Training that fails leaves a failed result with the environment, model, quantization and LoRA blocks
    (measured before it) and no training or evaluation block."""

    def broken(*args, **kwargs):
        raise RuntimeError("training broke")

    monkeypatch.setattr("harness.recipe.train", broken)
    result = run_job(job_config(*TINY_JOB, "eval=synthetic"), tmp_path)
    assert result.status == "failed" and result.error.message == "training broke"
    assert result.error.type == "RuntimeError" and "training broke" in result.error.traceback
    assert result.env["device"] == "cpu" and result.model.attention and result.quant.layers > 0
    assert result.lora.trainable_params > 0 and result.lora.targets
    assert result.train is None and result.eval is None
    assert set(read_result(tmp_path / "result.json")) == {
        *("schema_version", "status", "config", "config_hash", "env", "model", "quant", "lora"),
        *("caveats", "timings_s", "error"),
    }


@pytest.mark.parametrize("heap", ["fast", "lean"])
def test_heap_policy_is_scoped_to_stages(job_config, tmp_path, monkeypatch, heap):
    """Loading runs under the lean heap, training and evaluation under the job's cpu_heap; after each stage
    the heap is fast again (glibc's own ceiling) and no stage's policy is left in force."""
    calls = []
    monkeypatch.setattr(meters, "_set_heap_policy", lambda lean: calls.append(lean) or True)
    result = run_job(job_config(*TINY_JOB, "train.steps=1", f"cpu_heap={heap}"), tmp_path)
    assert result.ok, result.error
    assert calls == [True, False, heap == "lean", False] and meters._POLICIES == []
