"""Run one sweep job in a child process, so a crash, OOM kill or ``os._exit`` never stops the others.

Hydra's basic launcher runs every job inside one Python process; this wrapper is what each of its jobs
does instead of training in-process. It also makes sweeps resumable: a job whose ``result.json`` says
``ok`` for the same resolved config (hash) is skipped unless ``+force=true``.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from harness.config import config_dict
from harness.result import RESULT_FILE, ErrorBlock, ResultError, assemble_result, config_hash, read_result

JOB_CONFIG_FILE = "job_config.yaml"


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


def run_isolated(cfg: DictConfig, job_dir: Path, force: bool = False) -> Outcome:
    """Skip, or run ``python -m harness.job`` for this config and make sure a result.json exists after."""
    resolved = config_dict(cfg)
    expected = config_hash(resolved)
    if not force and _finished_ok(job_dir, expected):
        return Outcome(str(job_dir), "skipped", "finished ok earlier with the same config")
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / RESULT_FILE).unlink(missing_ok=True)  # a stale record must not survive a crash
    config_path = job_dir / JOB_CONFIG_FILE
    OmegaConf.save(OmegaConf.create(resolved), config_path)
    proc = subprocess.run([sys.executable, "-m", "harness.job", str(config_path), str(job_dir)])
    try:
        record = read_result(job_dir / RESULT_FILE)
    except ResultError:
        reason = _exit_reason(proc.returncode)
        assemble_result(resolved, {}, error=ErrorBlock(type="JobProcessDied", message=reason)).save(job_dir)
        return Outcome(str(job_dir), "failed", reason)
    if record.get("status") == "ok":
        return Outcome(str(job_dir), "ok")
    error = record.get("error") or {}
    return Outcome(str(job_dir), "failed", f"{error.get('type')}: {error.get('message')}")
