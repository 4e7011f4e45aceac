"""``taskprune sweep`` (a grid of experiments, resumable, one JSONL row per run) and ``taskprune report``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from ..experiments import run_sweep as sweep
from ..runtime.distributed import current
from .options import add_out
from .render import echo, tqdm_progress

EXIT_RUN_FAILED = 1


def register(command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command("sweep", help="run a grid of experiments (resumable, one JSONL row per run)",
                description="Expand CONFIG.yaml into runs (tasks x methods x scopes x rates x examples x "
                            "seeds) and run those its results file does not hold yet (docs/sweeps.md).")
    p.add_argument("config", help="sweep configuration (YAML)")
    p.add_argument("--out", default=None, help="results file (default: CONFIG with .results.jsonl)")
    p.add_argument("--model", default=None, help="override the config's model")
    p.add_argument("--data-dir", default=None, help="override the config's data_dir")
    p.add_argument("--only", nargs="+", default=None, metavar="EXPERIMENT",
                   help="run only these experiments of the config (default: all); the results file keeps the rest")
    p.set_defaults(func=run_sweep)

    p = command("report", help="Markdown + PNG figures from a sweep's results",
                description="Draw every experiment of a sweep results file (accuracy vs rate, rate grids, "
                            "unseen domains, layer types, depths) and the std table of the random methods.")
    p.add_argument("results", nargs="+", help="results .jsonl written by `taskprune sweep`; several files of one "
                   "model make one report (a run in a later file replaces the same run in an earlier one)")
    add_out(p, "output folder (README.md + one PNG per experiment)")
    p.add_argument("--title", default=None, help="title of the report")
    p.add_argument("--notes", default=None, help="Markdown file appended to the README (your reading of the numbers)")
    p.set_defaults(func=run_report)


def run_sweep(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else Path(args.config).with_suffix(".results.jsonl")
    shard = current()
    summary = sweep(args.config, out, model=args.model, data_dir=args.data_dir, progress=tqdm_progress,
                    shard=shard, only=args.only)
    ranks = f" by {shard.world_size} processes" if shard.active else ""
    echo(f"{summary.ran} runs done now{ranks} ({summary.failed} failed), {summary.already_done} of {summary.total} "
         f"were already in {out}; {summary.seconds:.0f} s")
    if summary.failed:
        echo("failed runs have an 'error' in their row and are retried by the next `taskprune sweep`")
        return EXIT_RUN_FAILED  # scripts and CI must not read a sweep with failed runs as a success
    return 0


def run_report(args: argparse.Namespace) -> None:
    from ..experiments.report import write_report  # matplotlib: loaded by the command that draws, not by every one

    out = write_report(args.results, args.out, overwrite=args.overwrite, title=args.title, notes=args.notes)
    echo(f"report written to {out}/README.md ({len(list(out.glob('*.png')))} figures)")
