"""``taskprune compress``: score -> plan -> prune -> save in one command, with before/after parameters and
accuracy; ``--trials N`` runs a random method N times instead."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from ..api import compress, compress_trials, save_compressed
from ..checkpoint import load_pruned, loading_notes
from ..evaluate import count_parameters, evaluate
from ..files import atomic_dir, check_writable
from ..pruning.rates import RateSpec
from ..recipe import check_trials
from ..runtime.distributed import current
from ..scoring import ScoreConfig
from ..tasks import Task
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
from .render import echo, ranks_text, render_table, tqdm_progress, used


def register(command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command("compress", help="score -> plan -> prune -> save, with before/after parameters and accuracy",
                description="Score every neuron on a few task examples, remove the least important ones and "
                            "save a physically smaller checkpoint (with plan.json and scores.safetensors).")
    add_model(p, placement=True)
    add_task(p)
    add_scoring(p, "compress")
    add_recipe(p)
    p.add_argument("--trials", type=POSITIVE_INT, default=1,
                   help="random methods only: run N trials (trial seeds --trial-seed ...) and report mean ± std; "
                        "writes the trials' plans and metrics to --out instead of a checkpoint")
    add_rates(p)
    add_out(p, "output folder for the pruned checkpoint")
    p.add_argument("--eval-examples", type=POSITIVE_INT, default=None, help="evaluate on at most this many eval examples")
    p.add_argument("--eval-batch-size", type=POSITIVE_INT, default=32, help="batch size of evaluation (default 32)")
    p.add_argument("--no-eval", action="store_true", help="skip the before/after evaluation")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    check_writable(args.out, args.overwrite, folder=True)  # before minutes of scoring, not after
    task = inputs.task(args.task)
    rates = rates_from(args)
    recipe = recipe_from(args)
    if args.device_map is not None:
        recipe.check_placement()
    config = score_config(args)  # refuses bad SMP settings
    recipe.check_tuning()
    if args.trials != 1:
        return _trials(args, task, rates, config)
    recipe.check(rates)
    fit = inputs.fit_sample(args, task)  # a wrong --data-dir is named before the model loads
    _, model, tok = inputs.load(args, rates)
    eval_set = inputs.eval_examples(args, task) if current().is_main else []  # rank 0 alone evaluates
    placed = args.device_map is not None

    def metrics_of(model_: nn.Module) -> dict[str, float]:
        return evaluate(model_, tok, task, eval_set, batch_size=args.eval_batch_size, max_length=args.max_length,
                        progress=tqdm_progress).metrics

    # pruned in place (no one else holds the model this command loaded): no second copy of its tensors, repaired
    # consumers included (what a 3B model in float32 needs on 24 GiB), so the dense model is evaluated first
    dense_metrics = metrics_of(model) if eval_set else None
    before, plan_text = count_parameters(model), rates.describe(model)
    pool = inputs.examples(args, task, "fit") if recipe.uses_calibration else None
    result = compress(model, tok, task, fit, rates, method=args.method, config=config, seed=args.seed,
                      batch_size=args.batch_size, max_length=args.max_length, progress=tqdm_progress,
                      shard=current(), inplace=True, **recipe.compress_kwargs(pool, fit, args.seed))
    if not current().is_main:
        return  # the other ranks helped score; rank 0 writes and reports
    out = save_compressed(result, tok, args.out, overwrite=args.overwrite)
    after = count_parameters(result.model)
    rows: list[list[Any]] = [["parameters (total)", before["total"], after["total"]],
                             ["parameters (prunable)", before["prunable"], after["prunable"]]]
    if eval_set:
        columns = [dense_metrics, metrics_of(result.model if placed else load_pruned(out))]
        for metrics in columns:
            for metric, value in metrics.items():
                row = next((r for r in rows if r[0] == metric), None)
                if row is None:
                    rows.append([metric, value])
                else:
                    row.append(value)
    n_used = "no examples" if args.method == "svd" else used(fit, args.samples)
    if result.plan is not None and result.plan.self_labelled:
        n_used += f" + {result.plan.self_labelled} self-labelled"
    echo(f"{task.name}: {args.method} on {n_used} ({result.scoring_seconds:.1f} s{ranks_text(result.examples_per_rank)}), "
         f"plan {plan_text}")
    echo(render_table(["", "before", "after"], rows))
    echo(f"kept {after['prunable'] / max(before['prunable'], 1):.1%} of prunable parameters; saved to {out}")
    if result.note:
        echo(f"note: {result.note}")
    for line in loading_notes(result.plan, out):
        echo(line)


def _trials(args: argparse.Namespace, task: Task, rates: RateSpec, config: ScoreConfig) -> None:
    check_trials(args.method, args.trials, not args.no_eval, args.allocate, args.repair)  # before data and model
    fit = inputs.fit_sample(args, task)
    eval_set = inputs.eval_examples(args, task)
    _, model, tok = inputs.load(args, rates)
    res = compress_trials(model, tok, task, fit, eval_set, rates, method=args.method, trials=args.trials,
                          config=config, seed=args.seed, batch_size=args.batch_size,
                          eval_batch_size=args.eval_batch_size, max_length=args.max_length, progress=tqdm_progress,
                          shard=current())
    if not current().is_main:
        return

    def write(tmp: Path) -> None:
        (tmp / "plans").mkdir()
        for seed, plan in zip(res.seeds, res.plans):
            plan.save(tmp / "plans" / f"trial-{seed}.json")
        (tmp / "trials.json").write_text(json.dumps(res.to_dict(), indent=1) + "\n")

    out = atomic_dir(args.out, write, args.overwrite)
    metrics = list(res.metrics[0])
    rows = [[f"trial seed {s}", *(m[k] for k in metrics)] for s, m in zip(res.seeds, res.metrics)]
    mean, std = res.mean(), res.std()
    rows.append(["mean ± std", *(f"{mean[k]:.2f} ± {std[k]:.2f}" for k in metrics)])
    echo(f"{task.name}: {args.method}, {len(res.seeds)} trials on {used(fit, args.samples)}, plan {rates.describe(model)}")
    echo(render_table(["", *metrics], rows))
    echo(f"plans and metrics saved to {out} (make a model from one: taskprune prune --plan {out}/plans/trial-N.json)")
