"""Timing helpers of the benchmark scripts: the steady allocator here; pairs and medians live in the package
(:mod:`taskprune.runtime.timing`, which ``taskprune demo`` uses too) and are re-exported for the scripts."""

from __future__ import annotations

import os
import sys

from taskprune.runtime.timing import median_seconds, paired_seconds  # noqa: F401 - re-exported

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
