"""Unit tests of :mod:`taskprune.pruning.allocate`: the budget's parameter count, the removed fraction of a rate
spec, FLAP-style global allocation (which groups get more of the budget, the per-group cap, the three rankings)
and the allocation search's bookkeeping. test_repair.py checks that the global allocation meets the budget on
random scores, that Q/K and V/O share a rate, the per-parameter ranking on a decoder-only model and that the search
never worsens its fitness; none of that is repeated here."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from conftest import make_model, make_tokenizer
from tiny import tiny_causal

from taskprune.errors import TaskpruneError
from taskprune.lm import label_space, model_kind
from taskprune.lm.batching import batches
from taskprune.models import get_adapter
from taskprune.pruning.allocate import (
    ALLOCATIONS,
    GLOBAL_RANKINGS,
    MAX_RATE,
    budget_parameters,
    global_rates,
    removed_fraction,
    search_rates,
)
from taskprune.pruning.plan import make_plan
from taskprune.tasks import Example, Task

try:  # RateSpec is moving from plan.py to its own module
    from taskprune.pruning.rates import RateSpec
except ImportError:  # pragma: no cover
    from taskprune.pruning.plan import RateSpec


def model_of(family: str):  # noqa: ANN201
    return tiny_causal(family, layers=2) if family == "llama" else make_model(family)


def rand_scores(model, seed: int = 0) -> dict[str, torch.Tensor]:  # noqa: ANN001
    g = torch.Generator().manual_seed(seed)
    return {grp.name: torch.rand(grp.size, generator=g) for grp in get_adapter(model).groups()}


def one_unit(model) -> int:  # noqa: ANN001
    """The most parameters one step of one pool's rate can move: a unit in every head of its largest group, x2
    for an attention whose Q/K and V/O move together."""
    adapter = get_adapter(model)
    return 2 * max(adapter.prunable_parameters(g, g.n_heads) for g in adapter.groups())


def plan_removed_fraction(model, rates: RateSpec) -> float:  # noqa: ANN001
    """The removed fraction counted from an actual plan's kept widths (independent of allocate's own rounding)."""
    adapter = get_adapter(model)
    plan = make_plan(model, rand_scores(model, 9), rates)
    scope = [g for g in adapter.groups() if g.module in rates.modules and g.layer_type in rates.layer_types]
    total = sum(adapter.prunable_parameters(g) for g in scope)
    kept = sum(adapter.prunable_parameters(g, len(plan.groups[g.name]["keep"])) for g in scope)
    return 1 - kept / total


# ------------------------------------------------------------------------------------------------------
# constants
# ------------------------------------------------------------------------------------------------------
def test_the_allocations_and_the_default_cap() -> None:
    assert ALLOCATIONS == ("uniform", "global", "global-raw", "global-param", "global-sqrt", "search")
    assert set(GLOBAL_RANKINGS) < set(ALLOCATIONS)
    assert 0.0 < MAX_RATE < 1.0
    assert inspect.signature(global_rates).parameters["max_rate"].default == MAX_RATE
    assert inspect.signature(search_rates).parameters["max_rate"].default == MAX_RATE


# ------------------------------------------------------------------------------------------------------
# budget_parameters / removed_fraction
# ------------------------------------------------------------------------------------------------------
def test_budget_parameters_counts_the_scope_only() -> None:
    model = make_model("t5-relu")
    adapter = get_adapter(model)
    everything = sum(adapter.prunable_parameters(g) for g in adapter.groups())
    encoder = sum(adapter.prunable_parameters(g) for g in adapter.groups() if g.module == "encoder")
    ffn = sum(adapter.prunable_parameters(g) for g in adapter.groups() if g.layer_type == "ffn")
    assert 0 < encoder < everything and 0 < ffn < everything
    assert budget_parameters(model, RateSpec(rate=0.5), 0.5) == (everything // 2, everything)
    assert budget_parameters(model, RateSpec(modules=("encoder",)), 0.5) == (encoder // 2, encoder)
    assert budget_parameters(model, RateSpec(layer_types=("ffn",)), 0.25) == (ffn // 4, ffn)
    assert everything * 0.7 % 1 > 0.5
    assert budget_parameters(model, RateSpec(), 0.7) == (math.ceil(everything * 0.7), everything)  # rounded, not cut
    assert budget_parameters(model, RateSpec(), 0.0) == (0, everything)


@pytest.mark.parametrize("family", ["t5-relu", "t5-gated", "bert2bert"])
def test_a_uniform_rate_that_divides_every_head_removes_exactly_that_fraction(family: str) -> None:
    model = model_of(family)
    for rate in (0.0, 0.25, 0.5, 0.75, 1.0):  # 8 dims per head, 48 FFN units: all divide evenly
        assert removed_fraction(model, RateSpec(rate=rate)) == pytest.approx(rate, abs=1e-12)
        assert removed_fraction(model, RateSpec(rate=rate, modules=("decoder",))) == pytest.approx(rate, abs=1e-12)


@pytest.mark.parametrize("family", ["t5-gated", "bert2bert"])
def test_removed_fraction_rounds_per_head_as_the_plan_does(family: str) -> None:
    model = model_of(family)
    groups = get_adapter(model).groups()
    mixed = {g.name: (0.3, 0.55, 0.9)[i % 3] for i, g in enumerate(groups)}
    for qk in (g for g in groups if g.role == "qk"):  # Q/K and V/O of one attention share a rate
        mixed[qk.name.removesuffix("qk") + "vo"] = mixed[qk.name]
    for rates in (RateSpec(rate=0.3), RateSpec(rate=0.55), RateSpec(rate=0.9, layer_types=("ffn",)),
                  RateSpec(group_rates=mixed)):
        got = removed_fraction(model, rates)
        assert got == pytest.approx(plan_removed_fraction(model, rates), abs=1e-12)
        assert got <= max([rates.rate, *rates.group_rates.values()]) + 1e-12  # floor rounding never removes more
    assert removed_fraction(model, RateSpec(rate=0.3)) < 0.3  # 8 dims per head: floor(2.4) = 2 of them


def test_removed_fraction_counts_what_a_decoder_only_plan_removes() -> None:
    model = model_of("llama")
    adapter = get_adapter(model)
    # half of every group: 1 of 2 query heads per KV group (the KV heads stay), 24 of 48 FFN units
    total = sum(adapter.prunable_parameters(g) for g in adapter.groups())
    kept = sum(adapter.prunable_parameters(g, g.size // 2) for g in adapter.groups())
    assert removed_fraction(model, RateSpec(rate=0.5)) == pytest.approx(1 - kept / total, abs=1e-12)


# ------------------------------------------------------------------------------------------------------
# global_rates
# ------------------------------------------------------------------------------------------------------
def test_global_rates_needs_a_score_for_every_group_in_the_scope() -> None:
    model = make_model("t5-relu")
    scores = rand_scores(model)
    del scores["decoder.1.ffn"]
    with pytest.raises(TaskpruneError, match="decoder.1.ffn has none"):
        global_rates(model, scores, RateSpec(rate=0.5), 0.5)
    # outside the scope no score is needed, and no group outside it gets a rate
    enc = {k: v for k, v in scores.items() if k.startswith("encoder.")}
    spec = global_rates(model, enc, RateSpec(rate=0.5, modules=("encoder",)), 0.5)
    assert set(spec.group_rates) == set(enc)
    assert abs(removed_fraction(model, spec) - 0.5) <= one_unit(model) / budget_parameters(model, spec, 1)[1]


def test_global_rates_keeps_the_rest_of_the_spec() -> None:
    model = make_model("t5-relu")
    rates = RateSpec(rate=0.4, layer_types=("self_attn", "ffn"), multiple_of=4)
    spec = global_rates(model, rand_scores(model), rates, 0.4)
    assert (spec.rate, spec.modules, spec.layer_types, spec.multiple_of) == (0.4, rates.modules, rates.layer_types, 4)
    assert not any("cross_attn" in k for k in spec.group_rates)
    assert all(0.0 <= r <= MAX_RATE and r == round(r, 6) for r in spec.group_rates.values())
    assert rates.group_rates == {}  # the given spec is not changed


def test_a_rate_of_one_third_still_removes_the_head_the_allocation_counted() -> None:
    """A heads group of 3 query heads per KV head at rate 1/3 removes one of each three: stored at 6 decimals
    rounded down (0.333333) it removed none, and the plan fell short of the budget it was allocated to meet."""
    from taskprune.pruning.allocate import stored_rate

    assert stored_rate(1 / 3) == 0.333334 and stored_rate(0.5) == 0.5 and stored_rate(0.7) == 0.7
    model = tiny_causal("llama", layers=2, heads=6, kv_heads=2, hidden=48)
    adapter = get_adapter(model)
    heads = [g for g in adapter.groups() if g.role == "heads"]
    # exactly two of each heads group's six units rank below everything else, the rest of the order is the FFNs'
    scores = {g.name: (torch.arange(g.size, dtype=torch.float64) + (100.0 if g.role == "ffn" else 0.0))
              for g in adapter.groups()}
    for g in heads:
        scores[g.name][2:] += 1000.0
    gone = sum(adapter.prunable_parameters(g) - adapter.prunable_parameters(g, g.size - 2) for g in heads)
    budget = gone / budget_parameters(model, RateSpec(rate=0.5), 1)[1]
    spec = global_rates(model, scores, RateSpec(rate=budget), budget, standardise=False)
    assert all(spec.group_rates[g.name] == stored_rate(1 / 3) for g in heads)
    plan = make_plan(model, scores, spec)
    assert all(len(plan.groups[g.name]["keep"]) == g.size - 2 for g in heads)
    assert plan_removed_fraction(model, spec) >= budget - 1e-12


def test_budget_zero_prunes_nothing_and_an_unreachable_budget_caps_every_group() -> None:
    model = make_model("t5-relu")
    scores = rand_scores(model)
    assert set(global_rates(model, scores, RateSpec(), 0.0).group_rates.values()) == {0.0}
    full = global_rates(model, scores, RateSpec(), 1.0)
    assert set(full.group_rates.values()) == {MAX_RATE}
    assert removed_fraction(model, full) < MAX_RATE  # the cap wins over the budget (floor rounding per head)
    assert set(global_rates(model, scores, RateSpec(), 1.0, max_rate=0.5).group_rates.values()) == {0.5}


@pytest.mark.parametrize("mode", [{"standardise": False}, {"per_parameter": True}])
def test_a_group_of_tiny_raw_scores_gets_the_highest_rate_up_to_the_cap(mode: dict) -> None:
    model = make_model("t5-relu")
    scores = rand_scores(model)
    scores["encoder.1.ffn"] = scores["encoder.1.ffn"] * 1e-6
    total = budget_parameters(model, RateSpec(), 1)[1]
    for budget, cap in ((0.3, MAX_RATE), (0.3, 0.6), (0.1, MAX_RATE)):
        spec = global_rates(model, scores, RateSpec(rate=budget), budget, max_rate=cap, **mode)
        others = dict(spec.group_rates)
        low = others.pop("encoder.1.ffn")
        assert low == cap  # every unit of that group ranks below all others; the cap stops it at max_rate
        assert all(r < low for r in others.values())
        assert abs(removed_fraction(model, spec) - budget) <= one_unit(model) / total


def test_tiny_scores_in_one_attentions_qk_raise_the_rate_of_its_vo_too() -> None:
    model = make_model("t5-relu")
    scores = rand_scores(model)
    scores["decoder.0.self_attn.qk"] = scores["decoder.0.self_attn.qk"] * 1e-6
    spec = global_rates(model, scores, RateSpec(rate=0.3), 0.3, standardise=False)
    r = spec.group_rates
    assert r["decoder.0.self_attn.qk"] == r["decoder.0.self_attn.vo"]
    assert all(r["decoder.0.self_attn.qk"] > v for k, v in r.items() if not k.startswith("decoder.0.self_attn."))


def test_the_standardised_ranking_ignores_each_groups_scale_and_the_raw_one_does_not() -> None:
    """z-scores are invariant to a positive rescaling of one group's scores (powers of two: exactly); raw scores
    are not, and the rescaled-down group takes the budget."""
    model = make_model("t5-gated")
    scores = rand_scores(model, 3)
    scaled = {k: v * 2.0 ** ((-10, 0, 7)[i % 3]) for i, (k, v) in enumerate(scores.items())}
    small = [k for i, k in enumerate(scores) if i % 3 == 0]
    for budget in (0.2, 0.5):
        std = global_rates(model, scores, RateSpec(rate=budget), budget)
        assert global_rates(model, scaled, RateSpec(rate=budget), budget) == std
        raw = global_rates(model, scaled, RateSpec(rate=budget), budget, standardise=False)
        assert raw != std
        big = [k for k in scores if k not in small]
        # the groups scaled by 2^-10 rank below every other unit: the raw ranking spends the budget on them first
        assert min(raw.group_rates[k] for k in small if k.endswith("ffn")) > max(raw.group_rates[k] for k in big
                                                                                 if k.endswith("ffn"))
        mean = lambda spec, keys: sum(spec.group_rates[k] for k in keys) / len(keys)  # noqa: E731
        assert mean(raw, small) > mean(std, small)


def test_per_parameter_equals_raw_where_every_unit_owns_as_many_parameters() -> None:
    """Non-gated T5: every qk, vo and ffn unit owns 2 x d_model parameters, so dividing by it changes no ranking;
    gated T5's FFN units own 3 x d_model, so per parameter they rank lower and lose more."""
    relu = make_model("t5-relu")
    adapter = get_adapter(relu)
    assert len({adapter.prunable_parameters(g, 1) for g in adapter.groups()}) == 1
    scores = rand_scores(relu, 5)
    assert global_rates(relu, scores, RateSpec(rate=0.4), 0.4, per_parameter=True) == \
        global_rates(relu, scores, RateSpec(rate=0.4), 0.4, standardise=False)

    gated = make_model("t5-gated")
    g = torch.Generator().manual_seed(6)
    flat = {grp.name: 1 + 0.01 * torch.rand(grp.size, generator=g) for grp in get_adapter(gated).groups()}
    raw = global_rates(gated, flat, RateSpec(rate=0.3), 0.3, standardise=False).group_rates
    per = global_rates(gated, flat, RateSpec(rate=0.3), 0.3, per_parameter=True).group_rates
    ffn = [k for k in raw if k.endswith("ffn")]
    attn = [k for k in raw if not k.endswith("ffn")]
    assert all(per[k] > raw[k] for k in ffn)
    assert all(per[k] == 0.0 for k in attn) and any(raw[k] > 0 for k in attn)


