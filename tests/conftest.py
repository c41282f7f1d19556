"""Shared fixtures: offline Hugging Face settings and Hydra composition of the real conf/ tree."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from harness.config import register_configs
from harness.paths import CONF_DIR


@pytest.fixture(scope="module")
def single_thread():
    """Small tensors: thread fan-out costs more than it saves, badly so when the 2 cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing in the test suite may reach the Hugging Face hub."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture
def job_config():
    """Compose a job config from conf/ exactly as ``qlora-bench`` would, with overrides."""
    register_configs()

    def _compose(*overrides: str) -> DictConfig:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))

    return _compose
