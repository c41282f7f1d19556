"""Typed job configuration: the one schema every Hydra group, sweep and saved job config is checked against.

Each section is a dataclass in the style of peft's ``LoraConfig``: typed fields, a ``help`` per field, and
the checks in ``__post_init__``. Choices are enums, so Hydra rejects a bad value (``train.optimizer=sgd``) or
a misspelt key when it composes the config — for a sweep, before its first job starts. ``quant.storage`` is
a string, since it may name a user's own type (``package.module:Object``): the storage registry checks it
with the other storage settings, in ``QuantConfig.__post_init__``. Range checks run when
:func:`validate_config` turns the composed config into these objects, before any model is loaded; checks
that need the device (kernels, paged optimizers) are in :meth:`JobConfig.check_device`.
"""

from __future__ import annotations

import difflib
import math
import warnings
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError

from harness.plan.shipped import SHIPPED_CONFIGS
from harness.quant import (
    FLOAT_DTYPES,
    STORAGE_SPECS,
    STORAGE_TYPES,
    StorageArgs,
    StorageSpec,
    storage_args,
    storage_spec,
    validate_quant_args,
)


class ConfigError(ValueError):
    """A config value outside its allowed range, named with the key, the value and what is allowed."""


class Choice(str, Enum):
    """A string choice that OmegaConf validates by name and that prints as its value (``adamw``, not
    ``Optimizer.adamw``), so results, logs and f-strings read the same as the YAML."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


def _choices(name: str, values) -> type[Choice]:
    return Choice(name, [(v, v) for v in values])


ComputeDtype = _choices("ComputeDtype", ("auto", *FLOAT_DTYPES))
Optimizer = _choices("Optimizer", ("adamw", "paged_adamw_32bit", "paged_adamw_8bit"))
Device = _choices("Device", ("auto", "cpu", "cuda"))
CpuHeap = _choices("CpuHeap", ("fast", "lean"))
EvalBackend = _choices("EvalBackend", ("packed", "hflm"))
TARGET_PRESETS = ("all-linear", "attention", "mlp")


def _help(text: str, default: Any = None, factory: Any = None) -> Any:
    """A field with its help text in the metadata, as peft's config dataclasses document theirs."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed; allowed: {allowed}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class ModelConfig:
    """Which base model to load."""

    name_or_path: str = _help(
        "smollm2-135m (the GGUF shipped on PyPI), tiny (built in code, for tests), an HF id or a local dir",
        "smollm2-135m",
    )
    trust_remote_code: bool = _help("run the model repo's own code (only when asked)", False)
    revision: str | None = _help("HF hub revision", None)
    cache_dir: str | None = _help("converted-model cache; default $QLORA_CACHE_DIR or ~/.cache/qlora-bench")


@dataclass
class QuantConfig:
    """How the frozen base weights are stored (``harness.quant.registry`` defines the types)."""

    storage: str = _help(
        f"storage type of the frozen linear weights: {', '.join(STORAGE_TYPES)}, or a plugin "
        "package.module:Object (docs/storage_plugins.md)",
        "nf4",
    )
    blocksize: int = _help("values per absmax constant (4-bit types): 32..4096, powers of two", 64)
    double_quant: bool = _help("store the absmax constants in 8 bits, blocks of 256 (4-bit types)", True)
    compute_dtype: ComputeDtype = _help(
        "dtype of matmuls and activations; auto: bf16 on CUDA and on CPUs with native bf16 (AVX-512 BF16, "
        "AMX), else fp32",
        ComputeDtype.auto,
    )
    skip_modules: list[str] = _help(
        "linear layers kept unquantized, in compute dtype", factory=lambda: ["lm_head"]
    )
    codebook: list[float] | None = _help(
        "storage=codebook only: its 16 levels, strictly increasing in [-1, 1], one of them exactly 0", None
    )

    def __post_init__(self) -> None:
        validate_quant_args(self.storage, self.blocksize, self.double_quant, codebook=self.codebook)

    def spec(self) -> StorageSpec:
        """The storage type's spec (from the registry; a plugin is imported once, when checked)."""
        return storage_spec(self.storage)

    def args(self) -> StorageArgs:
        """The settings the storage type is built with."""
        return storage_args(self.blocksize, self.double_quant, self.codebook)


