"""Rank classification, label targets and parameter counting."""

from __future__ import annotations

import importlib

import pytest
import torch
from conftest import make_model, make_tokenizer

from taskprune.data import IGNORE, LabelSpace, targets_for
from taskprune.evaluate import count_parameters, evaluate, rank_scores
from taskprune.lm.batching import batches, length_order
from taskprune.models import get_adapter
from taskprune.pruning.apply import apply
from taskprune.pruning.plan import make_plan
from taskprune.pruning.rates import RateSpec
from taskprune.tasks import Example, Task

TASK = Task(name="toy", template="{text}", label_words=("very good", "bad"), label_values=("1", "0"))
EXAMPLES = [Example("good movie", 0), Example("a very awful film", 1), Example("the film", 0)]


def test_targets_are_pieces_then_eos(family: str) -> None:
    tok = make_tokenizer(family)
    labels = LabelSpace.build(tok, TASK)
    end = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
    assert labels.targets[0][-1] == end and labels.n_pieces == (2, 1)
    dec_in, target = targets_for(labels, [0, 1], start_id=7)
    assert dec_in[:, 0].tolist() == [7, 7]
    assert target[0].tolist() == list(labels.targets[0])
    assert target[1].tolist() == [*labels.targets[1], IGNORE]
    assert dec_in[0, 1:].tolist() == list(labels.targets[0][:-1])
    _, pieces = targets_for(labels, [0, 1], start_id=7, pieces_only=True)
    assert (pieces != IGNORE).sum(1).tolist() == [2, 1]


def test_rank_scores_are_target_log_likelihoods(family: str) -> None:
    model, tok = make_model(family), make_tokenizer(family)
    labels = LabelSpace.build(tok, TASK)
    start = get_adapter(model).decoder_start_token_id()
    (batch,) = batches(EXAMPLES, tok, 8)
    got = rank_scores(model, batch, labels)
    for c in range(2):
        dec_in, target = targets_for(labels, [c] * len(batch), start)
        with torch.no_grad():
            logp = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                         decoder_input_ids=dec_in).logits.log_softmax(-1)
        for b in range(len(batch)):
            expected = sum(logp[b, j, t] for j, t in enumerate(labels.targets[c]))
            assert float(got[b, c]) == float(expected) or abs(float(got[b, c]) - float(expected)) < 1e-5
    result = evaluate(model, tok, TASK, EXAMPLES, batch_size=2)
    assert result.predictions == got.argmax(1).tolist()
    assert 0.0 <= result.metrics["accuracy"] <= 100.0


def _per_candidate(model, batch, labels, start):  # noqa: ANN001, ANN202
    """The plain reference: every candidate's whole target through the full model, its own log-softmax."""
    out = []
    for c in range(len(labels)):
        dec_in, target = targets_for(labels, [c] * len(batch), start)
        with torch.no_grad():
            logp = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, decoder_input_ids=dec_in,
                         use_cache=False).logits.log_softmax(-1)
        out.append((logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (target != IGNORE)).sum(-1))
    return torch.stack(out, 1)


@pytest.mark.parametrize("words", [("very good", "bad"), ("very good", "very bad"), ("good", "bad", "so so"),
                                   ("very very good", "very bad"), ("good", "good movie")])
