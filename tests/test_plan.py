"""qlora-plan: each term of a plan is the arithmetic its docstring states, the paper's 65B run fits one 48 GB
GPU and not a 24 GB one (the weights alone exceed it), sweeps expand as qlora-bench expands them, a sweep
with +plan refuses a job that cannot fit, and bad input fails with a message that says what is allowed."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from harness.config import TrainConfig, validate_config
from harness.plan.cli import main, plan_jobs
from harness.plan.compose import compose_jobs
from harness.plan.devices import GIB, DeviceError, device_spec
from harness.plan.predict import ALLOCATOR_RESERVE, CUDA_CONTEXT_BYTES, JobPlan, plan_job, step_flops
from harness.plan.source import ModelConfigError, planned_model
from harness.quant import theoretical_bits_per_param
from harness.train import memory_model
from harness.train.memory_model import BatchShape

# A Llama of 2 blocks: hidden 64, MLP 128, 4 query and 2 KV heads of 16, vocabulary 300, lm_head untied.
TINY_LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 300,
    "max_position_embeddings": 512,
    "tie_word_embeddings": False,
}
BLOCK = [(64, 64), (64, 32), (64, 32), (64, 64), (64, 128), (64, 128), (128, 64)]  # q k v o gate up down


@pytest.fixture
def tiny_dir(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY_LLAMA))
    return tmp_path


def plan_of(tiny_dir, *overrides: str, memory_gib: float = 1.0) -> JobPlan:
    (label, job), *_ = compose_jobs([f"model.name_or_path={tiny_dir}", *overrides], multirun=False)
    return plan_job(label, job, device_spec(None, memory_gib), planned_model(str(tiny_dir)))


def test_each_term_is_its_arithmetic(tiny_dir):
    """NF4 + DQ block 64, r 8 on all seven linear layers, batch 2 x 32, checkpointing, AdamW, bf16 on CUDA."""
    plan = plan_of(tiny_dir, "lora.r=8", "train.batch_size=2", "train.seq_len=32")
    t, layers, tokens, hidden, vocab = plan.terms, 2, 64, 64, 300
    linear = sum(i * o for i, o in BLOCK)
    assert t["quantized_weights"] == round(layers * linear * theoretical_bits_per_param(64, True) / 8)
    # embeddings + lm_head (skipped) + 2 norms per block + the final norm, in bf16
    assert t["unquantized_params"] == (2 * vocab * hidden + (2 * layers + 1) * hidden) * 2
    lora = layers * sum(8 * (i + o) for i, o in BLOCK)
    assert t["lora_params"] == t["lora_grads"] == 4 * lora  # fp32 adapters and gradients
    assert t["optimizer_state"] == 8 * lora  # AdamW: two fp32 states
    assert t["dequantized_weight"] == 128 * 64 * 2  # the widest layer, in bf16
    assert t["saved_activations"] == layers * tokens * hidden * 2 + tokens * hidden * 4  # + final norm fp32
    # 2 RMSNorms in fp32, SDPA's q, k, v, out at 4 heads x 16, gate/up/SiLU; LoRA: bool mask + bf16 input
    frozen = tokens * (2 * hidden * 4 + 4 * 64 * 2 + 3 * 128 * 2)
    adapters = tokens * (sum(i for i, _ in BLOCK) * (1 + 2) + 7 * 8 * 2)
    assert t["layer_recompute"] == frozen + adapters
    assert t["layer_backward_buffers"] == tokens * 4 * 128 * 2
    assert t["loss_buffers"] == tokens * vocab * (3 * 4 + 2)  # 64 rows < 128: all alive, fp32 x 3 + bf16
    allocated = plan.predicted_peak - t["cuda_context"] - t["allocator_reserve"]
    assert t["cuda_context"] == CUDA_CONTEXT_BYTES
    assert t["allocator_reserve"] == round(ALLOCATOR_RESERVE * allocated)
    resident = sum(
        t[k] for k in ("quantized_weights", "unquantized_params", "lora_params", "optimizer_state")
    )
    backward = max(t["saved_activations"], t["lora_grads"]) + t["layer_recompute"]
    backward += t["layer_backward_buffers"] + t["dequantized_weight"]
    assert t["adapter_casts"] == 2 * lora  # autocast's bf16 copy of every adapter weight, until the loss
    loss = t["saved_activations"] + t["loss_buffers"] + t["adapter_casts"]
    assert allocated == resident + max(backward, loss, t["lora_grads"])


def test_largest_batch_and_sequence_are_the_edge_of_fitting(tiny_dir):
    """The searches return the last size that fits: one more does not."""
    plan = plan_of(tiny_dir, "train.batch_size=2", "train.seq_len=32", memory_gib=0.6)
    assert plan.fits and plan.max_batch_size >= 2 and plan.max_seq_len >= 32
    wider = plan_of(
        tiny_dir, f"train.batch_size={plan.max_batch_size + 1}", "train.seq_len=32", memory_gib=0.6
    )
    edge = plan_of(tiny_dir, f"train.batch_size={plan.max_batch_size}", "train.seq_len=32", memory_gib=0.6)
    assert edge.fits and not wider.fits


@pytest.mark.parametrize(
    ("version", "malloc_allocator", "warned"),
    [((2, 36), False, True), ((2, 38), False, False), ((2, 36), True, False)],
)
def test_a_cpu_plan_under_the_fast_heap_notes_a_glibc_that_strands_freed_chunks(
    tiny_dir, monkeypatch, version, malloc_allocator, warned
):
    """Planned on a CPU with glibc before 2.38 under cpu_heap=fast (the default) where torch's own allocator
    serves CPU tensors (no compiler for harness.train.cpu_allocator), the plan says its peak can stray;
    from 2.38 on, with the malloc allocator, or under cpu_heap=lean, it does not."""
    monkeypatch.setattr(memory_model, "glibc_version", lambda: version)
    monkeypatch.setattr(memory_model, "cpu_tensors_from_malloc", lambda: malloc_allocator)

    def strand_notes(*overrides: str) -> list[str]:
        (label, job), *_ = compose_jobs([f"model.name_or_path={tiny_dir}", *overrides], multirun=False)
        plan = plan_job(label, job, device_spec("cpu", 1.0), planned_model(str(tiny_dir)))
        return [n for n in plan.notes if "64-byte-aligned" in n]

    assert len(strand_notes()) == int(warned)
    assert not strand_notes("cpu_heap=lean")


def test_step_flops_count_three_forwards_with_checkpointing(tiny_dir):
    """Frozen layers: forward, recompute, input gradient (3 x 2 per weight per token); without
    checkpointing 2 x 2. LoRA and attention cost one more forward's worth in backward. Checkpointing
    every other layer of the tiny model's two recomputes one: half the recompute."""
    shape = planned_model(str(tiny_dir)).shape
    assert shape.layers == 2
    batch = BatchShape(2, 32, 0)
    frozen = 2 * 2 * sum(i * o for i, o in BLOCK) * batch.tokens

    def flops(**train) -> float:
        return step_flops(shape, [], 8, batch, TrainConfig(**train))

    recompute = frozen + 2 * 2 * (2 * 32 * 4 * 16) * batch.tokens
    assert flops() - flops(gradient_checkpointing=False) == pytest.approx(recompute)
    assert flops(checkpoint_every=2) - flops(gradient_checkpointing=False) == pytest.approx(recompute / 2)


