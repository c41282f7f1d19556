"""The ``result.json`` contract between layers (schema_version 1, see ARCHITECTURE.md).

A job's stages each measure one typed block (:class:`ModelBlock`, :class:`QuantBlock`, :class:`LoraBlock`,
:class:`TrainBlock`, lm-eval's task scores, :class:`ErrorBlock`); :func:`assemble_result` puts them into one
:class:`JobResult`, the only place one is built, and :meth:`JobResult.save` writes it once. Sweeps, reports,
compare and tests read it back through :meth:`JobResult.load` (or :func:`read_result` for the plain dict).
Writes are atomic (temp file + rename) so a killed job never leaves half a file.

Readers name result columns through :func:`column` (checked against the block dataclasses, so a renamed
field fails loudly instead of dropping a report column) and group jobs with :func:`job_identity` (tables:
:func:`identity_columns`), the one definition of "the same job", for resume, reports and compare alike.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
KNOWN_SCHEMA_VERSIONS = (1,)
RESULT_FILE = "result.json"
CONFIG_PREFIX = "config."
# Config keys that say where things are on one machine, not what the job is.
MACHINE_LOCAL_KEYS: tuple[str, ...] = ("model.cache_dir", "data.data_dir", "eval.include_path")
# Config keys that results written before their removal still carry; never part of what a job is (``fault``
# planted test failures until tests took to monkeypatch and sitecustomize).
RETIRED_KEYS: tuple[str, ...] = ("fault",)
# What a named sweep's report tests (``report.hypotheses``), not what the job is: the same job in two sweeps.
REPORT_KEYS: tuple[str, ...] = ("report",)
NOT_IDENTITY_KEYS = (*MACHINE_LOCAL_KEYS, *RETIRED_KEYS, *REPORT_KEYS)
# Config keys added after results were written, each with the value every job before it ran with: a result
# read without the key gets that value (read_result), and at that value the key is no part of a job's
# identity, so config_hash, resume and comparisons hold across the addition.
ADDED_KEYS: dict[str, Any] = {"train.checkpoint_every": 1}

# lm-eval's scores of one phase: {task: {metric: value, <metric>_stderr: value, "n": documents}}. A mapping,
# not a dataclass: its keys are the task and metric names of the evaluated tasks, an open set.
TaskScores = dict[str, dict[str, Any]]


class ResultError(ValueError):
    """A ``result.json`` that cannot be read or has an unknown schema, or a column no block has."""


def _optional() -> Any:
    """A block field a job may not have measured (a CUDA-only meter, a failed estimate): ``None`` is left
    out of result.json rather than written as null."""
    return field(default=None, metadata={"omit_none": True})


class Block:
    """A measured block of ``result.json``: a frozen dataclass written as one JSON object, fields in order."""

    def to_json(self) -> dict[str, Any]:
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)  # type: ignore[arg-type]
            if not (f.metadata.get("omit_none") and getattr(self, f.name) is None)
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str) -> Block:
        """The block from its JSON object; unknown or missing fields raise, naming ``where`` and them."""
        known = field_names(cls)
        unknown = sorted(set(data) - set(known))
        missing = [
            f.name
            for f in fields(cls)  # type: ignore[arg-type]
            if f.default is MISSING and f.default_factory is MISSING and f.name not in data
        ]
        if unknown or missing:
            raise ResultError(
                f"{where} does not match {cls.__name__}: unknown fields {unknown}, missing fields {missing}"
            )
        return cls(**data)


def field_names(block: type) -> tuple[str, ...]:
    """The field names of a block dataclass, in order: the one list readers check column names against."""
    return tuple(f.name for f in fields(block))


@dataclass(frozen=True, kw_only=True)
class ModelBlock(Block):
    """The loaded base model: where it came from, its context length, the attention it runs."""

    source: str  # shipped-gguf | tiny | hub | local
    max_seq_len: int
    attention: str | None = _optional()  # chosen once the model is quantized (harness.model.attention)


@dataclass(frozen=True, kw_only=True)
class QuantBlock(Block):
    """The frozen base weights as stored (``harness.model.replace.replace_linear_layers`` measures them)."""

    storage: str
    blocksize: int
    double_quant: bool
    weight_bytes: int  # bytes of the quantized layers' weight storage, measured from their tensors
    quantized_params: int
    bits_per_param: float
    layers: int
    skipped: list[str]
    # harness.quant.weight_error_summary: rel_rms, max_layer_rel_rms, worst_layer (deterministic)
    weight_error: dict[str, float | str | None] | None = _optional()


@dataclass(frozen=True, kw_only=True)
class LoraBlock(Block):
    """The adapters as attached: rank, scale, the resolved target layer names, trainable parameters."""

    r: int
    alpha: float
    targets: list[str]
    trainable_params: int


@dataclass(frozen=True, kw_only=True)
class TrainBlock(Block):
    """What training measured (``harness.train.loop.TrainResult.to_json``) and the memory model's estimate."""

    steps: int
    tokens: int  # non-padding tokens through forward and backward, all steps
    target_tokens: int  # of those, the response tokens the loss is taken on
    tokens_per_s: float  # non-padding tokens per second, warm-up steps excluded
    step_time_s_median: float
    loss: list[float]
    loss_start: float | None  # None (null) when no step trained
    loss_end: float | None
    gradient_checkpointing: bool
    largest_batch: dict[str, int] | None = None  # rows, width, logit_rows of the widest micro-batch
    peak_memory_bytes: int
    peak_memory_reserved_bytes: int | None = _optional()  # CUDA only
    peak_memory_kind: str  # rss | cuda_allocated
    memory_estimate: dict[str, Any] | None = _optional()  # harness.train.memory_model.estimate_peak_memory
    memory_estimate_bytes: int | None = _optional()


