"""The two value types of the task layer: :class:`Task` (what to feed the model) and :class:`Example`.

A task is everything the rest of taskprune needs to know about a text-to-text classification problem:
how to render a raw data row into the model's input (a ``str.format`` template, T5 style with a task
prefix), which words the model generates for each class, how those classes are spelled in the raw
data, and which metrics to report. It is frozen and JSON-serialisable so that a pruning plan can
record exactly which task it was scored on.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Any, Mapping

from taskprune.errors import TaskpruneError

#: Metrics :func:`taskprune.tasks.compute_metrics` knows. ``f1`` is binary F1 of class index 1.
KNOWN_METRICS: tuple[str, ...] = ("accuracy", "f1", "macro_f1")

#: The two data splits. ``fit``: what the model is fit on and attribution examples are drawn from.
SPLITS: tuple[str, ...] = ("fit", "eval")

_TASK_KEYS = ("name", "template", "label_words", "label_values", "label_column", "metrics", "files",
              "causal_template")


@dataclass(frozen=True)
class Example:
    """One rendered example: ``text`` is the model input, ``label`` an index into ``task.label_words``.

    ``prompt`` is the same row rendered by the task's ``causal_template`` (an instruction for decoder-only
    LMs), empty when the task has none: causal models then read ``text``.
    """

    text: str
    label: int
    uid: str = ""
    prompt: str = ""


def template_columns(template: str) -> tuple[str, ...]:
    """Column names a template reads, in order of first use; TaskpruneError if it is not a valid template."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise TaskpruneError(f"bad task template {template!r}: {exc} (write literal braces as {{{{ and }}}})") from None
    columns: list[str] = []
    for _literal, field_name, _spec, _conv in parsed:
        if field_name is None:
            continue
        # "{a.b}" / "{a[0]}" read column "a"; "{}" / "{0}" have no column to read.
        root = field_name.split(".", 1)[0].split("[", 1)[0]
        if not root or root.isdigit():
            raise TaskpruneError(
                f"bad task template {template!r}: every {{...}} must name a column, e.g. {{sentence}}"
            )
        if root not in columns:
            columns.append(root)
    return tuple(columns)


def normalise_label(raw: Any) -> list[str]:
    """Spellings a raw label may match, as lowercase strings (bool True also matches "1", 1.0 matches "1")."""
    if isinstance(raw, bool):
        return ["true", "1"] if raw else ["false", "0"]
    if isinstance(raw, float) and raw.is_integer():
        return [str(int(raw))]
    if isinstance(raw, (int, float, str)):
        return [str(raw).strip().lower()]
    return []


