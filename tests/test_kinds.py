"""Unit tests of :mod:`taskprune.lm.kinds` (how each model kind reads inputs and scores labels) and
:mod:`taskprune.lm.batching` (examples -> padded batches), on tiny random models.

What test_causal.py and test_evaluate.py already check (rank scores against a full recomputation, the shared-prefix
cache, the chat-wrapped prompt, over-long prompts) is not repeated here."""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILIES, make_model, make_tokenizer
from tiny import tiny_causal, tiny_causal_tokenizer

from taskprune.data import IGNORE, LabelSpace, targets_for
from taskprune.errors import TaskpruneError
from taskprune.lm import (
    KINDS,
    ModelKind,
    Seq2SeqKind,
    label_space,
    model_kind,
    target_logp,
    teacher_forced_logits,
    use_chat_template,
)
from taskprune.lm.batching import LazyBatches, batches, length_order, n_batches
from taskprune.lm.kinds import CausalKind
from taskprune.models import get_adapter
from taskprune.tasks import Example, Task

TASK = Task("toy", "{text}", ("negative", "positive"), ("0", "1"), causal_template="review {text} Answer:")
# multi-piece labels of uneven length: the causal cache is cropped back after every candidate
THREE = Task("toy3", "{text}", ("good movie", "bad", "a great film"), ("0", "1", "2"))
TEXTS = ["good movie", "the film was very bad", "a great film and a good movie", "awful", "it is good",
         "this was a bad and awful film", "a film", "very very good"]


def examples(texts: list[str] = TEXTS) -> list[Example]:
    return [Example(t, i % 2, prompt=f"review {t}") for i, t in enumerate(texts)]


# ------------------------------------------------------------------------------------------------------
# target_logp
# ------------------------------------------------------------------------------------------------------
def test_target_logp_is_a_log_softmax_gather_and_ignored_positions_count_zero() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=g) * 3
    target = torch.randint(0, 11, (2, 3, 5), generator=g)
    target[0, 1, 3:] = IGNORE
    target[1, 2, :] = IGNORE
    got = target_logp(logits, target)
    assert got.shape == (2, 3, 5)
    logp = logits.log_softmax(-1)
    for b in range(2):
        for k in range(3):
            for t in range(5):
                want = 0.0 if target[b, k, t] == IGNORE else float(logp[b, t, target[b, k, t]])
                assert float(got[b, k, t]) == pytest.approx(want, abs=1e-5)
    assert (got[0, 1, 3:] == 0).all() and (got[1, 2] == 0).all()
    assert (got[target != IGNORE] < 0).all()  # a real log-probability, never the IGNORE id's logit


def test_target_logp_computes_in_float32_for_half_precision_logits() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 4, 9, generator=g)
    target = torch.randint(0, 9, (1, 2, 4), generator=g)
    half = target_logp(logits.bfloat16(), target)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, target_logp(logits.bfloat16().float(), target))


# ------------------------------------------------------------------------------------------------------
# model_kind / label_space
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_encoder_decoders_are_seq2seq(family: str) -> None:
    kind = model_kind(make_model(family))
    assert isinstance(kind, Seq2SeqKind) and kind.name == "seq2seq" and kind is KINDS["seq2seq"]


@pytest.mark.parametrize("model_type", ["llama", "qwen3"])
def test_decoder_only_models_are_causal(model_type: str) -> None:
    kind = model_kind(tiny_causal(model_type, layers=1))
    assert isinstance(kind, CausalKind) and kind.name == "causal" and kind is KINDS["causal"]
    assert isinstance(kind, ModelKind)


def test_model_kind_of_an_unsupported_model_is_one_error() -> None:
    from transformers import BertConfig, BertForMaskedLM

    bert = BertForMaskedLM(BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=8))
    with pytest.raises(TaskpruneError, match="unsupported architecture 'bert'"):
        model_kind(bert)


def test_model_kind_of_a_module_without_a_config_is_one_error() -> None:
    with pytest.raises(TaskpruneError, match="unsupported architecture"):
        model_kind(torch.nn.Linear(2, 2))