def test_tied_scores_do_not_overshoot_the_budget() -> None:
    model = make_model("t5-relu")
    flat = {g.name: torch.zeros(g.size) for g in get_adapter(model).groups()}
    spec = global_rates(model, flat, RateSpec(rate=0.5), 0.5)
    assert abs(removed_fraction(model, spec) - 0.5) <= 0.01
    assert set(spec.group_rates.values()) == {0.5}  # tied units leave every group evenly


# ------------------------------------------------------------------------------------------------------
# search_rates
# ------------------------------------------------------------------------------------------------------
TASK = Task("toy", "{text}", ("negative", "positive"), ("0", "1"))
EXAMPLES = [Example(t, i % 2) for i, t in enumerate(["good movie", "the film was very bad", "awful", "it is good",
                                                       "a great film", "this was a bad film"])]


def _search(model, tok, scores, iterations: int, seed: int = 0, max_rate: float = MAX_RATE):  # noqa: ANN001, ANN202
    labels = label_space(model, tok, TASK)
    held_out = list(batches(EXAMPLES, tok, 3, 64, model_kind(model)))
    return search_rates(model, scores, RateSpec(rate=0.5), 0.5, held_out, labels,
                        lambda r: make_plan(model, scores, r), iterations=iterations, seed=seed, max_rate=max_rate)


