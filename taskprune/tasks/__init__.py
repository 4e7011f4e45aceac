"""Tasks: what a task is (template, label words, metrics), where its data comes from, how to sample it.

Data flows one way: ``get_task`` -> ``load_examples`` (GLUE/SuperGLUE folder, Hugging Face, or the
user's JSONL/CSV) -> ``sample_k_shot`` -> scoring, and ``compute_metrics`` at evaluation.
"""

from taskprune.tasks.base import KNOWN_METRICS, SPLITS, Example, Task
from taskprune.tasks.builtin import BUILTIN_TASKS
from taskprune.tasks.loaders import SOURCES, load_examples, require_data_dir
from taskprune.tasks.metrics import compute_metrics
from taskprune.tasks.registry import get_task, list_tasks
from taskprune.tasks.sampling import sample_k_shot
from taskprune.tasks.split import FIT_PERCENT, hash_bucket

__all__ = [
    "BUILTIN_TASKS",
    "Example",
    "FIT_PERCENT",
    "KNOWN_METRICS",
    "SOURCES",
    "SPLITS",
    "Task",
    "compute_metrics",
    "get_task",
    "hash_bucket",
    "list_tasks",
    "load_examples",
    "require_data_dir",
    "sample_k_shot",
]