def test_label_space_follows_the_model_kind() -> None:
    t5, tok = make_model("t5-relu"), make_tokenizer("t5-relu")
    assert label_space(t5, tok, TASK) == LabelSpace.build(tok, TASK)
    bert, btok = make_model("bert2bert"), make_tokenizer("bert2bert")
    assert [t[-1] for t in label_space(bert, btok, TASK).targets] == [btok.sep_token_id] * 2  # no EOS: SEP
    llama, ctok = tiny_causal("llama", layers=1), tiny_causal_tokenizer(chat=True)
    assert [t[-1] for t in label_space(llama, ctok, TASK).targets] == [ctok.convert_tokens_to_ids("<|im_end|>")] * 2


# ------------------------------------------------------------------------------------------------------
# seq2seq teacher forcing
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["t5-relu", "bert2bert"])
def test_seq2seq_teacher_forced_logits_are_the_decoder_on_the_shifted_target(family: str) -> None:
    model, tok = make_model(family), make_tokenizer(family)
    labels = LabelSpace.build(tok, THREE)
    (batch,) = batches(examples()[:4], tok, 8)
    classes = [2, 0, 1, 2]
    logits, target = teacher_forced_logits(model, batch, labels, classes)
    dec_in, want_target = targets_for(labels, classes, get_adapter(model).decoder_start_token_id())
    assert torch.equal(target, want_target)
    with torch.no_grad():
        want = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, decoder_input_ids=dec_in,
                     use_cache=False).logits
    assert logits.shape == (4, target.shape[1], want.shape[-1])
    torch.testing.assert_close(logits, want)
    # the summed teacher-forced log-likelihood of class c is rank_scores' entry for c
    ranked = model_kind(model).rank_scores(model, batch, labels)
    tf_scores = target_logp(logits.detach(), target.unsqueeze(1)).sum((1, 2))
    torch.testing.assert_close(tf_scores, ranked[torch.arange(4), torch.tensor(classes)], rtol=1e-5, atol=1e-5)


def test_seq2seq_pieces_only_ignores_the_end_token_but_keeps_its_position() -> None:
    model, tok = make_model("t5-relu"), make_tokenizer("t5-relu")
    labels = LabelSpace.build(tok, THREE)
    (batch,) = batches(examples()[:3], tok, 8)
    kind = model_kind(model)
    full = kind.teacher_forced(model, batch, labels, [0, 1, 2])
    pieces = kind.teacher_forced(model, batch, labels, [0, 1, 2], pieces_only=True)
    assert torch.equal(full.kwargs["decoder_input_ids"], pieces.kwargs["decoder_input_ids"])
    assert (pieces.target != IGNORE).sum(1).tolist() == list(labels.n_pieces)
    assert (full.target != IGNORE).sum(1).tolist() == [n + 1 for n in labels.n_pieces]
    # positions: the decoder positions that exist (EOS included) in both cases
    assert torch.equal(pieces.positions, full.target != IGNORE) and torch.equal(full.positions, pieces.positions)


def test_seq2seq_site_masks_pick_the_encoder_or_the_decoder_positions() -> None:
    model, tok = make_model("t5-relu"), make_tokenizer("t5-relu")
    labels = LabelSpace.build(tok, THREE)
    (batch,) = batches(examples()[:3], tok, 8)
    kind = model_kind(model)
    tf = kind.teacher_forced(model, batch, labels, [0, 1, 2])
    groups = get_adapter(model).group_by_name()
    assert (batch.attention_mask == 0).any() and tf.positions.shape != batch.attention_mask.shape
    assert kind.site_mask(groups["encoder.0.ffn"], 0, batch, tf) is batch.attention_mask
    assert kind.site_mask(groups["decoder.0.cross_attn.qk"], 1, batch, tf) is batch.attention_mask  # key proj
    assert kind.site_mask(groups["decoder.0.cross_attn.qk"], 0, batch, tf) is tf.positions  # query proj
    assert kind.site_mask(groups["decoder.0.self_attn.vo"], 0, batch, tf) is tf.positions
    assert kind.site_mask(groups["decoder.1.ffn"], 0, batch, tf) is tf.positions


