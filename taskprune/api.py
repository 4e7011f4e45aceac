"""The library's front door: score -> plan -> prune -> save, each step callable alone.

The CLI is a thin layer over these functions; notebooks and scripts call them directly::

    model, tok = load_model(path), load_tokenizer(path)
    task = get_task("sst2")
    fit = sample_k_shot(load_examples(task, "fit", data_dir), 10, seed=0)
    result = compress(model, tok, task, fit, RateSpec(rate=0.5))  # taskprune's recipe; method="attribution": the paper's
    save_compressed(result, tok, "out/")
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .applies import check_applies
from .catalogue import DEFAULT_METHOD, get_method
from .checkpoint import save_pruned
from .errors import TaskpruneError
from .lm import model_kind
from .lm.batching import LazyBatches, length_order
from .method import TransformRequest
from .models import get_adapter
from .pruning.allocate import GLOBAL_RANKINGS, global_rates, removed_fraction, search_rates
from .pruning.apply import apply, masked, own_tensors
from .pruning.plan import PruningPlan, make_plan
from .pruning.rates import RateSpec, check_rates_fit, scaled_rates
from .pruning.repair import RepairConfig, repaired_consumers
from .pruning.repair import repair as repair_model
from .pruning.repaired import REPAIR_FILE, consumer_tensors, repaired_tensors, save_repaired
from .recipe import (
    DEFAULT_SEARCH_ITERATIONS,
    SEARCH_EXAMPLES,
    check_recipe,
    check_steps,
    check_trials,
    resolve_method,
    self_labelled,
)
from .runtime.distributed import SINGLE, Shard
from .runtime.placement import is_dispatched
from .scoring import ScoreConfig, Scores, ScoringJob, get_scorer, save_scores, score_metadata
from .scoring.base import Progress, no_progress, run_scorer
from .sources.fingerprint import fingerprint
from .sources.resolve import project_model_dir
from .tasks import Example, Task

DEFAULT_MODEL_NAME = "minilm-glue6"


def default_model_dir() -> Path | None:
    """The project's default model: $TASKPRUNE_MODEL, else models/minilm-glue6 in the source tree."""
    env = os.environ.get("TASKPRUNE_MODEL")
    if env:
        return Path(env)
    candidate = project_model_dir(DEFAULT_MODEL_NAME)
    return candidate if (candidate / "config.json").is_file() else None


def default_data_dir() -> Path | None:
    """Where GLUE/SuperGLUE data lives when --data-dir is not given: $TASKPRUNE_DATA."""
    env = os.environ.get("TASKPRUNE_DATA")
    return Path(env) if env else None


def scoring_job(model: nn.Module, tokenizer: Any, task: Task, examples: list[Example], config: ScoreConfig | None = None,
                batch_size: int = 8, max_length: int = 256, progress: Progress = no_progress,
                method: str | None = None, only: RateSpec | None = None, shard: Shard = SINGLE) -> ScoringJob:
    """Tokenise ``examples`` and gather what every scoring method is given: every non-empty group, or with
    ``only`` just those it prunes (rate > 0). ``shard``: this process's part when several share the work."""
    if not examples and (method is None or get_method(method).needs_examples):
        raise TaskpruneError(f"no examples to score task {task.name} with")
    groups = [g for g in get_adapter(model).groups() if g.size > 0 and (only is None or only.rate_for(g) > 0)]
    kind = model_kind(model)
    ordered = [examples[i] for i in length_order(examples, tokenizer, max_length, kind)]  # less padding, same sums
    return ScoringJob(model, LazyBatches(ordered, tokenizer, batch_size, max_length, kind),
                      kind.label_space(tokenizer, task), groups, config or ScoreConfig(), progress, shard)


def score(
    model: nn.Module,
    tokenizer: Any,
    task: Task,
    examples: list[Example],
    *,
    method: str = "attribution",
    config: ScoreConfig | None = None,
    batch_size: int = 8,
    max_length: int = 256,
    progress: Progress = no_progress,
    only: RateSpec | None = None,
    shard: Shard | None = None,
) -> Scores:
    """Importance of every unit of every group of ``model`` for ``task``, from ``examples`` (with ``only``: of the
    groups those rates prune).

    ``shard`` (e.g. :func:`taskprune.runtime.distributed.current` under torchrun): this process scores its share of the
    batches and every process returns the sum over all of them (see :func:`~taskprune.scoring.base.run_scorer`).
    """
    get_scorer(method)  # an unknown method is refused before any tokenising
    job = scoring_job(model, tokenizer, task, examples, config, batch_size, max_length, progress, method, only,
                      shard or SINGLE)
    return run_scorer(method, job) if job.groups else {}  # rates that prune nothing need no scores


