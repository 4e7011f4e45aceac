"""What data goes into each training step, as pure functions of (seed, step): a run resumed from its checkpoint
draws exactly the batches the interrupted one would have drawn.

Every step draws ONE task (examples-proportional mixing with a per-task cap, as in T5: weight of task t ∝
min(n_fit(t), cap)) and takes the next ``batch_size`` examples of that task (a fresh seeded permutation per epoch
of the task). ``bucket`` > 1 pools that many consecutive batches of a task and cuts the pool, sorted by length,
into batches, so a batch pads to examples of similar length.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import TaskpruneError
from ..tasks import Example


def mixture_weights(sizes: Sequence[int], cap: int) -> list[float]:
    """Examples-proportional mixing with a cap (T5): weight ∝ min(n, cap), normalised."""
    capped = [min(int(n), cap) for n in sizes]
    total = sum(capped)
    if total <= 0:
        raise TaskpruneError("every task has zero fit examples")
    return [c / total for c in capped]


def task_schedule(sizes: Sequence[int], cap: int, steps: int, seed: int) -> np.ndarray:
    """The task index of every step."""
    rng = np.random.default_rng([seed, 1])
    return rng.choice(len(sizes), size=steps, p=mixture_weights(sizes, cap))


def batch_indices(n: int, k: int, batch_size: int, seed: int, task_index: int) -> list[int]:
    """Example indices of the ``k``-th batch of a task with ``n`` examples: consecutive slices of seeded
    per-epoch permutations (a batch that crosses an epoch boundary continues into the next permutation)."""
    out: list[int] = []
    pos = k * batch_size
    perms: dict[int, np.ndarray] = {}
    while len(out) < batch_size:
        epoch, offset = divmod(pos, n)
        if epoch not in perms:
            perms[epoch] = np.random.default_rng([seed, 2, task_index, epoch]).permutation(n)
        take = min(batch_size - len(out), n - offset)
        out.extend(perms[epoch][offset : offset + take].tolist())
        pos += take
    return out


def bucketed_batch(
    lengths: Sequence[int], k: int, batch_size: int, seed: int, task_index: int, bucket: int
) -> list[int]:
    """The ``k``-th batch of a task whose examples have ``lengths``, with length bucketing: the ``bucket`` batches
    of a pool (consecutive slices of the same permutations as :func:`batch_indices`) are re-cut by length, in a
    seeded order, so each epoch still visits every example once and a batch pads to similar lengths."""
    n = len(lengths)
    if bucket <= 1:
        return batch_indices(n, k, batch_size, seed, task_index)
    pool_no, j = divmod(k, bucket)
    pool = batch_indices(n, pool_no, batch_size * bucket, seed, task_index)
    pool.sort(key=lambda i: (lengths[i], i))
    order = np.random.default_rng([seed, 3, task_index, pool_no]).permutation(bucket)
    c = int(order[j])
    return pool[c * batch_size : (c + 1) * batch_size]


def batch_for_step(
    step: int, schedule: np.ndarray, sizes: Sequence[int], batch_size: int, seed: int,
    lengths: Sequence[Sequence[int]] | None = None, bucket: int = 1,
) -> tuple[int, list[int]]:
    """(task index, example indices) of ``step``; ``lengths`` (per task, per example) when ``bucket`` > 1."""
    t = int(schedule[step])
    k = int((schedule[:step] == t).sum())
    if bucket > 1:
        if lengths is None:
            raise ValueError("length bucketing needs the examples' lengths")
        return t, bucketed_batch(lengths[t], k, batch_size, seed, t, bucket)
    return t, batch_indices(sizes[t], k, batch_size, seed, t)


def text_lengths(examples: Sequence[Example]) -> list[int]:
    """A length key for bucketing that needs no tokenizer pass: characters of the input."""
    return [len(e.prompt or e.text) for e in examples]