def test_seq2seq_reads_the_text_and_causal_reads_the_prompt() -> None:
    ex, bare = Example("plain text", 0, prompt="the prompt"), Example("plain text", 0)
    assert KINDS["seq2seq"].text(ex) == "plain text"
    assert KINDS["causal"].text(ex) == "the prompt"
    assert KINDS["causal"].text(bare) == "plain text"  # a task without a causal template


# ------------------------------------------------------------------------------------------------------
# causal inputs and scores
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("chat", [True, False])
def test_causal_prompts_are_left_padded(chat: bool) -> None:
    tok = tiny_causal_tokenizer(chat=chat)
    kind = KINDS["causal"]
    exs = examples()[:4]
    batch = kind.encode(tok, exs, 64)
    lengths = [len(kind.prompt_ids(tok, e, 64)) for e in exs]
    assert len(set(lengths)) > 1 and batch.input_ids.shape == (4, max(lengths))
    assert batch.gold.tolist() == [e.label for e in exs]
    assert (batch.attention_mask[:, -1] == 1).all()  # every prompt ends at the last position
    for i, (e, n) in enumerate(zip(exs, lengths)):
        width = batch.input_ids.shape[1]
        assert batch.attention_mask[i].tolist() == [0] * (width - n) + [1] * n
        assert batch.input_ids[i, width - n:].tolist() == kind.prompt_ids(tok, e, 64)
        assert (batch.input_ids[i, : width - n] == tok.pad_token_id).all()
    if not chat:  # a plain prompt ends in "Answer:"
        assert tok.convert_ids_to_tokens(kind.prompt_ids(tok, exs[0], 64))[-1] == "Answer:"


def test_causal_positions_count_real_tokens_only() -> None:
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert CausalKind.positions(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4], [0, 0, 0, 0, 0]]


@pytest.mark.parametrize("model_type,chat", [("llama", True), ("llama", False), ("qwen2", True)])
def test_a_causal_batch_scores_each_example_as_if_alone(model_type: str, chat: bool) -> None:
    """Left padding and the candidates' shared, cropped prompt cache change no example's scores."""
    model, tok = tiny_causal(model_type), tiny_causal_tokenizer(chat=chat)
    kind = model_kind(model)
    labels = kind.label_space(tok, THREE)
    assert max(len(t) for t in labels.targets) > 2  # candidates that run on the cache
    exs = examples()[:5]
    (batch,) = batches(exs, tok, 8, 64, kind)
    assert (batch.attention_mask == 0).any()
    together = kind.rank_scores(model, batch, labels)
    assert together.shape == (5, 3)
    for i, e in enumerate(exs):
        alone = kind.rank_scores(model, kind.encode(tok, [e], 64), labels)
        torch.testing.assert_close(together[i], alone[0], rtol=1e-4, atol=1e-5)
    # each candidate's score is its teacher-forced log-likelihood
    for c in range(3):
        logits, target = teacher_forced_logits(model, batch, labels, [c] * 5)
        assert logits.shape[:2] == target.shape == (5, len(labels.targets[c]))
        torch.testing.assert_close(target_logp(logits.detach(), target.unsqueeze(1)).sum((1, 2)), together[:, c],
                                   rtol=1e-4, atol=1e-5)


def test_causal_teacher_forcing_appends_the_continuation_behind_the_prompt() -> None:
    model, tok = tiny_causal("llama", layers=1), tiny_causal_tokenizer()
    kind = model_kind(model)
    labels = kind.label_space(tok, THREE)
    batch = kind.encode(tok, examples()[:3], 64)
    classes = [2, 1, 0]
    tf = kind.teacher_forced(model, batch, labels, classes)
    pieces = kind.teacher_forced(model, batch, labels, classes, pieces_only=True)
    width = max(len(labels.targets[c]) for c in classes)
    prompt = batch.input_ids.shape[1]
    ids, mask = tf.kwargs["input_ids"], tf.kwargs["attention_mask"]
    assert ids.shape == (3, prompt + width - 1) and tf.kwargs["logits_to_keep"] == width
    assert torch.equal(ids[:, :prompt], batch.input_ids)
    for i, c in enumerate(classes):
        t = labels.targets[c]
        assert ids[i, prompt: prompt + len(t) - 1].tolist() == list(t[:-1])  # the continuation minus its last token
        assert mask[i, prompt:].tolist() == [1] * (len(t) - 1) + [0] * (width - len(t))
        assert tf.target[i].tolist() == list(t) + [IGNORE] * (width - len(t))
        assert pieces.target[i].tolist() == list(t[: labels.n_pieces[c]]) + [IGNORE] * (width - labels.n_pieces[c])
    assert torch.equal(tf.kwargs["position_ids"], CausalKind.positions(mask))
    assert torch.equal(pieces.kwargs["input_ids"], ids)  # pieces_only changes the target, not the inputs


