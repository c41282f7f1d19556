"""The three training paths, each called in its own process (``__main__`` spawns them):

- standard: what users copy from the docs: ``from_pretrained(quantization_config=BitsAndBytesConfig(...,
  bnb_4bit_compute_dtype=<the harness's dtype>))``, ``prepare_model_for_kbit_training``, ``get_peft_model``,
  HF ``Trainer`` with ``DataCollatorForSeq2Seq``;
- harness: a qlora-bench job (``harness.job.run_job``, config composed from conf/ with matching overrides);
- bare: the harness's model under ``prepare_for_training`` / ``train_step`` alone (no meters, no logging).

All three train on the same Alpaca batches in the same order (the harness's length-grouped order), so
their losses are comparable step by step.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path

import torch

from benchmarks.perf.measure import StepClock, memory_fields
from harness.config import LoraConfig, ModelConfig, TrainConfig, group_options
from harness.data.collate import collate
from harness.data.instruct import TokenizedExample, batch_order, load_records, tokenize_records
from harness.device import choose_compute_dtype, pick_device
from harness.model.attention import choose_attention
from harness.model.loading import LoadedModel, default_cache_dir, load_model
from harness.model.lora import attach_lora, resolve_targets
from harness.model.replace import quantizable_layer_names, replace_linear_layers
from harness.train.loop import prepare_for_training, train_step
from harness.train.meters import reset_peak_memory, set_heap_policy

MODEL = "smollm2-135m"
# The records a job with data=alpaca trains on (its held-out tail excluded), for every path alike.
DATA = group_options()["data"]["alpaca"]
LORA_ALPHA, LORA_DROPOUT, LR, MAX_GRAD_NORM = 16, 0.1, 2e-4, 0.3


@dataclass(frozen=True)
class Settings:
    steps: int  # measured steps, after the warm-up
    warmup: int
    rank: int
    seq_len: int
    batch_size: int
    seed: int
    compute_dtype: str  # auto | bf16 | fp32: as quant.compute_dtype
    checkpointing: bool = True
    cpu_heap: str = "fast"  # fast | lean: as the job's cpu_heap

    @property
    def total_steps(self) -> int:
        return self.steps + self.warmup

    def device_and_dtype(self) -> tuple[torch.device, torch.dtype]:
        device = pick_device("auto")
        return device, choose_compute_dtype(self.compute_dtype, device)[0]

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            steps=self.total_steps,
            batch_size=self.batch_size,
            seq_len=self.seq_len,
            lr=LR,
            max_grad_norm=MAX_GRAD_NORM,
            gradient_checkpointing=self.checkpointing,
            warmup_steps_excluded=self.warmup,
        )


def model_dir() -> Path:
    """The safetensors directory the harness converted the shipped GGUF into (it must exist)."""
    path = default_cache_dir(None) / MODEL
    if not (path / "config.json").is_file():
        raise SystemExit(f"{path} is missing: run one qlora-bench job on {MODEL} first to convert the GGUF")
    return path


def training_examples(tokenizer, s: Settings) -> list[TokenizedExample]:
    return tokenize_records(load_records(DATA), tokenizer, DATA, s.seq_len)


def harness_batches(examples: list[TokenizedExample], s: Settings) -> list[list[int]]:
    """The index batches a harness job trains on, in its order (length-grouped, seeded)."""
    return list(islice(batch_order(examples, s.batch_size, True, s.seed), s.total_steps))


def run_standard(s: Settings) -> dict:
    """transformers + bitsandbytes + peft + Trainer as the docs show them, on the harness's batches."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        BitsAndBytesConfig,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    device, dtype = s.device_and_dtype()
    tokenizer = AutoTokenizer.from_pretrained(model_dir())
    examples = training_examples(tokenizer, s)
    bnb = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
    )
    model = AutoModelForCausalLM.from_pretrained(
        model_dir(), quantization_config=bnb, dtype=dtype, device_map={"": device.index or device.type}
    )
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=s.checkpointing)
    torch.manual_seed(s.seed)
    peft_config = PeftLoraConfig(
        r=s.rank,
        lora_alpha=LORA_ALPHA,
        lora_dropout=LORA_DROPOUT,
        target_modules="all-linear",
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, peft_config)
    order = [i for batch in harness_batches(examples, s) for i in batch]
    features = [
        {"input_ids": e.input_ids, "attention_mask": [1] * len(e.input_ids), "labels": e.labels}
        for e in (examples[i] for i in order)
    ]
    tokens: list[int] = []
    pad = DataCollatorForSeq2Seq(tokenizer, padding=True)

    def counting_collator(batch: list[dict]) -> dict:
        out = pad(batch)
        tokens.append(int(out["attention_mask"].sum()))
        return out

    clock = StepClock(device)

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            reset_peak_memory(device)
            clock.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            clock.step_done()

    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="bench-perf-"),
        max_steps=s.total_steps,
        per_device_train_batch_size=s.batch_size,
        learning_rate=LR,
        lr_scheduler_type="constant",
        max_grad_norm=MAX_GRAD_NORM,
        optim="adamw_torch",
        gradient_checkpointing=s.checkpointing,
        bf16=dtype == torch.bfloat16,
        use_cpu=device.type == "cpu",  # transformers refuses bf16 on a CPU unless told
        train_sampling_strategy="sequential",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=s.seed,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=features, data_collator=counting_collator, callbacks=[Clock()]
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {**clock.summary(tokens, s.warmup), "loss": losses, **memory_fields(device)}


