"""The scoring interface: every importance method turns (model, examples) into one score per unit.

Methods register by name (``@register_scorer("attribution")``) and are looked up with
:func:`get_scorer`; the planner only ever sees the returned ``{group name: 1-D tensor}``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..data import Batch, LabelSpace
from ..errors import TaskpruneError
from ..method import Combine, Method, register_method, registered
from ..models import NeuronGroup
from ..runtime.distributed import SINGLE, Shard

Scores = dict[str, torch.Tensor]
Progress = Callable[[Iterable[Any], str, int], Iterable[Any]]


def standardised(scores: torch.Tensor) -> torch.Tensor:
    """(s - mean) / std within one group (float64): z-scores put groups whose raw scales differ on one scale (FLAP's
    per-layer standardisation; the ``global`` allocation). A constant group, or one of a single unit, scores zeros."""
    s = scores.double()
    std = s.std() if s.numel() > 1 else s.new_tensor(0.0)
    return (s - s.mean()) / (std if std > 0 else 1.0)


def no_progress(items: Iterable[Any], _desc: str, _total: int) -> Iterable[Any]:
    return items


@dataclass
class SMPConfig:
    """How SMP learns its masks (see :mod:`.smp`): first-order optimisation of mask scores, weights frozen.

    The removed fraction follows ``schedule`` from 0 to the target rate: ``warmup`` (a fraction of ``steps``)
    at rate 0, then the ramp, then ``cooldown`` (a fraction) at the target, so the final mask is the one the
    model was optimised with. ``distill`` in [0, 1] mixes in a KL term toward the dense model (same frozen
    weights, masks off) at ``temperature``; 0 trains on the task loss alone.
    """

    steps: int = 100
    lr: float = 0.01
    schedule: Literal["cubic", "linear", "constant"] = "cubic"
    warmup: float = 0.1
    cooldown: float = 0.2
    distill: float = 0.0
    temperature: float = 2.0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise TaskpruneError(f"SMP needs at least 1 step, got {self.steps}")
        if not self.lr > 0:
            raise TaskpruneError(f"SMP mask-score learning rate must be positive, got {self.lr}")
        if self.schedule not in ("cubic", "linear", "constant"):
            raise TaskpruneError(f"unknown SMP sparsity schedule {self.schedule!r}; choose cubic, linear or constant")
        for name in ("warmup", "cooldown", "distill"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise TaskpruneError(f"SMP {name} {getattr(self, name)!r} is outside [0, 1]")
        if self.warmup + self.cooldown > 1.0:
            raise TaskpruneError("SMP warmup + cooldown must not exceed 1 (they are fractions of the steps)")
        if not self.temperature > 0:
            raise TaskpruneError(f"SMP distillation temperature must be positive, got {self.temperature}")


@dataclass
class ScoreConfig:
    """How scores are aggregated (DESIGN §1: measured, not assumed; see docs/method.md).

    ``example_agg``: ``abs`` sums |A(x, y)| over examples (default: the signed sum cancels exactly the
    units that separate the classes), ``signed`` is eq. 6 read literally, ``abs_sum`` is |signed sum|.
    ``position_agg``: ``sum`` sums h*grad over positions before taking a sign-free aggregate,
    ``abs`` sums |h*grad| per position. ``seed`` draws the trial of the random baselines.
    ``checkpoint`` trades time for memory in the backward passes (:func:`taskprune.scoring.hooks.checkpointed`), and
    ``micro_batch`` bounds the examples per pass.
    ``target_rates`` (a :class:`~taskprune.pruning.plan.RateSpec` as a dict) is for methods that learn masks for a
    given rate (SMP); :func:`taskprune.api.compress` fills it in.
    """

    example_agg: Literal["abs", "signed", "abs_sum"] = "abs"
    position_agg: Literal["sum", "abs"] = "sum"
    seed: int = 0  # trial seed of the random methods (random, random-attribution) and of SMP's batch order
    #: recompute each block's activations in the backward pass instead of keeping them (activation checkpointing:
    #: one more forward per block, 2-3 % more scoring time than a bare pass that recomputes as much, ~1.4 x a plain
    #: forward+backward on SmolLM2; scores unchanged). On by default: with the recorder's gates it keeps scoring's
    #: memory near inference's (SmolLM2, batch 16: 2.2 GB above the loaded model without it, 0.7 GB with), which
    #: decides the largest model a machine can score
    checkpoint: bool = True
    #: at most this many examples per forward+backward pass (``None``: the whole batch). Scores are sums over
    #: examples, so they do not change (within float rounding); memory does: glibc's heap keeps the freed
    #: hidden-sized activations of a backward in holes it cannot reuse, and what it holds grows with the rows per
    #: pass (SmolLM2, 256 SST-2 examples: peak 0.64 GB above the loaded model in passes of 16, 0.31 GB in passes of
    #: 8, 2 % slower). The default equals the default batch size, so only larger batches are split
    micro_batch: int | None = 8
    smp: SMPConfig = field(default_factory=SMPConfig)
    target_rates: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.example_agg not in ("abs", "signed", "abs_sum"):
            raise TaskpruneError(f"unknown example aggregation {self.example_agg!r}; choose abs, signed or abs_sum")
        if self.position_agg not in ("sum", "abs"):
            raise TaskpruneError(f"unknown position aggregation {self.position_agg!r}; choose sum or abs")
        if self.micro_batch is not None and (isinstance(self.micro_batch, bool) or not isinstance(self.micro_batch, int)
                                             or self.micro_batch < 1):
            raise TaskpruneError(f"scoring micro-batch must be a positive whole number, got {self.micro_batch!r}")
        if isinstance(self.smp, dict):
            self.smp = SMPConfig(**self.smp)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScoreConfig:
        """Inverse of :meth:`to_dict` (plans store it as their ``options``); unknown keys are refused."""
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise TaskpruneError(f"unknown scoring options {sorted(unknown)}")
        return cls(**d)


@dataclass
class ScoringJob:
    """Everything a scorer is given: one argument, so every method has the same signature.

    ``batches`` are the tokenised fit examples (any re-iterable sequence; :class:`~taskprune.data.LazyBatches`
    tokenises one batch at a time), ``labels`` the task's label targets, ``groups`` the neuron groups
    to score (a method may score only those it needs, e.g. SMP only those pruned at the target rates).
    ``shard`` says which batches this process takes when several share the work (:mod:`taskprune.runtime.distributed`):
    every rank is given ALL batches, in the same order, and scores those it :meth:`owns`.
    """

    model: nn.Module
    batches: Sequence[Batch]
    labels: LabelSpace
    groups: list[NeuronGroup]
    config: ScoreConfig = field(default_factory=lambda: ScoreConfig())
    progress: Progress = no_progress
    shard: Shard = SINGLE

    def owns(self, index: int) -> bool:
        """True if batch ``index`` is this process's to score."""
        return self.shard.owns(index)

    def my_batches(self) -> list[int]:
        """Indices of the batches this process scores (all of them in one process)."""
        return self.shard.owned(len(self.batches))