def examples_per_rank(method: str, n_examples: int, batch_size: int, shard: Shard | None) -> list[int]:
    """How many examples each process reads for ``method`` (its length is the number of processes)."""
    shard = shard or SINGLE
    if not get_method(method).needs_examples:
        return [0] * shard.world_size  # svd and random scores read no example
    return shard.examples_per_rank(n_examples, batch_size)


@dataclass
class CompressResult:
    """The compressed model and what made it. ``plan`` is None for methods that do not select units (svd,
    smp-unstructured); ``extra_files`` are written next to the checkpoint (e.g. unstructured masks)."""

    model: nn.Module
    plan: PruningPlan | None
    scores: Scores
    scoring_seconds: float
    method: str = "attribution"
    note: str | None = None
    extra_files: dict[str, Callable[[Path], Any]] = field(default_factory=dict)
    examples_per_rank: list[int] | None = None  # how many examples each process scored (None: one process)
    #: the tensors weight repair changed or added, by name in ``model`` (what a server needs beside the plan to cut
    #: the repaired model from the base: :mod:`.pruning.repaired`); None without repair
    repaired: dict[str, torch.Tensor] | None = None


def compress(
    model: nn.Module,
    tokenizer: Any,
    task: Task,
    examples: list[Example],
    rates: RateSpec,
    *,
    method: str = DEFAULT_METHOD,
    config: ScoreConfig | None = None,
    seed: int | None = None,
    batch_size: int = 8,
    max_length: int = 256,
    progress: Progress = no_progress,
    allocate: str | None = None,
    repair: RepairConfig | str | None = None,
    calibration: list[Example] | None = None,
    search_iterations: int = DEFAULT_SEARCH_ITERATIONS,
    shard: Shard | None = None,
    inplace: bool = False,
    steps: int = 1,
    round_repair: bool = True,
    self_label: bool | None = None,
) -> CompressResult:
    """Score ``model`` on ``examples``, plan at ``rates`` and return the physically pruned copy.

    ``method`` defaults to taskprune's own recipe (like the CLI); ``method="attribution"`` is the paper's method
    alone, with uniform rates and no repair: the one to use for stock widths that plain ``from_pretrained`` loads.

    ``allocate`` spreads ``rates.rate`` as a budget of prunable parameters over the groups (:mod:`.allocate`);
    ``repair`` re-solves the kept weights (:mod:`.repair`) on ``calibration`` inputs (labels unused; default: the
    scoring examples), which the ``search`` allocation also judges its candidates on. ``scoring_seconds`` is the
    wall time of the method's own steps (scoring, allocation, repair; mask learning or factorising).
    ``shard``: score across processes (see :func:`score`); every process gets the same plan and model.
    ``inplace``: prune ``model`` itself instead of a copy (what a model placed by a device map needs: a copy of
    a model bigger than memory is no option); repair then rewrites its consumers without copying them, so the
    process holds the model, the solved kept-width consumers and one slice at a time.
    ``steps``: reach ``rates`` in that many rounds of equal increments (iterative pruning): after each round but
    the last, the pruned (and repaired) model is scored again, so the next cut sees what the earlier ones left;
    the units a round removed score zero and stay removed. The final model is still cut from ``model`` and
    repaired once against it. Costs ``steps`` scorings (and ``steps - 1`` extra repairs; ``round_repair=False``
    scores the rounds masked but unrepaired, which measured worse on SmolLM2: docs/method.md).
    ``self_label``: score the ``calibration`` inputs too, each labelled by the dense model's own prediction
    (:func:`taskprune.recipe.self_labelled`; the plan records how many in ``self_labelled``); None: the method's own
    (taskprune's recipe: on; every other method: off). No effect without calibration inputs beyond ``examples``.
    """
    repair_cfg = repair if isinstance(repair, RepairConfig) else None
    check_recipe(method, rates, allocate, repair_cfg.mode if repair_cfg else repair)
    check_steps(steps, method)
    check_rates_fit(rates, model)  # before minutes of scoring, not after
    if repair_cfg is not None and repair_cfg.centred and repair_cfg.mode in ("ls", "scale"):
        check_applies("--repair-centred", model)
    config = replace(config or ScoreConfig(), target_rates=rates.to_dict())
    shard = shard or SINGLE
    counts = examples_per_rank(method, len(examples), batch_size, shard) if shard.active else None
    spec = get_method(method)
    if spec.transform is not None:
        t0 = time.perf_counter()
        req = TransformRequest(model, tokenizer, task, examples, rates, config, progress, lambda: scoring_job(
            model, tokenizer, task, examples, config, batch_size, max_length, progress, shard=shard))
        out = spec.transform(req)
        return CompressResult(out.model, None, {}, time.perf_counter() - t0, method, note=out.note,
                              extra_files=out.extra_files, examples_per_rank=counts)
    scorer, allocation, repair_mode = resolve_method(method, allocate, repair_cfg.mode if repair_cfg else repair)
    repair_cfg = replace(repair_cfg, mode=repair_mode) if repair_cfg else RepairConfig(mode=repair_mode)
    if repair_cfg.mode != "none" and is_dispatched(model):
        raise TaskpruneError(f"repair {repair_cfg.mode} works on a copy of the whole model: it does not run on a model "
                             "placed by a device map; use repair none (--repair none)")
    t0 = time.perf_counter()
    labelled = len(examples)
    if self_label is None:
        self_label = spec.self_label
    if self_label and calibration:  # before any weight changes: the dense model's answers
        examples = [*examples, *self_labelled(model, tokenizer, task, calibration, examples, max(batch_size, 32),
                                              max_length)]
        counts = examples_per_rank(method, len(examples), batch_size, shard) if shard.active else None

    def score_on(m: nn.Module, r: RateSpec) -> Scores:
        return score(m, tokenizer, task, examples, method=scorer, config=config, batch_size=batch_size,
                     max_length=max_length, progress=progress, only=r if get_method(scorer).group_local else None,
                     shard=shard)

    scores = score_on(model, rates)
    kind = model_kind(model)
    labels = kind.label_space(tokenizer, task)
    calib = calibration if calibration else examples
    calib_batches = list(LazyBatches([calib[i] for i in length_order(calib, tokenizer, max_length, kind)],
                                     tokenizer, max(batch_size, 32), max_length, kind))

    base_fingerprint = fingerprint(model)

    def plan_for(r: RateSpec) -> PruningPlan:
        plan = make_plan(model, scores, r, task=task.name, method=method, samples=labelled, seed=seed,
                         options=config.to_dict(), base_fingerprint=base_fingerprint)
        plan.self_labelled = len(examples) - labelled or None
        return plan

    def allocated(r: RateSpec) -> tuple[RateSpec, dict[str, Any] | None]:
        """``r`` spread over the groups by the allocation (its budget ``r.rate``), with the allocation's record."""
        if allocation in GLOBAL_RANKINGS:
            standardise, power = GLOBAL_RANKINGS[allocation]
            out = global_rates(model, scores, r, r.rate, standardise=standardise, per_parameter=power)
            info: dict[str, Any] | None = {"method": allocation, "budget": r.rate}
        elif allocation == "search":
            fitness_batches = calib_batches[: max(1, SEARCH_EXAMPLES // calib_batches[0].input_ids.shape[0])]
            out, found = search_rates(model, scores, r, r.rate, fitness_batches, labels, plan_for,
                                      iterations=search_iterations, seed=config.seed, progress=progress)
            info = {"method": "search", "budget": r.rate, **found}
        else:
            return r, None
        info["removed_fraction"] = round(removed_fraction(model, out), 6)
        return out, info

    for step in range(1, steps):  # iterative pruning: re-score the model an intermediate cut leaves
        partial = plan_for(allocated(scaled_rates(rates, step / steps))[0])
        current = repair_model(model, partial, calib_batches, labels, repair_cfg, progress)[0] \
            if repair_cfg.mode != "none" and round_repair else model
        with masked(partial, current, check=False):  # the partial plan carries no repair record: masks hold
            scores = stay_removed(score_on(current, rates), partial)
        del current
    rates, allocation_info = allocated(rates)
    if steps > 1:
        allocation_info = {**(allocation_info or {"method": "uniform"}), "steps": steps}
    plan = plan_for(rates)
    plan.allocation = allocation_info
    pruned: nn.Module = model
    if repair_cfg.mode != "none":
        pruned, plan.repair = repair_model(model, plan, calib_batches, labels, repair_cfg, progress, inplace=inplace)
    seconds = time.perf_counter() - t0
    final = apply(plan, pruned, check=False, inplace=inplace or pruned is not model)
    repaired = None
    if pruned is not model:  # repair's copy shares the tensors it did not change with the base
        repaired = repaired_tensors(plan, model, final)
        own_tensors(final, model)
    elif repair_cfg.mode != "none":  # repaired in place: no plain cut of the base is left to compare with
        repaired = consumer_tensors(final, repaired_consumers(final, plan)[1])
    return CompressResult(final, plan, scores, seconds, method, examples_per_rank=counts, repaired=repaired)


def stay_removed(scores: Scores, plan: PruningPlan) -> Scores:
    """Scores of a masked model with the plan's removed units below every kept one (their own score is an exact 0
    already; below the minimum holds for signed scores too), so a later, larger cut keeps them removed."""
    out = dict(scores)
    for name, g in plan.groups.items():
        if name in out and len(g["keep"]) < g["size"]:
            s = out[name].clone()
            gone = torch.ones(s.numel(), dtype=torch.bool, device=s.device)
            gone[plan.keep(name).to(s.device)] = False
            kept = s[~gone]
            s[gone] = (kept.min() - kept.abs().max() - 1) if kept.numel() else -1.0
            out[name] = s
    return out


@dataclass
class TrialsResult:
    """Metrics of every trial of a random method and their mean and (sample) standard deviation."""

    method: str
    seeds: list[int]
    metrics: list[dict[str, float]]
    plans: list[PruningPlan]
    seconds: list[float]

    def mean(self) -> dict[str, float]:
        return {k: statistics.fmean(m[k] for m in self.metrics) for k in self.metrics[0]}

    def std(self) -> dict[str, float]:
        if len(self.metrics) < 2:
            return {k: 0.0 for k in self.metrics[0]}
        return {k: statistics.stdev(m[k] for m in self.metrics) for k in self.metrics[0]}

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "seeds": self.seeds, "metrics": self.metrics, "mean": self.mean(),
                "std": self.std(), "seconds": self.seconds}


def compress_trials(
    model: nn.Module,
    tokenizer: Any,
    task: Task,
    examples: list[Example],
    eval_examples: list[Example],
    rates: RateSpec,
    *,
    method: str,
    trials: int,
    config: ScoreConfig | None = None,
    seed: int | None = None,
    batch_size: int = 8,
    eval_batch_size: int = 32,
    max_length: int = 256,
    progress: Progress = no_progress,
    shard: Shard | None = None,
) -> TrialsResult:
    """Run a random method ``trials`` times (trial seeds ``config.seed`` + 0..trials-1) and evaluate each.

    Each trial is evaluated with the plan's masks on ``model`` itself (equal to the sliced model, which the
    tests hold it to), so no copy is made per trial.
    """
    from .evaluate import evaluate
    from .pruning.apply import masked

    check_trials(method, trials, bool(eval_examples))
    check_rates_fit(rates, model)  # before minutes of scoring, not after
    config = replace(config or ScoreConfig(), target_rates=rates.to_dict())
    seeds = [config.seed + i for i in range(trials)]
    metrics, plans, seconds = [], [], []
    for s in seeds:
        cfg = replace(config, seed=s)
        t0 = time.perf_counter()
        scores = score(model, tokenizer, task, examples, method=method, config=cfg, batch_size=batch_size,
                       max_length=max_length, shard=shard)
        seconds.append(time.perf_counter() - t0)
        plan = make_plan(model, scores, rates, task=task.name, method=method, samples=len(examples), seed=seed,
                         options=cfg.to_dict())
        with masked(plan, model, check=False):
            res = evaluate(model, tokenizer, task, eval_examples, batch_size=eval_batch_size, max_length=max_length,
                           progress=progress)
        metrics.append(dict(res.metrics))
        plans.append(plan)
    return TrialsResult(method, seeds, metrics, plans, seconds)


def _meta(plan: PruningPlan, examples_per_rank: list[int] | None = None) -> dict[str, str]:
    return score_metadata(plan.task or "", plan.method or "", plan.samples or 0, plan.seed,
                          ScoreConfig.from_dict(plan.options), examples_per_rank)


def save_compressed(result: CompressResult, tokenizer: Any, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Checkpoint + tokenizer + ``plan.json`` + ``scores.safetensors`` (+ method files), in one atomic folder."""
    extra: dict[str, Callable[[Path], Any]] = dict(result.extra_files)
    if result.plan is not None:
        plan = result.plan
        extra["plan.json"] = lambda p: plan.save(p)
        extra["scores.safetensors"] = lambda p: save_scores(result.scores, p, meta=_meta(plan, result.examples_per_rank))
        if result.repaired is not None:  # what `taskprune serve` needs to cut the repaired model from the base
            extra[REPAIR_FILE] = lambda p: save_repaired(result.repaired, p, plan)
    return save_pruned(result.model, out_dir, tokenizer, extra_files=extra, overwrite=overwrite)
