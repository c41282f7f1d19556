"""The environment a job ran in: package versions, device, the project's git commit, when it started."""

from __future__ import annotations

import importlib.metadata
import multiprocessing
import platform
import socket
import subprocess
from datetime import UTC, datetime

import torch

from harness.device import device_name
from harness.paths import CHECKOUT
from harness.train.meters import cpu_tensors_from_malloc, glibc_version

STARTED_KEY = "started_utc"  # when the job started, UTC; reports show the first and last
COMMIT_KEY = "git_commit"  # the checkout's commit; reports list every commit a row's jobs ran at

PACKAGES = (
    "torch",
    "bitsandbytes",
    "transformers",
    "peft",
    "lm_eval",
    "accelerate",
    "hydra-core",
    "datasets",
)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    """HEAD of the project's checkout, with ``-dirty`` when the tree has changes; None outside git."""
    if CHECKOUT is None:
        return None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=CHECKOUT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=CHECKOUT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{commit}-dirty" if dirty else commit


def short_commit(commit: str | None) -> str:
    """A :func:`git_commit` value as reports print it: 7 hex digits, keeping a ``-dirty`` suffix."""
    return "unknown" if not commit else commit[:7] + commit[40:]


def environment(device: torch.device, compute_dtype: str, compute_dtype_reason: str) -> dict:
    """Where, when and how a job ran: versions, device, compute dtype (and why it was chosen), commit, and the
    UTC time it started (so every reported number names its date)."""
    env = {"python": platform.python_version()}
    env.update({name.replace("-", "_"): _version(name) for name in PACKAGES})
    env.update(
        {
            "device": device.type,
            "device_name": device_name(device),
            "compute_dtype": compute_dtype,
            "compute_dtype_reason": compute_dtype_reason,
            "cuda": torch.version.cuda,
            "cpu_threads": torch.get_num_threads(),
            "hostname": socket.gethostname(),
            "platform": platform.platform(),
            # the C library running, which decides what the CPU heap keeps (harness.train.meters)
            "glibc": ".".join(map(str, glibc_version())) if glibc_version() else None,
            # where CPU tensors come from once the job sets its heap policy: "malloc" (reused exactly by
            # glibc, harness.train.cpu_allocator) or "torch" (its posix_memalign; no compiler, not glibc)
            "cpu_allocator": "malloc" if cpu_tensors_from_malloc() else "torch",
            # "forked": a sweep job forked from the preloaded forkserver (harness.sweep.isolate), whose CPU
            # peak RSS leaves out library pages that only the imports touched (110-150 MiB measured)
            "job_process": "forked" if multiprocessing.parent_process() else "interpreter",
            COMMIT_KEY: git_commit(),
            STARTED_KEY: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
    )
    return env
