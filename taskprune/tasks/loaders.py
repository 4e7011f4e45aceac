"""Loading a task's examples for one split ("fit" or "eval") from one of three sources.

* ``dir``: a GLUE/SuperGLUE download in the original layout. ``data_dir`` may be the root holding
  ``glue/SST-2/`` and ``superglue/CB/`` (``glue_data/`` and ``super_glue/`` also match), the folder holding
  the task folder (``data_dir/SST-2``), or the task folder itself. Folder names match ignoring case and
  punctuation (``sst2`` finds ``SST-2``). fit = the train file, eval = the dev/val file; QNLI and BoolQ
  ship without a train file here, so when it is absent both splits come from the dev/val file by the
  hash split of :mod:`taskprune.tasks.split` (70 % fit / 30 % eval, never overlapping).
* ``hf``: Hugging Face ``datasets`` (``glue/<task>``, ``super_glue/cb|boolq``); fit = train, eval =
  validation. Needs ``datasets`` and internet.
* ``file``: the JSONL/JSON/CSV/TSV files named by a user task file (``files: {fit: ..., eval: ...}``).

``auto`` picks ``file`` when the task names its own files, else ``dir`` when ``data_dir`` is given.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from taskprune.errors import TaskpruneError, library_message
from taskprune.tasks.base import SPLITS, Example, Task
from taskprune.tasks.builtin import DIR_SPECS, HF_SPECS, DirSpec
from taskprune.tasks.readers import read_rows
from taskprune.tasks.registry import get_task
from taskprune.tasks.split import hash_split

SOURCES: tuple[str, ...] = ("auto", "dir", "hf", "file")

# Folder names the groups go by in the wild (normalised: lowercase, alphanumerics only).
_GROUP_ALIASES = {"glue": ("glue", "gluedata"), "superglue": ("superglue", "supergluedata")}

_NO_DATA_HINT = (
    "pass --data-dir with a GLUE/SuperGLUE directory (holding e.g. glue/SST-2/train.tsv), "
    "or use source 'hf' (Hugging Face datasets, needs internet)"
)


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _find_child(parent: Path, names: Iterable[str]) -> Path | None:
    """The sub-folder of ``parent`` whose normalised name is among ``names`` (exact name first)."""
    wanted = {_norm(n) for n in names}
    if not parent.is_dir():
        return None
    for child in sorted(parent.iterdir()):
        if child.is_dir() and _norm(child.name) in wanted:
            return child
    return None


def require_data_dir(data_dir: str | Path) -> Path:
    """``data_dir`` as a Path; TaskpruneError when it is not a folder, so callers refuse before loading a model."""
    path = Path(data_dir)
    if not path.is_dir():
        raise TaskpruneError(f"data directory not found: {path}; {_NO_DATA_HINT}")
    return path


def find_task_dir(spec: DirSpec, data_dir: Path) -> Path:
    """The folder holding a built-in task's files under ``data_dir``; TaskpruneError listing where it looked."""
    require_data_dir(data_dir)
    if _norm(data_dir.name) == _norm(spec.folder):
        return data_dir
    direct = _find_child(data_dir, [spec.folder])
    if direct is not None:
        return direct
    group = _find_child(data_dir, _GROUP_ALIASES[spec.group])
    if group is not None:
        nested = _find_child(group, [spec.folder])
        if nested is not None:
            return nested
    raise TaskpruneError(
        f"no {spec.folder} folder found in {data_dir} (looked for {data_dir / spec.group / spec.folder}, "
        f"{data_dir / spec.folder} and {data_dir} itself); {_NO_DATA_HINT}"
    )


def rows_to_examples(
    task: Task,
    rows: Iterable[tuple[int, Mapping[str, Any]]],
    where: str,
    uid_prefix: str,
    renames: Mapping[str, str] | None = None,
) -> list[Example]:
    """Render rows into examples; errors name ``where`` (file or dataset) and the line.

    The uid is ``<prefix>-<idx>`` when the row has an ``idx``/``index`` field, else ``<prefix>-L<line>``.
    """
    renames = renames or {}
    examples: list[Example] = []
    for line, raw in rows:
        row = {renames.get(k, k): v for k, v in raw.items()} if renames else raw
        if task.label_column not in row:
            raise TaskpruneError(
                f"{where}, line {line}: no label column {task.label_column!r} (columns: {sorted(row)}); "
                f"set 'label_column' in the task file"
            )
        try:
            text = task.render(row)
            prompt = task.render(row, causal=True)
            label = task.label_index(row[task.label_column])
        except TaskpruneError as exc:
            raise TaskpruneError(f"{where}, line {line}: {exc}") from None
        idx = row.get("idx", row.get("index"))
        uid = f"{uid_prefix}-{idx}" if isinstance(idx, (int, str)) and str(idx).strip() else f"{uid_prefix}-L{line}"
        examples.append(Example(text=text, label=label, uid=uid, prompt=prompt))
    if not examples:
        raise TaskpruneError(f"{where} holds no examples")
    return examples


def _load_file(task: Task, path: Path, renames: Mapping[str, str] | None = None) -> list[Example]:
    if not path.is_file():
        raise TaskpruneError(f"data file not found: {path}")
    return rows_to_examples(task, read_rows(path), str(path), path.stem, renames)


