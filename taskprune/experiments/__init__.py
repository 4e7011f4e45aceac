"""Sweeps over tasks x methods x rates x examples x seeds, resumable, one JSONL row per run."""

from .config import Run, SweepConfig, expand, load_config
from .results import append_row, load_rows
from .runner import SweepSummary, run_sweep
from .stats import Comparison, paired_compare

__all__ = ["Comparison", "Run", "SweepConfig", "SweepSummary", "append_row", "expand", "load_config", "load_rows",
           "paired_compare", "run_sweep"]
