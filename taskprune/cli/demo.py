"""``taskprune demo``: the README's main job — compress the default model for SST-2 from 10 examples and compare
accuracy, parameters, size on disk and latency (dense and pruned timed in adjacent, alternating pairs)."""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from ..api import compress, save_compressed
from ..checkpoint import fp16_checkpoint_size, load_pruned, loading_notes
from ..errors import TaskpruneError
from ..evaluate import count_parameters, evaluate, latency_per_example
from ..files import check_writable
from ..runtime.timing import alternating_pairs, ratio_summary
from . import inputs
from .options import (
    POSITIVE_INT,
    add_model,
    add_out,
    add_rates,
    add_recipe,
    add_scoring,
    add_task,
    rates_from,
    recipe_from,
    score_config,
)
from .render import echo, ratio, render_table, tqdm_progress, used

LATENCY_EXAMPLES = 16  # examples per timed pass of the demo's latency pairs


def register(command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command("demo", help="compress the default model for SST-2 and print a before/after table",
                description="The main job: compress the default model for SST-2 from 10 examples with "
                            "compress's default recipe, half of the decoder's prunable parameters removed, "
                            "and compare accuracy, parameters, size on disk and latency.")
    add_model(p)
    add_task(p, required=False, default="sst2")
    add_scoring(p, "compress")
    add_recipe(p)
    add_rates(p, modules="decoder")
    p.add_argument("--eval-examples", type=POSITIVE_INT, default=None, help="evaluate on at most this many dev examples")
    p.add_argument("--latency-pairs", type=POSITIVE_INT, default=9,
                   help="dense/pruned latency pairs, order alternating; the ratio is their median (default 9)")
    add_out(p, "also keep the pruned checkpoint here", required=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    task = inputs.task(args.task)
    if inputs.data_dir(args) is None and args.source in ("auto", "dir") and not task.file_map:
        raise TaskpruneError(
            "no GLUE data: pass --data-dir with a GLUE/SuperGLUE folder (holding glue/SST-2/train.tsv and dev.tsv; "
            "the standard download_glue_data.py layout works), set $TASKPRUNE_DATA, or use --source hf with internet"
        )
    if args.out:
        check_writable(args.out, args.overwrite, folder=True)
    rates = rates_from(args)
    config = score_config(args)
    recipe = recipe_from(args)
    recipe.check(rates)
    fit = inputs.fit_sample(args, task)  # a wrong --data-dir is named before the model loads
    eval_set = inputs.examples(args, task, "eval")[: args.eval_examples or None]
    path, model, tok = inputs.load(args, rates)
    echo(f"demo: compress {path} for {task.name} from {used(fit, args.samples)} with --method {args.method}, "
         f"{rates.describe(model)}")
    pool = inputs.examples(args, task, "fit") if recipe.uses_calibration else None
    result = compress(model, tok, task, fit, rates, method=args.method, config=config, seed=args.seed,
                      batch_size=args.batch_size, max_length=args.max_length, progress=tqdm_progress,
                      **recipe.compress_kwargs(pool, fit, args.seed))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp) / "pruned"
        save_compressed(result, tok, out, overwrite=args.overwrite)
        pruned = load_pruned(out, dtype=next(model.parameters()).dtype)
        stored = [fp16_checkpoint_size(m, Path(tmp) / name) for m, name in ((model, "dense16"), (pruned, "pruned16"))]
        rows: dict[str, list[Any]] = {}
        for m in (model, pruned):
            res = evaluate(m, tok, task, eval_set, batch_size=32, max_length=args.max_length, progress=tqdm_progress)
            for metric, value in res.metrics.items():
                rows.setdefault(f"{task.name} {metric} (dev, {len(eval_set)})", []).append(value)
            params = count_parameters(m)
            rows.setdefault("parameters (total)", []).append(params["total"])
            rows.setdefault("parameters (prunable)", []).append(params["prunable"])

        def timer(m: nn.Module) -> Callable[[], float]:
            return lambda: latency_per_example(m, tok, task, eval_set, n=LATENCY_EXAMPLES, repeats=1,
                                               max_length=args.max_length)

        dense_s, pruned_s = alternating_pairs(timer(model), timer(pruned), args.latency_pairs)
    latency = ratio_summary(pruned_s, dense_s)
    rows["size on disk, fp16 safetensors (MB)"] = [size / 1e6 for size, _ in stored]
    lat_row = f"latency ms/example (batch 1; median of {latency.pairs} pairs)"
    rows[lat_row] = [1000 * statistics.median(dense_s), 1000 * statistics.median(pruned_s)]
    rows["compress time (s): scoring, allocation, repair"] = ["", result.scoring_seconds]
    table = [[k, *v, str(latency) if k == lat_row else ratio(v)] for k, v in rows.items()]
    echo(render_table(["", "dense", "pruned", "pruned/dense"], table))
    echo(f"latency: dense and pruned timed in {latency.pairs} adjacent pairs, order alternating, "
         f"{LATENCY_EXAMPLES} examples each; pruned/dense is the median of the pairs' ratios (interquartile range)")
    counted = rows["parameters (total)"]
    if any(values != n for (_, values), n in zip(stored, counted)):
        (_, d_values), (_, p_values) = stored
        echo(f"size: the checkpoints' files hold {d_values / 1e6:.1f} M and {p_values / 1e6:.1f} M values for "
             f"{counted[0] / 1e6:.1f} M and {counted[1] / 1e6:.1f} M parameters: a tensor shared in memory (the "
             "tied word embedding of a bert2bert) counts once as a parameter but is saved under each name, since "
             "transformers cannot save an encoder/decoder tie (loading re-ties it)")
    for line in loading_notes(result.plan, args.out):  # the recipe, and how to load a kept checkpoint
        echo(line)
    if args.out:
        echo(f"pruned checkpoint saved to {args.out}")
