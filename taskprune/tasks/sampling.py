"""Class-balanced k-shot sampling, for the paper's low-resource setting (10, 100, 1000 examples, 5 seeds).

Balanced: each class gets ``k // n_classes`` examples and the remainder goes one each to classes drawn
in a seeded order; a class with too few examples gives all it has and the shortfall is filled from the
other classes (round-robin in the same seeded order), so the sample always has ``min(k, len)`` examples.
Everything depends only on the input order and the seed, via ``random.Random(seed)``.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Sequence

from taskprune.errors import TaskpruneError
from taskprune.tasks.base import Example


def sample_k_shot(examples: Sequence[Example], k: int, seed: int, balanced: bool = True) -> list[Example]:
    """``k`` examples, class-balanced by default, deterministic given ``seed``, returned in shuffled order."""
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise TaskpruneError(f"the number of examples k must be a positive integer, got {k!r}")
    if not examples:
        raise TaskpruneError("cannot sample from an empty list of examples; check the data split")
    rng = random.Random(seed)
    if k >= len(examples):
        chosen = list(examples)
    elif not balanced:
        chosen = rng.sample(list(examples), k)
    else:
        chosen = _balanced(examples, k, rng)
    rng.shuffle(chosen)
    return chosen


def _balanced(examples: Sequence[Example], k: int, rng: random.Random) -> list[Example]:
    by_class: dict[int, list[Example]] = defaultdict(list)
    for ex in examples:
        by_class[ex.label].append(ex)
    classes = sorted(by_class)
    for label in classes:
        rng.shuffle(by_class[label])
    order = classes[:]
    rng.shuffle(order)
    quota = {label: k // len(classes) for label in classes}
    for label in order[: k % len(classes)]:
        quota[label] += 1
    # Cap at what each class has, then hand the shortfall to classes with examples to spare.
    taken = {label: min(quota[label], len(by_class[label])) for label in classes}
    missing = k - sum(taken.values())
    while missing > 0:
        for label in order:
            if missing and taken[label] < len(by_class[label]):
                taken[label] += 1
                missing -= 1
    return [ex for label in classes for ex in by_class[label][: taken[label]]]
