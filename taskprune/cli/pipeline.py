"""The flow's steps, one command each: ``score`` -> ``plan`` -> ``prune`` -> ``eval``, and ``info`` on a model
or a plan."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..api import examples_per_rank, score
from ..checkpoint import save_pruned
from ..errors import TaskpruneError
from ..evaluate import count_parameters, evaluate, latency_per_example
from ..files import check_writable
from ..models import get_adapter
from ..pruning.apply import apply, validate_plan
from ..pruning.plan import PruningPlan, make_plan
from ..pruning.repaired import REPAIR_FILE, check_fits, load_repaired, save_repaired, with_repaired
from ..runtime.distributed import current
from ..scoring import save_scores, score_metadata
from ..scoring.base import load_scores_with_provenance
from ..sources import fingerprint as fingerprints
from ..tasks import Example, Task
from . import inputs
from .options import (
    POSITIVE_INT,
    add_model,
    add_out,
    add_rates,
    add_scoring,
    add_task,
    rates_from,
    recipe_from,
    score_config,
)
from .render import echo, ranks_text, render_table, tqdm_progress, used


def register(command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command("score", help="compute importance scores and save them as safetensors",
                description="Score every unit of every neuron group on a few task examples.")
    add_model(p, placement=True)
    add_task(p)
    add_scoring(p, "score")
    add_out(p, "output .safetensors file for the scores")
    p.set_defaults(func=run_score)

    p = command("plan", help="turn scores into a pruning plan (JSON)",
                description="Select the units to keep from saved scores at the given rates.")
    add_model(p, placement=True)
    p.add_argument("--scores", required=True, help="scores .safetensors written by `taskprune score`")
    add_rates(p)
    add_out(p, "output plan .json file")
    p.set_defaults(func=run_plan)

    p = command("prune", help="apply a plan: slice the weights and save the smaller checkpoint",
                description="Physically remove the units a plan drops; refuses a plan made for another model.")
    add_model(p, placement=True)
    p.add_argument("--plan", required=True, help="plan .json written by `taskprune plan` or `compress`")
    add_out(p, "output folder for the pruned checkpoint")
    p.set_defaults(func=run_prune)

    p = command("eval", help="task metrics of a (pruned or dense) model",
                description="Accuracy/F1 by rank classification of the label words (or greedy generation).")
    add_model(p, placement=True)
    add_task(p)
    p.add_argument("--split", default="eval", choices=["eval", "fit"], help="which split to evaluate (default eval)")
    p.add_argument("--examples", type=POSITIVE_INT, default=None, help="evaluate on at most this many examples")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=32, help="batch size (default 32)")
    p.add_argument("--generate", action="store_true", help="predict by greedy generation instead of rank classification")
    p.add_argument("--latency", action="store_true", help="also measure latency per example at batch size 1")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--backend", default="torch", choices=["torch", "llama.cpp"],
                   help="run the model in torch (default) or a .gguf file in llama.cpp (the runtime users deploy; same "
                        "prompts, rank classification on llama.cpp's logits)")
    p.add_argument("--tokenizer", default=None,
                   help="--backend llama.cpp: the Hugging Face tokenizer that builds the prompts (default: the one "
                        "in the GGUF file)")
    p.add_argument("--threads", type=POSITIVE_INT, default=None, help="--backend llama.cpp: CPU threads")
    p.set_defaults(func=run_eval)

    p = command("info", help="describe a model's neuron groups, or a plan",
                description="List a model's neuron groups, widths, parameter counts and fingerprint, or a plan.")
    add_model(p, placement=True)
    p.add_argument("--plan", default=None, help="describe this plan file instead of a model")
    p.set_defaults(func=run_info)


def run_score(args: argparse.Namespace) -> None:
    check_writable(args.out, args.overwrite, folder=False)
    task = inputs.task(args.task)
    if args.device_map is not None:
        recipe_from(args).check_placement()
    shard = current()
    config = score_config(args)
    fit = inputs.fit_sample(args, task)  # a wrong --data-dir is named before the model loads
    _, model, tok = inputs.load(args)
    t0 = time.perf_counter()
    scores = score(model, tok, task, fit, method=args.method, config=config, batch_size=args.batch_size,
                   max_length=args.max_length, progress=tqdm_progress, shard=shard)
    seconds = time.perf_counter() - t0
    if not shard.is_main:
        return  # every rank holds the summed scores; rank 0 writes them
    counts = examples_per_rank(args.method, len(fit), args.batch_size, shard)
    meta = score_metadata(task.name, args.method, len(fit), args.seed, config, counts)
    save_scores(scores, args.out, meta=meta, overwrite=args.overwrite)
    echo(f"scored {len(scores)} groups of {task.name} on {used(fit, args.samples)} in {seconds:.1f} s"
         f"{ranks_text(counts)} -> {args.out}")


def run_plan(args: argparse.Namespace) -> None:
    check_writable(args.out, args.overwrite, folder=False)
    rates = rates_from(args)
    scores, provenance = load_scores_with_provenance(args.scores)
    _, model, _tok = inputs.load(args, rates)
    try:
        plan = make_plan(model, scores, rates, **provenance)
    except TaskpruneError as err:  # what make_plan refuses is the scores: name their file
        raise TaskpruneError(f"{args.scores}: {err}") from None
    plan.save(args.out, overwrite=args.overwrite)
    kept = sum(len(g["keep"]) for g in plan.groups.values())
    total = sum(g["size"] for g in plan.groups.values())
    echo(f"plan keeps {kept:,} of {total:,} units ({rates.describe(model)}) -> {args.out}")


def run_prune(args: argparse.Namespace) -> None:
    check_writable(args.out, args.overwrite, folder=True)
    plan = PruningPlan.load(args.plan)
    repair_path = Path(args.plan).with_name(REPAIR_FILE)
    repair = None
    if plan.repaired_with:  # the plan alone would give the unrepaired model: its tensors must be beside it
        if not repair_path.is_file():
            raise TaskpruneError(f"{args.plan}: this plan was made with weight repair ({plan.repaired_with}) and "
                                 f"{repair_path} is missing: the plan alone gives a different, unrepaired model; "
                                 "keep the compress output folder whole (or load its checkpoint itself)")
        repair = load_repaired(repair_path, plan)  # bound to this plan and its base by hash
    _, model, tok = inputs.load(args)
    try:
        plan.check_model(model)  # another model's plan first: that is the likelier story than an edited one
        validate_plan(plan, get_adapter(model))  # a lacking group, bad indices: named with the plan file
    except TaskpruneError as err:
        raise TaskpruneError(f"{args.plan}: {err}") from None
    before = count_parameters(model)  # before an in-place (--device-map) prune changes it
    pruned = apply(plan, model, check=False, validated=True, inplace=args.device_map is not None)
    extra: dict[str, Any] = {"plan.json": lambda p: plan.save(p)}
    if repair is not None:
        check_fits(pruned, repair, str(repair_path))
        pruned = with_repaired(pruned, repair)
        extra[REPAIR_FILE] = lambda p: save_repaired(repair, p, plan)
    after = count_parameters(pruned)
    save_pruned(pruned, args.out, tok, extra_files=extra, overwrite=args.overwrite)
    echo(render_table(["", "before", "after"], [["parameters (total)", before["total"], after["total"]],
                                                ["parameters (prunable)", before["prunable"], after["prunable"]]]))
    echo(f"saved to {args.out}")


def run_eval(args: argparse.Namespace) -> None:
    task = inputs.task(args.task)
    examples = inputs.examples(args, task, args.split)  # a wrong --data-dir is named before the model loads
    if args.examples:
        examples = examples[: args.examples]
    if args.backend == "llama.cpp":
        return _eval_gguf(args, task, examples)
    if args.tokenizer or args.threads:
        raise TaskpruneError("--tokenizer and --threads are for --backend llama.cpp (torch reads the model's own "
                             "tokenizer and torch's thread setting)")
    _, model, tok = inputs.load(args)
    res = evaluate(model, tok, task, examples, batch_size=args.batch_size, max_length=args.max_length,
                   generate=args.generate, progress=tqdm_progress)
    params = count_parameters(model)
    rows: list[list[object]] = [[k, v] for k, v in res.metrics.items()]
    rows += [["examples", res.n_examples], ["parameters (total)", params["total"]],
             ["parameters (prunable)", params["prunable"]]]
    if args.latency:
        rows.append(["latency ms/example (batch 1)",
                     1000 * latency_per_example(model, tok, task, examples, max_length=args.max_length)])
    if args.json:
        echo(json.dumps({r[0]: r[1] for r in rows}))
    else:
        echo(f"{task.name} ({args.split}, {'generation' if args.generate else 'rank classification'})")
        echo(render_table(["", "value"], rows))


def _eval_gguf(args: argparse.Namespace, task: Task, examples: list[Example]) -> None:
    from ..portable.llamacpp import evaluate_gguf

    model = Path(inputs.model_path(args))
    if model.suffix.lower() != ".gguf" or not model.is_file():
        raise TaskpruneError(f"--backend llama.cpp runs a .gguf file (taskprune export writes one); {model} is not one")
    tok = inputs.gguf_tokenizer(model, args.tokenizer, args.chat_template)
    res = evaluate_gguf(model, tok, task, examples, max_length=args.max_length, threads=args.threads,
                        generate=args.generate, progress=tqdm_progress)
    rows: list[list[object]] = [[k, v] for k, v in res.metrics.items()]
    rows += [["examples", res.n_examples], ["file size (MB)", model.stat().st_size / 1e6],
             ["seconds", res.seconds]]
    if args.json:
        echo(json.dumps({r[0]: r[1] for r in rows}))
    else:
        echo(f"{task.name} ({args.split}, llama.cpp, {'generation' if args.generate else 'rank classification'})")
        echo(render_table(["", "value"], rows))


def run_info(args: argparse.Namespace) -> None:
    if args.plan and args.model:
        raise TaskpruneError("info describes a model (--model) or a plan (--plan), not both: give one of them "
                             "(a plan names the fingerprint of its model; `taskprune info --model M` shows M's)")
    if args.plan:
        plan = PruningPlan.load(args.plan)
        echo(f"plan for {plan.family} model {plan.base_fingerprint}: task {plan.task}, method {plan.method}, "
             f"{plan.samples} examples, seed {plan.seed}, options {plan.options}")
        rows = [[n, g["size"], len(g["keep"]), g.get("rate", "")] for n, g in plan.groups.items()]
        echo(render_table(["group", "units", "kept", "rate"], rows))
        return
    path, model, _ = inputs.load(args)
    adapter = get_adapter(model)
    params = count_parameters(model)
    echo(f"{path}: family {adapter.family}, fingerprint {fingerprints.fingerprint(model)}, "
         f"{params['total']:,} parameters ({params['prunable']:,} prunable)")
    rows = [[g.name, g.role, g.n_heads, g.size, adapter.prunable_parameters(g)] for g in adapter.groups()]
    echo(render_table(["group", "kind", "heads", "units", "parameters"], rows))