@dataclass
class LoraConfig:
    """LoRA adapters; defaults are the paper's (r=64, alpha=16, dropout 0.1, all linear layers)."""

    r: int = _help("adapter rank (the paper: 8..256; it barely matters when all layers are adapted)", 64)
    alpha: float = _help("scaling numerator: the update is alpha / r * B A x", 16.0)
    dropout: float = _help("dropout on the adapter input, in [0, 1)", 0.1)
    targets: Any = _help(
        f"one of {', '.join(TARGET_PRESETS)} or a list of linear-layer names (q_proj, ...)", "all-linear"
    )

    def __post_init__(self) -> None:
        _require(_is_int(self.r) and self.r >= 1, "lora.r", self.r, "an integer >= 1 (the paper uses 8..256)")
        _require(self.alpha > 0, "lora.alpha", self.alpha, "> 0")
        _require(0 <= self.dropout < 1, "lora.dropout", self.dropout, "0 <= dropout < 1")
        if isinstance(self.targets, str):
            _require(
                self.targets in TARGET_PRESETS, "lora.targets", self.targets, f"{TARGET_PRESETS} or a list"
            )
        else:
            targets = list(self.targets)
            _require(
                bool(targets) and all(isinstance(t, str) and t for t in targets),
                "lora.targets",
                targets,
                "a non-empty list of module names",
            )


@dataclass
class TrainConfig:
    """Training loop; defaults follow the paper (constant lr 2e-4, beta2 0.999, max grad norm 0.3)."""

    steps: int = _help("optimizer steps (0: evaluate the quantized model only)", 30)
    batch_size: int = _help("examples per micro-batch", 4)
    grad_accum: int = _help("micro-batches per optimizer step", 1)
    seq_len: int = _help("longest tokenized example; longer ones are cut", 256)
    lr: float = _help("constant learning rate, as in the paper", 2e-4)
    adam_beta2: float = _help("Adam's beta2 (the paper: 0.999)", 0.999)
    weight_decay: float = _help("AdamW weight decay", 0.0)
    max_grad_norm: float = _help("gradient clipping (the paper: 0.3); 0 disables it", 0.3)
    optimizer: Optimizer = _help("adamw, or bitsandbytes' paged AdamW (CUDA only)", Optimizer.adamw)
    gradient_checkpointing: bool = _help(
        "recompute each layer in backward: less memory, ~30 % more time", True
    )
    checkpoint_every: int = _help(
        "with gradient_checkpointing, recompute only every k-th decoder layer (transformers' every_n_layers, "
        "torchtune's selective checkpointing): the others keep their activations and are not run again",
        1,
    )
    group_by_length: bool = _help(
        "batch examples of similar length (the paper's setting): less padding", True
    )
    warmup_steps_excluded: int = _help("steps left out of tokens/s and step time (allocator warm-up)", 2)
    save_adapter: bool = _help("save the trained adapter (safetensors) into the job directory", False)

    def __post_init__(self) -> None:
        _require(_is_int(self.steps) and self.steps >= 0, "train.steps", self.steps, "an integer >= 0")
        _require(self.batch_size >= 1, "train.batch_size", self.batch_size, ">= 1")
        _require(self.grad_accum >= 1, "train.grad_accum", self.grad_accum, ">= 1")
        _require(self.seq_len >= 8, "train.seq_len", self.seq_len, ">= 8")
        _require(math.isfinite(self.lr) and self.lr > 0, "train.lr", self.lr, "a finite value > 0")
        _require(0 <= self.adam_beta2 < 1, "train.adam_beta2", self.adam_beta2, "0 <= beta2 < 1")
        _require(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, ">= 0")
        _require(self.max_grad_norm >= 0, "train.max_grad_norm", self.max_grad_norm, ">= 0 (0: no clipping)")
        _require(
            self.warmup_steps_excluded >= 0, "train.warmup_steps_excluded", self.warmup_steps_excluded, ">= 0"
        )
        _require(
            _is_int(self.checkpoint_every) and self.checkpoint_every >= 1,
            "train.checkpoint_every",
            self.checkpoint_every,
            "an integer >= 1 (1: every layer)",
        )
        _require(
            self.gradient_checkpointing or self.checkpoint_every == 1,
            "train.checkpoint_every",
            self.checkpoint_every,
            "1 while train.gradient_checkpointing=false (no layer is recomputed)",
        )

    def checkpoints_layer(self, index: int) -> bool:
        """Whether decoder layer ``index`` (from 0) is recomputed in backward: layers 0, k, 2k, ... for
        ``checkpoint_every`` k, as transformers' ``every_n_layers`` picks them."""
        return self.gradient_checkpointing and index % self.checkpoint_every == 0

    def checkpointed_layers(self, layers: int) -> int:
        """How many of ``layers`` decoder layers are recomputed in backward."""
        return sum(self.checkpoints_layer(i) for i in range(layers))


