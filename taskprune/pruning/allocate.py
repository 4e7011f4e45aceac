"""Layer-adaptive rates: spread a global budget of removed parameters over the groups unevenly.

The paper prunes every group at one rate. Layers do not matter equally (on minilm-glue6 almost all the loss at
p = 0.5 is in the encoder), so a global budget — the fraction of the scope's prunable parameters removed — is
allocated per group:

- ``uniform``: every group at the budget (the paper; stock widths, plain ``from_pretrained``).
- ``global``: FLAP's adaptive structure. Scores are standardised within each group (z-scores: groups' raw scales
  differ by orders of magnitude) and ranked together; the least important units go first, as many as the removed
  parameters (each unit weighted by the parameters it owns) need to meet the budget, found by bisection (tied
  scores leave every group evenly). An attention's Q/K and V/O share one rate (one head size), and no group loses
  more than ``max_rate``.
- ``global-raw``: the same ranking on the raw scores, for scores on one scale across groups (Kwon et al.'s Fisher
  information: a loss sensitivity, comparable between layers).
- ``global-param``: the raw ranking on each unit's score divided by the parameters it owns (importance per removed
  parameter, the greedy answer to the budget). Where units own very different numbers of parameters (a decoder-only
  model's whole heads against single FFN units, ~43x on SmolLM2) the raw ranking keeps every head and spends the
  budget on the FFNs; where they own about the same (BERT's and non-gated T5's qk, vo and ffn dims: ~2 x d_model
  each) it ranks as ``global-raw`` (gated T5's FFN dims own 3 x d_model).
- ``global-sqrt``: between the two, each unit's score divided by the square root of the parameters it owns (a
  SmolLM2 head then needs ~6.6x an FFN unit's score to stay, not ~43x): ``global-raw`` keeps every head and
  ``global-param`` about one in nine at 0.5, neither a choice the data asked for.
- ``search``: starts from ``global`` and moves budget between pairs of groups, keeping a move when a forward-only
  fitness on held-out fit examples improves: the KL divergence from the dense model's label distribution (no
  labels needed). Masks on the one model, so each candidate costs one forward pass over the held-out examples.

The result is a :class:`~taskprune.pruning.plan.RateSpec` with per-group rates (``group_rates``), recorded in the plan.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
from torch import nn

from ..data import Batch, LabelSpace
from ..errors import TaskpruneError
from ..lm import model_kind
from ..models import Adapter, NeuronGroup, get_adapter
from ..scoring.base import Progress, Scores, no_progress, standardised
from .rates import RateSpec

ALLOCATIONS = ("uniform", "global", "global-raw", "global-param", "global-sqrt", "search")
#: the global rankings: allocation name -> (standardise, power of the parameters a unit owns that its score
#: is divided by)
GLOBAL_RANKINGS: dict[str, tuple[bool, float]] = {"global": (True, 0.0), "global-raw": (False, 0.0),
                                                 "global-param": (False, 1.0), "global-sqrt": (False, 0.5)}
MAX_RATE = 0.95


def _pools(adapter: Adapter, rates: RateSpec) -> dict[str, list[NeuronGroup]]:
    """Groups that share one rate: an attention's Q/K and V/O, else each group alone (in the scope only)."""
    pools: dict[str, list[NeuronGroup]] = {}
    for g in adapter.groups():
        if g.size == 0 or g.module not in rates.modules or g.layer_type not in rates.layer_types:
            continue
        key = g.attention if g.role in ("qk", "vo") else g.name
        pools.setdefault(key, []).append(g)
    return pools


def _removed(adapter: Adapter, group: NeuronGroup, rate: float) -> int:
    """Parameters removed from ``group`` at ``rate`` (per-head floor rounding as :func:`plan.select_units`): what it
    owns now less what it owns at the kept width, not what it would own at the removed width (a decoder-only
    heads group owns its whole K/V block at any width above zero)."""
    head = group.size // group.n_heads
    gone = math.floor(head * rate + 1e-9) * group.n_heads
    return adapter.prunable_parameters(group) - adapter.prunable_parameters(group, group.size - gone)


def stored_rate(rate: float) -> float:
    """``rate`` at the plan's 6 decimals, rounded UP: a rate of 1/3 stored as 0.333333 would remove no head of three
    (``floor(3 * 0.333333)`` is 0) although the allocation counted one; rounded up, every group removes the units
    the allocation counted (a group under a million units gains none)."""
    return math.ceil(rate * 1e6 - 1e-6) / 1e6


def budget_parameters(model: nn.Module, rates: RateSpec, budget: float) -> tuple[int, int]:
    """(parameters to remove, prunable parameters in the scope) for a budget fraction."""
    adapter = get_adapter(model)
    total = sum(adapter.prunable_parameters(g) for pool in _pools(adapter, rates).values() for g in pool)
    return int(round(budget * total)), total


def removed_fraction(model: nn.Module, rates: RateSpec) -> float:
    """Fraction of the scope's prunable parameters that ``rates`` remove."""
    adapter = get_adapter(model)
    pools = _pools(adapter, rates)
    total = sum(adapter.prunable_parameters(g) for pool in pools.values() for g in pool)
    gone = sum(_removed(adapter, g, rates.rate_for(g)) for pool in pools.values() for g in pool)
    return gone / max(total, 1)


