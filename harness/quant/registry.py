"""The registry of storage types: every name ``quant.storage`` may hold, resolved to its StorageSpec.

A name is a built-in (the families below, each one module of ``harness.quant``), an entry point in the
group ``qlora_bench.storage``, or a reference ``package.module:Object`` to a StorageSpec subclass or
instance in the user's own code (docs/storage_plugins.md). Everything that depends on the storage type
(config choices, ``quant=<name>`` group options, help text, the memory model, reports) reads it from here,
and a bad name or setting fails here, before a model is loaded, saying what is allowed.
"""

from __future__ import annotations

import copy
import importlib
import inspect
from collections.abc import Sequence
from functools import cache
from importlib.metadata import entry_points

import torch
from torch import nn

from harness.quant.spec import StorageArgs, StorageSpec, listing
from harness.quant.weight import QuantizedWeight

# The built-in families, in the order help texts and messages list their types: one line per module,
# each exposing SPECS (its StorageSpec instances).
FAMILIES = (
    "harness.quant.bnb4:SPECS",
    "harness.quant.int4:SPECS",
    "harness.quant.codebook:SPECS",
    "harness.quant.block_optimal:SPECS",
    "harness.quant.mx:SPECS",
    "harness.quant.int8:SPECS",
    "harness.quant.floats:SPECS",
)
ENTRY_POINT_GROUP = "qlora_bench.storage"
PLUGIN_FORM = "package.module:Object (a harness.quant.StorageSpec; docs/storage_plugins.md)"


class StorageError(ValueError):
    """``quant.storage`` names nothing usable: unknown, not importable, or not a StorageSpec."""


def _attribute(reference: str) -> object:
    """The object ``package.module:Object`` names, importing the module."""
    module_name, _, attribute = reference.partition(":")
    try:
        module = importlib.import_module(module_name)
    except (ImportError, ValueError) as exc:  # ValueError: an empty module name
        raise StorageError(
            f"quant.storage={reference!r}: module {module_name!r} cannot be imported ({exc}); "
            f"allowed: {PLUGIN_FORM} on the Python path"
        ) from exc
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise StorageError(
            f"quant.storage={reference!r}: module {module_name!r} has no attribute {attribute!r}"
        ) from None


def _as_spec(reference: str, target: object) -> StorageSpec:
    """`target` as a StorageSpec instance, or StorageError naming what it lacks."""
    if inspect.isclass(target) and issubclass(target, StorageSpec):
        missing = sorted(getattr(target, "__abstractmethods__", ()))
        if missing:
            raise StorageError(
                f"quant.storage={reference!r}: {target.__name__} does not implement {', '.join(missing)} "
                "(StorageSpec's abstract methods)"
            )
        try:
            target = target()
        except TypeError as exc:
            raise StorageError(f"quant.storage={reference!r}: {target.__name__}() fails: {exc}") from exc
    if not isinstance(target, StorageSpec):
        protocol = ("encode", "decode", "bits_per_param")
        lacks = [name for name in protocol if not callable(getattr(target, name, None))]
        raise StorageError(
            f"quant.storage={reference!r} is a {type(target).__name__}, not a harness.quant.StorageSpec "
            f"subclass or instance" + (f"; it lacks {', '.join(lacks)}" if lacks else "")
        )
    return target


def _builtin_specs() -> dict[str, StorageSpec]:
    return {spec.name: spec for family in FAMILIES for spec in _attribute(family)}


STORAGE_SPECS: dict[str, StorageSpec] = _builtin_specs()
STORAGE_TYPES: tuple[str, ...] = tuple(STORAGE_SPECS)
FOUR_BIT_TYPES: tuple[str, ...] = tuple(name for name, spec in STORAGE_SPECS.items() if spec.blockwise)
SIXTEEN_BIT_TYPES: tuple[str, ...] = tuple(name for name, spec in STORAGE_SPECS.items() if spec.sixteen_bit)


def plugin_names() -> tuple[str, ...]:
    """Storage types installed packages register in the entry point group ``qlora_bench.storage``."""
    return tuple(sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)))


@cache
def _plugin(name: str) -> StorageSpec:
    """A user's storage type, loaded once per process; its name is what quant.storage says."""
    if ":" in name:
        target = _attribute(name)
    else:
        target = _attribute(next(ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name).value)
    spec = copy.copy(_as_spec(name, target))  # a copy: renaming must not touch an instance shared elsewhere
    spec.name = name
    return spec


def storage_spec(name: str) -> StorageSpec:
    """The spec ``quant.storage=name`` means; StorageError (a ValueError) listing what is allowed."""
    if name in STORAGE_SPECS:
        return STORAGE_SPECS[name]
    if not isinstance(name, str) or (":" not in name and name not in plugin_names()):
        allowed = listing((*STORAGE_TYPES, *plugin_names()))
        raise StorageError(
            f"quant.storage={name!r} is not a storage type; allowed: {allowed}, or {PLUGIN_FORM}"
        )
    return _plugin(name)


def validate_quant_args(
    storage: str,
    blocksize: int | None = 64,
    double_quant: bool = True,
    device: torch.device | str | None = None,
    codebook: Sequence[float] | None = None,
) -> StorageSpec:
    """The spec of `storage` after its checks of the settings (and of `device`, when given): ValueError
    naming the ``quant.<key>``, the value and what is allowed; NotImplementedError for a device the type
    has no kernels for."""
    spec = storage_spec(storage)
    spec.check(storage_args(blocksize, double_quant, codebook))
    if device is not None:
        spec.check_device(device)
    return spec


def storage_args(
    blocksize: int | None, double_quant: bool, codebook: Sequence[float] | None = None
) -> StorageArgs:
    return StorageArgs(blocksize, double_quant, None if codebook is None else tuple(codebook))


def quantize(
    weight: torch.Tensor,
    storage: str = "nf4",
    blocksize: int = 64,
    double_quant: bool = True,
    codebook: Sequence[float] | None = None,
) -> QuantizedWeight:
    """Store `weight` (fp32/fp16/bf16, any shape and numel) in `storage` on its own device.

    Defaults are the QLoRA paper's: NF4, blocks of 64, double quantization. `codebook` is the 16 levels
    of storage ``codebook`` (a user-defined type); the other types refuse one.
    """
    spec = validate_quant_args(storage, blocksize, double_quant, weight.device, codebook)
    return spec.store(weight, storage_args(blocksize, double_quant, codebook))


def frozen_linear(
    linear: nn.Linear,
    storage: str = "nf4",
    blocksize: int = 64,
    double_quant: bool = True,
    compute_dtype: torch.dtype | None = None,
    codebook: Sequence[float] | None = None,
) -> nn.Module:
    """The frozen replacement for `linear` in `storage`, on the linear's device, as the type builds it
    (QuantLinear for the 4-bit types, bitsandbytes' Linear8bitLt for int8, a frozen nn.Linear for the
    float references). compute_dtype None means the weight's dtype."""
    spec = validate_quant_args(storage, blocksize, double_quant, linear.weight.device, codebook)
    return spec.frozen_layer(linear, storage_args(blocksize, double_quant, codebook), compute_dtype)
