"""Sweeps: every job in its own process, failures isolated and recorded, resume, the submitit launcher."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.config import validate_config
from harness.paths import CONF_DIR
from harness.report import load_results

BENCH = [sys.executable, "-c", "from harness.cli import bench; bench()"]


def _sweep(
    sweep_dir: Path, *overrides: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*BENCH, "-m", *overrides, f"hydra.sweep.dir={sweep_dir}"],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )


# Planted in every process of a sweep through PYTHONPATH (as benchmarks/gate_power.py plants its faults): the
# job process of the seed=1 job (``python -m harness.job .../seed=1/job_config.yaml ...``) dies at start-up.
DIE_AT_SEED_1 = """import os, sys
if sys.argv[:1] == ["-m"] and any("seed=1" in arg for arg in sys.argv[1:]):
    os._exit(3)
"""


def _planted(boot: Path, sitecustomize: str) -> dict[str, str]:
    """The environment of a sweep whose Python processes import ``sitecustomize`` first."""
    boot.mkdir()
    (boot / "sitecustomize.py").write_text(sitecustomize)
    return os.environ | {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(boot), os.environ.get("PYTHONPATH")]))
    }


def _statuses(sweep_dir: Path) -> dict[str, str]:
    table = load_results([sweep_dir]).table
    return {Path(p).parent.name: s for p, s in zip(table["path"], table["status"], strict=True)}


def test_smoke_sweep_runs_every_job_ok(tmp_path):
    """The named smoke sweep finishes with every storage type ok and a summary line (its 150 training steps
    cut to 5: this checks the sweep, CI's gate checks what the steps learn)."""
    proc = _sweep(tmp_path, "+sweep=smoke", "train.steps=5")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    statuses = _statuses(tmp_path)
    assert sorted(statuses) == sorted(f"quant={s},train.steps=5" for s in ("bf16", "nf4", "fp4", "int4"))
    assert set(statuses.values()) == {"ok"}
    assert "4 ok, 0 failed, 0 skipped" in proc.stdout


def test_hard_crash_is_isolated_and_resume_skips_finished_jobs(tmp_path):
    """A job killed by os._exit leaves the others ok and its own record failed; a re-run skips the ok one."""
    sweep_dir, env = tmp_path / "sweep", _planted(tmp_path / "boot", DIE_AT_SEED_1)
    overrides = ("model=tiny", "train=smoke", "train.steps=3", "eval=none", "seed=0,1")
    first = _sweep(sweep_dir, *overrides, env=env)
    assert first.returncode == 1, first.stdout[-3000:] + first.stderr[-3000:]
    statuses = {("died" if "seed=1" in name else "ok"): s for name, s in _statuses(sweep_dir).items()}
    assert statuses == {"ok": "ok", "died": "failed"}
    table = load_results([sweep_dir]).table
    failed = table[table["status"] == "failed"].iloc[0]
    assert "exited with code 3" in failed["error.message"]
    assert "1 ok, 1 failed, 0 skipped" in first.stdout

    second = _sweep(sweep_dir, *overrides, env=env)
    assert second.returncode == 1
    assert "0 ok, 1 failed, 1 skipped" in second.stdout

    forced = _sweep(sweep_dir, *overrides, "+force=true", env=env)
    assert "1 ok, 1 failed, 0 skipped" in forced.stdout


def test_submitit_local_launcher_runs_smoke_sweep(tmp_path):
    """hydra-submitit-launcher's local launcher (the engine behind Slurm runs) runs the smoke sweep."""
    proc = _sweep(
        tmp_path, "+sweep=smoke", "quant=nf4,int4", "train.steps=5", "hydra/launcher=submitit_local"
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert set(_statuses(tmp_path).values()) == {"ok"} and len(_statuses(tmp_path)) == 2


def _sweep_jobs(name: str) -> list[list[str]]:
    """The override lists of every job of named sweep ``name`` (the product of its sweeper params)."""
    params = yaml.safe_load((CONF_DIR / "sweep" / f"{name}.yaml").read_text())["hydra"]["sweeper"]["params"]
    choices = [[f"{key}={value}" for value in str(values).split(",")] for key, values in params.items()]
    return [[f"+sweep={name}", *job] for job in itertools.product(*choices)]


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF_DIR / "sweep").glob("*.yaml")))
def test_every_job_of_each_named_sweep_composes_and_validates(job_config, name: str) -> None:
    """A typo in a sweep file (a group option, a key, a value out of range) fails here, not an hour in."""
    for overrides in _sweep_jobs(name):
        validate_config(job_config(*overrides))
