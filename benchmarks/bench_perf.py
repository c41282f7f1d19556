"""Training throughput and peak memory: the standard transformers + bitsandbytes + peft path vs qlora-bench.

One QLoRA setup (SmolLM2-135M from the cached safetensors directory, NF4 + double quantization at block 64,
LoRA r 16 alpha 16 dropout 0.1 on all linear layers, batch 4, sequence length 256, constant lr 2e-4, max grad
norm 0.3, AdamW, gradient checkpointing; fp32 compute on CPU, bf16 on CUDA) is trained three ways, each in its
own process so that peak memory is per path:

- standard: what users copy from the docs: ``from_pretrained(quantization_config=BitsAndBytesConfig(...))``,
  ``prepare_model_for_kbit_training``, ``get_peft_model``, HF ``Trainer`` with ``DataCollatorForSeq2Seq``;
- harness: a qlora-bench job (``harness.job.run_job``, config composed from conf/ with matching overrides);
- bare: the harness's quantized model and LoRA under a minimal torch loop (forward, backward, clip, step).

All three train on the same Alpaca batches in the same order (the harness's length-grouped order;
``--standard-order`` gives the Trainer its own sampler instead), so their loss curves are comparable step by
step. Tokens/s counts non-padding tokens after the warm-up steps; peak memory is the resident set (VmHWM,
reset when training starts) on CPU and ``max_memory_allocated`` on CUDA. Also timed: Int4 against
bitsandbytes NF4 dequantize + matmul on one layer shape of the model. Nothing here is a test: it asserts
nothing about time. Run every heavy command under ``flock /tmp/qlora-cpu.lock`` on shared machines.

Usage: ``python benchmarks/bench_perf.py [--steps 8] [--warmup 2] [--rank 16] [--paged] [--profile]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
from bench_quant import cpu_model, fmt_load, markdown, timed_in_turns  # noqa: E402

from harness.config import DataConfig, ModelConfig, TrainConfig  # noqa: E402
from harness.data.collate import collate  # noqa: E402
from harness.data.instruct import TokenizedExample, batch_order, load_records, tokenize_records  # noqa: E402
from harness.model.loading import default_cache_dir  # noqa: E402
from harness.paths import CONF_DIR  # noqa: E402
from harness.train.meters import peak_memory, reset_peak_memory  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m"
DATA = "instruct/alpaca_5000.json"
PATHS = ("standard", "harness", "bare")
LORA_ALPHA, LORA_DROPOUT, LR, MAX_GRAD_NORM = 16, 0.1, 2e-4, 0.3


@dataclass(frozen=True)
class Settings:
    steps: int  # measured steps, after the warm-up
    warmup: int
    rank: int
    seq_len: int
    batch_size: int
    seed: int
    standard_order: str  # same | random | group_by_length
    optimizer: str = "adamw"
    checkpointing: bool = True
    pack: bool = False  # concatenate examples into rows of exactly seq_len tokens (long-sequence runs)

    @property
    def total_steps(self) -> int:
        return self.steps + self.warmup


def device_and_dtype() -> tuple[torch.device, torch.dtype]:
    """bf16 compute on CUDA as in the paper; fp32 on CPU, where bf16 matmuls are slow."""
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16
    return torch.device("cpu"), torch.float32


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_dir() -> Path:
    """The safetensors directory the harness converted the shipped GGUF into (it must exist)."""
    path = default_cache_dir(None) / MODEL
    if not (path / "config.json").is_file():
        raise SystemExit(f"{path} is missing: run one qlora-bench job on {MODEL} first to convert the GGUF")
    return path


def training_examples(tokenizer, s: Settings) -> list[TokenizedExample]:
    cfg = DataConfig(source=DATA)
    examples = tokenize_records(load_records(cfg), tokenizer, cfg, s.seq_len)
    return packed(examples, s.seq_len) if s.pack else examples


def packed(examples: list[TokenizedExample], length: int) -> list[TokenizedExample]:
    """Consecutive examples concatenated into rows of exactly ``length`` tokens (the tail is dropped)."""
    ids = [t for e in examples for t in e.input_ids]
    labels = [t for e in examples for t in e.labels]
    return [
        TokenizedExample(ids[i : i + length], labels[i : i + length])
        for i in range(0, len(ids) - length + 1, length)
    ]


def harness_batches(examples: list[TokenizedExample], s: Settings) -> list[list[int]]:
    """The index batches a harness job trains on, in its order (length-grouped, seeded)."""
    return list(islice(batch_order(examples, s.batch_size, True, s.seed), s.total_steps + 1))


class StepClock:
    """End time and non-padding tokens of each step; tokens/s over the steps after the warm-up."""

    def __init__(self, device: torch.device):
        self.device = device
        self.start = time.perf_counter()
        self.ends: list[float] = []

    def step_done(self) -> None:
        sync(self.device)
        self.ends.append(time.perf_counter())

    def summary(self, tokens: list[int], warmup: int) -> dict:
        ends = self.ends
        begin = ends[warmup - 1] if warmup else self.start
        seconds = ends[-1] - begin
        measured = sum(tokens[warmup : len(ends)])
        steps = [b - a for a, b in zip([self.start, *ends[:-1]], ends, strict=True)][warmup:]
        return {
            "tokens_per_s": measured / seconds,
            "measured_tokens": measured,
            "measured_s": seconds,
            "step_s_median": sorted(steps)[len(steps) // 2],
        }


def memory_fields(device: torch.device) -> dict:
    """Peak since the reset, plus (CPU) the file-backed part of the resident set now (mapped checkpoints)."""
    fields = peak_memory(device)
    if device.type == "cpu":
        status = Path("/proc/self/status").read_text().splitlines()
        rss_file = [int(line.split()[1]) * 1024 for line in status if line.startswith("RssFile:")]
        fields["rss_file_bytes_end"] = rss_file[0] if rss_file else None
    return fields


# --- (a) the standard path -------------------------------------------------------------------------------


def run_standard(s: Settings) -> dict:
    """transformers + bitsandbytes + peft + Trainer as the docs show them; our batches, or its own sampler."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        BitsAndBytesConfig,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    device, dtype = device_and_dtype()
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
    model = prepare_model_for_kbit_training(model)
    torch.manual_seed(s.seed)
    model = get_peft_model(
        model,
        LoraConfig(
            r=s.rank,
            lora_alpha=LORA_ALPHA,
            lora_dropout=LORA_DROPOUT,
            target_modules="all-linear",
            bias="none",
            task_type="CAUSAL_LM",
        ),
    )
    if s.standard_order == "same":
        order = [i for batch in harness_batches(examples, s) for i in batch]
    else:
        order = list(range(len(examples)))
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
        gradient_checkpointing=True,
        bf16=device.type == "cuda",
        train_sampling_strategy="sequential" if s.standard_order == "same" else s.standard_order,
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


