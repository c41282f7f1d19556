"""The ``result.json`` contract between layers (schema_version 1, see ARCHITECTURE.md).

A job writes exactly one ``result.json``; sweeps, reports and compare only ever read it through
:func:`read_result`. Writes are atomic (temp file + rename) so a killed job never leaves half a file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
KNOWN_SCHEMA_VERSIONS = (1,)
RESULT_FILE = "result.json"


class ResultError(ValueError):
    """A ``result.json`` that cannot be read or has an unknown schema."""


def config_hash(config: dict[str, Any]) -> str:
    """Stable short hash of a resolved job config; resume and compare match jobs by it."""
    relevant = {k: v for k, v in config.items() if k != "fault"}
    blob = json.dumps(relevant, sort_keys=True, default=str)
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
