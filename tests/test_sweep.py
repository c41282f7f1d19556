"""Sweeps: every job in its own process, failures isolated and recorded, resume, the submitit launcher."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from harness.config import validate_config
from harness.paths import CONF_DIR
from harness.report import load_results
from harness.sweep.isolate import job_process_start, run_isolated

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
# seed=1 job's process dies at start-up, when it reads its config (an audit hook, so it fires whether the
# job process was forked from the preloaded forkserver or started as ``python -m harness.job``; the sweep's
# own process writes that file, it never opens it for reading).
DIE_AT_SEED_1 = """import os, sys
def _die_at_seed_1(event, args):
    path = str(args[0]) if event == "open" else ""
    if path.endswith("job_config.yaml") and "seed=1" in path and args[1] == "r":
        os._exit(3)
sys.addaudithook(_die_at_seed_1)
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


def _measured(job_dir: Path) -> dict:
    """A result.json without what differs between two runs of one job: where and when, timings, speed,
    memory (the resident set, and the estimate built on the one measured before loading)."""
    record = json.loads((job_dir / "result.json").read_text())
    for key in ("env", "timings_s"):
        record.pop(key)
    for key in ("tokens_per_s", "step_time_s_median", "peak_memory_bytes", "memory_estimate_bytes"):
        record["train"].pop(key)
    record["train"].pop("memory_estimate")
    return record


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA every job process starts an interpreter")
def test_forked_and_interpreter_job_processes_record_the_same_result(job_config, tmp_path, monkeypatch):
    """Without CUDA a sweep forks each job from a forkserver that imported harness.job once; a changed
    environment (read at import time) starts an interpreter instead. Both record the same results and say
    how they started. The first sweep job of this pytest process, so the forkserver starts here."""
    cfg = job_config("model=tiny", "train=smoke", "train.steps=2", "eval=none")
    assert job_process_start() == "forked"
    assert run_isolated(cfg, tmp_path / "forked").status == "ok"
    monkeypatch.setenv("QLORA_TEST_CHANGED", "1")
    assert job_process_start() == "interpreter"
    assert run_isolated(cfg, tmp_path / "interpreter").status == "ok"
    processes = [
        json.loads((tmp_path / d / "result.json").read_text())["env"]["job_process"]
        for d in ("forked", "interpreter")
    ]
    assert processes == ["forked", "interpreter"]
    assert _measured(tmp_path / "forked") == _measured(tmp_path / "interpreter")


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