# ------------------------------------------------------------------------------------------------------
# generation: decoding a generated answer into a class
# ------------------------------------------------------------------------------------------------------
def test_seq2seq_generation_maps_label_words_to_classes_and_anything_else_to_minus_one(monkeypatch) -> None:  # noqa: ANN001
    model, tok = make_model("t5-relu"), make_tokenizer("t5-relu")
    labels = LabelSpace.build(tok, TASK)
    (batch,) = batches(examples()[:3], tok, 8)
    words = [tok.convert_tokens_to_ids(w) for w in ("positive", "negative", "movie")]
    out = torch.tensor([[0, words[0], 1], [0, words[1], 1], [0, words[2], 1]])
    seen = {}

    def fake_generate(**kw):  # noqa: ANN003, ANN202
        seen.update(kw)
        return out

    monkeypatch.setattr(model, "generate", fake_generate)
    assert model_kind(model).generate(model, batch, labels, tok) == [1, 0, -1]
    assert seen["eos_token_id"] == tok.eos_token_id and seen["max_new_tokens"] == 3 and seen["do_sample"] is False
    assert seen["decoder_start_token_id"] == get_adapter(model).decoder_start_token_id()


def test_causal_generation_decodes_only_the_tokens_after_the_prompt(monkeypatch) -> None:  # noqa: ANN001
    model, tok = tiny_causal("llama", layers=1), tiny_causal_tokenizer()
    kind = model_kind(model)
    labels = kind.label_space(tok, TASK)
    batch = kind.encode(tok, examples()[:2], 64)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    new = torch.tensor([[tok.convert_tokens_to_ids("negative"), end], [tok.convert_tokens_to_ids("good"), end]])
    monkeypatch.setattr(model, "generate", lambda **kw: torch.cat([kw["input_ids"], new], dim=1))
    # the prompt holds "good" too: had it been decoded, neither answer would be a label word
    assert kind.generate(model, batch, labels, tok) == [0, -1]


# ------------------------------------------------------------------------------------------------------
# use_chat_template
# ------------------------------------------------------------------------------------------------------
def test_use_chat_template_modes() -> None:
    tok = tiny_causal_tokenizer(chat=True)
    use_chat_template(tok, "auto")
    assert tok.chat_template
    use_chat_template(tok, "on")
    assert tok.chat_template
    use_chat_template(tok, "off")
    assert not tok.chat_template
    # without its template the tokenizer reads plain prompts and labels end in EOS
    assert [t[-1] for t in KINDS["causal"].label_space(tok, TASK).targets] == [tok.eos_token_id] * 2
    with pytest.raises(TaskpruneError, match="no chat template"):
        use_chat_template(tok, "on")
    use_chat_template(tok, "auto")  # auto accepts either
    with pytest.raises(TaskpruneError, match="not one of auto, on, off"):
        use_chat_template(tiny_causal_tokenizer(chat=True), "yes")


# ------------------------------------------------------------------------------------------------------
# batching
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [0, -2])
def test_a_non_positive_batch_size_is_refused(size: int) -> None:
    tok = make_tokenizer("t5-relu")
    with pytest.raises(TaskpruneError, match="batch size must be positive"):
        list(batches(examples(), tok, size))
    with pytest.raises(TaskpruneError, match="batch size must be positive"):
        LazyBatches(examples(), tok, size)


