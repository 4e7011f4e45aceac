"""Iterative pruning (``compress(steps=N)``): each round but the last re-scores the pruned, repaired model.

What it promises: the rounds' cuts are nested (what one round removed stays removed), the last round's scores are
those of the masked model the earlier round left, the budget is the same as one round's, and one round is the
one-shot recipe unchanged."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model, make_tokenizer
from tiny import tiny_causal, tiny_causal_tokenizer

from taskprune.api import compress, score, stay_removed
from taskprune.errors import TaskpruneError
from taskprune.models import get_adapter
from taskprune.pruning.allocate import global_rates, removed_fraction
from taskprune.pruning.apply import masked
from taskprune.pruning.plan import make_plan
from taskprune.pruning.rates import RateSpec, scaled_rates
from taskprune.tasks import Example, Task

TASK = Task("toy", "{text}", ("negative", "positive"), ("0", "1"), causal_template="review {text} Answer:")
TEXTS = ["good movie", "the film was very bad", "a great film and a good movie", "awful", "it is good",
         "this was a bad and awful film", "a very good film", "the movie was awful and bad"]
EXAMPLES = [Example(t, i % 2, prompt=f"review {t}") for i, t in enumerate(TEXTS)]


def _model(family: str):  # noqa: ANN202
    if family == "llama":
        return tiny_causal("llama", layers=3), tiny_causal_tokenizer()
    return make_model(family), make_tokenizer(family)


def _removed(plan, name: str) -> set[int]:  # noqa: ANN001
    return set(range(plan.groups[name]["size"])) - set(plan.groups[name]["keep"])


def test_a_masked_unit_scores_exactly_zero() -> None:
    """The premise of re-scoring under the round's masks: a zeroed unit's activation x gradient is 0."""
    model, tok = _model("llama")
    plan = make_plan(model, score(model, tok, TASK, EXAMPLES), RateSpec(rate=0.5))
    with masked(plan, model):
        again = score(model, tok, TASK, EXAMPLES)
    for name in plan.groups:
        gone = sorted(_removed(plan, name))
        assert gone and torch.count_nonzero(again[name][gone]) == 0, name
        assert torch.count_nonzero(again[name]) > 0, name  # the kept units still carry scores


@pytest.mark.parametrize("family", ["llama", "t5-relu"])
def test_two_rounds_score_the_model_the_first_round_left(family: str) -> None:
    """compress(steps=2) without repair = score, cut half the rate, score the masked model, cut the rate: the
    same plan built by hand from the library's pieces, and the second cut contains the first."""
    model, tok = _model(family)
    rates = RateSpec(rate=0.6)
    res = compress(model, tok, TASK, EXAMPLES, rates, method="attribution", allocate="uniform", repair="none",
                   steps=2)
    first = make_plan(model, score(model, tok, TASK, EXAMPLES), scaled_rates(rates, 0.5))
    with masked(first, model):
        second = stay_removed(score(model, tok, TASK, EXAMPLES), first)
    by_hand = make_plan(model, second, rates)
    assert {n: g["keep"] for n, g in res.plan.groups.items()} == {n: g["keep"] for n, g in by_hand.groups.items()}
    for name in first.groups:
        assert _removed(first, name) <= _removed(res.plan, name), name
    one_shot = compress(model, tok, TASK, EXAMPLES, rates, method="attribution", allocate="uniform", repair="none")
    assert any(res.plan.groups[n]["keep"] != g["keep"] for n, g in one_shot.plan.groups.items())  # it did re-score


@pytest.mark.parametrize("allocate", ["global-raw", "global-param", "global-sqrt"])
def test_rounds_with_repair_and_allocation_are_nested_and_meet_the_budget(allocate: str) -> None:
    model, tok = _model("llama")
    rates = RateSpec(rate=0.5)
    res = compress(model, tok, TASK, EXAMPLES[:4], rates, method="attribution", allocate=allocate, repair="ls",
                   calibration=EXAMPLES, steps=3)
    one = compress(model, tok, TASK, EXAMPLES[:4], rates, method="attribution", allocate=allocate, repair="ls",
                   calibration=EXAMPLES)
    assert res.plan.allocation["steps"] == 3 and "steps" not in one.plan.allocation
    assert res.plan.repair["mode"] == "ls"
    assert abs(res.plan.allocation["removed_fraction"] - one.plan.allocation["removed_fraction"]) < 0.05
    # the last round's scores mark what the earlier rounds removed (attribution is >= 0; stay_removed puts those
    # units below every kept score, i.e. negative): every one of them is removed by the final cut too
    forced = {n: set(torch.nonzero(s < 0).flatten().tolist()) for n, s in res.scores.items()}
    assert any(forced.values())
    for name, gone in forced.items():
        assert gone <= _removed(res.plan, name), name
    assert sum(p.numel() for p in res.model.parameters()) < sum(p.numel() for p in model.parameters())


def test_stay_removed_puts_removed_units_below_every_kept_one_for_signed_scores() -> None:
    model, tok = _model("llama")
    group = next(g for g in get_adapter(model).groups() if g.size > 2)
    scores = {group.name: torch.tensor([-3.0, 5.0, -7.0, 2.0] + [1.0] * (group.size - 4))}
    plan = make_plan(model, {g.name: torch.arange(g.size, dtype=torch.float32) for g in get_adapter(model).groups()},
                     RateSpec(rate=0.0, group_rates={group.name: 2 / group.size}))
    out = stay_removed(scores, plan)[group.name]
    gone = sorted(_removed(plan, group.name))
    kept = plan.groups[group.name]["keep"]
    assert out[gone].max() < out[kept].min()
    assert torch.equal(out[kept], scores[group.name][kept])  # kept units' scores unchanged


def test_one_round_is_the_one_shot_recipe() -> None:
    model, tok = _model("llama")
    a = compress(model, tok, TASK, EXAMPLES[:4], RateSpec(rate=0.5), calibration=EXAMPLES)
    b = compress(model, tok, TASK, EXAMPLES[:4], RateSpec(rate=0.5), calibration=EXAMPLES, steps=1)
    assert a.plan.groups == b.plan.groups and a.plan.allocation == b.plan.allocation


def test_global_rates_of_scaled_rates_remove_the_scaled_budget() -> None:
    model, tok = _model("llama")
    scores = score(model, tok, TASK, EXAMPLES)
    half = global_rates(model, scores, scaled_rates(RateSpec(rate=0.6), 0.5), 0.3, standardise=False)
    assert abs(removed_fraction(model, half) - 0.3) < 0.05


@pytest.mark.parametrize("steps", [0, -1, True, 1.5])
def test_bad_steps_are_refused(steps) -> None:  # noqa: ANN001
    model, tok = _model("llama")
    with pytest.raises(TaskpruneError, match="steps must be a positive integer"):
        compress(model, tok, TASK, EXAMPLES[:4], RateSpec(rate=0.5), steps=steps)


def test_rounds_are_refused_for_a_method_that_does_not_score_units() -> None:
    model, tok = _model("llama")
    with pytest.raises(TaskpruneError, match="cannot prune in rounds"):
        compress(model, tok, TASK, EXAMPLES[:4], RateSpec(rate=0.5), method="svd", steps=2)