# --- (b) a qlora-bench job ----------------------------------------------------------------------------------


def job_overrides(s: Settings, device: torch.device) -> list[str]:
    return [
        f"model={MODEL}",
        "quant=nf4",
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
        f"train.optimizer={s.optimizer}",
        "train.grad_accum=1",
        f"train.gradient_checkpointing={str(s.checkpointing).lower()}",
        "train.group_by_length=true",
        f"seed={s.seed}",
        f"device={device.type}",
    ]


def run_harness(s: Settings) -> dict:
    """``harness.job.run_job`` in this process, its config composed from conf/ like the CLI does."""
    from hydra import compose, initialize_config_dir

    from harness.config import register_configs
    from harness.job import run_job

    device, _ = device_and_dtype()
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=job_overrides(s, device))
    with tempfile.TemporaryDirectory(prefix="bench-perf-job-") as job_dir:
        result = run_job(cfg, job_dir)
    if result["status"] != "ok":
        raise RuntimeError(f"harness job failed: {result['error']}")
    train = result["train"]
    return {
        "tokens_per_s": train["tokens_per_s"],
        "measured_tokens": None,
        "measured_s": None,
        "step_s_median": train["step_time_s_median"],
        "loss": train["loss"],
        **memory_fields(device),
        "peak_memory_bytes": train["peak_memory_bytes"],
        "memory_estimate_bytes": train.get("memory_estimate_bytes"),
        "memory_estimate": train.get("memory_estimate"),
        "largest_batch": train.get("largest_batch"),
    }


# --- (c) a bare loop over the harness's quantized model ----------------------------------------------------


