"""``qlora-bench ... +plan=true`` (or ``+plan=<device>``): each job's plan is printed before it launches,
and a job that cannot fit is recorded as failed with the reason instead of being run into an
out-of-memory error."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from harness.config import JobConfig, config_dict, validate_config
from harness.device import pick_device
from harness.plan.cli import render
from harness.plan.devices import GIB, DeviceSpec, device_spec, host_cpu, known_device
from harness.plan.predict import JobPlan, plan_job
from harness.plan.source import ModelConfigError, planned_model
from harness.result import JobResult, config_hash

WONT_FIT = "WontFit"


def local_device(job: JobConfig) -> DeviceSpec:
    """The device this job would run on here: the CUDA device's total memory, or this machine's CPU."""
    device = pick_device(str(job.device))
    if device.type != "cuda":
        return host_cpu()
    props = torch.cuda.get_device_properties(device)
    return known_device(props.name, props.total_memory / GIB)


def plan_for(cfg: DictConfig, label: str, setting: str) -> JobPlan:
    """The plan of a composed job on the local device (``setting`` true) or a named one."""
    job = validate_config(cfg)
    device = local_device(job) if str(setting).lower() == "true" else device_spec(str(setting), None)
    m = job.model
    return plan_job(
        label, job, device, planned_model(m.name_or_path, m.revision, m.cache_dir, m.trust_remote_code)
    )


def refuse_if_wont_fit(cfg: DictConfig, job_dir: Path, label: str, setting: str) -> str | None:
    """Print the job's plan; when it cannot fit write a failed result.json (error ``WontFit``) and return
    the reason, else None. A plan that cannot be made (no config.json offline) is said and the job runs."""
    try:
        plan = plan_for(cfg, label, setting)
    except ModelConfigError as exc:
        print(f"[plan] {label}: no plan ({exc}); running it", flush=True)
        return None
    print(f"[plan] {render(plan)}", flush=True)
    if plan.fits:
        return None
    resolved = config_dict(cfg)
    reason = f"{plan.reason()} ({plan.device.name}; qlora-plan predicts {plan.predicted_peak / GIB:.2f} GiB)"
    JobResult(
        status="failed",
        config=resolved,
        config_hash=config_hash(resolved),
        error={"type": WONT_FIT, "message": reason, "traceback": ""},
    ).save(job_dir)
    return reason