# The held-out slice of the shipped Alpaca file (harness.data.heldout): data=alpaca never trains on its
# last ALPACA_HELDOUT records, which the HELDOUT_TASK evaluation task scores.
ALPACA_HELDOUT = 250
ALPACA_FILE = "instruct/alpaca_5000.json"
HELDOUT_TASK = "alpaca_heldout_local"


@dataclass
class DataConfig:
    """Training set: ``synthetic`` (generated, no files), an instruction JSON path or an HF dataset id."""

    source: str = _help(
        "synthetic | a JSON/JSONL file (as given or under the data dir) | an HF dataset id", "synthetic"
    )
    data_dir: str | None = _help(
        "real data sets; default $QLORA_DATA_DIR, else ../shared/data beside the checkout"
    )
    split: str = _help("split of an HF dataset", "train")
    max_examples: int | None = _help("use the first N records only")
    instruction_field: str = _help("record field holding the instruction", "instruction")
    input_field: str = _help("record field holding the optional input", "input")
    output_field: str = _help("record field holding the response", "output")
    train_on_source: bool = _help(
        "also train on the prompt tokens (the paper trains on the response only)", False
    )
    num_synthetic: int = _help("examples of the synthetic task", 512)
    heldout: int = _help(
        "the last N records are never trained on (data=alpaca: those alpaca_heldout_local scores)", 0
    )

    def __post_init__(self) -> None:
        _require(self.heldout >= 0, "data.heldout", self.heldout, ">= 0")
        if self.max_examples is not None:
            _require(self.max_examples >= 1, "data.max_examples", self.max_examples, ">= 1 or null")
        _require(self.num_synthetic >= 1, "data.num_synthetic", self.num_synthetic, ">= 1")


