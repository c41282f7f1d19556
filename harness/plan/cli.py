"""``qlora-plan``: will a job (or every job of a sweep) fit on a device, and how fast will it train?

Takes ``qlora-bench``'s overrides (``-m`` and named sweeps too) plus ``plan.device=<name>`` and/or
``plan.memory_gib=<GiB>``, ``plan.out=<file.csv>`` and ``plan.efficiency=<fraction of peak>``. Reads only
the model's config.json. Exit status: 0 every job fits, 1 some job does not, 2 bad input.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass, fields
from pathlib import Path

from hydra.errors import HydraException

from harness.plan.compose import compose_jobs
from harness.plan.devices import DEVICES, GIB, DeviceError, device_spec
from harness.plan.predict import JobPlan, plan_job
from harness.plan.source import ModelConfigError, planned_model

USAGE = (
    "usage: qlora-plan [-m] [qlora-bench overrides ...] plan.device=<name>|plan.memory_gib=<GiB> "
    "[plan.out=plan.csv] [plan.efficiency=<0..1>]\n"
    f"devices: {', '.join(DEVICES)}, cpu"
)


class PlanInputError(ValueError):
    """A ``plan.*`` argument is unknown or out of range."""


@dataclass
class PlanConfig:
    """The planner's own settings (``plan.<key>=<value>`` on the command line)."""

    device: str | None = None  # a name from harness.plan.devices.DEVICES, or cpu
    memory_gib: float | None = None  # the device's memory; alone: a CUDA device of this size
    out: str | None = None  # CSV file: one row per job
    efficiency: float | None = None  # fraction of the device's peak a step reaches (default: EFFICIENCY)

    def __post_init__(self) -> None:
        if self.memory_gib is not None:
            self.memory_gib = _number("plan.memory_gib", self.memory_gib, "a number of GiB > 0")
        if self.efficiency is not None:
            self.efficiency = _number("plan.efficiency", self.efficiency, "a fraction in (0, 1]")
            if self.efficiency > 1:
                raise PlanInputError(f"plan.efficiency={self.efficiency} is not allowed; allowed: (0, 1]")


def _number(key: str, value, allowed: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not number > 0:
        raise PlanInputError(f"{key}={value!r} is not allowed; allowed: {allowed}")
    return number


def split_args(argv: list[str]) -> tuple[PlanConfig, list[str], bool]:
    """(plan settings, the job overrides, whether -m was given)."""
    multirun = any(a in ("-m", "--multirun") for a in argv)
    known = {f.name for f in fields(PlanConfig)}
    plan, overrides = {}, []
    for arg in argv:
        if arg in ("-m", "--multirun"):
            continue
        key, _, value = arg.lstrip("+").partition("=")
        if not key.startswith("plan."):
            overrides.append(arg)
        elif key[5:] in known:
            plan[key[5:]] = value
        else:
            raise PlanInputError(f"unknown setting {key!r}; allowed: {', '.join('plan.' + k for k in known)}")
    return PlanConfig(**plan), overrides, multirun


def plan_jobs(argv: list[str]) -> tuple[PlanConfig, list[JobPlan]]:
    """Every job's plan for a command line; bad input raises before any model is read."""
    settings, overrides, multirun = split_args(argv)
    device = device_spec(settings.device, settings.memory_gib)
    plans = []
    for label, job in compose_jobs(overrides, multirun):
        m = job.model
        model = planned_model(m.name_or_path, m.revision, m.cache_dir, m.trust_remote_code)
        plans.append(plan_job(label, job, device, model, settings.efficiency))
    return settings, plans


def render(plan: JobPlan) -> str:
    """A job's plan as text: the terms, the verdict, the searches and the time."""
    lines = [f"job {plan.job} on {plan.device.name} ({plan.device.memory_gib:.1f} GiB, {plan.device.kind})"]
    lines += [f"  {name:<24}{value / GIB:9.3f} GiB" for name, value in plan.terms.items()]
    if plan.paged_optimizer_state:
        lines.append(f"  {'(paged optimizer state)':<24}{plan.paged_optimizer_state / GIB:9.3f} GiB")
    lines.append(
        f"  predicted peak {plan.predicted_peak / GIB:.2f} GiB ({plan.peak_phase} phase): {plan.reason()}"
    )
    lines.append(
        f"  largest train.batch_size that fits at this seq_len: {plan.max_batch_size or 'none'}; "
        f"longest train.seq_len at this batch size: {plan.max_seq_len or 'none'}"
    )
    if plan.tokens_per_s:
        lines.append(
            f"  predicted step {plan.step_time_s:.3g} s, {plan.tokens_per_s:.4g} tokens/s "
            f"({plan.step_flops / 1e12:.3g} TFLOP a step at {plan.tflops:.3g} TFLOP/s = peak x "
            f"{plan.efficiency:.0%} efficiency)"
        )
    else:
        lines.append("  no time predicted: the device's peak rate is unknown (name it with plan.device)")
    lines += [f"  note: {note}" for note in plan.notes]
    return "\n".join(lines)


def write_csv(path: str, plans: list[JobPlan]) -> None:
    rows = [p.row() for p in plans]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(Path(path), "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    try:
        settings, plans = plan_jobs(args)
    except (PlanInputError, DeviceError, ModelConfigError, ValueError, HydraException) as exc:
        print(f"qlora-plan: {exc}\n{USAGE}", file=sys.stderr)
        return 2
    print("\n\n".join(render(p) for p in plans))
    if settings.out:
        write_csv(settings.out, plans)
        print(f"wrote {settings.out} ({len(plans)} jobs)")
    return 0 if all(p.fits for p in plans) else 1


def console() -> None:
    sys.exit(main())


if __name__ == "__main__":
    console()
