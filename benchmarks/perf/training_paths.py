"""The training paths, each called in its own process (``__main__`` spawns them):

- standard: what users copy from the docs: ``from_pretrained(quantization_config=BitsAndBytesConfig(...,
  bnb_4bit_compute_dtype=<the harness's dtype>))``, ``prepare_model_for_kbit_training``, ``get_peft_model``,
  HF ``Trainer`` with ``DataCollatorForSeq2Seq``; the thing compared against, kept apart from the harness,
  but with every setting (storage type, double quantization, LoRA, optimizer) read from the job's config;
- harness: a qlora-bench job (``harness.job.run_job``) on :meth:`Settings.job_config`; harness_lean: the
  same with ``cpu_heap=lean``; harness_every2: the same checkpointing every other layer
  (``train.checkpoint_every=2``: half the recompute, for more saved activations);
- bare: the job's own stages (``harness.recipe``: load, quantize, adapters) under ``prepare_for_training``
  / ``train_step`` alone (no meters, no logging).

All train on the same Alpaca batches in the same order (the harness's length-grouped order), so their
losses are comparable step by step.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path

import torch

from benchmarks.perf.measure import StepClock, memory_fields
from benchmarks.perf.standard_path import train_standard
from harness.config import ComputeDtype, CpuHeap, JobConfig, config_dict, group_options
from harness.data.collate import collate
from harness.data.instruct import TokenizedExample, batch_order
from harness.model.loading import LoadedModel
from harness.paths import default_cache_dir
from harness.recipe import Runtime, Timer, attach_adapters, finish, prepare_model, setup
from harness.train.loop import prepare_for_training, train_step
from harness.train.meters import heap_policy, reset_peak_memory

MODEL = "smollm2-135m"  # the model= option every path trains


@dataclass(frozen=True)
class Settings:
    """What the benchmark varies; everything else is the job config's default (:meth:`job_config`)."""

    steps: int  # measured steps, after the warm-up
    warmup: int
    rank: int
    seq_len: int
    batch_size: int
    seed: int
    compute_dtype: str  # auto | bf16 | fp32: as quant.compute_dtype
    checkpointing: bool = True
    checkpoint_every: int = 1  # as train.checkpoint_every
    cpu_heap: str = "fast"  # fast | lean: as the job's cpu_heap

    @property
    def total_steps(self) -> int:
        return self.steps + self.warmup

    def job_config(self) -> JobConfig:
        """The job every path runs: the config's defaults (quant=nf4: NF4 + DQ in blocks of 64, lm_head kept;
        the paper's LoRA and optimizer settings) on SmolLM2 and data=alpaca, with these settings."""
        options, defaults = group_options(), JobConfig()
        return JobConfig(
            model=options["model"][MODEL],
            quant=replace(options["quant"]["nf4"], compute_dtype=ComputeDtype(self.compute_dtype)),
            lora=replace(options["lora"]["paper"], r=self.rank),
            train=replace(
                defaults.train,
                steps=self.total_steps,
                warmup_steps_excluded=self.warmup,
                batch_size=self.batch_size,
                seq_len=self.seq_len,
                gradient_checkpointing=self.checkpointing,
                checkpoint_every=self.checkpoint_every,
            ),
            data=options["data"]["alpaca"],
            seed=self.seed,
            cpu_heap=CpuHeap(self.cpu_heap),
        )

    def device_and_dtype(self) -> tuple[torch.device, torch.dtype]:
        runtime = setup(self.job_config())
        return runtime.device, runtime.dtype


def model_dir() -> Path:
    """The safetensors directory the harness converted the shipped GGUF into (it must exist)."""
    path = default_cache_dir(None) / MODEL
    if not (path / "config.json").is_file():
        raise SystemExit(f"{path} is missing: run one qlora-bench job on {MODEL} first to convert the GGUF")
    return path


def harness_batches(examples: list[TokenizedExample], job: JobConfig) -> list[list[int]]:
    """The index batches a harness job trains on, in its order (length-grouped, seeded)."""
    order = batch_order(examples, job.train.batch_size, job.train.group_by_length, job.seed)
    return list(islice(order, job.train.steps))


def quantized_model(dtype: torch.dtype, device: torch.device) -> tuple[LoadedModel, list[str]]:
    """The default job's model as the job builds it (``harness.recipe.prepare_model``: streamed load, NF4 +
    DQ in blocks of 64, lm_head kept, the job's attention) and its LoRA targets; the heap is fast after."""
    base = finish(prepare_model(JobConfig(), Runtime(device, dtype, "set by the benchmark"), Timer()))
    return base.loaded, base.targets


def run_harness(s: Settings) -> dict:
    """``harness.job.run_job`` in this process, on the settings' job config."""
    from harness.job import run_job

    device, _ = s.device_and_dtype()
    with tempfile.TemporaryDirectory(prefix="bench-perf-job-") as job_dir:
        result = run_job(config_dict(s.job_config()), job_dir)
    if not result.ok:
        raise RuntimeError(f"harness job failed: {result.error}")
    train = result.train
    return {
        "tokens_per_s": train.tokens_per_s,
        "step_s_median": train.step_time_s_median,
        "loss": train.loss,
        **memory_fields(device),
        "peak_memory_bytes": train.peak_memory_bytes,
        "memory_estimate": train.memory_estimate,
        "caveats": result.caveats,
    }


def run_bare(s: Settings) -> dict:
    """The job's own stages (same load, quantization, LoRA and seeds as a job) under prepare_for_training /
    train_step and nothing else: bare vs harness isolates the job's own overhead."""
    job = s.job_config()
    runtime = setup(job)
    torch.manual_seed(job.seed)
    base = finish(prepare_model(job, runtime, Timer()))
    model, _ = attach_adapters(job, base)
    with heap_policy(lean=job.cpu_heap == CpuHeap.lean):
        training = prepare_for_training(model, job.train)
        tokens, losses = [], []
        reset_peak_memory(runtime.device)
        clock = StepClock(runtime.device)
        for indices in harness_batches(base.examples, job):
            batch = collate([base.examples[i] for i in indices], base.loaded.tokenizer.pad_token_id)
            tokens.append(int(batch["attention_mask"].sum()))
            losses.append(train_step(training, [{k: v.to(runtime.device) for k, v in batch.items()}]))
            clock.step_done()
    summary = clock.summary(tokens, s.warmup)
    return {**summary, "loss": torch.stack(losses).tolist(), **memory_fields(runtime.device)}


def run_standard(s: Settings) -> dict:
    """transformers + bitsandbytes + peft + Trainer as the docs show them, on the harness's batches."""
    return train_standard(s.job_config(), s.device_and_dtype(), model_dir(), harness_batches)


RUNNERS = {
    "standard": run_standard,
    "harness": run_harness,
    "harness_lean": run_harness,
    "harness_every2": run_harness,
    "bare": run_bare,
}
# What a path changes in the benchmark's settings: cpu_heap=lean (the resident set follows live tensors, at
# a speed cost); every other layer checkpointed (half the recompute, for more saved activations).
PATH_SETTINGS = {"harness_lean": {"cpu_heap": "lean"}, "harness_every2": {"checkpoint_every": 2}}


def path_settings(path: str, s: Settings) -> Settings:
    """The settings ``path`` runs: the benchmark's, with the path's own changes."""
    return replace(s, **PATH_SETTINGS.get(path, {}))
