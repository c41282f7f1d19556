"""The model configs shipped for planning (``configs/<name>/config.json``; no weights): their names."""

from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
SHIPPED_CONFIGS: tuple[str, ...] = tuple(sorted(p.parent.name for p in CONFIG_DIR.glob("*/config.json")))


def weights_not_shipped(name: str) -> str:
    """The message a job run with a shipped config gets, before anything is loaded."""
    return (
        f"model {name!r} is a config.json shipped for qlora-plan only: its weights are not shipped; "
        "run jobs with an HF id or a local directory that holds the weights"
    )
