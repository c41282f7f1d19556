"""Shared fixtures: offline Hugging Face settings, deprecated calls from harness/ as errors, and Hydra
composition of the real conf/ tree."""

from __future__ import annotations

import os
import sys
import warnings

# bitsandbytes' CPU dequantize falls back to a torch.compile'd lookup-and-scale for blocks of 2048 or more
# on AVX-512 CPUs, compiled anew for every shape (dynamic=False): 2-20 s per shape, a tenth of the suite.
# Eager it is the same steps (a table lookup, one fp32 multiply, one cast), so no value changes. Jobs outside
# the tests keep compiling; the jobs tests start inherit this. Set before torch is imported.
os.environ.setdefault("TORCH_COMPILE_DISABLE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from harness.config import register_configs
from harness.paths import CONF_DIR

# Modules and tests whose checks compare floating-point results (kernels, reduction order, dtype), marked
# ``numerical``: .ci/run runs them once more under the other CPU class. Tests elsewhere carry the mark.
NUMERICAL_MODULES = ("test_attention", "test_codebook", "test_quant_layer", "test_quant_weight_error")
NUMERICAL_TESTS = (
    "test_quant.py::test_numel_not_multiple_of_blocksize",
    "test_quant.py::test_absmax_double_quantization_error_bound",
    "test_evaluate.py::test_dense_weights_give_the_same_logits",
    "test_evaluate.py::test_dense_weights_leave_every_score_as_it_was",
    "test_families.py::test_gpt2_conv1d_quantized_as_transposed_linear",
)

# The longest tests (10-50 s each on 2 cores; `make test` lists the slowest), longest first: marked ``slow``
# and run before the rest, in this order, so that under pytest-xdist the other worker meanwhile takes the
# short ones and no long test is left trailing alone at the end. ``pytest -m "not slow"`` leaves them out.
SLOW_TESTS = (
    "test_sweep.py::test_hard_crash_is_isolated_and_resume_skips_finished_jobs",
    "test_memory_model.py::test_smollm2_shaped_job_peak_is_near_the_estimate",
    "test_sweep.py::test_smoke_sweep_runs_every_job_ok",
    "test_sweep.py::test_submitit_local_launcher_runs_smoke_sweep",
    "test_sweep.py::test_forked_and_interpreter_job_processes_record_the_same_result",
    "test_report_figures.py::test_committed_report_rebuilds_from_its_tables_with_legible_figures",
    "test_families.py::test_family_job_quantizes_trains_and_evaluates",
    "test_stats.py::test_two_level_bootstrap_carries_seed_and_document_variance",
    "test_gate.py::test_a_planted_fault_reaches_a_new_python_process",
    "test_job.py::test_failed_job_exits_nonzero_from_cli",
    "test_job.py::test_lean_heap_job_runs_and_records_its_choice",
    "test_config_refusals.py::test_codebook_with_a_fixed_level_type_exits_nonzero_naming_both_keys",
)


def _position(item: pytest.Item, tests: tuple[str, ...]) -> int:
    """Where ``item`` is listed in ``tests`` (a prefix of its node id below tests/), else len(tests)."""
    test_id = item.nodeid.partition("/")[2]
    return next((i for i, test in enumerate(tests) if test_id.startswith(test)), len(tests))


def _listed(item: pytest.Item, tests: tuple[str, ...]) -> bool:
    return _position(item, tests) < len(tests)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.module.__name__.rpartition(".")[2] in NUMERICAL_MODULES or _listed(item, NUMERICAL_TESTS):
            item.add_marker(pytest.mark.numerical)
        if _listed(item, SLOW_TESTS):
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: _position(item, SLOW_TESTS))  # stable: the rest keep their order


@pytest.fixture(scope="module")
def single_thread():
    """Small tensors: thread fan-out costs more than it saves, badly so when the 2 cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def hf_offline_constants(monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub and datasets read HF_*_OFFLINE at import: set the constants they read too."""
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing in the test suite may reach the Hugging Face hub."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def _package(frame) -> str:
    return str(frame.f_globals.get("__name__", "")).partition(".")[0]


def harness_reached_it() -> bool:
    """Whether the warning being shown was reached from harness/ code: the package that issued it is
    harness, or the nearest frame outside that package is. Called from ``warnings.showwarning`` (frame 1),
    below ``warnings`` and the frame that warned."""
    frame = sys._getframe(2)
    while frame is not None and _package(frame) == "warnings":
        frame = frame.f_back
    issuer = _package(frame) if frame is not None else ""
    while frame is not None and _package(frame) == issuer:
        frame = frame.f_back
    return issuer == "harness" or (frame is not None and _package(frame) == "harness")


@pytest.fixture(autouse=True)
def _deprecated_calls_from_harness_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    """A FutureWarning (an API to be removed) reached from harness/ code fails the test, whichever library
    issues it; the same warning reached from another library's own code (peft probing a deprecated
    transformers property) is only recorded. A ``filterwarnings`` entry cannot tell the two apart:
    transformers warns with stacklevel 1, so the warning names transformers' module, never the caller.
    pyproject's ``always::FutureWarning`` brings every occurrence here, not just the first per line."""

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, FutureWarning) and harness_reached_it():
            raise category(f"reached from harness/ code ({filename}:{lineno}): {message}")
        record = warnings.WarningMessage(message, category, filename, lineno, file, line)
        warnings._showwarnmsg_impl(record)  # what pytest records (its catch_warnings replaced this)

    monkeypatch.setattr(warnings, "showwarning", showwarning)


@pytest.fixture
def job_config():
    """Compose a job config from conf/ exactly as ``qlora-bench`` would, with overrides."""
    register_configs()

    def _compose(*overrides: str) -> DictConfig:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))

    return _compose
