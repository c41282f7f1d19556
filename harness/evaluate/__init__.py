"""lm-eval evaluation of the in-memory model on shipped (``harness/tasks``) and lm-eval tasks."""

from harness.evaluate.metrics import metric_delta, task_metrics
from harness.evaluate.runner import Evaluation, evaluate_model, lm_eval_version
from harness.evaluate.tasks import validate_tasks

__all__ = [
    "Evaluation",
    "evaluate_model",
    "lm_eval_version",
    "metric_delta",
    "task_metrics",
    "validate_tasks",
]