Scorer = Callable[[ScoringJob], Scores]

_SCORERS: dict[str, Scorer] = {}


def register_scorer(name: str, *, help: str, needs_examples: bool = True, combine: Combine = "sum",  # noqa: A002
                    group_local: bool = False, random: bool = False, rate_targeted: bool = False,
                    allocate: str = "uniform", repair: str = "none", order: int = 100) -> Callable[[Scorer], Scorer]:
    """Register a scoring method: its function here, its record in the catalogue (:class:`taskprune.method.Method`,
    whose fields these arguments are); ``allocate``/``repair`` are what ``compress`` adds by default (FLAP's)."""

    def wrap(fn: Scorer) -> Scorer:
        register_method(Method(name, help, scorer=name, allocate=allocate, repair=repair,
                               needs_examples=needs_examples, combine=combine, group_local=group_local,
                               random=random, rate_targeted=rate_targeted, order=order))
        _SCORERS[name] = fn
        return fn

    return wrap


def run_scorer(name: str, job: ScoringJob) -> Scores:
    """Run method ``name`` on ``job``, across the ranks of ``job.shard`` where there are several.

    Summed methods score their own batches and the partial sums are all-reduced. ``abs_sum`` (= |sum over ALL
    examples|) is therefore scored signed and its absolute value taken after the reduction, never per rank.
    """
    from dataclasses import replace

    from ..runtime.distributed import all_reduce_sum

    scorer = get_scorer(name)
    if not job.shard.active or registered()[name].combine != "sum":
        return scorer(job)
    abs_after = job.config.example_agg == "abs_sum"
    part = scorer(replace(job, config=replace(job.config, example_agg="signed")) if abs_after else job)
    total = all_reduce_sum(part)
    return {k: v.abs() for k, v in total.items()} if abs_after else total