@pytest.mark.parametrize("rate", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("budget", [None, 0])
def test_shared_prefix_scoring_equals_per_candidate_scoring(family: str, words: tuple, rate: float,
                                                            budget: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The prefix call plus the candidates' own calls (all in one on a repeated cache, or one each on the shared
    cache when the repeat would exceed the budget) give each candidate's own full-pass log-likelihood: with shared
    leading word-pieces, a target that is the whole prefix, uneven lengths, padded inputs, pruned and zero-width
    models."""
    if budget is not None:  # the module, not the function taskprune.evaluate that shadows it on the package
        monkeypatch.setattr(importlib.import_module("taskprune.lm.kinds"), "REPEAT_BUDGET_BYTES", budget)
    task = Task(name="toy", template="{text}", label_words=words)
    model, tok = make_model(family), make_tokenizer(family)
    g = torch.Generator().manual_seed(1)
    scores = {grp.name: torch.rand(grp.size, generator=g) for grp in get_adapter(model).groups()}
    model = apply(make_plan(model, scores, RateSpec(rate=rate)), model).eval()
    labels, start = LabelSpace.build(tok, task), get_adapter(model).decoder_start_token_id()
    (batch,) = batches(EXAMPLES, tok, 8)
    assert (batch.attention_mask == 0).any()  # padded inputs are part of the check
    torch.testing.assert_close(rank_scores(model, batch, labels), _per_candidate(model, batch, labels, start),
                               rtol=1e-5, atol=1e-5)


def test_parameter_counts_follow_widths(family: str) -> None:
    model = make_model(family)
    adapter = get_adapter(model)
    counts = count_parameters(model)
    assert counts["prunable"] == sum(adapter.prunable_parameters(g) for g in adapter.groups())
    half = apply(make_plan(model, {g.name: torch.randn(g.size) for g in adapter.groups()}, RateSpec(rate=0.5)), model)
    assert count_parameters(half)["prunable"] * 2 == counts["prunable"]
    assert counts["total"] - count_parameters(half)["total"] == counts["prunable"] // 2
    none = apply(make_plan(model, {g.name: torch.randn(g.size) for g in adapter.groups()}, RateSpec(rate=1.0)), model)
    assert count_parameters(none)["prunable"] == 0


def test_encoder_cache_reuses_the_encoder_for_decoder_only_changes(family: str) -> None:
    """With a decoder-only plan masked in, cached encoder outputs give exactly the uncached predictions."""
    from taskprune.pruning.apply import masked
    from taskprune.pruning.plan import make_plan
    from taskprune.pruning.rates import RateSpec
    from taskprune.tasks import Example, Task

    task = Task(name="toy", template="{text}", label_words=("good", "bad"), label_values=("1", "0"))
    examples = [Example(t, i % 2) for i, t in enumerate(["good movie", "a bad film", "the film was great",
                                                          "awful", "it is very good", "not good"])]
    model, tok = make_model(family), make_tokenizer(family)
    cache: dict = {}
    dense = evaluate(model, tok, task, examples, batch_size=4, encoder_cache=cache)
    assert len(cache) == 2 and dense.predictions == evaluate(model, tok, task, examples, batch_size=4).predictions
    g = torch.Generator().manual_seed(0)
    scores = {grp.name: torch.rand(grp.size, generator=g) for grp in get_adapter(model).groups()}
    plan = make_plan(model, scores, RateSpec(rate=0.7, modules=("decoder",)))
    labels = LabelSpace.build(tok, task)
    ordered = [examples[i] for i in length_order(examples, tok)]  # evaluate batches length-sorted examples
    batch = next(batches(ordered[:4], tok, 4))
    with masked(plan, model):
        calls = []
        handle = model.get_encoder().register_forward_hook(lambda *a: calls.append(1))
        cached = evaluate(model, tok, task, examples, batch_size=4, encoder_cache=cache)
        assert not calls  # the encoder did not run
        handle.remove()
        fresh = evaluate(model, tok, task, examples, batch_size=4)
        torch.testing.assert_close(rank_scores(model, batch, labels, cache[0]),
                                   rank_scores(model, batch, labels), rtol=0, atol=0)
        masked_scores = rank_scores(model, batch, labels)
    assert cached.predictions == fresh.predictions
    assert not torch.equal(masked_scores, rank_scores(model, batch, labels))  # the mask did change the decoder


def test_length_sorting_keeps_the_callers_order_and_the_scores() -> None:
    """evaluate and scoring batch length-sorted examples; predictions and scores do not depend on input order."""
    from taskprune.api import score
    from taskprune.tasks import Example, Task

    task = Task(name="toy", template="{text}", label_words=("good", "bad"), label_values=("1", "0"))
    texts = ["a very long and rambling sentence about a good film that goes on", "bad", "good movie",
             "it is not good at all, sadly, says the review", "fine", "a bad film with a bad plot"]
    examples = [Example(t, i % 2) for i, t in enumerate(texts)]
    assert [len(texts[i]) for i in length_order(examples, make_tokenizer("t5-relu"))][0] == 3  # "bad" first
    model, tok = make_model("t5-relu"), make_tokenizer("t5-relu")
    ranked = lambda exs: [rank_scores(model, b, LabelSpace.build(tok, task)).argmax(1).item()  # noqa: E731
                          for b in batches(exs, tok, 1)]
    assert evaluate(model, tok, task, examples, batch_size=4).predictions == ranked(examples)
    forward = score(model, tok, task, examples, batch_size=2)
    backward = score(model, tok, task, examples[::-1], batch_size=2)
    for name in forward:
        torch.testing.assert_close(forward[name], backward[name], rtol=1e-4, atol=1e-6)
