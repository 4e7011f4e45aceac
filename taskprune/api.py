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

from .pruning.allocate import ALLOCATIONS, MAX_RATE, global_rates, removed_fraction, search_rates
from .checkpoint import save_pruned
from .lm.batching import LazyBatches, length_order
from .runtime.distributed import SINGLE, Shard
from .errors import TaskpruneError
from .sources.fingerprint import fingerprint
from .lm import model_kind
from .models import get_adapter
from .runtime.placement import has_offloaded, is_dispatched
from .pruning.plan import PruningPlan, RateSpec, check_rates_fit, make_plan
from .pruning.apply import apply
from .pruning.repair import RepairConfig
from .pruning.repair import repair as repair_model
from .scoring import ScoreConfig, Scores, ScoringJob, get_scorer, list_scorers, save_scores, score_metadata
from .scoring.base import Progress, needs_examples, no_progress, run_scorer
from .tasks import Example, Task

DEFAULT_MODEL_NAME = "minilm-glue6"


def default_model_dir() -> Path | None:
    """The project's default model: $TASKPRUNE_MODEL, else models/minilm-glue6 in the source tree."""
    env = os.environ.get("TASKPRUNE_MODEL")
    if env:
        return Path(env)
    candidate = Path(__file__).resolve().parents[1] / "models" / DEFAULT_MODEL_NAME
    return candidate if (candidate / "config.json").is_file() else None


def default_data_dir() -> Path | None:
    """Where GLUE/SuperGLUE data lives when --data-dir is not given: $TASKPRUNE_DATA."""
    env = os.environ.get("TASKPRUNE_DATA")
    return Path(env) if env else None


#: scorers whose score of a group does not depend on which other groups are scored (no shared random stream):
#: ``compress`` scores only the groups its rates prune, so a decoder-only plan never back-propagates into the encoder
GROUP_LOCAL = ("attribution", "attribution-unsupervised", "activation", "random-attribution", "fisher", "flap")


def scoring_job(model: nn.Module, tokenizer: Any, task: Task, examples: list[Example], config: ScoreConfig | None = None,
                batch_size: int = 8, max_length: int = 256, progress: Progress = no_progress,
                method: str | None = None, only: RateSpec | None = None, shard: Shard = SINGLE) -> ScoringJob:
    """Tokenise ``examples`` and gather what every scoring method is given: every non-empty group, or with
    ``only`` just those it prunes (rate > 0). ``shard``: this process's part when several share the work."""
    if not examples and (method is None or needs_examples(method)):
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
    if method == "svd" or (method in list_scorers() and not needs_examples(method)):
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


def _compress_svd(model: nn.Module, tokenizer: Any, task: Task, examples: list[Example], rates: RateSpec,
                  config: ScoreConfig, batch_size: int, max_length: int, progress: Progress,
                  shard: Shard) -> CompressResult:
    from .pruning.lowrank import factorize

    if has_offloaded(model):
        raise TaskpruneError("svd factorises every weight in memory: it does not run on a model with offloaded "
                             "weights (--device-map with cpu/disk offload); load the model whole")
    t0 = time.perf_counter()
    out = factorize(model, rates)
    return CompressResult(out, None, {}, time.perf_counter() - t0, "svd",
                          note="low-rank factorisation (no examples used): load it with taskprune.load_pruned")


def _compress_smp_unstructured(model: nn.Module, tokenizer: Any, task: Task, examples: list[Example],
                               rates: RateSpec, config: ScoreConfig, batch_size: int, max_length: int,
                               progress: Progress, shard: Shard) -> CompressResult:
    from safetensors.torch import save_file

    from .scoring.smp import apply_weight_masks, learn_weight_masks

    if is_dispatched(model):
        raise TaskpruneError("smp-unstructured learns a mask per weight through a functional call of the whole "
                             "model: it does not run on a model placed by --device-map; load the model whole")
    if rates.multiple_of != 1:
        raise TaskpruneError("multiple_of rounds the widths of pruned units; smp-unstructured zeroes single weights "
                             "in dense shapes: leave multiple_of at 1 for it")
    t0 = time.perf_counter()
    masks, _ = learn_weight_masks(scoring_job(model, tokenizer, task, examples, config, batch_size, max_length,
                                              progress, shard=shard))
    out = apply_weight_masks(model, masks)
    tensors = {k: v.to(dtype=torch.uint8).contiguous() for k, v in masks.items()}
    return CompressResult(
        out, None, {}, time.perf_counter() - t0, "smp-unstructured",
        note="unstructured: the zeroed weights keep their dense shapes, so the model is neither smaller nor "
             "faster without a sparse kernel or format (masks in masks.safetensors)",
        extra_files={"masks.safetensors": lambda p: save_file(tensors, str(p), metadata={"task": task.name})},
    )


