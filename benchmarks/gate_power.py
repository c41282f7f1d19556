"""Planted-fault benchmark of the CI gate (issue 13): which realistic bugs does ``.ci/run`` catch?

For each fault: run the CI smoke sweep with the fault planted in every Python process of the sweep, then
``qlora-compare`` against the committed baseline exactly as ``.ci/run`` does, and record caught (exit 1) or
missed (exit 0) and the metrics that regressed. A fault is a monkeypatch, never a file edit: the sweep runs
each job in a process of its own (a ``python -m harness.job`` interpreter, or without CUDA a fork of a
forkserver that imported ``harness.job``: ``harness.sweep.isolate``), so the patch travels as an environment
variable that a ``sitecustomize`` (on ``PYTHONPATH``, in a temporary directory) reads at interpreter start-up,
before any harness module is imported — ``from x import f`` in the job (or in the forkserver, whose forks
inherit it) then binds the patched ``f``. Each interpreter that plants a fault appends its pid to a log, so a
fault that never reached the jobs cannot pass as "missed" (with forked jobs the log names the sweep's process
and the forkserver, not each job).

    flock /tmp/qlora-heavy.lock .venv/bin/python benchmarks/gate_power.py            # all faults (~15 sweeps)
    .venv/bin/python benchmarks/gate_power.py --faults clean-1 nf4-as-fp4 --out /tmp/gp
    .venv/bin/python benchmarks/gate_power.py --compare-only   # new tolerances, same sweeps: seconds

Writes ``<out>/<fault>/`` (the sweep and its compare.json), the table so far to ``<out>/gate_power.md`` after
each fault, and the whole table to ``reports/ci/gate_power.md`` at the end (a tracked file written mid-run
would mark the later jobs' commit ``-dirty``).
A benchmark, not a test: it takes ~1-3 minutes per fault on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FAULT_ENV = "QLORA_PLANTED_FAULT"
FAULT_LOG_ENV = "QLORA_PLANTED_FAULT_LOG"
SITECUSTOMIZE = f"""import os
if os.environ.get({FAULT_ENV!r}):
    import runpy
    runpy.run_path({str(Path(__file__).resolve())!r})["plant"](os.environ[{FAULT_ENV!r}])
