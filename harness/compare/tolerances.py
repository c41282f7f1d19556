"""Per-metric tolerances, read from one YAML file (default ``harness/compare/tolerances.yaml``).

A rule names metrics by glob on the dotted column name (``eval.*.acc*``), says which direction is
better and how much worsening is still noise. The first rule that matches a metric wins; columns that
no rule matches are not compared, and ``<metric>_stderr`` columns are never metrics themselves: they
widen their metric's tolerance instead.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import yaml

from harness.compare.errors import CompareInputError
from harness.result import BLOCKS, ResultError, column

DEFAULT_TOLERANCES = Path(__file__).resolve().with_name("tolerances.yaml")
STDERR_SUFFIX = "_stderr"
DIRECTIONS = ("higher", "lower")
KINDS = ("abs", "rel", "exact")
RULE_KEYS = ("match", "direction", "kind", "tol", "stderr_k", "gate", "two_sided")
ROUNDOFF = 1e-9  # relative slack of kind "exact": float formatting (CSV round trips), not a real change


@dataclass(frozen=True)
class Rule:
    """How one group of metrics is judged; see the module docstring and the YAML file for the fields."""

    match: tuple[str, ...]
    direction: str
    kind: str
    tol: float = 0.0
    stderr_k: float = 0.0
    gate: bool = True
    # A move beyond the tolerance in the good direction fails too: for metrics that should not move unless
    # the code means them to (storage accounting, deterministic CPU runs), where a bug can "improve" them.
    two_sided: bool = False

    def matches(self, metric: str) -> bool:
        return any(fnmatchcase(metric, pattern) for pattern in self.match)

    def allowed(self, baseline: float, stderr: float) -> float:
        """How far the metric may worsen: the rule's tolerance, or ``stderr_k`` standard errors if wider."""
        base_tol = {"abs": self.tol, "rel": self.tol * abs(baseline), "exact": ROUNDOFF * abs(baseline)}
        return max(base_tol[self.kind], self.stderr_k * stderr)


@dataclass(frozen=True)
class Tolerances:
    """The ordered rules, plus metric globs gated on request even where their rule says ``gate: false``."""

    rules: tuple[Rule, ...]
    force_gate: tuple[str, ...] = ()

    def rule_for(self, metric: str) -> Rule | None:
        """The first rule matching ``metric``; None for stderr columns and metrics no rule names."""
        if metric.endswith(STDERR_SUFFIX):
            return None
        return next((rule for rule in self.rules if rule.matches(metric)), None)

    def gated(self, rule: Rule, metric: str) -> bool:
        """Whether worsening beyond tolerance fails the comparison or is only reported."""
        return rule.gate or any(fnmatchcase(metric, pattern) for pattern in self.force_gate)

    def with_gates(self, patterns: Iterable[str]) -> Tolerances:
        return replace(self, force_gate=self.force_gate + tuple(patterns))


def load_tolerances(path: str | os.PathLike = DEFAULT_TOLERANCES) -> Tolerances:
    """Read and validate a tolerance file; any problem raises :class:`CompareInputError` naming it.

    A file other than the default overrides it: its rules come first (the first match wins) and the
    default rules follow, unless it says ``extends: none``. So a baseline's file holds only what differs.
    """
    path = Path(path)
    data = _read(path)
    own = _rules(data, path)
    extends = data.get("extends", "none" if path.resolve() == DEFAULT_TOLERANCES else "default")
    if extends not in ("default", "none"):
        raise CompareInputError(
            f"tolerance file {path}: 'extends' must be 'default' or 'none', got {extends!r}"
        )
    base = load_tolerances().rules if extends == "default" else ()
    return Tolerances(own + base)


def _read(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CompareInputError(f"tolerance file {path}: cannot be read ({exc})") from exc
    if not isinstance(data, dict) or "rules" not in data or not set(data) <= {"rules", "extends"}:
        raise CompareInputError(
            f"tolerance file {path}: expected a mapping with 'rules' (and optional 'extends')"
        )
    return data


def _rules(data: dict[str, Any], path: Path) -> tuple[Rule, ...]:
    raw_rules = data["rules"]
    if not isinstance(raw_rules, list) or not raw_rules:
        raise CompareInputError(f"tolerance file {path}: 'rules' must be a non-empty list")
    return tuple(_parse_rule(raw, f"tolerance file {path}: rule {i + 1}") for i, raw in enumerate(raw_rules))


def _parse_rule(raw: Any, where: str) -> Rule:
    if not isinstance(raw, dict):
        raise CompareInputError(f"{where}: expected a mapping, got {raw!r}")
    unknown = sorted(set(raw) - set(RULE_KEYS))
    if unknown:
        raise CompareInputError(f"{where}: unknown key(s) {unknown}; known: {list(RULE_KEYS)}")
    kind = _choice(raw, "kind", KINDS, where)
    if kind == "exact" and "tol" in raw:
        raise CompareInputError(f"{where}: kind 'exact' takes no 'tol'")
    if kind != "exact" and "tol" not in raw:
        raise CompareInputError(f"{where}: kind {kind!r} needs a 'tol'")
    return Rule(
        match=_patterns(raw.get("match"), where),
        direction=_choice(raw, "direction", DIRECTIONS, where),
        kind=kind,
        tol=_non_negative(raw, "tol", where),
        stderr_k=_non_negative(raw, "stderr_k", where),
        gate=_flag(raw, "gate", True, where),
        two_sided=_flag(raw, "two_sided", False, where),
    )


def _flag(raw: dict[str, Any], key: str, default: bool, where: str) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise CompareInputError(f"{where}: {key!r} must be true or false, got {value!r}")
    return value


def _patterns(value: Any, where: str) -> tuple[str, ...]:
    patterns = [value] if isinstance(value, str) else value
    if not isinstance(patterns, list) or not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise CompareInputError(
            f"{where}: 'match' must be a glob or a non-empty list of globs, got {value!r}"
        )
    for pattern in patterns:
        _check_field(pattern, where)
    return tuple(patterns)


def _check_field(pattern: str, where: str) -> None:
    """A glob that names a result block's field literally (``train.peak_memory_bytes``) must name one its
    dataclass has: a renamed field fails here instead of leaving its metric uncompared."""
    block, *path = pattern.split(".")
    if block in BLOCKS and path and not any(char in path[0] for char in "*?["):
        try:
            column(block, *path)
        except ResultError as exc:
            raise CompareInputError(f"{where}: {exc}") from exc


def _choice(raw: dict[str, Any], key: str, choices: tuple[str, ...], where: str) -> str:
    value = raw.get(key)
    if value not in choices:
        raise CompareInputError(f"{where}: '{key}' must be one of {list(choices)}, got {value!r}")
    return value


def _non_negative(raw: dict[str, Any], key: str, where: str) -> float:
    value = raw.get(key, 0.0)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise CompareInputError(f"{where}: '{key}' must be a number >= 0, got {value!r}")
    return float(value)
