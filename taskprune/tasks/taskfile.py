"""User task files: a task of your own in JSON or YAML.

Format (JSON with the same keys works too)::

    name: my_sentiment                # required
    template: "review: {text}"        # required; str.format over the data columns
    label_words: [bad, good]          # required; what the model generates per class (>= 2)
    label_values: ["0", "1"]          # optional; the labels as written in the data, same order;
                                      #   default = label_words; compared as lowercase strings
    label_column: label               # optional; default "label"
    metrics: [accuracy, f1]           # optional; accuracy (always), f1 (binary, class 1), macro_f1
    files: {fit: train.jsonl, eval: dev.csv}   # optional; JSONL/JSON/CSV/TSV by extension,
                                      #   relative to the task file's folder

``files`` may name both splits, or just one (or be a single path): then fit and eval are both taken
from that file by the deterministic hash split of :mod:`taskprune.tasks.split`. Unknown keys are an
error (they are usually typos). YAML is read with YAML 1.2 booleans, so ``[no, yes]`` stays two words
instead of becoming ``[false, true]``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from taskprune.errors import TaskpruneError, library_message
from taskprune.tasks.base import SPLITS, Task

TASK_FILE_SUFFIXES = (".json", ".yaml", ".yml")


def _yaml_load(text: str) -> Any:
    """``yaml.safe_load`` with only true/false as booleans (YAML 1.1 would turn yes/no/on/off into bools)."""
    import yaml

    class _Loader(yaml.SafeLoader):
        pass

    _Loader.yaml_implicit_resolvers = {
        key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
        for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    _Loader.add_implicit_resolver(
        "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
    )
    return yaml.load(text, Loader=_Loader)


def read_task_file(path: str | Path) -> Task:
    """Load and validate a user task file; relative ``files`` are resolved against its folder and must exist."""
    path = Path(path).expanduser()
    if path.suffix.lower() not in TASK_FILE_SUFFIXES:
        raise TaskpruneError(f"task file {path} must end in one of {list(TASK_FILE_SUFFIXES)}")
    if not path.is_file():
        raise TaskpruneError(f"task file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise TaskpruneError(f"task file {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            data = _yaml_load(text)
    except json.JSONDecodeError as exc:
        raise TaskpruneError(f"task file {path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    except Exception as exc:  # yaml.YAMLError and friends
        raise TaskpruneError(f"task file {path}: not valid YAML ({library_message(exc)})") from None
    if not isinstance(data, dict):
        raise TaskpruneError(f"task file {path} must hold a mapping with keys name, template, label_words, ...")
    data = dict(data)
    files = data.get("files")
    if isinstance(files, str):
        files = {split: files for split in SPLITS}
    if files is not None:
        if not isinstance(files, dict) or not files:
            raise TaskpruneError(
                f"task file {path}: 'files' must map splits to paths, e.g. {{fit: train.jsonl, eval: dev.jsonl}}"
            )
        resolved = {}
        for split, name in files.items():
            if split not in SPLITS:
                raise TaskpruneError(f"task file {path}: 'files' keys must be among {list(SPLITS)}, got {split!r}")
            file_path = Path(str(name)).expanduser()
            if not file_path.is_absolute():
                file_path = path.parent / file_path
            file_path = file_path.resolve()
            if not file_path.is_file():
                raise TaskpruneError(f"task file {path}: {split} data file not found: {file_path}")
            resolved[split] = str(file_path)
        data["files"] = resolved
    try:
        return Task.from_dict(data)
    except TaskpruneError as exc:
        raise TaskpruneError(f"task file {path}: {exc}") from None
    except TypeError as exc:
        raise TaskpruneError(f"task file {path}: {exc}") from None
