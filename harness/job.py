"""One job: a config in, one ``result.json`` out.

The config is checked against the typed schema, then :func:`harness.recipe.recipe` runs the stages (data,
load, quantize, [evaluate before], LoRA, train, evaluate), yielding each block as it is measured. Bad input
is rejected before any heavy work; the ``JobResult`` is assembled from the yielded blocks once, at the end
or where a stage failed (``status: failed`` with the reason, every block measured before it kept).
Run directly as ``python -m harness.job CONFIG.yaml JOB_DIR``; a sweep runs each job in its own process,
started that way or forked from a process that imported this module once (``harness.sweep.isolate``).
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from harness.config import config_dict, validate_config
from harness.recipe import CAVEATS, Timer, recipe
from harness.result import ErrorBlock, JobResult, assemble_result

log = logging.getLogger(__name__)


def error_block(exc: BaseException) -> ErrorBlock:
    """Exception type, message and the tail of the traceback, as ``result.json`` stores them."""
    return ErrorBlock(
        type=type(exc).__name__,
        message=str(exc),
        traceback="".join(traceback.format_exception(exc)[-12:]),
    )


def run_job(cfg: DictConfig | dict[str, Any], job_dir: str | os.PathLike) -> JobResult:
    """Run one job and write ``job_dir/result.json`` once; returns it (``status`` ok or failed).

    Any failure is recorded with what was measured before it: an evaluation that fails after training
    keeps the training results.
    """
    values = config_dict(cfg) if isinstance(cfg, DictConfig) else cfg
    measured: dict[str, Any] = {}
    caveats: list[str] = []
    timer = Timer()
    start = time.perf_counter()
    error: ErrorBlock | None = ErrorBlock(type="Interrupted", message="the job was stopped (e.g. Ctrl-C)")
    try:
        for key, value in recipe(validate_config(values), Path(job_dir), timer):
            if key == CAVEATS:
                caveats.extend(value)
            else:
                measured[key] = value
        error = None
    except Exception as exc:  # every failure is recorded, never lost
        error = error_block(exc)
        log.error("job failed: %s: %s", type(exc).__name__, exc)
    finally:  # also when interrupted: the result then says so
        timings = {**timer.timings, "total": round(time.perf_counter() - start, 3)}
        result = assemble_result(values, measured, caveats, timings, error)
        result.save(job_dir)
    return result


def load_job_config(path: str | os.PathLike) -> dict[str, Any]:
    """A saved job config as plain values; :func:`run_job` checks it against the typed schema."""
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m harness.job CONFIG.yaml JOB_DIR``: exit 0 when the job is ok, 1 when it failed."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m harness.job CONFIG.yaml JOB_DIR", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
    try:
        cfg = load_job_config(args[0])
    except Exception as exc:  # an unreadable config file is still a recorded failure
        assemble_result({}, {}, error=error_block(exc)).save(args[1])
        print(f"job config {args[0]} rejected: {exc}", file=sys.stderr)
        return 1
    result = run_job(cfg, args[1])
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
