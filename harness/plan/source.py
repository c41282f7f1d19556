"""A model's shape for a plan, from its config.json alone: no weights read, no real storage allocated.

The config comes from the configs shipped in this package (``SHIPPED_CONFIGS``: the QLoRA paper's LLaMA-1
shapes and a few current models), a local directory, the built-in tiny model, or an HF id already in the
local Hugging Face cache. The model is then built on the meta device, so its module tree (and with it
``harness.train.memory_model.ModelShape``) is exact for any family transformers knows.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from harness.model.loading import SHIPPED_GGUF, TINY
from harness.model.tiny import build_tiny_model
from harness.paths import default_cache_dir
from harness.plan.shipped import CONFIG_DIR, SHIPPED_CONFIGS
from harness.train.memory_model import ModelShape


class ModelConfigError(ValueError):
    """No config.json could be found for ``model.name_or_path`` without downloading."""


def _config_location(name: str, cache_dir: str | None) -> Path | str:
    """Where the config.json of ``name`` is: a converted shipped model in the cache, a shipped config, a
    local directory; else the name itself (an HF id, looked up in the local HF cache only)."""
    converted = default_cache_dir(cache_dir) / name
    if name in SHIPPED_GGUF and (converted / "config.json").is_file():
        return converted
    if name in SHIPPED_CONFIGS:
        return CONFIG_DIR / name
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelConfigError(f"model directory {str(path)!r} has no config.json")
        return path
    return name


def model_config(
    name_or_path: str,
    revision: str | None = None,
    cache_dir: str | None = None,
    trust_remote_code: bool = False,
) -> PretrainedConfig:
    """The transformers config of ``model.name_or_path`` (with the job's revision, cache dir and
    trust_remote_code), read offline."""
    if name_or_path == TINY:
        return build_tiny_model()[0].config  # ~0.1 M parameters: built for real, in milliseconds
    location = _config_location(name_or_path, cache_dir)
    try:
        return AutoConfig.from_pretrained(
            location, local_files_only=True, revision=revision, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise ModelConfigError(
            f"no config.json for model {name_or_path!r}: not a shipped config "
            f"({', '.join(SHIPPED_CONFIGS)}), not a local directory, and not in the local Hugging Face "
            f"cache (a plan never downloads); pass a directory holding its config.json ({exc})"
        ) from exc


@dataclass(frozen=True)
class PlannedModel:
    """What a plan needs of a model: its shape, its family, the longest sequence it takes."""

    shape: ModelShape
    model_type: str
    max_positions: int | None


@cache
def planned_model(
    name_or_path: str,
    revision: str | None = None,
    cache_dir: str | None = None,
    trust_remote_code: bool = False,
) -> PlannedModel:
    """The model of a job's ``model`` section, read once per process (a sweep plans many jobs of one)."""
    config = model_config(name_or_path, revision, cache_dir, trust_remote_code)
    return PlannedModel(
        meta_shape(config), config.model_type, getattr(config, "max_position_embeddings", None)
    )


def meta_shape(config: PretrainedConfig) -> ModelShape:
    """The model's ``ModelShape``, read from the model built on the meta device (no storage)."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return ModelShape.from_model(model)