"""


def _patch(module_names: tuple[str, ...], attr: str, wrap: Callable) -> None:
    """Replace ``attr`` by ``wrap(original)`` in every listed module that has it (the defining module and
    the modules that imported it by name before the patch)."""
    import importlib

    modules = [importlib.import_module(name) for name in module_names]
    original = next(getattr(m, attr) for m in modules if hasattr(m, attr))
    patched = wrap(original)
    for module in modules:
        if hasattr(module, attr):
            setattr(module, attr, patched)


def _quantize_with(**forced) -> Callable[[], None]:
    """Storing that silently overrides some of its settings (block size, double quantization)."""

    def plant() -> None:
        from dataclasses import replace

        from harness.quant.spec import StorageSpec

        store = StorageSpec.store
        StorageSpec.store = lambda self, weight, args: store(self, weight, replace(args, **forced))

    return plant


def _nf4_as_fp4() -> None:
    from harness.quant import STORAGE_SPECS

    STORAGE_SPECS["nf4"].quant_type = "fp4"


def _scaled_dequantize(epsilon: float) -> Callable[[], None]:
    def plant() -> None:
        from harness.quant import STORAGE_SPECS

        for storage in ("nf4", "fp4"):
            spec = STORAGE_SPECS[storage]
            spec.decode = lambda *args, decode=spec.decode, **kwargs: decode(*args, **kwargs) * (1 + epsilon)

    return plant


def _int4_coarse_grid() -> None:
    from harness.quant import int4

    int4.INT4_MAX = 3


def _attach_lora_with(change: Callable) -> Callable[[], None]:
    """An attach_lora() that alters what it was asked for: fewer targets, no dropout."""

    def plant() -> None:
        def wrap(attach_lora):
            return lambda model, cfg, targets, seed: attach_lora(model, *change(cfg, targets), seed)

        _patch(("harness.model.lora",), "attach_lora", wrap)

    return plant


def _lr_scaled() -> None:
    def wrap(build_optimizer):
        return lambda params, cfg: build_optimizer(params, dataclasses.replace(cfg, lr=cfg.lr * 0.1))

    _patch(("harness.train.optim", "harness.train.loop"), "build_optimizer", wrap)


def _no_grad_clip() -> None:
    import torch

    clip = torch.nn.utils.clip_grad_norm_
    torch.nn.utils.clip_grad_norm_ = lambda params, max_norm, *args, **kwargs: clip(
        params, float("inf"), *args, **kwargs
    )


def _clean() -> None:
    """No fault: the false-alarm check."""


# name: (what the bug does, how it is planted)
FAULTS: dict[str, tuple[str, Callable[[], None]]] = {
    "clean-1": ("no fault (false-alarm check)", _clean),
    "dequant-x1.01": ("NF4/FP4 dequantize scaled by 1 + 1%", _scaled_dequantize(0.01)),
    "dequant-x1.02": ("NF4/FP4 dequantize scaled by 1 + 2%", _scaled_dequantize(0.02)),
    "nf4-as-fp4": ("nf4 requested, stored and decoded as fp4", _nf4_as_fp4),
    "blocksize-64": ("block size ignored: always 64", _quantize_with(blocksize=64)),
    "dq-off": ("double quantization silently off", _quantize_with(double_quant=False)),
    "dq-on": ("double quantization silently on", _quantize_with(double_quant=True)),
    "clean-2": ("no fault (false-alarm check)", _clean),
    "int4-grid-3": ("Int4 codes on -3..3 instead of -7..7", _int4_coarse_grid),
    "lora-half-targets": (
        "LoRA on the first half of the requested targets only",
        _attach_lora_with(lambda cfg, targets: (cfg, targets[: len(targets) // 2])),
    ),
    "lr-x0.1": ("learning rate x 0.1", _lr_scaled),
    "no-grad-clip": ("gradient clipping disabled", _no_grad_clip),
    "no-lora-dropout": (
        "LoRA dropout ignored",
        _attach_lora_with(lambda cfg, targets: (dataclasses.replace(cfg, dropout=0.0), targets)),
    ),
    "clean-3": ("no fault (false-alarm check)", _clean),
    # last: if 1 % and 2 % are caught, 5 % adds least, and a run cut short by its time budget loses it first
    "dequant-x1.05": ("NF4/FP4 dequantize scaled by 1 + 5%", _scaled_dequantize(0.05)),
}


def plant(name: str) -> None:
    """Apply fault ``name`` to this process (called by the sitecustomize) and log the pid."""
    FAULTS[name][1]()
    if log := os.environ.get(FAULT_LOG_ENV):
        with open(log, "a") as fh:
            fh.write(f"{os.getpid()} {name}\n")


@dataclasses.dataclass
class Outcome:
    fault: str
    description: str
    caught: bool | None  # None: the sweep or the comparison could not run
    regressions: list[str]
    improvements: list[str]
    planted_processes: int
    sweep_s: float
    note: str = ""


def _run(cmd: list[str], env: dict[str, str], log: Path) -> int:
    with log.open("w") as fh:
        return subprocess.run(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode


SWEEP_RECORD = "sweep_run.json"  # exit code and seconds of a fault's sweep, for --compare-only


def _plant_and_sweep(name: str, sweep_dir: Path, boot: Path, clean_env: dict[str, str]) -> tuple[int, float]:
    """The CI smoke sweep with fault ``name`` planted in every process: its exit code and seconds."""
    fault_log = sweep_dir / "planted.log"
    fault_log.unlink(missing_ok=True)
    python_path = os.pathsep.join(filter(None, [str(boot), os.environ.get("PYTHONPATH")]))
    fault_env = clean_env | {"PYTHONPATH": python_path, FAULT_ENV: name, FAULT_LOG_ENV: str(fault_log)}
    start = time.perf_counter()
    sweep_rc = _run(
        [str(BIN / "qlora-bench"), "-m", "+sweep=smoke", f"hydra.sweep.dir={sweep_dir}"],
        fault_env,
        sweep_dir / "sweep.log",
    )
    sweep_s = time.perf_counter() - start
    (sweep_dir / SWEEP_RECORD).write_text(json.dumps({"exit_code": sweep_rc, "seconds": sweep_s}) + "\n")
    return sweep_rc, sweep_s


def run_fault(
    name: str, out: Path, baseline: Path, tolerances: Path, boot: Path, compare_only: bool = False
) -> Outcome:
    """The CI smoke sweep with fault ``name`` planted, then the CI comparison (without the fault).
    ``compare_only``: judge the sweep already in ``out`` again (after a change of tolerances or gate)."""
    sweep_dir = out / name
    sweep_dir.mkdir(parents=True, exist_ok=True)
    clean_env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    if compare_only:
        record = json.loads((sweep_dir / SWEEP_RECORD).read_text())
        sweep_rc, sweep_s = record["exit_code"], record["seconds"]
    else:
        sweep_rc, sweep_s = _plant_and_sweep(name, sweep_dir, boot, clean_env)
    fault_log = sweep_dir / "planted.log"
    compare_json = sweep_dir / "compare.json"
    compare_rc = _run(
        [str(BIN / "qlora-compare"), str(baseline), str(sweep_dir), "--tolerances", str(tolerances)]
        + ["--markdown", str(sweep_dir / "compare.md"), "--json", str(compare_json)],
        clean_env,
        sweep_dir / "compare.log",
    )
    planted = len(fault_log.read_text().splitlines()) if fault_log.exists() else 0
    description = FAULTS[name][0]
    if compare_rc not in (0, 1) or not compare_json.exists():
        note = f"qlora-compare exit {compare_rc}, sweep exit {sweep_rc}: see {sweep_dir}/compare.log"
        return Outcome(name, description, None, [], [], planted, sweep_s, note)
    from harness.compare.compare import CHANGED, FAILING, IMPROVED

    rows = json.loads(compare_json.read_text())["rows"]
    failing = [
        f"{r['job']}: {r['metric']}" + (" (changed)" if r["verdict"] == CHANGED else "")
        for r in rows
        if r["verdict"] in FAILING
    ]
    improved = [f"{r['job']}: {r['metric']}" for r in rows if r["verdict"] == IMPROVED]
    note = "" if sweep_rc == 0 else f"sweep exit {sweep_rc} (a job failed)"
    return Outcome(name, description, compare_rc == 1, failing, improved, planted, sweep_s, note)


def _sweep_commits(out: Path, outcomes: list[Outcome]) -> str:
    """The commits the fault sweeps' jobs recorded (``env.git_commit``): with --compare-only, not this one."""
    from harness.env import short_commit

    commits = {
        short_commit(json.loads(path.read_text()).get("env", {}).get("git_commit"))
        for o in outcomes
        for path in (out / o.fault).glob("*/result.json")
    }
    return ", ".join(sorted(commits)) or "unknown"