# Methods that change the model some other way than by selecting units (a scorer + plan).
TRANSFORMS: dict[str, Callable[..., CompressResult]] = {
    "svd": _compress_svd,
    "smp-unstructured": _compress_smp_unstructured,
}
RANDOM_METHODS = ("random", "random-attribution")


def list_methods() -> list[str]:
    """Every method ``compress`` accepts: the registered scorers, the peers' presets and the transforms."""
    return sorted([*list_scorers(), *TRANSFORMS, *(p for p in PRESETS if p not in list_scorers())])


@dataclass(frozen=True)
class Preset:
    """A peer method as a combination of this engine's parts: its scorer, its allocation and its repair."""

    scorer: str
    allocate: str
    repair: str


#: taskprune's own recipe, the default of ``compress``: the paper's attribution scores, then the allocation and the
#: repair that measured best together (reports/beyond); ``--method attribution`` is the paper's method alone
DEFAULT_METHOD = "taskprune"
#: calibration inputs for repair and the search allocation (scoring examples + unlabelled fit examples)
DEFAULT_CALIBRATION = 128
DEFAULT_SEARCH_ITERATIONS = 40
#: calibration inputs the search allocation judges each candidate on (one masked forward over them per candidate)
SEARCH_EXAMPLES = 64

#: recipes that combine this engine's parts: ours, and peers implemented from their papers (docs/method.md)
PRESETS: dict[str, Preset] = {
    DEFAULT_METHOD: Preset("attribution", "global-raw", "ls"),
    "flap": Preset("flap", "global", "bias"),  # An et al. 2024: fluctuation, adaptive structure, bias compensation
    "kwon": Preset("fisher", "global-raw", "scale"),  # Kwon et al. 2022: Fisher mask, global search, rescaling
}


def calibration_examples(pool: list[Example], scoring: list[Example], n: int, seed: int = 0) -> list[Example]:
    """``n`` calibration inputs: the scoring examples first, then others drawn (seeded) from ``pool`` (labels are
    not used, so any task input will do: repair needs inputs, not answers)."""
    import random

    chosen = list(scoring[:n])
    taken = {(e.text, e.prompt) for e in chosen}
    rest = [e for e in pool if (e.text, e.prompt) not in taken]
    return chosen + random.Random(seed).sample(rest, min(len(rest), n - len(chosen)))


def resolve_method(method: str, allocate: str | None, repair: str | None) -> tuple[str, str, str]:
    """(scorer, allocation, repair mode) for ``method``; explicit ``allocate``/``repair`` override a preset's."""
    preset = PRESETS.get(method)
    scorer = preset.scorer if preset else method
    return (scorer, allocate or (preset.allocate if preset else "uniform"),
            repair or (preset.repair if preset else "none"))


def check_recipe(method: str, rates: RateSpec, allocate: str | None = None, repair: str | None = None) -> None:
    """Refuse a method / allocation / repair / rates combination that cannot be honoured, before any model is
    loaded or scored: minutes of work should not end in an error the flags alone already showed, and nothing
    the user asked for may be dropped silently (per-part rates under an allocation that sets every group's rate)."""
    if method in TRANSFORMS:
        if allocate not in (None, "uniform") or repair not in (None, "none"):
            raise TaskpruneError(f"{method} does not select units: it takes no allocation or repair (drop --allocate "
                                 "and --repair)")
        if method == "svd" and rates.multiple_of != 1:
            raise TaskpruneError("svd's ranks follow the paper's parameter budget and are not rounded: leave "
                                 "--multiple-of at 1 for svd")
        return
    scorer, allocation, repair_mode = resolve_method(method, allocate, repair)
    if scorer not in list_scorers():
        raise TaskpruneError(f"unknown method {method!r}; choose from {', '.join(list_methods())}")
    if allocation not in ALLOCATIONS:
        raise TaskpruneError(f"allocation {allocation!r} is not one of {', '.join(ALLOCATIONS)}")
    RepairConfig(mode=repair_mode)  # refuses an unknown mode
    if allocation != "uniform" and rates.rate > MAX_RATE:
        raise TaskpruneError(f"{method}'s {allocation} allocation keeps at least {1 - MAX_RATE:.0%} of every group, so "
                             f"it cannot remove {rates.rate:g} of the parameters: pass --allocate uniform for a rate "
                             f"above {MAX_RATE}")
    overrides = [flag for flag, given in (("--module-rate", rates.module_rates), ("--layer-type-rate",
                 rates.layer_type_rates), ("--depth-rate", rates.depth_rates)) if given]
    if allocation != "uniform" and overrides:
        raise TaskpruneError(f"{' and '.join(overrides)} {'set' if len(overrides) > 1 else 'sets'} rates per part, but "
                             f"{method}'s {allocation} allocation sets every group's rate from the budget: pass "
                             "--allocate uniform with per-part rates (--modules and --layer-types narrow the scope "
                             "with any allocation)")


