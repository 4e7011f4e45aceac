"""Timing helper shared by the benchmark scripts."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 0) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def paired_seconds(a: Callable[[], object], b: Callable[[], object], pairs: int,
                   warmup: int = 1) -> tuple[list[float], list[float]]:
    """Wall times of ``a`` and ``b`` run back to back ``pairs`` times, the order alternating per pair.

    A ratio of two timings taken seconds apart on a shared machine mixes in whatever the machine did in between;
    adjacent pairs see the same conditions, so ``a[i] / b[i]`` is the ratio to take a median of.
    """
    for _ in range(warmup):
        a(), b()
    ta, tb = [], []
    for i in range(pairs):
        for fn, out in ((a, ta), (b, tb)) if i % 2 == 0 else ((b, tb), (a, ta)):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return ta, tb
