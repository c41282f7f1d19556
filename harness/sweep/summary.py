"""The end-of-sweep summary: ok / failed / skipped counts and each failure's reason.

Jobs may run in other processes (submitit, Slurm), so each job appends its outcome as one JSON line to
``<sweep dir>/outcomes.jsonl`` tagged with this sweep run's id; the callback reads them back at the end.
"""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from harness.sweep.isolate import Outcome

RUN_ID_ENV = "QLORA_SWEEP_RUN_ID"
OUTCOMES_FILE = "outcomes.jsonl"


def record_outcome(sweep_dir: Path, outcome: Outcome) -> None:
    """Append one line; O_APPEND writes this small are atomic, so concurrent jobs do not interleave."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"run_id": os.environ.get(RUN_ID_ENV, ""), **asdict(outcome)}) + "\n"
    with open(sweep_dir / OUTCOMES_FILE, "a") as fh:
        fh.write(line)


def read_outcomes(sweep_dir: Path, run_id: str) -> list[Outcome]:
    path = sweep_dir / OUTCOMES_FILE
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [
        Outcome(r["job_dir"], r["status"], r.get("reason", "")) for r in rows if r.get("run_id") == run_id
    ]


def format_summary(outcomes: list[Outcome]) -> str:
    counts = Counter(o.status for o in outcomes)
    lines = [
        f"sweep summary: {counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped "
        f"(of {len(outcomes)} jobs)"
    ]
    lines += [f"  FAILED {o.job_dir}: {o.reason}" for o in outcomes if o.status == "failed"]
    return "\n".join(lines)


class SweepSummary(Callback):
    """Tags a multirun with an id, then prints its summary; a sweep with a failed job exits 1."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        os.environ[RUN_ID_ENV] = uuid.uuid4().hex

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        outcomes = read_outcomes(sweep_dir, os.environ.get(RUN_ID_ENV, ""))
        text = format_summary(outcomes)
        print(text, flush=True)
        (sweep_dir / "summary.txt").write_text(text + "\n")
        if any(o.status == "failed" for o in outcomes):
            raise SystemExit(1)