def load_from_dir(task: Task, split: str, data_dir: str | Path | None) -> list[Example]:
    """Source ``dir``: a GLUE/SuperGLUE folder in the original layout (see the module docstring)."""
    spec = DIR_SPECS.get(task.name.lower())
    if spec is None:
        raise TaskpruneError(
            f"task {task.name!r} is not a GLUE/SuperGLUE task, so source 'dir' cannot find its data; "
            f"name its files in the task file (files: {{fit: ..., eval: ...}}) and use source 'file'"
        )
    if data_dir is None:
        raise TaskpruneError(f"source 'dir' needs a data directory; {_NO_DATA_HINT}")
    folder = find_task_dir(spec, Path(data_dir).expanduser())
    renames = dict(spec.renames)
    fit_path, eval_path = folder / spec.fit_file, folder / spec.eval_file
    if not eval_path.is_file():
        raise TaskpruneError(f"{task.name} {spec.eval_file} not found: looked for {eval_path}")
    if split == "eval" and (fit_path.is_file() or not spec.hash_split):
        return _load_file(task, eval_path, renames)
    if split == "fit" and fit_path.is_file():
        return _load_file(task, fit_path, renames)
    if not spec.hash_split:
        raise TaskpruneError(f"{task.name} {spec.fit_file} not found: looked for {fit_path}")
    return hash_split(_load_file(task, eval_path, renames), split)


def load_from_files(task: Task, split: str, data_dir: str | Path | None) -> list[Example]:
    """Source ``file``: the task's own files; one named file serves both splits via the hash split."""
    files = task.file_map
    if not files:
        raise TaskpruneError(
            f"task {task.name!r} names no data files; add files: {{fit: train.jsonl, eval: dev.jsonl}} "
            f"to its task file, or use source 'dir' / 'hf' for a built-in task"
        )
    base = Path(data_dir).expanduser() if data_dir is not None else Path.cwd()

    def resolve(name: str) -> Path:
        path = Path(name).expanduser()
        return path if path.is_absolute() else base / path

    paths = set(files.values())
    if len(paths) == len(SPLITS):  # two different files: one per split
        return _load_file(task, resolve(files[split]))
    # One file for both splits: split it by hash so fit and eval never overlap.
    return hash_split(_load_file(task, resolve(paths.pop())), split)


def load_from_hf(task: Task, split: str, data_dir: str | Path | None = None) -> list[Example]:
    """Source ``hf``: Hugging Face ``datasets``; imported lazily, errors become one-line TaskpruneErrors."""
    spec = HF_SPECS.get(task.name.lower())
    if spec is None:
        raise TaskpruneError(
            f"task {task.name!r} has no Hugging Face dataset; built-in tasks with one: {', '.join(HF_SPECS)}"
        )
    try:
        import datasets  # noqa: F401  (heavy, optional)
    except ImportError:
        raise TaskpruneError(
            "source 'hf' needs the Hugging Face `datasets` package (pip install datasets); "
            "or pass --data-dir with a GLUE/SuperGLUE directory"
        ) from None
    hf_split = spec.fit_split if split == "fit" else spec.eval_split
    errors: list[str] = []
    for path in spec.paths:
        try:
            dataset = datasets.load_dataset(path, spec.config, split=hf_split)
            break
        except Exception as exc:  # network, missing repo, script datasets on new versions, ...
            errors.append(f"{path}/{spec.config}: {type(exc).__name__} {library_message(exc, 200)}")
    else:
        raise TaskpruneError(
            f"could not load {task.name} ({hf_split}) from the Hugging Face Hub ({'; '.join(errors)}); "
            f"check the internet connection, or pass --data-dir with a GLUE/SuperGLUE directory"
        )
    label_feature = dataset.features.get(task.label_column)
    names = [str(n).lower() for n in getattr(label_feature, "names", [])]
    numeric = all(v.lstrip("-").isdigit() for v in task.label_values)

    def rows() -> Iterable[tuple[int, dict[str, Any]]]:
        for i, row in enumerate(dataset, start=1):
            row = dict(row)
            label = row.get(task.label_column)
            # ClassLabel ints: map to names when the task's raw values are words (qnli, rte, cb, boolq).
            if names and not numeric and isinstance(label, int) and not isinstance(label, bool):
                if 0 <= label < len(names):
                    row[task.label_column] = names[label]
            yield i, row

    return rows_to_examples(task, rows(), f"{spec.paths[0]}/{spec.config} ({hf_split})", hf_split)


#: Loader per source name.
LOADERS: dict[str, Callable[[Task, str, str | Path | None], list[Example]]] = {
    "dir": load_from_dir,
    "hf": load_from_hf,
    "file": load_from_files,
}


def load_examples(
    task: Task | str, split: str, data_dir: str | Path | None = None, source: str = "auto"
) -> list[Example]:
    """Rendered examples of ``task`` for ``split`` ("fit" or "eval") from ``source`` (auto, dir, hf, file)."""
    if isinstance(task, (str, Path)):
        task = get_task(task)
    if not isinstance(task, Task):
        raise TaskpruneError(f"load_examples needs a Task or a task name, got {type(task).__name__}")
    if split not in SPLITS:
        raise TaskpruneError(f"unknown split {split!r}; use 'fit' (training/attribution examples) or 'eval'")
    source = (source or "auto").lower()
    if source not in SOURCES:
        raise TaskpruneError(f"unknown data source {source!r}; choose from {', '.join(SOURCES)}")
    if source == "auto":
        if task.files:
            source = "file"
        elif data_dir is not None:
            source = "dir"
        else:
            raise TaskpruneError(f"no data for task {task.name!r}: {_NO_DATA_HINT}")
    return LOADERS[source](task, split, data_dir)
