"""Finding a task by name or path: the built-ins (case-insensitive) or a user task file."""

from __future__ import annotations

from pathlib import Path

from taskprune.errors import TaskpruneError
from taskprune.tasks.base import Task
from taskprune.tasks.builtin import BUILTIN_TASKS
from taskprune.tasks.taskfile import TASK_FILE_SUFFIXES, read_task_file


def list_tasks() -> list[str]:
    """Names of the built-in tasks."""
    return list(BUILTIN_TASKS)


def get_task(name_or_path: str | Path | Task) -> Task:
    """A built-in task by name (sst2, mrpc, qnli, rte, cb, boolq; any case) or a user task file (.json/.yaml/.yml)."""
    if isinstance(name_or_path, Task):
        return name_or_path
    key = str(name_or_path).strip()
    builtin = BUILTIN_TASKS.get(key.lower().replace("-", ""))
    if builtin is not None and not Path(key).suffix:
        return builtin
    path = Path(key).expanduser()
    if path.suffix.lower() in TASK_FILE_SUFFIXES or path.is_file():
        return read_task_file(path)
    raise TaskpruneError(
        f"unknown task {key!r}; built-in tasks are {', '.join(list_tasks())}, "
        f"or pass the path of a task file ({'/'.join(TASK_FILE_SUFFIXES)})"
    )