def _short(items: list[str], limit: int = 4) -> str:
    shown = ", ".join(f"`{item}`" for item in items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "") if items else "–"


# The gated metrics whose run-to-run spread the clean repeats measure (the tolerances are derived from it).
SPREAD_METRICS = (
    "quant.bits_per_param",
    "quant.weight_error.rel_rms",
    "eval_before.fixed_text_local.bits_per_byte",
    "eval.fixed_text_local.bits_per_byte",
    "eval.synthetic_local.acc",
    "eval.synthetic_local.brier_score",
    "train.loss_end",
    "lora.trainable_params",
    "train.peak_memory_bytes",
    "train.tokens_per_s",
)


def spread_table(sweep_dirs: list[Path]) -> list[str]:
    """Per metric, the largest relative range (max - min) / |mean| over the clean runs of any one job."""
    import pandas as pd

    from harness.report.load import load_results

    tables = [load_results([d]).table.assign(run=d.name) for d in sweep_dirs if d.exists()]
    if len(tables) < 2:
        return []
    table = pd.concat(tables)
    table = table[table["status"] == "ok"]
    lines = [
        "",
        f"## Run-to-run spread over the {len(tables)} clean runs",
        "",
        "Largest (max - min) / |mean| over the runs of one job, and which job; 0 means bit-identical.",
        "",
        "| metric | largest relative range | job |",
        "|---|---|---|",
    ]
    for metric in SPREAD_METRICS:
        if metric not in table:
            continue
        by_job = table.groupby("config.quant.storage")[metric].agg(["min", "max", "mean"])
        rel = ((by_job["max"] - by_job["min"]) / by_job["mean"].abs()).fillna(0.0)
        lines.append(f"| `{metric}` | {rel.max():.3g} | {rel.idxmax()} |")
    return lines


