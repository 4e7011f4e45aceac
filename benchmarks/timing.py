"""Timing helper shared by the benchmark scripts."""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable

# glibc keeps freed blocks up to 32 MiB in its heap and never trims it: activations reuse warm pages
STEADY_MALLOC = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296"
STEADY_MARK = "TASKPRUNE_BENCH_STEADY_MALLOC"


def rerun_with_steady_allocator(opt_out: bool) -> None:
    """Re-execute the running script with ``STEADY_MALLOC`` unless opted out or the caller set GLIBC_TUNABLES.

    By default glibc hands every allocation above 128 KiB fresh pages from the kernel and returns them on free; on
    small VMs the page faults cost more than the arithmetic and land on whichever model allocates at the wrong
    moment (benchmarks/RESULTS.md). The allocator reads the setting only at start-up, hence the re-exec.
    """
    if opt_out or "GLIBC_TUNABLES" in os.environ or not sys.platform.startswith("linux"):
        return
    argv = list(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))  # interpreter flags (-u, -X) included
    os.execve(sys.executable, argv, {**os.environ, "GLIBC_TUNABLES": STEADY_MALLOC, STEADY_MARK: "1"})


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