def harness_model(s: Settings, device: torch.device, dtype: torch.dtype):
    """Load, quantize and attach LoRA exactly as a job does (same seeds), without the job around it."""
    from harness.config import LoraConfig
    from harness.model.loading import load_model
    from harness.model.lora import attach_lora, resolve_targets
    from harness.model.replace import quantizable_layer_names, replace_linear_layers

    torch.manual_seed(s.seed)
    loaded = load_model(ModelConfig(name_or_path=MODEL), dtype)
    targets = resolve_targets("all-linear", quantizable_layer_names(loaded.model, ["lm_head"]))
    examples = training_examples(loaded.tokenizer, s)
    replace_linear_layers(loaded.model, "nf4", 64, True, dtype, device, ["lm_head"])
    lora = LoraConfig(r=s.rank, alpha=LORA_ALPHA, dropout=LORA_DROPOUT, targets="all-linear")
    model = attach_lora(loaded.model, lora, targets, s.seed)
    return model, loaded.tokenizer, examples


def run_bare(s: Settings, profile: bool = False) -> dict:
    """forward, backward, clip, step: nothing else (no meters, logging or progress bar inside the loop)."""
    from harness.train.loop import response_rows_only
    from harness.train.optim import build_optimizer

    device, dtype = device_and_dtype()
    model, tokenizer, examples = harness_model(s, device, dtype)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(trainable, TrainConfig(lr=LR, optimizer=s.optimizer))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.disable_input_require_grads()
    model.config.use_cache = False
    response_rows = response_rows_only(model)
    model.train()
    batches = harness_batches(examples, s)[: s.total_steps]
    tokens, losses = [], []
    reset_peak_memory(device)
    clock = StepClock(device)
    for indices in batches[: s.warmup if profile else None]:
        batch = collate([examples[i] for i in indices], tokenizer.pad_token_id)
        tokens.append(int(batch["attention_mask"].sum()))
        losses.append(bare_step(model, optimizer, trainable, batch, device, response_rows))
        clock.step_done()
    if profile:
        step = lambda i: bare_step(  # noqa: E731
            model,
            optimizer,
            trainable,
            collate([examples[j] for j in i], tokenizer.pad_token_id),
            device,
            response_rows,
        )
        return profile_steps([lambda i=i: step(i) for i in batches[s.warmup : s.warmup + 2]], device)
    return {**clock.summary(tokens, s.warmup), "loss": torch.stack(losses).tolist(), **memory_fields(device)}


def bare_step(
    model, optimizer, trainable, batch: dict, device: torch.device, response_rows: bool
) -> torch.Tensor:
    """One optimizer step with the harness's loss (so that bare vs harness isolates the loop's overhead)."""
    from harness.train.loop import causal_lm_loss

    loss = causal_lm_loss(model, {k: v.to(device) for k, v in batch.items()}, response_rows)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainable, MAX_GRAD_NORM)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


# --- profile ------------------------------------------------------------------------------------------------

CATEGORIES = {  # op-name fragments -> where the time goes; first match wins
    "dequantize (bnb / int4)": ("dequantize", "bitsandbytes"),
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "aten::matmul"),
    "dropout RNG": ("bernoulli", "random_", "aten::rand", "uniform_"),
    "attention": ("scaled_dot_product",),
    "loss (log-softmax, nll)": ("log_softmax", "nll_loss", "cross_entropy"),
    "optimizer": ("_fused_adam", "adam", "lerp", "addcdiv", "addcmul", "sqrt"),
}


