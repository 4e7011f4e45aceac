"""Deterministic fit/eval split of ONE file, for tasks whose train file is not available.

QNLI's train.tsv (104,743 rows) and BoolQ's train.jsonl (9,427 rows) could not be shipped with the
benchmark data, so their dev/val file is split in two: an example goes to ``fit`` when

    int.from_bytes(sha256(rendered_text.encode("utf-8")).digest()[:8], "big") % 100 < 70

and to ``eval`` otherwise. Hashing the rendered text (not the row number) makes the split independent of
file order and puts identical texts on the same side, so fit and eval never share an input. About 70 % of
the examples go to fit. When a train file IS present (a full GLUE download), it is used instead and
eval is the whole dev file.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

from taskprune.tasks.base import Example

#: Percentage of a single file's examples that go to the ``fit`` split.
FIT_PERCENT = 70


def hash_bucket(text: str) -> int:
    """A stable bucket 0..99 for a text (sha256, first 8 bytes big-endian, mod 100)."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 100


def in_fit(text: str, fit_percent: int = FIT_PERCENT) -> bool:
    """Whether an example with this rendered text belongs to the fit part of a hash-split file."""
    return hash_bucket(text) < fit_percent


def hash_split(examples: Iterable[Example], split: str, fit_percent: int = FIT_PERCENT) -> list[Example]:
    """The ``split`` ("fit" or "eval") part of one file's examples, keeping file order."""
    want_fit = split == "fit"
    return [ex for ex in examples if in_fit(ex.text, fit_percent) == want_fit]
