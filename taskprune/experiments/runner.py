"""Running a sweep: every run of a config that its results file does not hold yet, one row each.

Cheap where it is safe to be: runs are ordered so that those sharing a scoring (same task, method, examples,
seeds) are adjacent and the scores are computed once; unit-selecting methods are evaluated through masks on
the one loaded model (equal to slicing, tests/test_prune.py); and when a run leaves the encoder untouched,
the encoder's outputs for the eval set are computed once and reused. A run that fails with a
:class:`TaskpruneError` (e.g. too few examples) gets a row with its error instead of stopping the sweep.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..api import compress, score
from ..catalogue import get_method
from ..checkpoint import load_model, load_tokenizer
from ..errors import TaskpruneError, library_message
from ..evaluate import count_parameters, evaluate
from ..files import check_writable
from ..models import get_adapter
from ..pruning.apply import masked
from ..pruning.plan import make_plan
from ..pruning.rates import RateSpec
from ..runtime.distributed import SINGLE, Shard, barrier, device_for, sum_ints
from ..scoring import ScoreConfig, Scores
from ..sources.fingerprint import fingerprint
from ..tasks import Example, get_task, load_examples, require_data_dir, sample_k_shot
from .config import ALL, Run, SweepConfig, load_config
from .results import append_row, eval_set_id, load_rows, locked, pack_outcomes

Progress = Callable[[Iterable[Any], str, int], Iterable[Any]]


@dataclass
class SweepSummary:
    total: int
    already_done: int
    ran: int
    failed: int
    seconds: float


def _no_progress(items: Iterable[Any], _desc: str, _total: int) -> Iterable[Any]:
    return items


def dense_run(eval_task: str) -> Run:
    """The unpruned model on one eval task: the reference line of every plot."""
    return Run("dense", eval_task, eval_task, "dense", 0, 0, 0, RateSpec().to_dict(), "dense")


class _Context:
    """The loaded model, data and caches one sweep shares across its runs."""

    def __init__(self, cfg: SweepConfig, model: nn.Module, tokenizer: Any, data_dir: str | None) -> None:
        self.cfg, self.model, self.tok, self.data_dir = cfg, model, tokenizer, data_dir
        self.adapter = get_adapter(model)
        self.groups = self.adapter.groups()
        self.base_prunable = count_parameters(model)["prunable"]
        self._examples: dict[tuple[str, str], list[Example]] = {}
        self.encoder_cache: dict[str, dict[int, Any]] = {}
        self._scores: tuple[tuple, Scores, float] | None = None
        self._eval_ids: dict[str, str] = {}

    def examples(self, task: str, split: str) -> list[Example]:
        if (task, split) not in self._examples:
            ex = load_examples(get_task(task), split, self.data_dir)
            cap = self.cfg.eval_cap(task) if split == "eval" else None
            if cap and len(ex) > cap:  # a fixed random subset, in file order: the same for every run
                ex = [ex[i] for i in sorted(random.Random(0).sample(range(len(ex)), cap))]
            self._examples[task, split] = ex
        return self._examples[task, split]

    def fit(self, run: Run) -> list[Example]:
        if run.samples == 0:
            return []
        fit_all = self.examples(run.task, "fit")
        return list(fit_all) if run.samples == ALL else sample_k_shot(fit_all, int(run.samples), seed=run.sample_seed)

    def evaluate(self, model: nn.Module, eval_task: str, encoder_unchanged: bool) -> dict[str, Any]:
        """The evaluation fields of a row: metrics, seconds, how many eval examples they cover and which of them were
        right (``outcomes``: what the claims' paired tests compare, :mod:`.stats`)."""
        cache = self.encoder_cache.setdefault(eval_task, {}) if encoder_unchanged else None
        examples = self.examples(eval_task, "eval")
        res = evaluate(model, self.tok, get_task(eval_task), examples,
                       batch_size=self.cfg.eval_batch_size, max_length=self.cfg.max_length, encoder_cache=cache)
        correct = [p == e.label for p, e in zip(res.predictions, examples)]
        return {"metrics": res.metrics, "eval_seconds": res.seconds, "eval_examples": len(examples),
                "outcomes": pack_outcomes(correct, self.eval_id(eval_task))}

    def eval_id(self, eval_task: str) -> str:
        if eval_task not in self._eval_ids:
            self._eval_ids[eval_task] = eval_set_id(self.examples(eval_task, "eval"))
        return self._eval_ids[eval_task]

    def scores(self, run: Run, config: ScoreConfig, fit: list[Example]) -> tuple[Scores, float]:
        key = run.score_key()
        if self._scores is None or self._scores[0] != key:
            t0 = time.perf_counter()
            s = score(self.model, self.tok, get_task(run.task), fit, method=run.method, config=config,
                      batch_size=self.cfg.batch_size, max_length=self.cfg.max_length)
            self._scores = (key, s, time.perf_counter() - t0)
        return self._scores[1], self._scores[2]

    def touches_encoder(self, spec: RateSpec) -> bool:
        return any(spec.rate_for(g) > 0 for g in self.groups if g.module == "encoder")


def _execute(ctx: _Context, run: Run) -> dict[str, Any]:
    """One run: compress (scores shared where possible), evaluate, count what is left."""
    if run.method == "dense":
        return {**ctx.evaluate(ctx.model, run.eval_task, encoder_unchanged=True), "kept_prunable": 1.0}
    spec = run.rate_spec()
    task = get_task(run.task)
    config = replace(ScoreConfig.from_dict({"seed": run.trial_seed, **run.options}), target_rates=run.rates)
    fit = ctx.fit(run)
    enc_same = not ctx.touches_encoder(spec)
    if not get_method(run.method).selects_units:
        result = compress(ctx.model, ctx.tok, task, fit, spec, method=run.method, config=config,
                          batch_size=ctx.cfg.batch_size, max_length=ctx.cfg.max_length)
        evaluated = ctx.evaluate(result.model, run.eval_task, enc_same)
        kept = count_parameters(result.model)["prunable"]
        if run.method == "smp-unstructured":
            kept -= result.model.config.taskprune_weight_sparsity["zeroed"]
        return {**evaluated, "score_seconds": result.scoring_seconds, "kept_prunable": kept / ctx.base_prunable,
                "n_fit": len(fit)}
    if get_method(run.method).rate_targeted:
        t0 = time.perf_counter()
        scores = score(ctx.model, ctx.tok, task, fit, method=run.method, config=config,
                       batch_size=ctx.cfg.batch_size, max_length=ctx.cfg.max_length)
        seconds = time.perf_counter() - t0
    else:
        scores, seconds = ctx.scores(run, config, fit)
    plan = make_plan(ctx.model, scores, spec, task=run.task, method=run.method, samples=len(fit))
    with masked(plan, ctx.model, check=False):
        evaluated = ctx.evaluate(ctx.model, run.eval_task, enc_same)
    kept = sum(ctx.adapter.prunable_parameters(g, len(plan.groups[g.name]["keep"])) for g in ctx.groups)
    return {**evaluated, "score_seconds": seconds, "kept_prunable": kept / ctx.base_prunable, "n_fit": len(fit)}


def _n_layers(model: nn.Module) -> int:
    return 1 + max(g.depth for g in get_adapter(model).groups())


def _check_same_model(previous: list[dict[str, Any]], model_id: str, model_path: str, results_path: Path) -> None:
    """A results file holds the runs of ONE model, known by its fingerprint (its weights), not by the spelling of its
    path: ``./models/m``, ``models/m`` and an absolute path are one model, and another model copied to the same path
    is another. Rows written before fingerprints were recorded carry only the path; they must name the same folder
    (both resolved against the current directory, like every relative path of a sweep)."""
    for row in previous:
        recorded = row.get("model_fingerprint")
        if recorded is not None and recorded != model_id:
            raise TaskpruneError(f"{results_path} holds runs of another model (fingerprint {recorded}, recorded as "
                                 f"{row.get('model')}; {model_path} is {model_id}); give this model its own --out")
        if recorded is None and row.get("model") is not None and not _same_place(str(row["model"]), model_path):
            raise TaskpruneError(f"{results_path} holds runs of another model ({row['model']}, recorded before "
                                 f"fingerprints were; this is {model_path}); give this model its own --out")


def _same_place(a: str, b: str) -> bool:
    """Two spellings of one local folder (or one Hub id)."""
    return a == b or Path(a).resolve() == Path(b).resolve()


def run_sweep(
    config_path: str | Path,
    results_path: str | Path,
    *,
    model: str | None = None,
    data_dir: str | None = None,
    progress: Progress = _no_progress,
    max_runs: int | None = None,
    shard: Shard | None = None,
    only: list[str] | None = None,
) -> SweepSummary:
    """Run every run of ``config_path`` not yet in ``results_path``; ``max_runs`` stops early (for tests).

    ``only`` names the experiments to run (default: all): run ids do not depend on the rest of the config, so a
    long sweep can be done experiment by experiment into one results file, the most wanted first.

    With ``shard`` (several processes under torchrun) the runs to do are split across the ranks, each run done by
    exactly one (:func:`split_runs`), all appending to ``results_path`` under a lock; the summary counts every
    rank's runs. Scoring inside a run is not split: each rank runs its own runs alone.
    """
    shard = shard or SINGLE
    import yaml

    t_start = time.perf_counter()
    results_path = check_writable(results_path, folder=False, update=True)  # before the model loads, not after a run
    if not Path(config_path).is_file():
        raise TaskpruneError(f"sweep config {config_path} not found")
    try:
        raw = yaml.safe_load(Path(config_path).read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise TaskpruneError(f"{config_path} is not valid YAML ({library_message(err)})") from None
    if only:  # before the model loads: a misspelt name is the user's typo, not an empty sweep
        names = [e.get("name") for e in raw.get("experiments") or [] if isinstance(e, dict)] if isinstance(raw, dict) else []
        missing = [n for n in only if n not in names]
        if missing:
            raise TaskpruneError(f"{config_path} has no experiment {', '.join(map(repr, missing))}; "
                                 f"it has {', '.join(map(str, names)) or 'none'}")
    model_path = model or (raw.get("model") if isinstance(raw, dict) else None)
    if not model_path:
        from ..api import default_model_dir

        model_path = default_model_dir()
        if model_path is None:
            raise TaskpruneError("no model: give model: in the sweep config or --model")
    data_dir = data_dir or load_config(config_path).data_dir  # a config error is named before the model loads
    if data_dir:
        require_data_dir(data_dir)
    m = load_model(model_path, dtype=torch.float32)
    if device_for(shard).type != "cpu":
        m.to(device_for(shard))  # one GPU per rank
    cfg = load_config(config_path, n_layers=_n_layers(m))
    tok = load_tokenizer(model_path)
    ctx = _Context(cfg, m, tok, data_dir)
    model_id = fingerprint(m)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    with locked(results_path) if shard.active else contextlib.nullcontext():
        previous = load_rows(results_path, repair=True)
    if shard.active:
        barrier()  # every rank has read the same rows before any rank appends one: they agree on what is left
    _check_same_model(previous, model_id, str(model_path), results_path)
    # rows with an error are not "done": a re-run retries them (the report reads the last row of each id)
    done = {r.get("id") for r in previous if "error" not in r}
    chosen = [r for r in cfg.runs if not only or r.experiment in only]
    runs = [dense_run(t) for t in dict.fromkeys(r.eval_task for r in chosen)] + chosen
    todo = [r for r in runs if r.id not in done]
    # stable sort on a string key (samples may be 10 or "all"): runs sharing a scoring become adjacent
    todo.sort(key=lambda r: (r.method != "dense", json.dumps(r.score_key(), default=str)))
    if max_runs is not None:
        todo = todo[:max_runs]
    mine = split_runs(todo, shard)
    failed = 0
    for run in progress(mine, "sweep", len(mine)):
        t0 = time.perf_counter()
        try:
            row = _execute(ctx, run)
        except TaskpruneError as err:
            row = {"error": str(err)}
            failed += 1
        row = {**run.to_dict(), **row, "seconds": round(time.perf_counter() - t0, 3), "model": str(model_path),
               "model_fingerprint": model_id}
        append_row(results_path, row, lock=shard.active)
    if shard.active:
        failed = sum_ints([failed])[0]  # waits for the slowest rank: the summary is the whole sweep's
    return SweepSummary(len(runs), len(runs) - len([r for r in runs if r.id not in done]), len(todo), failed,
                        time.perf_counter() - t_start)


def split_runs(todo: list[Run], shard: Shard) -> list[Run]:
    """This rank's runs: runs sharing a scoring (adjacent in ``todo``) stay together, and each group goes to the
    rank with the fewest runs so far (ties: the lowest rank). Every rank computes the same split from the same
    ``todo``, so each run is done exactly once."""
    if not shard.active:
        return todo
    groups: list[list[Run]] = []
    for run in todo:
        if groups and groups[-1][0].score_key() == run.score_key():
            groups[-1].append(run)
        else:
            groups.append([run])
    load = [0] * shard.world_size
    mine: list[Run] = []
    for group in groups:
        rank = min(range(shard.world_size), key=lambda r: (load[r], r))
        load[rank] += len(group)
        if rank == shard.rank:
            mine.extend(group)
    return mine