def profile_steps(steps: list, device: torch.device) -> dict:
    """torch.profiler over the given steps: self time per category and the top operators."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for step in steps:
            step()
        sync(device)
    events = prof.key_averages()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    total = sum(getattr(e, key) for e in events) or 1
    shares = {name: 0.0 for name in [*CATEGORIES, "other"]}
    for event in events:
        category = next((c for c, frags in CATEGORIES.items() if any(f in event.key for f in frags)), "other")
        shares[category] += getattr(event, key) / total
    table = events.table(sort_by=key, row_limit=25, max_name_column_width=60)
    return {"profile_shares": shares, "profile_table": table}


# --- Int4 vs NF4 on one layer -------------------------------------------------------------------------------


def dequant_matmul_ms(s: Settings, repeats: int = 5) -> dict:
    """Frozen-layer forward (dequantize + matmul) of the model's gate_proj shape, Int4 and NF4 in turns."""
    from transformers import AutoConfig

    from harness.quant import QuantLinear

    device, dtype = device_and_dtype()
    config = AutoConfig.from_pretrained(model_dir())
    torch.manual_seed(s.seed)
    linear = torch.nn.Linear(config.hidden_size, config.intermediate_size, bias=False, device=device)
    x = torch.randn(s.batch_size, s.seq_len, config.hidden_size, device=device, dtype=dtype)
    layers = {st: QuantLinear.from_linear(linear, st, 64, True, dtype) for st in ("nf4", "int4")}

    def forward(layer: QuantLinear):
        out = layer(x)
        sync(device)
        return out

    with torch.inference_mode():
        ms, _ = timed_in_turns({st: lambda m=m: forward(m) for st, m in layers.items()}, repeats)
        deq, _ = timed_in_turns(
            {st: lambda m=m: m.qweight.dequantize(dtype) for st, m in layers.items()}, repeats
        )
    shape = f"{config.intermediate_size}x{config.hidden_size} (gate_proj), x {s.batch_size}x{s.seq_len}"
    return {"shape": shape, "forward_ms": ms, "dequantize_ms": deq}


# --- driver -------------------------------------------------------------------------------------------------


def run_worker(path: str, s: Settings, out: Path, profile: bool) -> None:
    runners = {"standard": run_standard, "harness": run_harness, "bare": lambda s: run_bare(s, profile)}
    load_before = os.getloadavg()
    result = runners[path](s)
    result |= {"path": path, "load_before": load_before, "load_after": os.getloadavg()}
    out.write_text(json.dumps(result))


def spawn(path: str, s: Settings, profile: bool = False) -> dict:
    """One path in a fresh process (its own peak memory); returns its JSON result."""
    with tempfile.TemporaryDirectory(prefix="bench-perf-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            path,
            "--result",
            str(out),
            "--settings",
            json.dumps(asdict(s)),
        ]
        if profile:
            cmd.append("--profile")
        start = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT)
        result = json.loads(out.read_text())
    result["wall_s"] = time.perf_counter() - start
    print(f"[{path}] {result.get('tokens_per_s', 0):.1f} tokens/s in {result['wall_s']:.0f} s", flush=True)
    return result


def best_run(runs: list[dict]) -> dict:
    """The fastest run (interference only ever slows a run down), with every run's tokens/s and peak."""
    best = max(runs, key=lambda r: r["tokens_per_s"])
    return {
        **best,
        "tokens_per_s_runs": [r["tokens_per_s"] for r in runs],
        "peak_memory_bytes_runs": [r["peak_memory_bytes"] for r in runs],
    }


def mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.0f}"


def results_table(results: dict[str, dict]) -> str:
    rows = [
        [
            name,
            f"**{r['tokens_per_s']:.1f}** ({', '.join(f'{v:.1f}' for v in r['tokens_per_s_runs'])})",
            f"{r['step_s_median']:.2f}",
            ", ".join(mib(v) for v in r["peak_memory_bytes_runs"]),
            mib(r.get("rss_file_bytes_end")),
            f"{r['loss'][-1]:.4f}",
            fmt_load(r["load_before"]) + " → " + fmt_load(r["load_after"]),
        ]
        for name, r in results.items()
    ]
    headers = [
        "path",
        "tokens/s best (runs)",
        "median step s",
        "peak MiB (runs)",
        "file-backed MiB (end)",
        "final loss",
        "load (best run)",
    ]
    return markdown(headers, rows)