@dataclass(frozen=True, kw_only=True)
class ErrorBlock(Block):
    """Why a job failed: the exception's type and message and the tail of its traceback."""

    type: str
    message: str
    traceback: str = ""


# The blocks a job measures, by their result.json key; eval_before/eval/eval_delta are TaskScores.
BLOCKS: dict[str, type[Block]] = {
    "model": ModelBlock,
    "quant": QuantBlock,
    "lora": LoraBlock,
    "train": TrainBlock,
    "error": ErrorBlock,
}


@dataclass
class JobResult:
    """Everything one job measured, in the order a job measures it; ``None`` blocks were not reached.

    Built by :func:`assemble_result` (or read back by :meth:`from_json`); a block given as its JSON object
    becomes its dataclass, so a record with a misspelt or missing field fails here, naming it.
    """

    status: str  # ok | failed
    config: dict[str, Any] = field(default_factory=dict)  # resolved, choices as strings
    config_hash: str = ""
    env: dict[str, Any] = field(default_factory=dict)  # versions, device, compute dtype and why, commit
    model: ModelBlock | None = None
    quant: QuantBlock | None = None
    lora: LoraBlock | None = None
    train: TrainBlock | None = None
    eval_before: TaskScores | None = None  # of the quantized base
    eval: TaskScores | None = None  # the same after training
    eval_delta: TaskScores | None = None  # eval - eval_before
    caveats: list[str] = field(default_factory=list)  # what a reader must know, incl. auxiliary failures
    timings_s: dict[str, float] = field(default_factory=dict)
    error: ErrorBlock | None = None
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        for name, block in BLOCKS.items():
            value = getattr(self, name)
            if isinstance(value, Mapping):
                setattr(self, name, block.from_json(value, f"result.json block {name!r}"))

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict[str, Any]:
        """The JSON object, ``schema_version`` first, blocks that were not reached left out."""
        data: dict[str, Any] = {"schema_version": self.schema_version}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "schema_version" and value is not None:
                data[f.name] = value.to_json() if isinstance(value, Block) else copy.deepcopy(value)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobResult:
        unknown = sorted(set(data) - set(field_names(cls)))
        if unknown:
            raise ResultError(f"result.json has fields this reader does not know: {unknown}")
        return cls(**data)

    def save(self, job_dir: str | os.PathLike) -> Path:
        return write_result(job_dir, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> JobResult:
        return cls.from_json(read_result(path))


# What a job's stages measure, by result.json key, in the order they measure it.
MEASURED = ("env", "model", "quant", "lora", "eval_before", "train", "eval", "eval_delta")


def assemble_result(
    config: dict[str, Any],
    measured: Mapping[str, Any],
    caveats: Iterable[str] = (),
    timings_s: Mapping[str, float] | None = None,
    error: ErrorBlock | None = None,
) -> JobResult:
    """The one place a :class:`JobResult` is built: from the config, the blocks measured so far (keys of
    :data:`MEASURED`) and the error that stopped the job, if any (then ``status`` is failed)."""
    unknown = sorted(set(measured) - set(MEASURED))
    if unknown:
        raise ResultError(f"not result blocks: {unknown}; blocks are {MEASURED}")
    return JobResult(
        status="failed" if error else "ok",
        config=config,
        config_hash=config_hash(config) if config else "",
        caveats=list(caveats),
        timings_s=dict(timings_s or {}),
        **({"error": error} if error else {}),
        **measured,
    )


def column(block: str, *path: str) -> str:
    """The results-table column of a result field: ``column("train", "tokens_per_s")`` is
    ``train.tokens_per_s``. The field is checked against its block's dataclass (for the config, lm-eval's
    scores and the other mappings: that the block exists), so a renamed field fails here, loudly, instead of
    leaving a report column or a compared metric silently empty."""
    if block in BLOCKS and path:
        names = field_names(BLOCKS[block])
        if path[0] not in names:
            raise ResultError(
                f"no result column {'.'.join((block, *path))!r}: {BLOCKS[block].__name__} has fields {names}"
            )
    elif block not in field_names(JobResult):
        raise ResultError(f"no result block {block!r}; result.json has {field_names(JobResult)}")
    return ".".join((block, *path))


def _parent(config: dict[str, Any], dotted: str) -> tuple[dict[str, Any] | None, str]:
    """The mapping that holds the dotted key ``dotted`` in ``config`` (None when a level is missing), and
    the key's last part."""
    *parents, leaf = dotted.split(".")
    node: Any = config
    for key in parents:
        node = node.get(key) if isinstance(node, dict) else None
    return (node if isinstance(node, dict) else None), leaf


def job_identity(config: dict[str, Any]) -> dict[str, Any]:
    """The resolved config without :data:`NOT_IDENTITY_KEYS` (machine-local, retired and report keys) and
    without the :data:`ADDED_KEYS` at the value jobs had before them: two jobs are the same job when these
    match."""
    identity = copy.deepcopy(config)
    for dotted in NOT_IDENTITY_KEYS:
        node, leaf = _parent(identity, dotted)
        if node is not None:
            node.pop(leaf, None)
    for dotted, before in ADDED_KEYS.items():
        node, leaf = _parent(identity, dotted)
        if node is not None and node.get(leaf, before) == before:
            node.pop(leaf, None)
    return identity


def identity_columns(columns: Iterable[str]) -> list[str]:
    """The ``config.*`` columns of a results table that make up a job's identity, in table order:
    :func:`job_identity` applied to the config the columns spell, so tables and result.json files agree on
    what "the same job" is."""
    columns = list(columns)
    config = unflatten({c.removeprefix(CONFIG_PREFIX): None for c in columns if c.startswith(CONFIG_PREFIX)})
    kept = {CONFIG_PREFIX + key for key in flatten(job_identity(config))}
    return [c for c in columns if c in kept]


def config_hash(config: dict[str, Any]) -> str:
    """Stable short hash of a job's identity; resume skips a finished job with the same hash."""
    blob = json.dumps(job_identity(config), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _json_safe(value: Any) -> Any:
    """NaN/inf are not JSON: store them as strings so the file stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def write_result(job_dir: str | os.PathLike, result: dict[str, Any]) -> Path:
    """Write ``result.json`` into ``job_dir`` atomically and return its path."""
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    payload = {"schema_version": SCHEMA_VERSION, **result}
    fd, tmp = tempfile.mkstemp(prefix=".result.", suffix=".tmp", dir=job_dir)
    with os.fdopen(fd, "w") as fh:
        json.dump(_json_safe(payload), fh, indent=2, sort_keys=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    target = job_dir / RESULT_FILE
    os.replace(tmp, target)
    return target


def read_result(path: str | os.PathLike) -> dict[str, Any]:
    """Read one ``result.json``; raises :class:`ResultError` naming the file when it is unusable."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ResultError(f"{path}: not a readable result.json ({exc})") from exc
    if not isinstance(data, dict):
        raise ResultError(f"{path}: expected a JSON object, got {type(data).__name__}")
    version = data.get("schema_version")
    if version not in KNOWN_SCHEMA_VERSIONS:
        raise ResultError(
            f"{path}: schema_version {version!r} is not one this reader knows {KNOWN_SCHEMA_VERSIONS}"
        )
    for dotted, before in ADDED_KEYS.items():
        node, leaf = _parent(data.get("config") or {}, dotted)
        if node is not None:
            node.setdefault(leaf, before)
    return data


def find_results(root: str | os.PathLike) -> Iterator[Path]:
    """Every ``result.json`` below ``root`` (or ``root`` itself when it is one), in sorted order."""
    root = Path(root)
    if root.is_file():
        yield root
        return
    yield from sorted(root.rglob(RESULT_FILE))


def flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts into dotted keys (``config.quant.storage``); lists stay as values."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys back into nested dicts (the inverse of :func:`flatten` for non-empty dicts)."""
    nested: dict[str, Any] = {}
    for dotted, value in flat.items():
        *parents, leaf = dotted.split(".")
        node = nested
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return nested
