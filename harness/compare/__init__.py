"""Regression tracking: compare a sweep's results with a committed baseline, per metric and tolerance.

Jobs are matched by a key made of the ``config.*`` columns of their identity
(:func:`harness.result.identity_columns`: every config key but those :func:`harness.result.job_identity`
leaves out, ``model.cache_dir``, ``data.data_dir``, ``eval.include_path`` and the retired ``fault``); that
is model, quant (storage, blocksize, double_quant, compute_dtype,
skip_modules), lora (r, alpha, dropout, targets), train (steps, batch_size, seq_len, lr, optimizer, …),
data (source, …), eval (tasks, limit, …), seed and device. A config column that only one side has
(a field added since the baseline) is left out of the key and reported. ``env`` (library versions,
git commit, device name) is never part of the key: a change there is exactly what the gate judges.

Which metrics are compared, which way is better and by how much they may worsen is set by
``harness/compare/tolerances.yaml`` (see :mod:`harness.compare.tolerances`).

Where both sides have per-sample results (``samples.parquet``, :mod:`harness.stats.samples`), an eval
metric is judged on the paired bootstrap CI of current − baseline over the documents both scored: it
regresses only when the whole CI lies beyond the tolerance on the bad side. A baseline without them falls
back to the tolerance rules and the output says so.

Baselines live in ``reports/baselines/<sweep>/results.csv``. To refresh one after an intended change,
on the machine CI runs on::

    qlora-bench -m +sweep=smoke hydra.sweep.dir=runs/smoke
    qlora-report runs/smoke -o reports/baselines/smoke
    git add reports/baselines/smoke/results.csv reports/baselines/smoke/samples.parquet
    git commit -m "Refresh smoke baseline: <why>"

then check it with ``qlora-compare reports/baselines/smoke/results.csv runs/smoke``.
"""

from harness.compare.compare import Comparison, Row, compare_results
from harness.compare.errors import CompareInputError
from harness.compare.tolerances import Rule, Tolerances, load_tolerances

__all__ = [
    "CompareInputError",
    "Comparison",
    "Row",
    "Rule",
    "Tolerances",
    "compare_results",
    "load_tolerances",
]