def to_markdown(outcomes: list[Outcome], command: str, out: Path) -> str:
    import torch  # here, not at the top: every sweep process imports this module to plant its fault

    from harness.device import device_name
    from harness.env import git_commit, short_commit

    faults = [o for o in outcomes if not o.fault.startswith("clean")]
    clean = [o for o in outcomes if o.fault.startswith("clean")]
    caught = sum(bool(o.caught) for o in faults)
    alarms = sum(bool(o.caught) for o in clean)
    lines = [
        "# CI gate power: planted faults",
        "",
        f"`{command}` — commit {short_commit(git_commit())}, {device_name(torch.device('cpu'))}, "
        f"{os.cpu_count()} cores, "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, Python {platform.python_version()}. "
        f"The sweeps ran at commit {_sweep_commits(out, outcomes)}.",
        "",
        f"**Caught {caught} of {len(faults)} planted faults; "
        f"{alarms} false alarm(s) in {len(clean)} clean runs.**",
        "Each row: the smoke sweep with the fault planted in every process, then `qlora-compare` against",
        "`reports/baselines/smoke` with its tolerances, as `.ci/run` runs it. *Failing metrics*: worse",
        "beyond tolerance, or *(changed)*: moved beyond it the good way under a `two_sided` rule. *Moved but",
        "improved*: the good way under a one-sided rule, which does not fail.",
        "",
        "| fault | what it does | caught | failing metrics (what caught it) | moved but improved "
        "| processes planted | sweep s |",
        "|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        verdict = {True: "**caught**", False: "missed", None: "error"}[o.caught]
        if o.fault.startswith("clean"):
            verdict = {True: "**false alarm**", False: "passed", None: "error"}[o.caught]
        lines.append(
            f"| {o.fault} | {o.description} | {verdict} | {_short(o.regressions)} | {_short(o.improvements)} "
            f"| {o.planted_processes} | {o.sweep_s:.0f} |" + (f" {o.note}" if o.note else "")
        )
    lines += spread_table([out / o.fault for o in clean])
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faults", nargs="+", choices=list(FAULTS), default=list(FAULTS))
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "gate_power")
    parser.add_argument("--baseline", type=Path, default=ROOT / "reports/baselines/smoke/results.csv")
    parser.add_argument("--tolerances", type=Path, default=ROOT / "reports/baselines/smoke/tolerances.yaml")
    parser.add_argument("--report", type=Path, default=ROOT / "reports/ci/gate_power.md")
    parser.add_argument(
        "--compare-only",
        action="store_true",
        help=f"do not sweep: judge the sweeps already in --out again (each needs its {SWEEP_RECORD})",
    )
    args = parser.parse_args(argv)
    command = (
        "python benchmarks/gate_power.py"
        + ("" if args.faults == list(FAULTS) else " --faults " + " ".join(args.faults))
        + (" --compare-only" if args.compare_only else "")
    )
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="gate_power_boot_") as boot:
        (Path(boot) / "sitecustomize.py").write_text(SITECUSTOMIZE)
        for name in args.faults:
            outcome = run_fault(name, args.out, args.baseline, args.tolerances, Path(boot), args.compare_only)
            print(
                f"{name:20s} caught={outcome.caught} planted={outcome.planted_processes} "
                f"{outcome.sweep_s:.0f}s regressed={outcome.regressions} {outcome.note}",
                flush=True,
            )
            outcomes.append(outcome)
            # the partial table survives an interrupt; outside the checkout, so later jobs' commit stays clean
            (args.out / "gate_power.md").write_text(to_markdown(outcomes, command, args.out))
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(to_markdown(outcomes, command, args.out))
    print(f"table: {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