def test_search_without_iterations_is_the_global_allocation() -> None:
    model, tok = make_model("t5-relu"), make_tokenizer("t5-relu")
    scores = rand_scores(model, 7)
    spec, info = _search(model, tok, scores, 0)
    assert spec == global_rates(model, scores, RateSpec(rate=0.5), 0.5)
    assert info == {"kl_start": info["kl_end"], "kl_end": info["kl_end"], "accepted": 0, "iterations": 0}
    assert info["kl_start"] > 0  # pruning half the model moves the label distribution


def test_search_is_deterministic_per_seed_and_stays_within_the_cap() -> None:
    model, tok = make_model("t5-relu"), make_tokenizer("t5-relu")
    scores = rand_scores(model, 8)
    a, info_a = _search(model, tok, scores, 6, seed=1, max_rate=0.7)
    b, info_b = _search(model, tok, scores, 6, seed=1, max_rate=0.7)
    assert a == b and info_a == info_b
    assert all(0.0 <= r <= 0.7 + 1e-6 for r in a.group_rates.values())
    pools = {}
    for name, r in a.group_rates.items():  # every attention's Q/K and V/O still share one rate
        pools.setdefault(name.rsplit(".", 1)[0] if name.endswith(("qk", "vo")) else name, set()).add(r)
    assert all(len(r) == 1 for r in pools.values())
    assert math.isfinite(info_a["kl_end"]) and info_a["accepted"] <= 6