def get_scorer(name: str) -> Scorer:
    if name not in _SCORERS:
        raise TaskpruneError(f"unknown method {name!r}; choose from {', '.join(sorted(_SCORERS))}")
    return _SCORERS[name]


def list_scorers() -> list[str]:
    return sorted(_SCORERS)


def score_metadata(task: str, method: str, samples: int, seed: int | None, config: ScoreConfig,
                   examples_per_rank: Sequence[int] | None = None) -> dict[str, str]:
    """What a scores file records about its making (safetensors metadata is str -> str).

    ``examples_per_rank``: how many examples each process scored (``world_size`` is its length; 1 process if
    not given).
    """
    meta = {"task": task, "method": method, "samples": str(samples), "example_agg": config.example_agg,
            "position_agg": config.position_agg, "trial_seed": str(config.seed)}
    if seed is not None:
        meta["seed"] = str(seed)  # the seed of the example sample
    counts = list(examples_per_rank) if examples_per_rank is not None else [samples]
    meta["world_size"] = str(len(counts))
    meta["examples_per_rank"] = ",".join(str(c) for c in counts)
    return meta


def save_scores(scores: Scores, path: str | Path, meta: dict[str, str] | None = None, overwrite: bool = False) -> Path:
    """Scores as safetensors (one 1-D float tensor per group), written atomically."""
    from safetensors.torch import save_file

    from ..files import atomic_write

    tensors = {k: v.detach().float().contiguous().cpu() for k, v in scores.items()}
    return atomic_write(path, lambda p: save_file(tensors, str(p), metadata=meta or {}), overwrite)


def load_scores(path: str | Path) -> Scores:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise TaskpruneError(f"scores file {path} not found")
    try:
        return load_file(str(path))
    except SafetensorError as err:
        raise TaskpruneError(f"{path} is not a safetensors scores file ({err})") from None


def _meta_int(meta: dict[str, str], key: str, path: Path) -> int:
    try:
        return int(meta[key])
    except ValueError:
        raise TaskpruneError(f"scores file metadata {key}={meta[key]!r} is not an integer") from None


def load_scores_with_provenance(path: str | Path) -> tuple[Scores, dict[str, Any]]:
    """Scores and what made them, as :func:`taskprune.pruning.plan.make_plan` records it (``task``, ``method``,
    ``samples``, ``seed`` and the scoring ``options``): a plan made from a scores file keeps its provenance."""
    from safetensors import safe_open

    scores = load_scores(path)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    options: dict[str, Any] = {k: meta[k] for k in ("example_agg", "position_agg") if k in meta}
    if "trial_seed" in meta:
        options["seed"] = _meta_int(meta, "trial_seed", Path(path))
    provenance = {"task": meta.get("task"), "method": meta.get("method"),
                  "samples": _meta_int(meta, "samples", Path(path)) if "samples" in meta else None,
                  "seed": _meta_int(meta, "seed", Path(path)) if "seed" in meta else None, "options": options}
    return scores, provenance