def ratio_lines(results: dict[str, dict]) -> list[str]:
    """The goals: harness ≥ 1.10x the standard path's tokens/s, ≤ 3 % slower than bare, memory ≤ standard."""
    lines = []
    a, b, c = (results.get(p) for p in PATHS)
    if a and b:
        speed = b["tokens_per_s"] / a["tokens_per_s"]
        memory = b["peak_memory_bytes"] / a["peak_memory_bytes"]
        lines.append(f"- tokens/s harness / standard: **{speed:.2f}x** (goal ≥ 1.10)")
        lines.append(f"- peak memory harness / standard: **{memory:.2f}x** (goal ≤ 1.00)")
    if b and c:
        overhead = c["tokens_per_s"] / b["tokens_per_s"] - 1
        lines.append(f"- harness overhead over the bare loop: **{overhead:+.1%}** (goal ≤ +3 %)")
    if b and b.get("memory_estimate_bytes"):
        error = b["memory_estimate_bytes"] / b["peak_memory_bytes"] - 1
        lines.append(
            f"- memory model for the harness job: {mib(b['memory_estimate_bytes'])} MiB, {error:+.1%}"
        )
    return lines


def loss_table(results: dict[str, dict]) -> str:
    steps = max(len(r["loss"]) for r in results.values())
    rows = [
        [str(i + 1)] + [f"{r['loss'][i]:.4f}" if i < len(r["loss"]) else "" for r in results.values()]
        for i in range(steps)
    ]
    return markdown(["step", *results], rows)


def dequant_table(d: dict) -> str:
    rows = [
        [name, f"{d['dequantize_ms'][st]:.2f}", f"{d['forward_ms'][st]:.2f}"]
        for name, st in (("bitsandbytes NF4", "nf4"), ("harness Int4", "int4"))
    ]
    rows.append(
        [
            "Int4 / NF4",
            f"{d['dequantize_ms']['int4'] / d['dequantize_ms']['nf4']:.2f}",
            f"{d['forward_ms']['int4'] / d['forward_ms']['nf4']:.2f}",
        ]
    )
    return markdown(["storage (block 64, dq)", "dequantize ms", "dequantize + matmul ms"], rows)


def versions() -> str:
    import accelerate
    import bitsandbytes
    import peft
    import transformers

    return (
        f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
        f"bitsandbytes {bitsandbytes.__version__}, accelerate {accelerate.__version__}, "
        f"python {platform.python_version()}"
    )


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda}), host {cpu_model()}"
    return (
        f"{cpu_model()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
        f"capability {torch.backends.cpu.get_cpu_capability()}"
    )


def header(s: Settings, seconds: float) -> str:
    """Machine, versions, date, the exact command and the setup."""
    device, dtype = device_and_dtype()
    memory = (
        "max_memory_allocated" if device.type == "cuda" else "peak resident set (VmHWM reset at train start)"
    )
    setup = (
        f"{MODEL}, NF4 + double quant, block 64, LoRA r {s.rank} alpha {LORA_ALPHA} dropout {LORA_DROPOUT} "
        f"all-linear, batch {s.batch_size}, seq len {s.seq_len}, {s.warmup} warm-up + {s.steps} measured "
        f"steps, {str(dtype).removeprefix('torch.')} compute, gradient checkpointing, AdamW lr {LR}, "
        f"max grad norm {MAX_GRAD_NORM}, seed {s.seed}; data {DATA} (standard path order: {s.standard_order})"
    )
    lines = [
        f"# Training throughput and memory: standard path vs qlora-bench ({device.type.upper()})",
        "",
        f"- date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}",
        f"- command: `{shlex.join(sys.orig_argv)}`",
        f"- machine: {machine()}",
        f"- {versions()}",
        f"- setup: {setup}; total run {seconds:.0f} s",
        f"- tokens/s: non-padding tokens per second after the warm-up; peak memory: {memory}; load: "
        "1/5/15-min load average before → after the run (above the core count, other jobs shared the cores "
        "and times are noisy)",
    ]
    return "\n".join(lines)


def report(s: Settings, results: dict[str, dict], dequant: dict, seconds: float) -> str:
    sections = [
        header(s, seconds),
        results_table(results),
        "\n".join(ratio_lines(results)),
        "## Loss per step\n\n" + loss_table(results),
        f"## Int4 vs bitsandbytes NF4, one layer ({dequant['shape']})\n\n" + dequant_table(dequant),
    ]
    return "\n\n".join(sections) + "\n"


