"""Which lm-eval tasks a job can run, checked before any training: the limit, task names, data files."""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import lm_eval
import lm_eval.tasks
from lm_eval.tasks import TaskManager

from harness.config import EvalConfig
from harness.data.paths import data_file
from harness.paths import default_cache_dir
from harness.tasks import TASKS_DIR


@functools.cache
def task_manager(include_path: tuple[str, ...], data_dir: str | None, defaults: bool) -> TaskManager:
    """The shipped tasks plus ``include_path`` (and lm-eval's own with ``defaults``).

    ``data_dir`` goes into every task's metadata, where ``harness.tasks.utils.load_local`` reads it.
    Cached: indexing lm-eval's ~15k built-in task files takes ~16 s on a 2-core CPU.
    """
    return TaskManager(
        include_path=[str(TASKS_DIR), *include_path],
        include_defaults=defaults,
        metadata={"data_dir": data_dir},
    )


def _builtin_names_file() -> tuple[Path, str]:
    """Where lm-eval's own task names are kept, one file per install (several checkouts' venvs share the
    cache dir), and the stamp they were read under (lm-eval's version and its task folder's modification
    time: an upgrade or an edited install reads them again)."""
    folder = Path(lm_eval.tasks.__file__).parent
    install = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:8]
    stamp = f"{lm_eval.__version__} {os.stat(folder).st_mtime_ns}"
    return default_cache_dir() / f"lm_eval-{lm_eval.__version__}-{install}-task-names.json", stamp


@functools.cache
def builtin_task_names() -> frozenset[str]:
    """lm-eval's own task, group and tag names, indexed once per lm-eval install and kept on disk (a typo in
    ``eval.tasks`` then fails at once instead of after the ~16 s index); an unreadable or unwritable cache
    only costs the index."""
    path, stamp = _builtin_names_file()
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        kept = json.loads(path.read_text())
        if kept["stamp"] == stamp:
            return frozenset(kept["names"])
    names = frozenset(task_manager((), None, defaults=True).all_tasks) - set(
        task_manager((), None, defaults=False).all_tasks
    )
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        partial.write_text(json.dumps({"stamp": stamp, "names": sorted(names)}))
        partial.replace(path)  # atomic: concurrent jobs never read half a file
    return names


def manager_for(cfg: EvalConfig, data_dir: str | None) -> TaskManager:
    """Index lm-eval's built-in tasks only when the shipped and user tasks do not cover ``cfg.tasks``; a name
    that neither they nor lm-eval's own (:func:`builtin_task_names`) know is refused first."""
    paths = tuple(str(p) for p in cfg.include_path)
    data_dir = str(data_dir) if data_dir else None
    local = task_manager(paths, data_dir, defaults=False)
    missing = [name for name in cfg.tasks if name not in local.task_index]
    if not missing:
        return local
    builtin = builtin_task_names()
    if unknown := [name for name in missing if name not in builtin]:
        raise ValueError(_unknown_message(unknown, sorted(set(local.all_tasks) | builtin)))
    return task_manager(paths, data_dir, defaults=True)


def lm_eval_limit(limit: int | float | None) -> int | float | None:
    """``eval.limit`` (checked by ``EvalConfig``) as lm-eval reads it: an int is examples per task, a float
    in (0, 1] a fraction of each task; lm-eval reads ``1.0`` as "one example", so it becomes ``None``."""
    return None if isinstance(limit, float) and limit == 1 else limit


def _children(tm: TaskManager, name: str) -> list[str]:
    """Registered members of a group or tag; inline group members have no files of their own to check."""
    entry = tm.task_index[name]
    if name in tm.all_tags:
        return sorted(entry.tags)
    members = [m if isinstance(m, str) else m.get("task", m.get("group")) for m in entry.cfg["task"]]
    return [m for m in members if m in tm.task_index]


def data_files(tm: TaskManager, name: str) -> Iterator[str]:
    """Data files (relative to the data directory) that task, group or tag ``name`` reads.

    A task declares them as ``dataset_kwargs.files`` (see ``harness/tasks/_local.yaml``).
    """
    if name in tm.all_groups or name in tm.all_tags:
        for child in _children(tm, name):
            yield from data_files(tm, child)
        return
    cfg = tm.task_index[name].cfg or {}
    yield from ((cfg.get("dataset_kwargs") or {}).get("files") or {}).values()


def _unknown_message(unknown: list[str], known: list[str]) -> str:
    """Name each unknown task with its closest known names, so a typo is fixed in one go."""
    lines = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else "no close match"
        lines.append(f"  {name!r}: {hint}")
    return (
        "unknown eval task(s):\n" + "\n".join(lines) + f"\nshipped tasks are in {TASKS_DIR}; add your own "
        "folders with eval.include_path=[...]; any lm-eval task name also works"
    )


def validate_tasks(cfg: EvalConfig, data_dir: str | None) -> None:
    """Fail before training, not after it: an unknown task name or a missing data file (the limit is
    checked by ``EvalConfig``)."""
    if not cfg.tasks:
        return
    tm = manager_for(cfg, data_dir)  # raises on an unknown task name
    for name in cfg.tasks:
        for relative in data_files(tm, name):
            data_file(relative, data_dir)  # raises DataDirError naming the file and the setting
