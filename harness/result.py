"""The ``result.json`` contract between layers (schema_version 1, see ARCHITECTURE.md).

A job assembles one typed :class:`JobResult` and writes it once; sweeps, reports, compare and tests read it
back through :meth:`JobResult.load` (or :func:`read_result` for the plain dict). Writes are atomic (temp
file + rename) so a killed job never leaves half a file. :func:`job_identity` is the one definition of
"the same job", for resume, reports and compare alike.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
KNOWN_SCHEMA_VERSIONS = (1,)
RESULT_FILE = "result.json"
# Config keys that say where things are on one machine, or how a test breaks a job, not what the job is.
MACHINE_LOCAL_KEYS: tuple[str, ...] = ("fault", "model.cache_dir", "data.data_dir", "eval.include_path")


class ResultError(ValueError):
    """A ``result.json`` that cannot be read or has an unknown schema."""


def job_identity(config: dict[str, Any]) -> dict[str, Any]:
    """The resolved config without :data:`MACHINE_LOCAL_KEYS`: two jobs are the same job when these match."""
    identity = copy.deepcopy(config)
    for dotted in MACHINE_LOCAL_KEYS:
        *parents, leaf = dotted.split(".")
        node = identity
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return identity


def config_hash(config: dict[str, Any]) -> str:
    """Stable short hash of a job's identity; resume skips a finished job with the same hash."""
    blob = json.dumps(job_identity(config), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class JobResult:
    """Everything one job measured, in the order a job measures it; ``None`` blocks were not reached."""

    status: str  # ok | failed
    config: dict[str, Any] = field(default_factory=dict)  # resolved, choices as strings
    config_hash: str = ""
    env: dict[str, Any] = field(default_factory=dict)  # versions, device, compute dtype and why, commit
    model: dict[str, Any] | None = None  # source, max_seq_len
    quant: dict[str, Any] | None = None  # harness.model.replace.QuantizationSummary
    lora: dict[str, Any] | None = None  # r, alpha, resolved target names, trainable params
    train: dict[str, Any] | None = None  # harness.train.loop.TrainResult + the memory estimate
    eval_before: dict[str, Any] | None = None  # {task: {metric, metric_stderr, n}} of the quantized base
    eval: dict[str, Any] | None = None  # the same after training
    eval_delta: dict[str, Any] | None = None  # eval - eval_before
    caveats: list[str] = field(default_factory=list)  # what a reader must know, incl. auxiliary failures
    timings_s: dict[str, float] = field(default_factory=dict)
    error: dict[str, str] | None = None  # type, message, traceback tail of a failed job
    schema_version: int = SCHEMA_VERSION

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict[str, Any]:
        """The JSON object, ``schema_version`` first, blocks that were not reached left out."""
        data = {k: v for k, v in asdict(self).items() if v is not None}
        return {"schema_version": data.pop("schema_version"), **data}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobResult:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ResultError(f"result.json has fields this reader does not know: {unknown}")
        return cls(**data)

    def save(self, job_dir: str | os.PathLike) -> Path:
        return write_result(job_dir, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> JobResult:
        return cls.from_json(read_result(path))


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
