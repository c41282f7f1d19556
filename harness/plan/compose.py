"""The jobs a ``qlora-bench`` command line describes, composed exactly as ``qlora-bench`` composes them
(Hydra, the same config tree, schema and named sweeps), without launching anything."""

from __future__ import annotations

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from harness.config import JobConfig, register_configs, validate_config
from harness.paths import CONF_DIR

# Overrides that steer the sweep rather than the job (as config.yaml's override_dirname leaves them out).
NOT_IN_LABEL = ("sweep", "force", "plan")


def job_label(overrides: list[str]) -> str:
    """A job's name: its overrides, as a sweep names the job's directory (``quant=nf4,lora.r=64``)."""
    kept = [o for o in overrides if o.lstrip("+~").split("=", 1)[0].split(".")[0] not in NOT_IN_LABEL]
    return ",".join(kept) or "defaults"


def sweep_overrides(overrides: list[str], multirun: bool) -> list[list[str]]:
    """The override list of every job: one for a single job; for ``-m`` the named sweep's
    ``hydra.sweeper.params`` and the command line's swept values expanded as Hydra's basic sweeper does."""
    parser = OverridesParser.create()
    parsed = parser.parse_overrides(overrides)
    swept = [o.input_line for o in parsed if o.is_sweep_override()]
    if not multirun:
        if swept:
            raise ValueError(f"{swept} sweep several values: add -m (as qlora-bench -m does)")
        return [list(overrides)]
    plain = [o.input_line for o in parsed if not o.is_sweep_override()]
    base = compose(config_name="config", overrides=plain, return_hydra_config=True)
    params = [f"{key}={value}" for key, value in (base.hydra.sweeper.params or {}).items()]
    batches = BasicSweeper.split_arguments(parser.parse_overrides(params + list(overrides)), None)
    return [list(job) for batch in batches for job in batch]


def compose_jobs(overrides: list[str], multirun: bool) -> list[tuple[str, JobConfig]]:
    """(label, validated JobConfig) of every job the command line describes; a bad key or value fails
    here with the schema's message, before anything is planned."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="qlora-plan"):
        jobs = sweep_overrides(overrides, multirun)
        return [
            (job_label(job), validate_config(compose(config_name="config", overrides=job))) for job in jobs
        ]
