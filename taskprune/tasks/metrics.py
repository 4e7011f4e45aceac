"""Classification metrics over label indices, in percent (0-100) like the GLUE leaderboard.

``f1`` is binary F1 of the positive class (label index 1: MRPC "equivalent"). ``macro_f1`` is the
unweighted mean of per-class F1 over the classes that occur in the gold labels or the predictions
(as scikit-learn's ``f1_score(average="macro")``); it is SuperGLUE's CB metric. A prediction outside
the task's classes (e.g. -1 for "generated no label word") counts as wrong and creates no class.
"""

from __future__ import annotations

from typing import Callable, Sequence

from taskprune.errors import TaskpruneError
from taskprune.tasks.base import Task


def _f1_of(cls: int, predictions: Sequence[int], golds: Sequence[int]) -> float:
    tp = sum(1 for p, g in zip(predictions, golds) if p == cls and g == cls)
    fp = sum(1 for p, g in zip(predictions, golds) if p == cls and g != cls)
    fn = sum(1 for p, g in zip(predictions, golds) if p != cls and g == cls)
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def accuracy(predictions: Sequence[int], golds: Sequence[int], num_labels: int) -> float:
    return 100.0 * sum(p == g for p, g in zip(predictions, golds)) / len(golds)


def binary_f1(predictions: Sequence[int], golds: Sequence[int], num_labels: int) -> float:
    return 100.0 * _f1_of(1, predictions, golds)


def macro_f1(predictions: Sequence[int], golds: Sequence[int], num_labels: int) -> float:
    classes = sorted(set(golds) | {p for p in predictions if 0 <= p < num_labels})
    return 100.0 * sum(_f1_of(c, predictions, golds) for c in classes) / len(classes)


#: Metric functions by name; each takes (predictions, golds, num_labels) and returns percent.
METRICS: dict[str, Callable[[Sequence[int], Sequence[int], int], float]] = {
    "accuracy": accuracy,
    "f1": binary_f1,
    "macro_f1": macro_f1,
}


def compute_metrics(task: Task, predictions: Sequence[int], golds: Sequence[int]) -> dict[str, float]:
    """The task's metrics (always including accuracy) for predicted vs gold label indices, in percent."""
    predictions = [int(p) for p in predictions]
    golds = [int(g) for g in golds]
    if len(predictions) != len(golds):
        raise TaskpruneError(f"{len(predictions)} predictions but {len(golds)} gold labels; they must match")
    if not golds:
        raise TaskpruneError("cannot compute metrics on zero examples")
    bad = sorted({g for g in golds if not 0 <= g < task.num_labels})
    if bad:
        raise TaskpruneError(f"task {task.name!r}: gold labels {bad} are not in 0..{task.num_labels - 1}")
    names = ("accuracy", *[m for m in task.metrics if m != "accuracy"])
    return {name: METRICS[name](predictions, golds, task.num_labels) for name in names}
