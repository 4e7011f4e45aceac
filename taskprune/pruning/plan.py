"""Pruning plans: which units of every group to keep, and what the choice was made from.

A plan holds indices, not weights: it is tiny, portable and what a server stores per task. It records
the base model's fingerprint and refuses to be applied to any other model.

Selection (DESIGN §1, eqs. 7-8): within each head of a group (the whole group for FFN), rank units by
score (descending, ties to the lower index), remove the ``floor(k * p + 1e-9)`` lowest and keep the rest.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import TaskpruneError
from ..files import atomic_write_text
from ..models import NeuronGroup, get_adapter
from ..sources.fingerprint import fingerprint
from .rates import RateSpec, check_rates_fit

PLAN_FORMAT = "taskprune-plan/1"
def select_units(scores: torch.Tensor, n_heads: int, rate: float, multiple_of: int = 1) -> torch.Tensor:
    """Indices (ascending) of the units kept: per head, drop the floor(k*p) lowest-scoring units.

    With ``multiple_of`` the group's kept width (heads x per-head width) is rounded up to a multiple of it, by
    keeping a few more units per head: a per-head width in steps of ``multiple_of / gcd(multiple_of, heads)``,
    at most the whole head. A group pruned away entirely stays empty. On this project's 2-core CPU an FFN of 461
    units cost 4 % more per unit than one of 464 (benchmarks/RESULTS.md); GPUs' tensor cores want multiples of 8.
    """
    size = scores.numel()
    if size % n_heads:
        raise TaskpruneError(f"group of {size} units does not split into {n_heads} equal heads")
    head = size // n_heads
    n_keep = head - math.floor(head * rate + 1e-9)
    if n_keep and multiple_of > 1:
        step = multiple_of // math.gcd(multiple_of, n_heads)
        n_keep = min(head, -(-n_keep // step) * step)
    per_head = scores.detach().float().reshape(n_heads, head)
    # stable descending sort: among equal scores the lower index ranks first and is kept first
    order = torch.sort(per_head, dim=1, descending=True, stable=True).indices[:, :n_keep]
    kept = (order + torch.arange(n_heads).unsqueeze(1) * head).reshape(-1)
    return torch.sort(kept).values


def select_kv_groups(scores: torch.Tensor, n_groups: int, rate: float) -> torch.Tensor:
    """Query heads kept when whole key/value groups go: a group scores the sum of its query heads' scores and the
    ``floor(groups * p)`` lowest groups are removed with all their query heads."""
    per = scores.numel() // n_groups
    kept = select_units(scores.detach().float().reshape(n_groups, per).sum(1), 1, rate)
    return (kept.unsqueeze(1) * per + torch.arange(per)).reshape(-1)


@dataclass
class PruningPlan:
    """Kept unit indices per group, plus the provenance needed to trust and reproduce them."""

    base_fingerprint: str
    family: str
    groups: dict[str, dict[str, Any]]  # name -> {"size", "n_heads", "keep": [int, ...]}
    task: str | None = None
    method: str | None = None
    rates: dict[str, Any] = field(default_factory=dict)
    samples: int | None = None
    seed: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    allocation: dict[str, Any] | None = None  # how the rates were spread (taskprune.pruning.allocate), None: as given
    repair: dict[str, Any] | None = None  # how kept weights were re-solved (taskprune.pruning.repair), None: not repaired
    #: calibration inputs scored beside the ``samples`` labelled examples, labelled by the dense model's own
    #: predictions (``compress(self_label=True)``); None: none
    self_labelled: int | None = None
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    format: str = PLAN_FORMAT

    # -- views ------------------------------------------------------------------------------------
    def keep(self, name: str) -> torch.Tensor:
        return torch.tensor(self.groups[name]["keep"], dtype=torch.long)

    @property
    def repaired_with(self) -> str | None:
        """The repair mode that re-solved the kept weights, None if none did: such a plan's indices alone (a mask,
        a server's cut) would give a different, unrepaired model."""
        mode = (self.repair or {}).get("mode", "none")
        return None if mode == "none" else mode

    def widths(self) -> dict[str, int]:
        return {name: len(g["keep"]) for name, g in self.groups.items()}

    def check_model(self, model: nn.Module) -> None:
        """Refuse a model other than the one the plan was made for."""
        actual = fingerprint(model)
        if actual != self.base_fingerprint:
            raise TaskpruneError(
                f"this plan was made for another model (plan fingerprint {self.base_fingerprint}, model "
                f"{actual}); make a new plan for this model with `taskprune plan` (fingerprints hash float16-rounded "
                "weights: the same model in bfloat16 differs, so plan and prune at one --dtype)"
            )

    def check_complete(self, groups: Iterable[NeuronGroup]) -> None:
        """Refuse a plan lacking a group of the model: plans list every group, kept whole or not, so a missing one
        is an edited or cut-short plan, not "keep it" (for an attention it would pair a pruned Q/K with a whole V/O).
        """
        missing = [g.name for g in groups if g.name not in self.groups]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise TaskpruneError(f"the plan lacks group {missing[0]}{more} of this model; a plan lists every group, "
                                 "so it was edited or cut short: make it again with `taskprune plan`")

    # -- persistence --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n", overwrite)

    @classmethod
    def load(cls, path: str | Path) -> PruningPlan:
        path = Path(path)
        if not path.is_file():
            raise TaskpruneError(f"plan file {path} not found")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise TaskpruneError(f"{path} is not a JSON plan file ({err})") from None
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, data: Any, where: str = "the plan") -> PruningPlan:
        """A plan from its JSON form, checked field by field (``where`` names the source in errors)."""
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            raise TaskpruneError(f"{where} is not a taskprune plan (expected format {PLAN_FORMAT!r})")
        try:
            plan = cls(**data)
        except TypeError as err:
            raise TaskpruneError(f"{where} is a malformed plan ({err})") from None
        for name, g in plan.groups.items() if isinstance(plan.groups, dict) else [("groups", None)]:
            ok = (
                isinstance(g, dict)
                and all(isinstance(g.get(k), int) and not isinstance(g.get(k), bool) for k in ("size", "n_heads"))
                and isinstance(g.get("keep"), list)
                and all(isinstance(i, int) and not isinstance(i, bool) for i in g["keep"])
            )
            if not ok:
                raise TaskpruneError(f"{where}: group {name} needs integer 'size', 'n_heads' and a list of integer 'keep'")
        return plan