@dataclass
class EvalConfig:
    """lm-eval settings; ``tasks=[]`` skips evaluation."""

    tasks: list[str] = _help(
        "lm-eval task or group names (the shipped *_local tasks work offline)", factory=list
    )
    limit: Any = _help("examples per task (int) or a fraction of each task in (0, 1]; null: all", None)
    backend: EvalBackend = _help(
        "packed: each distinct token computed once (shared contexts, length batches; "
        "harness/evaluate/packed.py); hflm: lm-eval's HFLM request path. Both run the model as trained, "
        "log-probabilities in fp32 (harness/evaluate/runner.py precision_kwargs)",
        EvalBackend.packed,
    )
    batch_size: int = _help("lm-eval batch size (backend=hflm; packed batches by tokens)", 8)
    dense_weights_mib: int = _help(
        "MiB for 4-bit weights dequantized once per evaluation (compute dtype: 2 bytes/param in bf16) "
        "instead of on every forward; layers past it decode on the fly. 0 (default): every forward "
        "dequantizes, which measured faster on a 2-core CPU (reports/perf/eval_cost.md)",
        0,
    )
    num_fewshot: int | None = _help("few-shot examples; null: each task's default")
    bootstrap_iters: int = _help("lm-eval's bootstrap for its stderr", 1000)
    include_path: list[str] = _help("extra task folders (each must hold task YAMLs)", factory=list)
    before: bool = _help("also evaluate the quantized base model before training", False)
    seed: int = _help("lm-eval's seed (few-shot sampling)", 1234)
    log_samples: bool = _help(
        "store lm-eval's per-document scores in samples.parquet, for paired CIs in reports and compare", True
    )

    def __post_init__(self) -> None:
        limit = self.limit
        _require(
            limit is None or (_is_int(limit) and limit > 0) or (isinstance(limit, float) and 0 < limit <= 1),
            "eval.limit",
            limit,
            "an integer > 0 (examples per task), a fraction in (0, 1], or null",
        )
        if self.num_fewshot is not None:
            _require(self.num_fewshot >= 0, "eval.num_fewshot", self.num_fewshot, ">= 0 or null")
        _require(self.batch_size >= 1, "eval.batch_size", self.batch_size, ">= 1")
        _require(
            _is_int(self.dense_weights_mib) and self.dense_weights_mib >= 0,
            "eval.dense_weights_mib",
            self.dense_weights_mib,
            "an integer >= 0 (0: dequantize on every forward)",
        )
        for entry in self.include_path:
            folder = Path(entry).expanduser()
            _require(folder.is_dir(), "eval.include_path", entry, "existing folders of task YAML files")
            _require(
                any(folder.rglob("*.yaml")), "eval.include_path", entry, "folders holding task YAML files"
            )


@dataclass
class ReportConfig:
    """What a named sweep's report tests (``harness.report.verdicts``); not part of a job's identity."""

    hypotheses: list[Any] = _help(
        "declared hypotheses of a named sweep (harness/conf/sweep/*.yaml; see harness.report.verdicts)",
        factory=list,
    )