def job_overrides(s: Settings) -> list[str]:
    return [
        f"model={MODEL}",
        "quant=nf4",
        f"quant.compute_dtype={s.compute_dtype}",
        "data=alpaca",
        "eval=none",
        f"lora.r={s.rank}",
        f"lora.alpha={LORA_ALPHA}",
        f"lora.dropout={LORA_DROPOUT}",
        "lora.targets=all-linear",
        f"train.steps={s.total_steps}",
        f"train.warmup_steps_excluded={s.warmup}",
        f"train.batch_size={s.batch_size}",
        f"train.seq_len={s.seq_len}",
        f"train.lr={LR}",
        f"train.max_grad_norm={MAX_GRAD_NORM}",
        "train.grad_accum=1",
        f"train.gradient_checkpointing={str(s.checkpointing).lower()}",
        "train.group_by_length=true",
        f"seed={s.seed}",
        f"cpu_heap={s.cpu_heap}",
    ]


def run_harness(s: Settings) -> dict:
    """``harness.job.run_job`` in this process, its config composed from conf/ like the CLI does."""
    from hydra import compose, initialize_config_dir

    from harness.config import register_configs
    from harness.job import run_job
    from harness.paths import CONF_DIR

    device, _ = s.device_and_dtype()
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=job_overrides(s))
    with tempfile.TemporaryDirectory(prefix="bench-perf-job-") as job_dir:
        result = run_job(cfg, job_dir)
    if not result.ok:
        raise RuntimeError(f"harness job failed: {result.error}")
    train = result.train
    return {
        "tokens_per_s": train["tokens_per_s"],
        "step_s_median": train["step_time_s_median"],
        "loss": train["loss"],
        **memory_fields(device),
        "peak_memory_bytes": train["peak_memory_bytes"],
        "memory_estimate": train.get("memory_estimate"),
        "caveats": result.caveats,
    }


def quantized_model(
    dtype: torch.dtype, device: torch.device, cpu_heap: str = "fast"
) -> tuple[LoadedModel, list[str]]:
    """The model as a job builds it (lean heap while loading, streamed load, NF4 + DQ in blocks of 64 with
    lm_head kept, the job's attention choice, then ``cpu_heap``) and its all-linear LoRA targets."""
    set_heap_policy(lean=True)
    loaded = load_model(ModelConfig(name_or_path=MODEL), dtype, stream_weights=True)
    targets = resolve_targets("all-linear", quantizable_layer_names(loaded.model, ["lm_head"]))
    replace_linear_layers(
        loaded.model, "nf4", 64, True, dtype, device, ["lm_head"], checkpoint=loaded.checkpoint
    )
    choose_attention(loaded.model, device, dtype)
    set_heap_policy(lean=cpu_heap == "lean")
    return loaded, targets


def run_bare(s: Settings) -> dict:
    """The harness's model (same load, quantization, LoRA and seeds as a job) under prepare_for_training /
    train_step and nothing else: bare vs harness isolates the job's own overhead."""
    device, dtype = s.device_and_dtype()
    torch.manual_seed(s.seed)
    loaded, targets = quantized_model(dtype, device, s.cpu_heap)
    examples = training_examples(loaded.tokenizer, s)
    lora = LoraConfig(r=s.rank, alpha=LORA_ALPHA, dropout=LORA_DROPOUT, targets="all-linear")
    setup = prepare_for_training(attach_lora(loaded.model, lora, targets, s.seed), s.train_config())
    tokens, losses = [], []
    reset_peak_memory(device)
    clock = StepClock(device)
    for indices in harness_batches(examples, s):
        batch = collate([examples[i] for i in indices], loaded.tokenizer.pad_token_id)
        tokens.append(int(batch["attention_mask"].sum()))
        losses.append(train_step(setup, [{k: v.to(device) for k, v in batch.items()}]))
        clock.step_done()
    return {**clock.summary(tokens, s.warmup), "loss": torch.stack(losses).tolist(), **memory_fields(device)}


def run_harness_lean(s: Settings) -> dict:
    """The harness job with ``cpu_heap=lean``: the resident set follows live tensors, at a speed cost."""
    return run_harness(replace(s, cpu_heap="lean"))


RUNNERS = {
    "standard": run_standard,
    "harness": run_harness,
    "harness_lean": run_harness_lean,
    "bare": run_bare,
}