def global_rates(model: nn.Module, scores: Scores, rates: RateSpec, budget: float,
                 max_rate: float = MAX_RATE, standardise: bool = True, per_parameter: float = 0.0) -> RateSpec:
    """FLAP-style allocation: one threshold on within-group z-scores meets ``budget`` (see the module docstring);
    ``standardise=False`` ranks raw scores, ``per_parameter`` (a power p > 0) raw scores over the p-th power of the
    parameters a unit owns (1: per parameter; :data:`GLOBAL_RANKINGS`)."""
    adapter = get_adapter(model)
    pools = _pools(adapter, rates)
    missing = [g.name for pool in pools.values() for g in pool if g.name not in scores]
    if missing:
        raise TaskpruneError(f"global allocation needs scores for every group in the scope; {missing[0]} has none")

    def ranked(g: NeuronGroup) -> torch.Tensor:
        if per_parameter:
            return scores[g.name].double() / adapter.prunable_parameters(g, 1) ** float(per_parameter)
        return standardised(scores[g.name]) if standardise else scores[g.name].double()

    keys = list(pools)
    target, _ = budget_parameters(model, rates, budget)
    # one global order of units, least important first; ties (equal scores) are broken by each unit's rank within
    # its group as a fraction of the group, so tied units leave every group evenly instead of all at one threshold
    values, fractions, owners = [], [], []
    for i, key in enumerate(keys):
        for g in pools[key]:
            v = ranked(g).flatten()
            rank = torch.empty(v.numel(), dtype=torch.float64)
            rank[torch.sort(v, stable=True).indices] = torch.arange(v.numel(), dtype=torch.float64)
            values.append(v)
            fractions.append((rank + 0.5) / max(v.numel(), 1))
            owners.append(torch.full((v.numel(),), i))
    by_fraction = torch.sort(torch.cat(fractions), stable=True).indices
    order = by_fraction[torch.sort(torch.cat(values)[by_fraction], stable=True).indices]
    owner = torch.cat(owners)[order]
    sizes = [sum(g.size for g in pools[key]) for key in keys]

    def rates_at(k: int) -> dict[str, float]:
        """Rates when the first ``k`` units of the global order go."""
        below = torch.bincount(owner[:k], minlength=len(keys)).tolist()
        return {key: min(max_rate, below[i] / sizes[i]) for i, key in enumerate(keys)}

    def removed(r: dict[str, float]) -> int:
        return sum(_removed(adapter, g, r[key]) for key, pool in pools.items() for g in pool)

    lo, hi = 0, owner.numel()  # the fewest units whose removal meets the budget (from above, as before)
    while lo < hi:
        mid = (lo + hi) // 2
        if removed(rates_at(mid)) < target:
            lo = mid + 1
        else:
            hi = mid
    chosen = rates_at(hi)
    group_rates = {g.name: stored_rate(chosen[key]) for key, pool in pools.items() for g in pool}
    return replace(rates, group_rates=group_rates)


def label_distributions(model: nn.Module, batches: Sequence[Batch], labels: LabelSpace) -> torch.Tensor:
    """log P(label | input) over the candidates, renormalised: ``[N, classes]``."""
    kind = model_kind(model)
    with torch.inference_mode():
        out = [kind.rank_scores(model, b, labels).float().log_softmax(-1) for b in batches]
    return torch.cat(out)


def search_rates(model: nn.Module, scores: Scores, rates: RateSpec, budget: float, batches: Sequence[Batch],
                 labels: LabelSpace, make_plan: Callable[[RateSpec], object], iterations: int = 40,
                 step: float = 0.1, seed: int = 0, progress: Progress = no_progress,
                 max_rate: float = MAX_RATE) -> tuple[RateSpec, dict[str, float]]:
    """Local search over per-pool rates from the global allocation, judged by KL to the dense label distribution
    on ``batches`` (held-out fit examples). Each move raises one pool's rate by ``step`` and lowers another's so the
    removed parameters stay at the budget; it is kept when the fitness improves."""
    from .apply import masked

    adapter = get_adapter(model)
    pools = _pools(adapter, rates)
    keys = list(pools)
    start = global_rates(model, scores, rates, budget, max_rate)
    current = {k: start.group_rates[pool[0].name] for k, pool in pools.items()}
    dense = label_distributions(model, batches, labels)

    def spec(r: dict[str, float]) -> RateSpec:
        return replace(rates, group_rates={g.name: stored_rate(r[k]) for k, pool in pools.items() for g in pool})

    def fitness(r: dict[str, float]) -> float:
        with masked(make_plan(spec(r)), model, check=False):
            pruned = label_distributions(model, batches, labels)
        return float((dense.exp() * (dense - pruned)).sum(-1).mean())

    def params_per_rate(k: str) -> float:
        return sum(adapter.prunable_parameters(g) for g in pools[k])

    best = fitness(current)
    first = best
    rng = random.Random(seed)
    accepted = 0
    for _ in progress(range(iterations), "allocation search", iterations):
        up, down = rng.sample(keys, 2)
        d_up = min(step, max_rate - current[up])
        if d_up <= 0:
            continue
        d_down = d_up * params_per_rate(up) / params_per_rate(down)  # same parameters moved
        if current[down] - d_down < 0:
            continue
        cand = dict(current)
        cand[up] += d_up
        cand[down] -= d_down
        f = fitness(cand)
        if f < best:
            best, current = f, cand
            accepted += 1
    return spec(current), {"kl_start": round(first, 6), "kl_end": round(best, 6), "accepted": accepted,
                           "iterations": iterations}