@dataclass
class JobConfig:
    """One job: config in, ``result.json`` out."""

    model: ModelConfig = field(default_factory=ModelConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    seed: int = _help("seed of LoRA init, data order and dropout", 0)
    device: Device = _help("auto: CUDA when available, else CPU", Device.auto)
    cpu_heap: CpuHeap = _help(
        "glibc's heap after loading: fast reuses freed memory; lean hands every freed block of 128 KiB or "
        "more back at once (peak RSS follows live tensors, ~20 % lower, but ~1.8x slower on CPU)",
        CpuHeap.fast,
    )

    def __post_init__(self) -> None:
        trains_on_heldout = Path(self.data.source).name == Path(ALPACA_FILE).name and (
            self.data.heldout < ALPACA_HELDOUT
        )
        _require(
            not (HELDOUT_TASK in self.eval.tasks and trains_on_heldout),
            "data.heldout",
            self.data.heldout,
            f">= {ALPACA_HELDOUT} when training on {ALPACA_FILE} and evaluating {HELDOUT_TASK}: "
            f"it scores the last {ALPACA_HELDOUT} records, which training must not see",
        )
        if self.eval.dense_weights_mib and not self.quant.spec().blockwise:
            # a warning, not a refusal: one sweep may set it for its 16-bit reference row too, as blocksize
            warnings.warn(
                f"eval.dense_weights_mib={self.eval.dense_weights_mib} does nothing for "
                f"quant.storage={self.quant.storage}: it holds 4-bit weights dequantized, and this type has "
                "none",
                UserWarning,
                stacklevel=2,
            )

    def check_device(self, device: torch.device) -> None:
        """The checks that need the device (the others ran in ``__post_init__``): storage kernels and paged
        optimizers."""
        self.quant.spec().check_device(device)
        if str(self.train.optimizer).startswith("paged_") and device.type != "cuda":
            raise ConfigError(
                f"train.optimizer={self.train.optimizer} pages optimizer state through CUDA unified memory "
                f"and needs a CUDA device; this job runs on {device.type}: use train.optimizer=adamw"
            )


def _schema_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    for f in fields(node):
        keys.append(prefix + f.name)
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        if is_dataclass(default):
            keys.extend(_schema_keys(default, f"{prefix}{f.name}."))
    return keys


def _unknown_key_error(exc: ConfigKeyError) -> ConfigError:
    key = str(getattr(exc, "full_key", "") or "")
    close = difflib.get_close_matches(key, _schema_keys(JobConfig), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"unknown config key {key!r}{hint} (harness/config.py lists every key)")


def config_dict(cfg: DictConfig | JobConfig) -> dict[str, Any]:
    """Plain, resolved values (choices as strings): what result.json, job_config.yaml and hashes hold."""
    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.structured(cfg)
    return OmegaConf.to_container(node, resolve=True, enum_to_str=True)  # type: ignore[return-value]


def validate_config(cfg: DictConfig | dict) -> JobConfig:
    """The composed (or saved) config as typed objects: unknown keys (also ones added with ``+``), wrong
    types and out-of-range values fail here, naming the key, the value and what is allowed."""
    values = config_dict(cfg) if isinstance(cfg, DictConfig) else cfg
    try:
        merged = OmegaConf.merge(OmegaConf.structured(JobConfig), values)
    except ConfigKeyError as exc:
        raise _unknown_key_error(exc) from exc
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def group_options() -> dict[str, dict[str, Any]]:
    """Config-group options defined by their dataclass, as optimum-benchmark registers its backends: one
    ``quant=<type>`` per storage type in the registry (NF4 with double quantization, the paper's QLoRA
    setting; ``nf4-nodq`` without), the paper's LoRA, the two training presets and the data sets. Groups
    that are lists of names (``eval``) and the test preset ``train=smoke`` are YAML files in ``conf/``."""
    quant = {
        name: QuantConfig(storage=name, double_quant=False)
        for name, spec in STORAGE_SPECS.items()
        if not spec.takes_codebook  # needs its levels: quant.storage=codebook quant.codebook=[...]
    }
    return {
        "quant": {**quant, "nf4": QuantConfig(), "nf4-nodq": QuantConfig(double_quant=False)},
        "lora": {"paper": LoraConfig()},
        "train": {
            "cpu": TrainConfig(),  # sized for 2 CPU cores: 30 steps of 4 x <=256 tokens
            "gpu": TrainConfig(steps=200, grad_accum=4, seq_len=512, optimizer=Optimizer.paged_adamw_32bit),
        },
        "model": {
            # config.json files shipped for qlora-plan (harness.plan); a job run with one fails before loading
            **{name: ModelConfig(name_or_path=name) for name in SHIPPED_CONFIGS},
            "smollm2-135m": ModelConfig(),
            "tiny": ModelConfig(name_or_path="tiny"),
        },
        "data": {
            "synthetic": DataConfig(),
            "alpaca": DataConfig(source=ALPACA_FILE, heldout=ALPACA_HELDOUT),
        },
    }


def storage_help() -> str:
    """The storage types as ``qlora-bench --help`` lists them (``${storage_types:}`` in conf/config.yaml)."""
    blockwise = " ".join(name for name, spec in STORAGE_SPECS.items() if spec.blockwise)
    other = " ".join(name for name, spec in STORAGE_SPECS.items() if not spec.blockwise)
    return (
        f"{blockwise} (quant.blocksize 32..4096, quant.double_quant) | {other} | "
        "package.module:Object (your own: docs/storage_plugins.md)"
    )


def register_configs() -> None:
    """Register the schema that ``conf/config.yaml`` builds on, the dataclass-defined group options and the
    help text's list of storage types."""
    OmegaConf.register_new_resolver("storage_types", storage_help, replace=True)
    store = ConfigStore.instance()
    store.store(name="job_schema", node=JobConfig)
    for group, options in group_options().items():
        for name, node in options.items():
            store.store(group=group, name=name, node=node)
