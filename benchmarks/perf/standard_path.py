"""The standard path, the thing the harness is compared against: transformers + bitsandbytes + peft + HF
``Trainer`` as their docs show them, kept apart from the harness's code but given the job config's settings
(storage type, double quantization, LoRA rank/alpha/dropout/targets, optimizer, batches, seed), so that the
two paths differ in how they train, not in what.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.perf.measure import StepClock, memory_fields
from harness.config import JobConfig
from harness.data.instruct import TokenizedExample, load_records, tokenize_records
from harness.train.meters import reset_peak_memory

Batches = Callable[[list[TokenizedExample], JobConfig], list[list[int]]]


def standard_model(job: JobConfig, device: torch.device, dtype: torch.dtype, model_dir: Path):
    """``from_pretrained`` with a ``BitsAndBytesConfig``, ``prepare_model_for_kbit_training``,
    ``get_peft_model``: the job's storage type, double quantization and LoRA settings."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    bnb = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=str(job.quant.storage),
        bnb_4bit_use_double_quant=job.quant.double_quant,
        bnb_4bit_compute_dtype=dtype,
    )
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, quantization_config=bnb, dtype=dtype, device_map={"": device.index or device.type}
    )
    model = prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=job.train.gradient_checkpointing
    )
    torch.manual_seed(job.seed)
    lora = LoraConfig(
        r=job.lora.r,
        lora_alpha=job.lora.alpha,
        lora_dropout=job.lora.dropout,
        target_modules=job.lora.targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def training_arguments(job: JobConfig, device: torch.device, dtype: torch.dtype):
    """``TrainingArguments`` holding the job's optimizer settings (constant lr, AdamW, clipping)."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="bench-perf-"),
        max_steps=job.train.steps,
        per_device_train_batch_size=job.train.batch_size,
        learning_rate=job.train.lr,
        lr_scheduler_type="constant",
        adam_beta2=job.train.adam_beta2,
        weight_decay=job.train.weight_decay,
        max_grad_norm=job.train.max_grad_norm,
        optim="adamw_torch",
        gradient_checkpointing=job.train.gradient_checkpointing,
        bf16=dtype == torch.bfloat16,
        use_cpu=device.type == "cpu",  # transformers refuses bf16 on a CPU unless told
        train_sampling_strategy="sequential",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=job.seed,
    )


def train_standard(
    job: JobConfig, device_and_dtype: tuple[torch.device, torch.dtype], model_dir: Path, batches: Batches
) -> dict:
    """Train the standard path on the harness's batches, in the harness's order; tokens/s, losses, memory."""
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainerCallback

    device, dtype = device_and_dtype
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    examples = tokenize_records(load_records(job.data), tokenizer, job.data, job.train.seq_len)
    model = standard_model(job, device, dtype, model_dir)
    features = [
        {"input_ids": e.input_ids, "attention_mask": [1] * len(e.input_ids), "labels": e.labels}
        for e in (examples[i] for batch in batches(examples, job) for i in batch)
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

    args = training_arguments(job, device, dtype)
    trainer = Trainer(
        model=model, args=args, train_dataset=features, data_collator=counting_collator, callbacks=[Clock()]
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {**clock.summary(tokens, job.train.warmup_steps_excluded), "loss": losses, **memory_fields(device)}