def test_batches_pad_each_batch_to_its_own_longest_input() -> None:
    tok = make_tokenizer("t5-relu")
    exs = examples()
    got = list(batches(exs, tok, 3))
    assert [len(b) for b in got] == [3, 3, 2]
    lengths = [len(tok(e.text)["input_ids"]) for e in exs]
    for j, b in enumerate(got):
        assert b.input_ids.shape[1] == max(lengths[3 * j: 3 * j + 3])
        assert b.attention_mask.sum(1).tolist() == lengths[3 * j: 3 * j + 3]
        assert b.gold.tolist() == [e.label for e in exs[3 * j: 3 * j + 3]]
    assert len({b.input_ids.shape[1] for b in got}) > 1  # not one global width
    (short,) = batches(exs[:3], tok, 8, max_length=4)
    assert short.input_ids.shape[1] == 4  # truncated at max_length


def test_batches_default_to_the_seq2seq_reading_and_take_a_kind() -> None:
    tok = tiny_causal_tokenizer()
    exs = examples()[:3]
    (plain,) = batches(exs, tok, 8)
    (causal,) = batches(exs, tok, 8, 64, KINDS["causal"])
    assert torch.equal(plain.input_ids, KINDS["seq2seq"].encode(tok, exs, 256).input_ids)
    assert torch.equal(causal.input_ids, KINDS["causal"].encode(tok, exs, 64).input_ids)
    assert (causal.attention_mask[:, -1] == 1).all() and (causal.attention_mask[:, 0] == 0).any()  # left-padded


def test_lazy_batches_index_like_the_list_of_batches() -> None:
    tok = make_tokenizer("bert2bert")
    exs = examples()
    lazy = LazyBatches(exs, tok, 3, max_length=64)
    eager = list(batches(exs, tok, 3, 64))
    assert len(lazy) == len(eager) == 3
    for i in range(-3, 3):
        for a, b in ((lazy[i].input_ids, eager[i].input_ids), (lazy[i].attention_mask, eager[i].attention_mask),
                     (lazy[i].gold, eager[i].gold)):
            assert torch.equal(a, b)
    assert len(lazy[-1]) == 2
    for bad in (3, -4, 100):
        with pytest.raises(IndexError):
            lazy[bad]
    for a, b in zip(lazy, eager):  # iterating twice gives the same batches
        assert torch.equal(a.input_ids, b.input_ids)
    assert [len(b) for b in lazy] == [3, 3, 2]


def test_lazy_batches_of_nothing_and_of_a_causal_kind() -> None:
    empty = LazyBatches([], make_tokenizer("t5-relu"), 4)
    assert len(empty) == 0 and list(empty) == []
    with pytest.raises(IndexError):
        empty[0]
    tok = tiny_causal_tokenizer()
    lazy = LazyBatches(examples(), tok, 4, 64, KINDS["causal"])
    assert torch.equal(lazy[1].input_ids, KINDS["causal"].encode(tok, examples()[4:8], 64).input_ids)


def test_length_order_is_shortest_first_and_stable() -> None:
    tok = make_tokenizer("t5-relu")
    texts = ["a b c", "a", "a b", "c d", "a b c d e", "b"]  # ties: "a b"/"c d" and "a"/"b"
    exs = [Example(t, 0) for t in texts]
    assert length_order(exs, tok) == [1, 5, 2, 3, 0, 4]
    # truncation makes every long input tie at max_length (</s> counts): their input order is kept
    assert length_order(exs, tok, max_length=3) == [1, 5, 0, 2, 3, 4]
    assert length_order(exs, tok, max_length=2) == [0, 1, 2, 3, 4, 5]
    assert length_order([], tok) == []


def test_length_order_measures_what_the_kind_reads() -> None:
    tok = tiny_causal_tokenizer()
    exs = [Example("a b c d", 0, prompt="a"), Example("a", 1, prompt="a b c d")]
    assert length_order(exs, tok) == [1, 0]
    assert length_order(exs, tok, kind=KINDS["causal"]) == [0, 1]


@pytest.mark.parametrize("n,size,want", [(0, 4, 0), (1, 4, 1), (4, 4, 1), (5, 4, 2), (8, 4, 2), (9, 1, 9)])
def test_n_batches_is_the_ceiling(n: int, size: int, want: int) -> None:
    assert n_batches(n, size) == want