def paged_comparison(s: Settings, seq_len: int) -> str:
    """CUDA only: bare-loop peak memory with AdamW against paged AdamW (32-bit) at a long sequence length."""
    if not torch.cuda.is_available():
        return "--paged: skipped, paged optimizers page their state through CUDA unified memory and need CUDA"
    long = Settings(**{**asdict(s), "seq_len": seq_len, "pack": True})
    rows = []
    for optimizer in ("adamw", "paged_adamw_32bit"):
        r = spawn("bare", Settings(**{**asdict(long), "optimizer": optimizer}))
        rows.append([optimizer, mib(r["peak_memory_bytes"]), mib(r.get("peak_memory_reserved_bytes"))])
    note = "paged state lives in unified memory outside torch's allocator, so max_memory_allocated omits it"
    return (
        f"## Paged optimizer, seq len {seq_len}\n\n"
        + markdown(["optimizer", "max allocated MiB", "max reserved MiB"], rows)
        + f"\n\n{note}\n"
    )


def memory_grid(s: Settings) -> str:
    """The memory model against the measured peak of a harness job, for checkpointing on/off and r 16/64."""
    rows = []
    for checkpointing in (True, False):
        for rank in (16, 64):
            r = spawn("harness", Settings(**{**asdict(s), "rank": rank, "checkpointing": checkpointing}))
            estimate = r["memory_estimate"]
            terms = sorted(estimate["terms"].items(), key=lambda kv: -kv[1])[:4]
            rows.append(
                [
                    f"r {rank}, checkpointing {'on' if checkpointing else 'off'}",
                    mib(r["peak_memory_bytes"]),
                    mib(estimate["total"]),
                    f"{estimate['total'] / r['peak_memory_bytes'] - 1:+.1%}",
                    estimate["peak_phase"],
                    ", ".join(f"{name} {mib(value)}" for name, value in terms),
                    "{rows}x{width}, {logit_rows} logit rows".format(**r["largest_batch"]),
                ]
            )
    headers = [
        "setting",
        "measured MiB",
        "estimate MiB",
        "error",
        "peak phase",
        "largest terms (MiB)",
        "batch",
    ]
    return markdown(headers, rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=8, help="measured steps after the warm-up")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rank", type=int, default=16, help="LoRA r (16 keeps CPU time sane; the paper uses 64)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--standard-order",
        choices=("same", "random", "group_by_length"),
        default="same",
        help="same: the standard path trains on the harness's batches; else the Trainer's sampler",
    )
    p.add_argument(
        "--memory-grid",
        action="store_true",
        help="memory model vs measured peak of harness jobs, checkpointing on/off x r 16/64, then stop",
    )
    p.add_argument("--paths", default=",".join(PATHS), help="comma-separated subset of " + ",".join(PATHS))
    p.add_argument("--repeats", type=int, default=2, help="runs per path, in turns; the fastest is reported")
    p.add_argument("--paged", action="store_true", help="CUDA: peak memory of paged_adamw_32bit vs adamw")
    p.add_argument("--paged-seq-len", type=int, default=2048)
    p.add_argument("--profile", action="store_true", help="profile two steps of the bare loop, then stop")
    p.add_argument("--out", type=Path, default=None, help="default reports/perf/bench_<device>.md")
    p.add_argument("--worker", choices=PATHS, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--settings", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        run_worker(args.worker, Settings(**json.loads(args.settings)), args.result, args.profile)
        return
    s = Settings(
        steps=args.steps,
        warmup=args.warmup,
        rank=args.rank,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        seed=args.seed,
        standard_order=args.standard_order,
    )
    if args.memory_grid:
        print(memory_grid(s))
        return
    if args.profile:
        r = spawn("bare", s, profile=True)
        print(r["profile_table"])
        print("\n".join(f"{name}: {share:.1%}" for name, share in r["profile_shares"].items()))
        return
    start = time.perf_counter()
    runs: dict[str, list[dict]] = {path: [] for path in args.paths.split(",")}
    for _ in range(args.repeats):  # in turns, so that load which comes and goes hits every path alike
        for path, path_runs in runs.items():
            path_runs.append(spawn(path, s))
    results = {path: best_run(path_runs) for path, path_runs in runs.items()}
    dequant = dequant_matmul_ms(s)
    text = report(s, results, dequant, time.perf_counter() - start)
    if args.paged:
        text += "\n" + paged_comparison(s, args.paged_seq_len)
    print(text)
    device, _ = device_and_dtype()
    out = args.out or ROOT / "reports" / "perf" / f"bench_{device.type}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
