"""Where a job's CPU peak happens, phase by phase: the resident-set peak and glibc's heap of every phase.

``python -m benchmarks.memory_phases JOB_CONFIG.yaml JOB_DIR [--out phases.json]`` runs the job
(``harness.job.run_job``, in this process) with global hooks at the phase boundaries of each training
step: ``forward`` (forward and loss), ``backward``, ``clip`` and ``optimizer``. At each boundary it reads
the phase's peak resident set (VmHWM, then reset: nothing is sampled, nothing runs beside the job) and
``harness.train.meters.heap_stats`` (mallinfo2). Per phase it keeps the step with the largest peak from the
second step on (the optimizer state exists then): what the memory model's phases predict
(``harness.train.memory_model``) and, under ``cpu_heap=fast``, how much the heap holds that is free memory
(``free``) rather than live tensors. The resets replace the job's own VmHWM: the training peak is the
largest phase peak (``peak_rss``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from harness.job import load_job_config, run_job
from harness.train.meters import heap_stats, reset_peak_memory, rss_bytes


class PhaseMeter:
    """The resident-set peak of each phase of each step (VmHWM reset at every phase boundary, so nothing is
    sampled and nothing runs beside the job) and glibc's heap when the phase ends."""

    def __init__(self) -> None:
        self.phase, self.step = "setup", 0
        self.records: list[dict] = []

    def mark(self, phase: str) -> None:
        """End the current phase (record its peak) and start ``phase``."""
        if self.phase != "setup":
            self.records.append(
                {
                    "step": self.step,
                    "phase": self.phase,
                    "peak_rss": rss_bytes("VmHWM"),
                    "rss_file": rss_bytes("RssFile"),
                    **heap_stats(),
                }
            )
        self.phase = phase
        reset_peak_memory(torch.device("cpu"))

    def _next_step(self) -> None:
        self.step += 1
        self.mark("forward")

    def peaks(self) -> dict[str, dict]:
        """Per phase, the record with the largest peak from the second step on (optimizer state exists)."""
        best: dict[str, dict] = {}
        for r in self.records:
            if r["step"] >= 1 and r["peak_rss"] > best.get(r["phase"], {}).get("peak_rss", 0):
                best[r["phase"]] = r
        return best

    def __enter__(self) -> PhaseMeter:
        self._hooks = [
            register_optimizer_step_pre_hook(lambda *_: self.mark("optimizer")),
            register_optimizer_step_post_hook(lambda *_: self._next_step()),
        ]
        backward = torch.Tensor.backward

        def marked_backward(tensor, *args, **kwargs):
            self.mark("backward")
            backward(tensor, *args, **kwargs)
            self.mark("clip")

        self._backward, torch.Tensor.backward = backward, marked_backward
        return self

    def __exit__(self, *exc) -> None:
        torch.Tensor.backward = self._backward
        for hook in self._hooks:
            hook.remove()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.memory_phases", description=__doc__.split("\n")[0])
    p.add_argument("config", type=Path, help="a job_config.yaml (a sweep job's, or qlora-bench --cfg job)")
    p.add_argument("job_dir", type=Path)
    p.add_argument("--out", type=Path, default=None, help="default: JOB_DIR/phases.json")
    args = p.parse_args(argv)
    with PhaseMeter() as meter:
        result = run_job(load_job_config(args.config), args.job_dir)
    train = result.train
    record = {
        "status": result.status,
        # the last interval (after the last step) is the job's own VmHWM reading
        "peak_rss": max([r["peak_rss"] for r in meter.records] + [train.peak_memory_bytes if train else 0]),
        "memory_estimate": train.memory_estimate if train else None,
        "largest_batch": train.largest_batch if train else None,
        "phases": meter.peaks(),
        "records": meter.records,
    }
    out = args.out or args.job_dir / "phases.json"
    out.write_text(json.dumps(record, indent=1))
    print(json.dumps(record["phases"], indent=1))


if __name__ == "__main__":
    main()