def make_plan(
    model: nn.Module,
    scores: dict[str, torch.Tensor],
    rates: RateSpec,
    *,
    task: str | None = None,
    method: str | None = None,
    samples: int | None = None,
    seed: int | None = None,
    options: dict[str, Any] | None = None,
    base_fingerprint: str | None = None,
) -> PruningPlan:
    """Select the units to keep in every group of ``model`` from ``scores`` at ``rates``.

    Groups pruned at rate 0 (and empty groups) need no score; every other group must have one of matching size.
    ``base_fingerprint``: ``model``'s fingerprint when the caller has it (hashing the weights costs a pass over
    them, which a search making many plans of one model should pay once).
    """
    adapter = get_adapter(model)
    bad = [name for name, s in scores.items() if not bool(torch.isfinite(s).all())]
    if bad:  # NaN compares false to everything: ranking it would keep an arbitrary half, silently
        raise TaskpruneError(f"scores for {bad[0]}{f' (and {len(bad) - 1} more groups)' if len(bad) > 1 else ''} are "
                             "not finite (NaN or inf): score again (with --dtype float32 if these came from float16)")
    all_groups = adapter.groups()
    check_rates_fit(rates, model)
    groups: dict[str, dict[str, Any]] = {}
    for g in all_groups:
        rate = rates.rate_for(g)
        if rate == 0.0 or g.size == 0:  # nothing to choose: keep all (an already-empty group stays empty)
            keep = torch.arange(g.size)
        else:
            if g.name not in scores:
                raise TaskpruneError(f"no scores for group {g.name}; the scores were made for another model")
            s = scores[g.name]
            if s.numel() != g.size:
                raise TaskpruneError(
                    f"scores for {g.name} have {s.numel()} units but the model has {g.size}; "
                    "the scores were made for another model"
                )
            if g.role == "heads" and rates.head_granularity == "kv":
                keep = select_kv_groups(s, g.n_heads, rate)
            else:  # whole heads are already multiples of head_dim wide: no rounding for them
                keep = select_units(s, g.n_heads, rate, 1 if g.role == "heads" else rates.multiple_of)
        groups[g.name] = {"size": g.size, "n_heads": g.n_heads, "rate": rate, "keep": keep.tolist()}
    return PruningPlan(
        base_fingerprint=base_fingerprint or fingerprint(model),
        family=adapter.family,
        groups=groups,
        task=task,
        method=method,
        rates=rates.to_dict(),
        samples=samples,
        seed=seed,
        options=dict(options or {}),
    )
