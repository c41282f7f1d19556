"""``qlora-bench``: the Hydra app. One job in-process, or with ``-m`` a sweep of isolated jobs."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from harness.config import register_configs
from harness.paths import CONF_DIR
from harness.sweep.isolate import Outcome, run_isolated
from harness.sweep.summary import record_outcome


def _pop_force(cfg: DictConfig) -> bool:
    """``+force=true`` re-runs finished jobs; it is a sweep switch, not part of the job's config."""
    with open_dict(cfg):
        return bool(cfg.pop("force", False))


def _pop_plan(cfg: DictConfig) -> str | None:
    """``+plan=true`` (this machine's device) or ``+plan=<device name>``: print each job's plan before it
    launches and refuse a job that cannot fit (harness.plan.sweep); a sweep switch, like ``force``."""
    with open_dict(cfg):
        value = cfg.pop("plan", None)
    return None if value in (None, False) else str(value)


def _refusal(cfg: DictConfig, job_dir: Path, name: str, device: str) -> str | None:
    """Why the job cannot fit on ``device`` (harness.plan.sweep), or None; the planner, which reads models
    through transformers, is imported only when ``+plan`` asks for it."""
    from harness.plan.sweep import refuse_if_wont_fit

    return refuse_if_wont_fit(cfg, job_dir, name, device)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    job_dir = Path(hydra_cfg.runtime.output_dir)
    force = _pop_force(cfg)
    plan = _pop_plan(cfg)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    reason = plan and _refusal(cfg, job_dir, hydra_cfg.job.override_dirname or "defaults", plan)
    if reason and not multirun:
        print(f"[failed] {job_dir} {reason}", flush=True)
        sys.exit(1)
    if multirun:
        outcome = (
            Outcome(str(job_dir), "failed", reason) if reason else run_isolated(cfg, job_dir, force=force)
        )
        record_outcome(Path(hydra_cfg.sweep.dir), outcome)
        print(f"[{outcome.status}] {job_dir} {outcome.reason}".rstrip(), flush=True)
        return
    from harness.job import run_job  # a sweep's launcher never runs a job itself: it starts without them

    result = run_job(cfg, job_dir)
    print(f"[{result.status}] {job_dir / 'result.json'}", flush=True)
    if not result.ok:
        sys.exit(1)


def bench() -> None:
    """Console entry point: a failed single job exits 1, and so does a sweep with a failed job."""
    register_configs()
    _main()