def test_the_papers_65b_fits_48_gb_and_not_24(tmp_path):
    """QLoRA paper: LLaMA-65B, NF4 + DQ, r 64 on all linear layers, in one 48 GB GPU. At 24 GB the NF4+DQ
    weights alone (65e9 x 4.127 / 8 = 33.5 GB) are over the memory."""
    out = tmp_path / "x.csv"
    args = ["model=llama-65b", "quant=nf4", "lora.r=64", f"plan.out={out}"]
    assert main([*args, "plan.memory_gib=48"]) == 0
    (row,) = list(csv.DictReader(out.open()))
    assert row["fits"] == "True" and 34 <= float(row["predicted_peak_gib"]) <= 48
    assert main([*args, "plan.memory_gib=24"]) == 1
    (row,) = list(csv.DictReader(out.open()))
    assert row["fits"] == "False" and "frozen weights alone" in row["reason"]
    assert 33.0e9 < float(row["quantized_weights_gib"]) * GIB < 34.0e9


def test_a_sweep_plans_every_job_of_a_named_sweep():
    _, plans = plan_jobs(["-m", "+sweep=quickstart", "plan.device=a100-40"])
    assert [p.job for p in plans] == [f"quant={q}" for q in ("bf16", "nf4", "fp4", "int4")]
    nf4, bf16 = plans[1], plans[0]
    assert nf4.terms["quantized_weights"] < bf16.terms["quantized_weights"] / 3
    assert all(p.fits and p.tokens_per_s for p in plans)


def test_a_sweep_with_plan_refuses_a_job_that_cannot_fit(job_config, tmp_path, capsys):
    from harness.plan.sweep import WONT_FIT, refuse_if_wont_fit
    from harness.result import JobResult

    cfg = job_config("model=llama-33b", "quant=nf4")
    reason = refuse_if_wont_fit(cfg, tmp_path, "model=llama-33b", "t4")
    assert reason and "frozen weights alone" in reason
    result = JobResult.load(tmp_path / "result.json")
    assert not result.ok and result.to_json()["error"]["type"] == WONT_FIT
    assert "[plan] job model=llama-33b" in capsys.readouterr().out
    assert refuse_if_wont_fit(job_config("model=tiny"), tmp_path / "tiny", "model=tiny", "t4") is None


def test_bad_device_and_missing_config_fail_clearly(tmp_path, capsys):
    with pytest.raises(
        DeviceError, match=r"plan.device='a200' is not a known device; allowed: t4, .*a100-80"
    ):
        device_spec("a200", None)
    with pytest.raises(ModelConfigError, match=r"no config.json for model 'no-such/model'.*never downloads"):
        planned_model("no-such/model")
    assert main(["model.name_or_path=no-such/model", "plan.device=a10"]) == 2
    assert main(["plan.device=a200"]) == 2
    assert main(["plan.memory_gib=-3"]) == 2
    assert main(["plan.gpu=a10"]) == 2
    assert main(["model=nope", "plan.device=a10"]) == 2  # Hydra lists the model options
    err = capsys.readouterr().err
    assert "'a200' is not a known device" in err and "plan.memory_gib='-3' is not allowed" in err
    assert "unknown setting 'plan.gpu'" in err and "Could not find 'model/nope'" in err


def test_a_shipped_config_plans_but_does_not_run(job_config):
    """llama-7b ships as config.json only: a job fails before loading, saying the weights are not shipped."""
    from harness.model.loading import ModelSourceError, load_model

    job = validate_config(job_config("model=llama-7b"))
    with pytest.raises(ModelSourceError, match="weights are not shipped"):
        load_model(job.model, torch.bfloat16)
