"""Timing two things fairly on a shared machine: adjacent, order-alternating pairs and the median of their ratios.

A ratio of two timings taken seconds apart on a busy machine mixes in whatever the machine did in between (the
demo once read pruned ÷ dense 0.67, then 4.50). Adjacent pairs see the same conditions; alternating the order
cancels warm-cache and turbo effects that favour whichever runs second; the median of the per-pair ratios
ignores the pairs a burst of load hit, and the interquartile range says how much to trust it. ``make bench``,
the benchmark scripts and ``taskprune demo`` all time through this module.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


def alternating_pairs(a: Callable[[], T], b: Callable[[], T], pairs: int) -> tuple[list[T], list[T]]:
    """What ``a()`` and ``b()`` return, called back to back ``pairs`` times, ``a`` first in even pairs."""
    out_a: list[T] = []
    out_b: list[T] = []
    for i in range(pairs):
        order = ((a, out_a), (b, out_b)) if i % 2 == 0 else ((b, out_b), (a, out_a))
        for fn, out in order:
            out.append(fn())
    return out_a, out_b


def timed(fn: Callable[[], object]) -> Callable[[], float]:
    """``fn`` as a callable returning the wall seconds of one call."""

    def run() -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    return run


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 0) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    return statistics.median(timed(fn)() for _ in range(repeats))


def paired_seconds(a: Callable[[], object], b: Callable[[], object], pairs: int,
                   warmup: int = 1) -> tuple[list[float], list[float]]:
    """Wall times of ``a`` and ``b`` in adjacent, order-alternating pairs (``a[i] / b[i]`` is one pair's ratio)."""
    for _ in range(warmup):
        a(), b()
    return alternating_pairs(timed(a), timed(b), pairs)


def round_robin(fns: list[Callable[[], T]], rounds: int) -> list[list[T]]:
    """What each of ``fns`` returns over ``rounds`` rounds of calling them all back to back; round ``i`` starts
    at ``fns[i % len(fns)]`` (a rotation), so over ``len(fns)`` rounds each runs once in every position —
    :func:`alternating_pairs` for more than two."""
    out: list[list[T]] = [[] for _ in fns]
    for i in range(rounds):
        for k in range(len(fns)):
            j = (i + k) % len(fns)
            out[j].append(fns[j]())
    return out


@dataclass(frozen=True)
class RatioSummary:
    """Median of per-pair ratios and its spread (quartiles; the extremes for fewer than 4 pairs)."""

    median: float
    low: float
    high: float
    pairs: int

    def __str__(self) -> str:
        return f"{self.median:.2f} ({self.low:.2f}-{self.high:.2f})"


def ratio_summary(num: list[float], den: list[float]) -> RatioSummary:
    """Summary of ``num[i] / den[i]`` over adjacent pairs."""
    ratios = sorted(n / d for n, d in zip(num, den) if d > 0)
    if not ratios:
        raise ValueError("no pair with a positive denominator")
    if len(ratios) < 4:
        low, high = ratios[0], ratios[-1]
    else:
        low, _, high = statistics.quantiles(ratios, n=4)
    return RatioSummary(statistics.median(ratios), low, high, len(ratios))