def check_trials(method: str, trials: int, evaluated: bool, allocate: str | None = None,
                 repair: str | None = None) -> None:
    """Refuse a ``--trials`` run that cannot be done, before any model is loaded (see :func:`compress_trials`)."""
    if method not in RANDOM_METHODS:
        raise TaskpruneError(f"--trials is for the random methods ({', '.join(RANDOM_METHODS)}); {method} is deterministic")
    if trials < 1:
        raise TaskpruneError(f"--trials must be at least 1, got {trials}")
    if not evaluated:
        raise TaskpruneError("trials are compared by evaluation: no eval examples were given")
    if allocate not in (None, "uniform") or repair not in (None, "none"):
        raise TaskpruneError("trials are evaluated as uniform, unrepaired masks of the model: they take no --allocate "
                             "or --repair")


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
    a model bigger than memory is no option).
    """
    repair_cfg = repair if isinstance(repair, RepairConfig) else None
    check_recipe(method, rates, allocate, repair_cfg.mode if repair_cfg else repair)
    check_rates_fit(rates, model)  # before minutes of scoring, not after
    config = replace(config or ScoreConfig(), target_rates=rates.to_dict())
    shard = shard or SINGLE
    counts = examples_per_rank(method, len(examples), batch_size, shard) if shard.active else None
    if method in TRANSFORMS:
        result = TRANSFORMS[method](model, tokenizer, task, examples, rates, config, batch_size, max_length,
                                    progress, shard)
        return replace(result, examples_per_rank=counts)
    scorer, allocation, repair_mode = resolve_method(method, allocate, repair_cfg.mode if repair_cfg else repair)
    repair_cfg = replace(repair_cfg, mode=repair_mode) if repair_cfg else RepairConfig(mode=repair_mode)
    if repair_cfg.mode != "none" and is_dispatched(model):
        raise TaskpruneError(f"repair {repair_cfg.mode} works on a copy of the whole model: it does not run on a model "
                             "placed by a device map; use repair none (--repair none)")
    t0 = time.perf_counter()
    scores = score(model, tokenizer, task, examples, method=scorer, config=config, batch_size=batch_size,
                   max_length=max_length, progress=progress, only=rates if scorer in GROUP_LOCAL else None,
                   shard=shard)
    kind = model_kind(model)
    labels = kind.label_space(tokenizer, task)
    calib = calibration if calibration else examples
    calib_batches = list(LazyBatches([calib[i] for i in length_order(calib, tokenizer, max_length, kind)],
                                     tokenizer, max(batch_size, 32), max_length, kind))

    base_fingerprint = fingerprint(model)

    def plan_for(r: RateSpec) -> PruningPlan:
        return make_plan(model, scores, r, task=task.name, method=method, samples=len(examples), seed=seed,
                         options=config.to_dict(), base_fingerprint=base_fingerprint)

    allocation_info: dict[str, Any] | None = None
    if allocation in ("global", "global-raw", "global-param"):
        rates = global_rates(model, scores, rates, rates.rate, standardise=allocation == "global",
                             per_parameter=allocation == "global-param")
        allocation_info = {"method": allocation, "budget": config.target_rates["rate"]}
    elif allocation == "search":
        fitness_batches = calib_batches[: max(1, SEARCH_EXAMPLES // calib_batches[0].input_ids.shape[0])]
        rates, info = search_rates(model, scores, rates, rates.rate, fitness_batches, labels, plan_for,
                                   iterations=search_iterations, seed=config.seed, progress=progress)
        allocation_info = {"method": "search", "budget": config.target_rates["rate"], **info}
    if allocation_info is not None:
        allocation_info["removed_fraction"] = round(removed_fraction(model, rates), 6)
    plan = plan_for(rates)
    plan.allocation = allocation_info
    pruned: nn.Module = model
    if repair_cfg.mode != "none":
        pruned, plan.repair = repair_model(model, plan, calib_batches, labels, repair_cfg, progress)
    seconds = time.perf_counter() - t0
    return CompressResult(apply(plan, pruned, check=False, inplace=inplace or pruned is not model), plan, scores,
                          seconds, method, examples_per_rank=counts)


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
    return save_pruned(result.model, out_dir, tokenizer, extra_files=extra, overwrite=overwrite)
