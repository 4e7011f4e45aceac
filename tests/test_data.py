"""Unit tests of :mod:`taskprune.data`: label targets (LabelSpace), the token that ends them, batches and the
decoder inputs of teacher forcing (targets_for). The plain two-class shift is in test_evaluate.py."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tokenizer
from tiny import tiny_tokenizer

from taskprune.data import IGNORE, Batch, LabelSpace, end_token_id, targets_for
from taskprune.errors import TaskpruneError
from taskprune.tasks import Task

TASK = Task("toy", "{text}", ("negative", "positive"), ("0", "1"))
UNEVEN = Task("uneven", "{text}", ("good", "very good movie", "bad film"), ("0", "1", "2"))


def ids(tok, words: str) -> list[int]:  # noqa: ANN001
    return [tok.convert_tokens_to_ids(w) for w in words.split()]


# ------------------------------------------------------------------------------------------------------
# LabelSpace
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["t5-relu", "bert2bert"])
def test_targets_are_the_word_pieces_then_the_end_token(family: str) -> None:
    tok = make_tokenizer(family)
    labels = LabelSpace.build(tok, UNEVEN)
    end = end_token_id(tok)
    assert labels.targets == (tuple(ids(tok, "good")) + (end,), tuple(ids(tok, "very good movie")) + (end,),
                              tuple(ids(tok, "bad film")) + (end,))
    assert labels.n_pieces == (1, 3, 2) and len(labels) == 3
    # no special token of the tokenizer's template (BERT's [CLS]/[SEP] around, T5's </s>) sneaks into the pieces
    specials = set(tok.all_special_ids)
    assert all(not specials & set(t[:n]) for t, n in zip(labels.targets, labels.n_pieces))


def test_an_explicit_end_token_and_a_prefix_are_used() -> None:
    tok = make_tokenizer("t5-relu")
    labels = LabelSpace.build(tok, TASK, eos_token_id=7, prefix="the ")
    assert labels.targets == (tuple(ids(tok, "the negative")) + (7,), tuple(ids(tok, "the positive")) + (7,))
    assert labels.n_pieces == (2, 2)  # the prefix's pieces count as the label's
    assert LabelSpace.build(tok, TASK, eos_token_id=0).targets[0][-1] == 0  # 0 is an id, not "none given"


def test_a_label_word_that_tokenises_to_nothing_is_refused() -> None:
    task = Task("blank", "{text}", ("positive", "   "), ("1", "0"))
    with pytest.raises(TaskpruneError, match=r"label word '   ' of task blank tokenises to nothing"):
        LabelSpace.build(make_tokenizer("t5-relu"), task)


@pytest.mark.parametrize("words", [("zebra", "giraffe"),  # both the unknown token
                                   ("good", "good  "),  # different strings, same pieces
                                   ("good bad", "good  bad")])
def test_label_words_that_collide_after_tokenisation_are_refused(words: tuple[str, str]) -> None:
    task = Task("clash", "{text}", words, ("0", "1"))
    with pytest.raises(TaskpruneError, match="label words of task clash are not distinct after tokenisation"):
        LabelSpace.build(make_tokenizer("t5-relu"), task)


def test_label_spaces_compare_by_value() -> None:
    tok = make_tokenizer("t5-relu")
    assert LabelSpace.build(tok, TASK) == LabelSpace.build(tok, TASK)
    assert LabelSpace.build(tok, TASK) != LabelSpace.build(tok, UNEVEN)
    with pytest.raises(AttributeError):  # frozen: a shared label space cannot be changed under its users
        LabelSpace.build(tok, TASK).targets = ()  # type: ignore[misc]


# ------------------------------------------------------------------------------------------------------
# end_token_id
# ------------------------------------------------------------------------------------------------------
def test_end_token_is_eos_else_sep_else_refused() -> None:
    t5 = tiny_tokenizer(bert_style=False)
    bert = tiny_tokenizer(bert_style=True)
    assert end_token_id(t5) == t5.convert_tokens_to_ids("</s>")
    assert bert.eos_token_id is None and end_token_id(bert) == bert.convert_tokens_to_ids("[SEP]")
    bert.eos_token = "[PAD]"  # both set: EOS wins
    assert end_token_id(bert) == bert.convert_tokens_to_ids("[PAD]")
    t5.eos_token = None
    with pytest.raises(TaskpruneError, match="neither an EOS nor a SEP token"):
        end_token_id(t5)
    with pytest.raises(TaskpruneError, match="neither an EOS nor a SEP token"):
        LabelSpace.build(t5, TASK)  # LabelSpace.build without an explicit end token asks for it


# ------------------------------------------------------------------------------------------------------
# Batch
# ------------------------------------------------------------------------------------------------------
def test_batch_length_and_device_move() -> None:
    batch = Batch(torch.ones(3, 5, dtype=torch.long), torch.ones(3, 5, dtype=torch.long), torch.tensor([0, 1, 0]))
    assert len(batch) == 3
    moved = batch.to("meta")
    assert all(t.device.type == "meta" for t in (moved.input_ids, moved.attention_mask, moved.gold))
    assert batch.input_ids.device.type == "cpu"  # a new batch; the original stays where it was
    assert moved.input_ids.shape == (3, 5) and moved.gold.shape == (3,)


# ------------------------------------------------------------------------------------------------------
# targets_for
# ------------------------------------------------------------------------------------------------------
def test_targets_for_uneven_classes_in_any_order() -> None:
    tok = make_tokenizer("t5-relu")
    labels = LabelSpace.build(tok, UNEVEN)  # lengths 2, 4, 3 (pieces + EOS)
    classes = [1, 0, 2, 0]
    dec_in, target = targets_for(labels, classes, start_id=5)
    assert dec_in.shape == target.shape == (4, 4) and dec_in.dtype == target.dtype == torch.long
    for i, c in enumerate(classes):
        t = list(labels.targets[c])
        assert target[i].tolist() == t + [IGNORE] * (4 - len(t))
        # shifted right behind the start id; beyond the target the row holds the start id (masked by IGNORE)
        assert dec_in[i].tolist() == [5] + t[:-1] + [5] * (4 - len(t))
        # teacher forcing: position j reads target j-1 and predicts target j
        assert dec_in[i, 1: len(t)].tolist() == target[i, : len(t) - 1].tolist()


def test_pieces_only_ignores_exactly_the_end_token_and_keeps_the_decoder_inputs() -> None:
    tok = make_tokenizer("bert2bert")
    labels = LabelSpace.build(tok, UNEVEN)
    classes = [2, 1, 0]
    dec_full, full = targets_for(labels, classes, start_id=2)
    dec_pieces, pieces = targets_for(labels, classes, start_id=2, pieces_only=True)
    assert torch.equal(dec_full, dec_pieces)
    for i, c in enumerate(classes):
        n = labels.n_pieces[c]
        assert pieces[i, :n].tolist() == list(labels.targets[c][:n])
        assert (pieces[i, n:] == IGNORE).all()
        assert full[i, n] == end_token_id(tok)  # the position pieces_only drops is the end token


def test_ignore_is_what_cross_entropy_skips() -> None:
    """The fine-tuning loss feeds these targets to cross_entropy unchanged: IGNORE must be its default index."""
    logits = torch.randn(1, 3, 6)
    target = torch.tensor([[2, IGNORE, IGNORE]])
    loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target)
    torch.testing.assert_close(loss, -logits[0, 0].log_softmax(-1)[2])