@dataclass(frozen=True)
class Task:
    """A text-to-text classification task: input template, label words, raw label values, metrics.

    ``label_values`` are the labels as they appear in the data, compared as lowercase strings; they
    default to ``label_words``. ``files`` (user tasks only) maps a split ("fit"/"eval") to a JSONL/CSV
    file; it is stored as sorted pairs so the task stays hashable. ``causal_template`` is the prompt that
    decoder-only LMs read instead of ``template`` (T5-style prefixes mean nothing to them): an instruction
    that names the label words, wrapped in the tokenizer's chat template where it has one (:mod:`taskprune.lm`).
    """

    name: str
    template: str
    label_words: tuple[str, ...]
    label_values: tuple[str, ...] = ()
    label_column: str = "label"
    metrics: tuple[str, ...] = ("accuracy",)
    files: tuple[tuple[str, str], ...] = field(default=())
    causal_template: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise TaskpruneError("task needs a non-empty 'name'")
        if not isinstance(self.template, str) or not self.template:
            raise TaskpruneError(f"task {self.name!r} needs a non-empty 'template', e.g. \"review: {{text}}\"")
        template_columns(self.template)
        if not isinstance(self.causal_template, str):
            raise TaskpruneError(f"task {self.name!r}: 'causal_template' must be a string template")
        if self.causal_template:
            cols, causal = template_columns(self.template), template_columns(self.causal_template)
            if set(cols) != set(causal):  # else every input that fills one template fails the other
                raise TaskpruneError(f"task {self.name!r}: 'template' reads columns {sorted(set(cols))} but "
                                     f"'causal_template' reads {sorted(set(causal))}: both must read the same columns")
        words = _str_tuple(self.name, "label_words", self.label_words)
        values = _str_tuple(self.name, "label_values", self.label_values) if self.label_values else words
        values = tuple(v.strip().lower() for v in values)
        if len(words) < 2:
            raise TaskpruneError(f"task {self.name!r}: 'label_words' needs at least 2 classes, got {list(words)}")
        if len(values) != len(words):
            raise TaskpruneError(
                f"task {self.name!r}: 'label_values' has {len(values)} entries but 'label_words' has "
                f"{len(words)}; give one raw value per label word, in the same order"
            )
        for key, seq in (("label_words", words), ("label_values", values)):
            if len(set(seq)) != len(seq):
                raise TaskpruneError(f"task {self.name!r}: '{key}' has duplicates: {list(seq)}")
        if not isinstance(self.label_column, str) or not self.label_column:
            raise TaskpruneError(f"task {self.name!r}: 'label_column' must be a column name")
        metrics = _str_tuple(self.name, "metrics", self.metrics) or ("accuracy",)
        unknown = [m for m in metrics if m not in KNOWN_METRICS]
        if unknown:
            raise TaskpruneError(
                f"task {self.name!r}: unknown metric(s) {unknown}; choose from {list(KNOWN_METRICS)}"
            )
        if "f1" in metrics and len(words) != 2:
            raise TaskpruneError(
                f"task {self.name!r}: metric 'f1' is binary (positive class = label index 1) but the task "
                f"has {len(words)} classes; use 'macro_f1'"
            )
        metrics = ("accuracy", *[m for m in metrics if m != "accuracy"])  # always reported, always first
        files = self.files.items() if isinstance(self.files, Mapping) else self.files
        files = tuple(sorted((str(k), str(v)) for k, v in files))
        bad_splits = [k for k, _ in files if k not in SPLITS]
        if bad_splits:
            raise TaskpruneError(f"task {self.name!r}: 'files' keys must be among {list(SPLITS)}, got {bad_splits}")
        object.__setattr__(self, "label_words", words)
        object.__setattr__(self, "label_values", values)
        object.__setattr__(self, "metrics", tuple(dict.fromkeys(metrics)))
        object.__setattr__(self, "files", files)

    @property
    def columns(self) -> tuple[str, ...]:
        """Columns the templates read (the label column is separate)."""
        cols = template_columns(self.template)
        extra = template_columns(self.causal_template) if self.causal_template else ()
        return cols + tuple(c for c in extra if c not in cols)

    @property
    def num_labels(self) -> int:
        return len(self.label_words)

    @property
    def file_map(self) -> dict[str, str]:
        """``files`` as a dict split -> path (empty for built-in tasks)."""
        return dict(self.files)

    def render(self, row: Mapping[str, Any], causal: bool = False) -> str:
        """The model input for one raw row; string fields are stripped (SST-2 has trailing spaces).

        ``causal`` renders the causal prompt ("" when the task has none)."""
        template = self.causal_template if causal else self.template
        if not template:
            return ""
        missing = [c for c in self.columns if c not in row]
        if missing:
            raise TaskpruneError(
                f"task {self.name!r}: the template needs column {missing[0]!r} which the data lacks "
                f"(columns present: {sorted(map(str, row))})"
            )
        clean = {k: (v.strip() if isinstance(v, str) else v) for k, v in row.items() if isinstance(k, str)}
        try:
            return template.format(**clean)
        except (KeyError, IndexError, AttributeError, ValueError, TypeError) as exc:
            raise TaskpruneError(f"task {self.name!r}: cannot render template {template!r}: {exc}") from None

    def label_index(self, raw: Any) -> int:
        """Index of a raw label (int, bool or str such as "1", "True", "entailment"); label words also match."""
        for spelling in normalise_label(raw):
            if spelling in self.label_values:
                return self.label_values.index(spelling)
        lowered_words = [w.lower() for w in self.label_words]
        for spelling in normalise_label(raw):
            if spelling in lowered_words:
                return lowered_words.index(spelling)
        raise TaskpruneError(
            f"task {self.name!r}: unknown label value {raw!r}; expected one of {list(self.label_values)}"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form; ``Task.from_dict(t.to_dict()) == t``."""
        out: dict[str, Any] = {
            "name": self.name,
            "template": self.template,
            "label_words": list(self.label_words),
            "label_values": list(self.label_values),
            "label_column": self.label_column,
            "metrics": list(self.metrics),
        }
        if self.files:
            out["files"] = dict(self.files)
        if self.causal_template:
            out["causal_template"] = self.causal_template
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Task":
        """Build a task from a dict (a user task file or ``to_dict`` output); unknown keys are an error."""
        if not isinstance(data, Mapping):
            raise TaskpruneError(f"a task must be a mapping of keys to values, got {type(data).__name__}")
        unknown = [k for k in data if k not in _TASK_KEYS]
        if unknown:
            raise TaskpruneError(f"unknown task key(s) {unknown}; allowed keys: {list(_TASK_KEYS)}")
        for key in ("name", "template", "label_words"):
            if key not in data or data[key] in (None, "", [], ()):
                raise TaskpruneError(f"task is missing required key {key!r} (required: name, template, label_words)")
        kwargs = {k: data[k] for k in _TASK_KEYS if k in data and data[k] is not None}
        files = kwargs.get("files")
        if files is not None and not isinstance(files, Mapping):
            raise TaskpruneError(
                f"task {data['name']!r}: 'files' must map splits to paths, e.g. {{fit: train.jsonl, eval: dev.jsonl}}"
            )
        return cls(**kwargs)


def _str_tuple(task: str, key: str, value: Any) -> tuple[str, ...]:
    """A list/tuple of scalars as a tuple of strings; TaskpruneError for a bare string or a nested value."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise TaskpruneError(f"task {task!r}: {key!r} must be a list, e.g. [negative, positive], got {value!r}")
    if any(isinstance(v, (list, tuple, dict)) or v is None for v in value):
        raise TaskpruneError(f"task {task!r}: {key!r} must be a list of plain values, got {value!r}")
    return tuple(str(v).lower() if isinstance(v, bool) else str(v) for v in value)
