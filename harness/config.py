"""Typed job configuration, registered in Hydra's ConfigStore.

Every group in ``conf/`` is validated against these dataclasses, so a misspelt key or a wrong type
fails when Hydra composes the config, before any model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class ModelConfig:
    """Which base model to load.

    ``name_or_path`` is ``smollm2-135m`` (the GGUF model shipped on PyPI), ``tiny`` (built in code, for
    tests), an HF hub id or a local directory.
    """

    name_or_path: str = "smollm2-135m"
    trust_remote_code: bool = False
    revision: str | None = None
    cache_dir: str | None = None  # where converted models are cached; default ~/.cache/qlora-bench


@dataclass
class QuantConfig:
    """How the frozen base weights are stored (see ``harness.quant.registry`` for the types)."""

    storage: str = "nf4"  # nf4 | fp4 | int4 | int8 | bf16 | fp16 | fp32
    blocksize: int = 64
    double_quant: bool = True
    compute_dtype: str = "auto"  # auto: bf16 on CUDA (as in the paper), fp32 on CPU | bf16 | fp16 | fp32
    skip_modules: list[str] = field(default_factory=lambda: ["lm_head"])  # kept in compute dtype


@dataclass
class LoraConfig:
    """LoRA adapters; defaults are the paper's (r=64, alpha=16, dropout 0.1, all linear layers)."""

    r: int = 64
    alpha: float = 16.0
    dropout: float = 0.1
    targets: Any = "all-linear"  # all-linear | attention | mlp | list of module names


@dataclass
class TrainConfig:
    """Training loop; defaults follow the paper (constant lr 2e-4, beta2 0.999, max grad norm 0.3)."""

    steps: int = 30
    batch_size: int = 4
    grad_accum: int = 1
    seq_len: int = 256
    lr: float = 2e-4  # constant schedule, as in the paper
    adam_beta2: float = 0.999
    weight_decay: float = 0.0
    max_grad_norm: float = 0.3
    optimizer: str = "adamw"  # adamw | paged_adamw_32bit | paged_adamw_8bit (paged ones need CUDA)
    gradient_checkpointing: bool = True
    group_by_length: bool = True
    warmup_steps_excluded: int = 2  # steps left out of tokens/s and step time (compile, allocator warm-up)
    save_adapter: bool = False


@dataclass
class DataConfig:
    """Training set: ``synthetic`` (generated, no files), an instruction JSON path or an HF dataset id."""

    source: str = "synthetic"
    data_dir: str | None = None  # default: $QLORA_DATA_DIR, else ../shared/data when it exists
    split: str = "train"
    max_examples: int | None = None
    instruction_field: str = "instruction"
    input_field: str = "input"
    output_field: str = "output"
    train_on_source: bool = False  # the paper trains on the response only
    num_synthetic: int = 512


@dataclass
class EvalConfig:
    """lm-eval settings; ``tasks=[]`` skips evaluation."""

    tasks: list[str] = field(default_factory=list)
    limit: Any = None  # int (examples per task) or float in (0, 1] (fraction)
    batch_size: int = 8
    num_fewshot: int | None = None
    bootstrap_iters: int = 1000
    include_path: list[str] = field(default_factory=list)
    before: bool = False  # also evaluate the quantized base model before training
    seed: int = 1234


@dataclass
class JobConfig:
    """One job: config in, ``result.json`` out."""

    model: ModelConfig = field(default_factory=ModelConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    fault: str | None = None  # test-only fault injection: raise | exit | kill


def register_configs() -> None:
    """Register the schema that ``conf/config.yaml`` builds on, so Hydra validates every group against it."""
    ConfigStore.instance().store(name="job_schema", node=JobConfig)
