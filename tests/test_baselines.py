"""Baseline scorers: determinism per seed, padding invariance, no label targets for RAP, plans apply."""

from __future__ import annotations

import pytest
import torch
from conftest import logits, make_model, make_tokenizer, sample_inputs

from taskprune.data import LabelSpace
from taskprune.lm.batching import batches
from taskprune.models import get_adapter
from taskprune.pruning.apply import apply, masked
from taskprune.pruning.plan import make_plan
from taskprune.pruning.rates import RateSpec
from taskprune.scoring import ScoreConfig, ScoringJob, get_scorer
from taskprune.scoring.random_attribution import random_label_space
from taskprune.tasks import Example, Task

TASK = Task(name="toy", template="{text}", label_words=("very good", "bad"), label_values=("1", "0"))
EXAMPLES = [Example("good movie", 0), Example("a very awful film that was bad", 1), Example("the film", 0)]


def _run(family: str, method: str, seed: int = 0, batch_size: int = 2, examples=EXAMPLES):  # noqa: ANN001, ANN202
    model, tok = make_model(family), make_tokenizer(family)
    labels = LabelSpace.build(tok, TASK)
    groups = get_adapter(model).groups()
    return get_scorer(method)(ScoringJob(model, list(batches(examples, tok, batch_size)), labels, groups,
                                         ScoreConfig(seed=seed)))


@pytest.mark.parametrize("method", ["random", "random-attribution"])
def test_random_methods_are_deterministic_per_seed_and_differ_across_seeds(method: str) -> None:
    a, b, c = _run("t5-relu", method, 0), _run("t5-relu", method, 0), _run("t5-relu", method, 1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_random_labels_avoid_label_pieces() -> None:
    labels = LabelSpace(((5, 6, 1), (7, 1)), (2, 1))
    drawn = random_label_space(labels, [0, 1, 0] * 50, vocab_size=12, avoid={5, 6, 7, 1, 0},
                               generator=torch.Generator().manual_seed(0))
    assert [len(t) for t in drawn.targets[:2]] == [3, 2] and drawn.n_pieces[:2] == (2, 1)
    used = {t for target in drawn.targets for t in target[:-1]}
    assert used and used.isdisjoint({5, 6, 7, 1, 0}) and all(t[-1] == 1 for t in drawn.targets)


def test_activation_scores_ignore_padding(family: str) -> None:
    """Scores of a padded batch equal the sum of each example scored alone (no padding at all)."""
    together = _run(family, "activation", batch_size=3)
    alone = [_run(family, "activation", batch_size=1, examples=[e]) for e in EXAMPLES]
    for name in together:
        torch.testing.assert_close(together[name], sum(a[name] for a in alone), rtol=1e-4, atol=1e-5)
        assert (together[name] >= 0).all()


@pytest.mark.parametrize("method", ["activation", "random", "random-attribution"])
def test_each_method_gives_a_plan_that_apply_and_mask_agree_on(family: str, method: str) -> None:
    model = make_model(family)
    scores = _run(family, method)
    plan = make_plan(model, scores, RateSpec(rate=0.5), method=method)
    inputs = sample_inputs(5)
    with masked(plan, model):
        expected = logits(model, inputs)
    torch.testing.assert_close(logits(apply(plan, model), inputs), expected, atol=1e-5, rtol=1e-5)
