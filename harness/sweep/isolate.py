"""Run one sweep job in a child process, so a crash, OOM kill or ``os._exit`` never stops the others.

Hydra's basic launcher runs every job inside one Python process; this wrapper is what each of its jobs
does instead of training in-process. It also makes sweeps resumable: a job whose ``result.json`` says
``ok`` for the same resolved config (hash) is skipped unless ``+force=true``.

On a host without CUDA each job process is a fork of one that imported ``harness.job`` once
(multiprocessing's forkserver, preloaded): the imports (torch, transformers, peft, bitsandbytes, lm-eval)
take ~11 s on a 2-core CPU, paid once per sweep instead of once per job, and each job is still a process of
its own that nothing else ran in. With CUDA a job starts a fresh interpreter (``python -m harness.job``): a
fork after CUDA is initialised is unsafe. So does a job whose environment differs from the one the
forkserver started with (variables read at import time would be stale in the fork).
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from multiprocessing.context import BaseContext
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from harness.config import config_dict
from harness.result import RESULT_FILE, ErrorBlock, ResultError, assemble_result, config_hash, read_result

JOB_CONFIG_FILE = "job_config.yaml"

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    job_dir: str
    status: str  # ok | failed | skipped
    reason: str = ""


def _finished_ok(job_dir: Path, expected_hash: str) -> bool:
    try:
        record = read_result(job_dir / RESULT_FILE)
    except ResultError:
        return False
    return record.get("status") == "ok" and record.get("config_hash") == expected_hash


def _exit_reason(returncode: int) -> str:
    if returncode < 0:
        name = signal.Signals(-returncode).name
        hint = " (the kernel's OOM killer sends SIGKILL)" if name == "SIGKILL" else ""
        return f"job process killed by {name}{hint}"
    return f"job process exited with code {returncode} before writing its result"


@functools.cache
def _preloaded_forkserver() -> tuple[BaseContext, dict[str, str]]:
    """multiprocessing's forkserver context, importing ``harness.job`` and the evaluation it loads on first
    use (lm-eval, ~0.5 s) when it starts (at the first job), and the environment it starts with."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["harness.job", "harness.evaluate", __name__])
    log.info("job processes fork from a forkserver that imports harness.job once (no CUDA here)")
    return context, dict(os.environ)


def run_forked(config_path: str, job_dir: str, cwd: str) -> None:
    """The forked job process: ``python -m harness.job CONFIG.yaml JOB_DIR`` from the parent's directory.
    ``harness.job`` is imported here, not at the top, so that the sweep's own process never pays for it."""
    from harness.job import main

    os.chdir(cwd)
    sys.exit(main([config_path, job_dir]))


def job_process_start() -> str:
    """How the next job process starts, in the words its result records as ``env.job_process``: ``forked``
    (from the preloaded forkserver) or ``interpreter`` (a fresh one: a host with CUDA or without forkserver
    (Windows), or an environment changed since the forkserver started)."""
    if torch.cuda.is_available() or "forkserver" not in multiprocessing.get_all_start_methods():
        return "interpreter"
    _, environ = _preloaded_forkserver()
    return "forked" if environ == dict(os.environ) else "interpreter"


def _run_job_process(config_path: Path, job_dir: Path) -> int:
    """Run the job in a process of its own; its exit code (negative: killed by that signal)."""
    if job_process_start() == "interpreter":
        command = [sys.executable, "-m", "harness.job", str(config_path), str(job_dir)]
        return subprocess.run(command).returncode
    context, _ = _preloaded_forkserver()
    process = context.Process(target=run_forked, args=(str(config_path), str(job_dir), os.getcwd()))
    process.start()
    process.join()
    return process.exitcode


def run_isolated(cfg: DictConfig, job_dir: Path, force: bool = False) -> Outcome:
    """Skip, or run the job for this config in a process of its own and make sure a result.json exists
    after."""
    resolved = config_dict(cfg)
    expected = config_hash(resolved)
    if not force and _finished_ok(job_dir, expected):
        return Outcome(str(job_dir), "skipped", "finished ok earlier with the same config")
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / RESULT_FILE).unlink(missing_ok=True)  # a stale record must not survive a crash
    config_path = job_dir / JOB_CONFIG_FILE
    OmegaConf.save(OmegaConf.create(resolved), config_path)
    returncode = _run_job_process(config_path, job_dir)
    try:
        record = read_result(job_dir / RESULT_FILE)
    except ResultError:
        reason = _exit_reason(returncode)
        assemble_result(resolved, {}, error=ErrorBlock(type="JobProcessDied", message=reason)).save(job_dir)
        return Outcome(str(job_dir), "failed", reason)
    if record.get("status") == "ok":
        return Outcome(str(job_dir), "ok")
    error = record.get("error") or {}
    return Outcome(str(job_dir), "failed", f"{error.get('type')}: {error.get('message')}")
