"""The scoring interface: every importance method turns (model, examples) into one score per unit.

Methods register by name (``@register_scorer("attribution")``) and are looked up with
:func:`get_scorer`; the planner only ever sees the returned ``{group name: 1-D tensor}``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import nn

from ..data import Batch, LabelSpace
from ..errors import TaskpruneError
from ..models import NeuronGroup

Scores = dict[str, torch.Tensor]
Progress = Callable[[Iterable[Any], str, int], Iterable[Any]]


def no_progress(items: Iterable[Any], _desc: str, _total: int) -> Iterable[Any]:
    return items


@dataclass
class ScoreConfig:
    """How scores are aggregated (DESIGN §1: measured, not assumed; see docs/method.md).

    ``example_agg``: ``abs`` sums |A(x, y)| over examples (default: the signed sum cancels exactly the
    units that separate the classes), ``signed`` is eq. 6 read literally, ``abs_sum`` is |signed sum|.
    ``position_agg``: ``sum`` sums h*grad over positions before taking a sign-free aggregate,
    ``abs`` sums |h*grad| per position. ``seed`` draws the trial of the random baselines.
    """

    example_agg: Literal["abs", "signed", "abs_sum"] = "abs"
    position_agg: Literal["sum", "abs"] = "sum"
    seed: int = 0  # trial seed of the random methods (random, random-attribution)

    def __post_init__(self) -> None:
        if self.example_agg not in ("abs", "signed", "abs_sum"):
            raise TaskpruneError(f"unknown example aggregation {self.example_agg!r}; choose abs, signed or abs_sum")
        if self.position_agg not in ("sum", "abs"):
            raise TaskpruneError(f"unknown position aggregation {self.position_agg!r}; choose sum or abs")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Scorer(Protocol):
    def __call__(
        self,
        model: nn.Module,
        batches: list[Batch],
        labels: LabelSpace,
        groups: list[NeuronGroup],
        config: ScoreConfig,
        progress: Progress = no_progress,
    ) -> Scores: ...


_SCORERS: dict[str, Scorer] = {}


def register_scorer(name: str) -> Callable[[Scorer], Scorer]:
    def wrap(fn: Scorer) -> Scorer:
        _SCORERS[name] = fn
        return fn

    return wrap


def get_scorer(name: str) -> Scorer:
    if name not in _SCORERS:
        raise TaskpruneError(f"unknown method {name!r}; choose from {', '.join(sorted(_SCORERS))}")
    return _SCORERS[name]


def list_scorers() -> list[str]:
    return sorted(_SCORERS)


def score_metadata(task: str, method: str, samples: int, seed: int | None, config: ScoreConfig) -> dict[str, str]:
    """What a scores file records about its making (safetensors metadata is str -> str)."""
    meta = {"task": task, "method": method, "samples": str(samples), "example_agg": config.example_agg,
            "position_agg": config.position_agg, "trial_seed": str(config.seed)}
    if seed is not None:
        meta["seed"] = str(seed)  # the seed of the example sample
    return meta


def save_scores(scores: Scores, path: str | Path, meta: dict[str, str] | None = None, overwrite: bool = False) -> Path:
    """Scores as safetensors (one 1-D float tensor per group), written atomically."""
    from safetensors.torch import save_file

    from ..io import atomic_write

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
