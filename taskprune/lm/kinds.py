"""P(label | input): the ONE home, per model kind, of how a model reads an input and scores a label.

Every consumer goes through here: scoring (attribution, unsupervised, RAP, activation, SMP), rank
classification, greedy generation, serving and fine-tuning. Two kinds:

- ``seq2seq`` (T5, bert2bert): the encoder reads the input; the decoder is teacher-forced on the label's target
  (word-pieces + EOS) behind the decoder start token.
- ``causal`` (Llama layout): the prompt is the task's causal template, wrapped in the tokenizer's chat template
  when it has one (a user turn, then the assistant header), LEFT-padded so every prompt ends at the same
  position; the label continuation follows it (word-pieces + the end-of-turn token; without a chat template the
  prompt ends in "Answer:" and the word gets a leading space). Position ids count real tokens only, so padding
  changes nothing. Rank classification runs the prompt ONCE and scores every candidate on its KV cache
  (cropped back to the prompt after each candidate: no copies).

A kind turns a batch and one class per example into ``TeacherForced`` inputs whose logits are
``[B, L, V]`` next to a target ``[B, L]`` (``IGNORE`` where padded): the same shape for both kinds, so the
scorers and the fine-tuning loss never ask which kind they hold.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..data import IGNORE, Batch, LabelSpace, end_token_id, targets_for
from ..errors import TaskpruneError
from ..models import NeuronGroup, get_adapter
from ..tasks import Example, Task
from .chat import end_of_turn_id, has_chat_template, pad_id

#: tokens kept from the END of an over-long causal prompt (the question, the answer instruction and the chat
#: template's assistant header live there); the rest of ``max_length`` comes from its start
CAUSAL_TAIL_TOKENS = 48


@dataclass
class TeacherForced:
    """Model inputs for one class per example: ``kwargs`` for ``model(**kwargs)``, the ``target`` ids
    ``[B, L]`` (IGNORE-padded) that the logits predict, and ``positions``, the ``[B, T]`` mask of the real
    positions of the sequence the decoder-side activations live on (for scores that have no gradient to
    zero out padding)."""

    kwargs: dict[str, Any]
    target: torch.Tensor
    positions: torch.Tensor


@dataclass
class CalibrationForward:
    """One forward pass of weight repair's calibration: ``run()`` runs it, and the layers it runs see as calibration
    tokens the positions of ``mask`` (``[B, T]``, 1 = real), each standing for ``weight`` tokens (a prompt that every
    candidate label shares runs once, weighted by the number of candidates)."""

    run: Callable[[], Any]
    mask: torch.Tensor
    weight: float = 1.0


class ModelKind(ABC):
    """How one kind of model reads inputs and scores label candidates: the ONE place that answers "seq2seq or
    causal?" (callers ask these attributes, never the kind's name or the model's type)."""

    name: ClassVar[str]
    #: an encoder reads the input once; the decoder's positions depend on it (encoder outputs can be cached/reused)
    has_encoder: ClassVar[bool]
    #: the task's causal template (a prompt the answer continues) is what this kind reads, where a task has one
    reads_causal_prompt: ClassVar[bool]

    def reserved_target_ids(self, model: nn.Module) -> set[int]:
        """Token ids that can never be an answer's target (the decoder start token of a seq2seq model)."""
        return set()

    def text(self, example: Example) -> str:
        """The text of ``example`` that a model of this kind reads (before any wrapping)."""
        return example.text

    @abstractmethod
    def encode(self, tokenizer: Any, examples: Sequence[Example], max_length: int) -> Batch:
        """Tokenised, padded inputs of ``examples`` with their gold classes."""

    @abstractmethod
    def label_space(self, tokenizer: Any, task: Task) -> LabelSpace:
        """Target ids of every class (word-pieces, then the token that ends the answer)."""

    @abstractmethod
    def teacher_forced(self, model: nn.Module, batch: Batch, labels: LabelSpace, classes: Sequence[int],
                       pieces_only: bool = False) -> TeacherForced:
        """Inputs that teacher-force class ``classes[i]`` for example i (``pieces_only``: EOS not a target); the
        model's logits on them are ``[B, L, V]``, position j predicting ``target[:, j]``."""

    @abstractmethod
    def rank_scores(self, model: nn.Module, batch: Batch, labels: LabelSpace, context: Any = None) -> torch.Tensor:
        """log P(candidate | input) of every candidate: ``[B, n_classes]`` (inference only)."""

    @torch.inference_mode()
    def generate(self, model: nn.Module, batch: Batch, labels: LabelSpace, tokenizer: Any) -> list[int]:
        """Greedy generation; an output that is no label word counts as wrong (-1)."""
        words = {tokenizer.decode(t[:n], skip_special_tokens=True).strip().lower(): c
                 for c, (t, n) in enumerate(zip(labels.targets, labels.n_pieces))}
        out = model.generate(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask,
            max_new_tokens=max(len(t) for t in labels.targets) + 1, do_sample=False, num_beams=1,
            eos_token_id=labels.targets[0][-1], **self.generation_kwargs(model, tokenizer),
        )
        texts = tokenizer.batch_decode(self.generated(out, batch), skip_special_tokens=True)
        return [words.get(t.strip().lower(), -1) for t in texts]

    @abstractmethod
    def generation_kwargs(self, model: nn.Module, tokenizer: Any) -> dict[str, Any]:
        """What ``generate()`` needs beyond the inputs for this kind (start token, padding id)."""

    def generated(self, out: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The generated tokens of ``generate()``'s output."""
        return out

    @abstractmethod
    def input_embeddings(self, model: nn.Module) -> list[nn.Module]:
        """Embedding modules whose outputs root the graph of an attribution pass."""

    @abstractmethod
    def site_mask(self, group: NeuronGroup, site: int, batch: Batch, tf: TeacherForced) -> torch.Tensor:
        """``[B, T]`` real-position mask of the tensor observed at site ``site`` of ``group``."""

    @abstractmethod
    def calibration_forwards(self, model: nn.Module, batch: Batch, labels: LabelSpace
                             ) -> Iterator[CalibrationForward]:
        """Forward passes (inference mode; run each before asking for the next) in which every layer sees each token
        of ``batch`` teacher-forced on EVERY candidate label: the sums over them equal those of one teacher-forced
        pass per candidate, while what the candidates share (the encoder, a causal prompt) runs once."""


# ------------------------------------------------------------------------------------------------------
# shared pieces
# ------------------------------------------------------------------------------------------------------
def target_logp(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """log p(target) at each position: logits [B, T, V], targets [B, k, T] -> [B, k, T] (IGNORE counts 0).

    The k candidates of an example share its logits: the normaliser is one logsumexp per position (not a
    vocabulary-sized log-softmax per candidate) and each candidate only picks its own token.
    """
    logits = logits.float()
    picked = logits.gather(-1, target.clamp(min=0).transpose(1, 2)).transpose(1, 2)  # [B, k, T]
    return (picked - logits.logsumexp(-1).unsqueeze(1)) * (target != IGNORE)


def cache_of(output: Any) -> Any:  # noqa: ANN401
    """The KV cache a forward pass returned (transformers 5 names it ``cache``; earlier ``past_key_values``)."""
    return getattr(output, "cache", None) if getattr(output, "cache", None) is not None else output.past_key_values


# ------------------------------------------------------------------------------------------------------
# seq2seq
# ------------------------------------------------------------------------------------------------------
# Repeating the prefix's cache for all candidates at once costs (k-1) copies of every decoder layer's
# cross-attention keys and values; above this many bytes the candidates run one call each over the shared cache.
REPEAT_BUDGET_BYTES = 64 << 20


class Seq2SeqKind(ModelKind):
    name = "seq2seq"
    has_encoder = True
    reads_causal_prompt = False

    def reserved_target_ids(self, model: nn.Module) -> set[int]:
        return {get_adapter(model).decoder_start_token_id()}

    def encode(self, tokenizer: Any, examples: Sequence[Example], max_length: int) -> Batch:
        enc = tokenizer([self.text(e) for e in examples], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
        return Batch(enc["input_ids"], enc["attention_mask"], torch.tensor([e.label for e in examples]))

    def label_space(self, tokenizer: Any, task: Task) -> LabelSpace:
        return LabelSpace.build(tokenizer, task)

    def teacher_forced(self, model: nn.Module, batch: Batch, labels: LabelSpace, classes: Sequence[int],
                       pieces_only: bool = False) -> TeacherForced:
        device = batch.input_ids.device
        start = get_adapter(model).decoder_start_token_id()
        dec_in, target = targets_for(labels, list(classes), start, pieces_only)
        _, full = targets_for(labels, list(classes), start) if pieces_only else (dec_in, target)
        kwargs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
                  "decoder_input_ids": dec_in.to(device), "use_cache": False}
        return TeacherForced(kwargs, target.to(device), (full != IGNORE).to(device))

    def encode_only(self, model: nn.Module, batch: Batch) -> Any:
        """The encoder's output for ``batch`` (reusable across decoder-only changes: sweeps cache it)."""
        with torch.inference_mode():
            return model.get_encoder()(input_ids=batch.input_ids, attention_mask=batch.attention_mask)

    def calibration_forwards(self, model: nn.Module, batch: Batch, labels: LabelSpace
                             ) -> Iterator[CalibrationForward]:
        """The encoder once (its tokens do not depend on the candidate), then the decoder per candidate on it."""
        encoded: list[Any] = []
        yield CalibrationForward(lambda: encoded.append(self.encode_only(model, batch)), batch.attention_mask)
        for c in range(len(labels)):
            tf = self.teacher_forced(model, batch, labels, [c] * len(batch))
            yield CalibrationForward(lambda tf=tf: model(**tf.kwargs, encoder_outputs=encoded[0]), tf.positions)

    @torch.inference_mode()
    def rank_scores(self, model: nn.Module, batch: Batch, labels: LabelSpace, context: Any = None) -> torch.Tensor:
        """The candidates share the encoder pass and, in the decoder, their common prefix (the start token, plus any
        shared leading word-pieces): the prefix runs once per example with a key/value cache, whose cross-attention
        part is then reused by every candidate, and only each candidate's own tokens run after it. When the
        repeated cache fits ``REPEAT_BUDGET_BYTES`` all candidates run in one call on a cache repeated per
        candidate; otherwise one call per candidate shares the cache unrepeated. ``context``: the encoder's output
        for this batch (skips the encoder)."""
        import copy

        from transformers import EncoderDecoderCache

        encoder_outputs = self.encode_only(model, batch) if context is None else context
        start_id = get_adapter(model).decoder_start_token_id()
        dev, n, k = batch.input_ids.device, len(batch), len(labels)
        dec_in, target = (t.to(dev) for t in targets_for(labels, range(k), start_id))  # [k, T]
        p = _shared_prefix(dec_in, target)
        head = model(encoder_outputs=encoder_outputs, attention_mask=batch.attention_mask,
                     decoder_input_ids=dec_in[:1, :p].expand(n, p), use_cache=p < dec_in.shape[1])
        # the prefix's last position predicts each candidate's first own token: one distribution, k picks
        scores = target_logp(head.logits, target[:, :p].expand(n, k, p)).sum(-1)
        if p == dec_in.shape[1]:
            return scores
        cache = cache_of(head)
        if not isinstance(cache, EncoderDecoderCache):
            raise TaskpruneError(f"{type(model).__name__} returned no encoder-decoder cache; rank classification "
                                 "needs one to share the prefix across label candidates")
        hidden = encoder_outputs[0]
        repeated = (k - 1) * (2 * len(cache) + 1) * hidden.numel() * hidden.element_size()
        if repeated <= REPEAT_BUDGET_BYTES:
            cache.batch_repeat_interleave(k)  # row b*k + c continues example b with candidate c
            rest = model(encoder_outputs=(hidden.repeat_interleave(k, dim=0),),
                         attention_mask=batch.attention_mask.repeat_interleave(k, dim=0),
                         decoder_input_ids=dec_in[:, p:].repeat(n, 1), cache=cache, use_cache=True)
            own = target_logp(rest.logits, target[:, p:].repeat(n, 1).unsqueeze(1)).sum((1, 2))
            return scores + own.view(n, k)
        own_scores = []
        for c in range(k):
            length = int((target[c, p:] != IGNORE).sum())  # this candidate's own tokens (0: its target is the prefix)
            if length == 0:
                own_scores.append(scores.new_zeros(n))
                continue
            # the prefix's self-attention cache is a few positions (copied per candidate); cross-attention is shared
            mine = EncoderDecoderCache(copy.deepcopy(cache.self_attention_cache), cache.cross_attention_cache)
            rest = model(encoder_outputs=encoder_outputs, attention_mask=batch.attention_mask,
                         decoder_input_ids=dec_in[c : c + 1, p : p + length].expand(n, length), cache=mine,
                         use_cache=True)
            own_scores.append(target_logp(rest.logits, target[c : c + 1, p : p + length].expand(n, 1, length))
                              .sum((1, 2)))
        return scores + torch.stack(own_scores, dim=1)

    def generation_kwargs(self, model: nn.Module, tokenizer: Any) -> dict[str, Any]:
        return {"decoder_start_token_id": get_adapter(model).decoder_start_token_id(),
                "pad_token_id": tokenizer.pad_token_id}

    def input_embeddings(self, model: nn.Module) -> list[nn.Module]:
        out: list[nn.Module] = []
        for stack in (model.get_encoder(), model.get_decoder()):
            emb = stack.get_input_embeddings()
            if all(emb is not e for e in out):
                out.append(emb)
        return out

    def site_mask(self, group: NeuronGroup, site: int, batch: Batch, tf: TeacherForced) -> torch.Tensor:
        # site 1 of a cross-attention QK group is the key projection, applied to the encoder output
        on_input = group.module == "encoder" or (group.layer_type == "cross_attn" and group.role == "qk" and site == 1)
        return batch.attention_mask if on_input else tf.positions


def _shared_prefix(dec_in: torch.Tensor, target: torch.Tensor) -> int:
    """How many leading decoder inputs every candidate shares (at least the start token), within every target."""
    shortest = int((target != IGNORE).sum(1).min())
    same = (dec_in[:, :shortest] == dec_in[:1, :shortest]).all(0).tolist()
    return next((j for j, s in enumerate(same) if not s), shortest)


# ------------------------------------------------------------------------------------------------------
# causal
# ------------------------------------------------------------------------------------------------------
class CausalKind(ModelKind):
    name = "causal"
    has_encoder = False
    reads_causal_prompt = True

    # -- inputs --------------------------------------------------------------------------------------
    def text(self, example: Example) -> str:
        """The causal prompt where the task has one, else the seq2seq rendering."""
        return example.prompt or example.text

    def prompt_ids(self, tokenizer: Any, example: Example, max_length: int) -> list[int]:
        """The prompt's token ids: chat-wrapped where the tokenizer has a chat template, cut in the middle when
        longer than ``max_length`` (its start and its last ``CAUSAL_TAIL_TOKENS`` tokens are kept)."""
        content = self.text(example)
        if has_chat_template(tokenizer):
            text = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                 add_generation_prompt=True)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            ids = tokenizer(content + "\nAnswer:")["input_ids"]
        if len(ids) > max_length:
            tail = min(CAUSAL_TAIL_TOKENS, max_length // 2)
            ids = ids[: max_length - tail] + ids[len(ids) - tail :]
        return ids

    def encode(self, tokenizer: Any, examples: Sequence[Example], max_length: int) -> Batch:
        seqs = [self.prompt_ids(tokenizer, e, max_length) for e in examples]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad_id(tokenizer), dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):  # left padding: every prompt ends at the last position
            ids[i, width - len(s):] = torch.tensor(s)
            mask[i, width - len(s):] = 1
        return Batch(ids, mask, torch.tensor([e.label for e in examples]))

    def label_space(self, tokenizer: Any, task: Task) -> LabelSpace:
        """Word-pieces + end-of-turn with a chat template; " word" + EOS after a plain "Answer:" prompt."""
        if has_chat_template(tokenizer):
            return LabelSpace.build(tokenizer, task, end_of_turn_id(tokenizer))
        return LabelSpace.build(tokenizer, task, end_token_id(tokenizer), prefix=" ")

    @staticmethod
    def positions(mask: torch.Tensor) -> torch.Tensor:
        """Position ids that count real tokens only (left padding shifts nothing)."""
        return (mask.cumsum(-1) - 1).clamp(min=0)

    # -- teacher forcing -----------------------------------------------------------------------------
    def teacher_forced(self, model: nn.Module, batch: Batch, labels: LabelSpace, classes: Sequence[int],
                       pieces_only: bool = False) -> TeacherForced:
        """prompt | the continuation without its last token; ``logits_to_keep`` = L keeps the L positions from the
        prompt's last one on, which predict the L continuation tokens (and no vocabulary-wide logits elsewhere)."""
        device = batch.input_ids.device
        seqs = [labels.targets[c] for c in classes]
        width = max(len(s) for s in seqs)
        target = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
        cont = torch.zeros((len(seqs), width - 1), dtype=torch.long)
        cont_mask = torch.zeros((len(seqs), width - 1), dtype=torch.long)
        for i, (c, s) in enumerate(zip(classes, seqs)):
            n = labels.n_pieces[c] if pieces_only else len(s)
            target[i, :n] = torch.tensor(s[:n])
            cont[i, : len(s) - 1] = torch.tensor(s[:-1])
            cont_mask[i, : len(s) - 1] = 1
        ids = torch.cat([batch.input_ids, cont.to(device)], dim=1)
        mask = torch.cat([batch.attention_mask, cont_mask.to(device)], dim=1)
        kwargs = {"input_ids": ids, "attention_mask": mask, "position_ids": self.positions(mask), "use_cache": False,
                  "logits_to_keep": width}
        return TeacherForced(kwargs, target.to(device), mask)

    # -- inference -----------------------------------------------------------------------------------
    def _prompt_pass(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, Any, torch.Tensor]:
        pos = self.positions(batch.attention_mask)
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=pos,
                    use_cache=True, logits_to_keep=1)
        return out.logits[:, -1], cache_of(out), pos[:, -1]

    @torch.inference_mode()
    def rank_scores(self, model: nn.Module, batch: Batch, labels: LabelSpace, context: Any = None) -> torch.Tensor:
        """The prompt runs once; its last logits score every candidate's first token, and each candidate's
        remaining tokens run on the prompt's cache, which is cropped back to the prompt afterwards."""
        first, cache, last = self._prompt_pass(model, batch)
        n = len(batch)
        logz = first.float().logsumexp(-1)
        scores = []
        for target in labels.targets:
            s = first[:, target[0]].float() - logz
            if len(target) > 1:
                ids = torch.tensor(target[:-1], device=first.device).expand(n, -1)
                steps = torch.arange(1, len(target), device=first.device)
                mask = torch.cat([batch.attention_mask, torch.ones_like(ids)], dim=1)
                out = model(input_ids=ids, attention_mask=mask, position_ids=last.unsqueeze(1) + steps,
                            cache=cache, use_cache=True)
                rest = torch.tensor(target[1:], device=first.device).expand(n, 1, -1)
                s = s + target_logp(out.logits, rest).sum((1, 2))
                cache.crop(-(len(target) - 1))  # back to the prompt (a negative count removes tokens)
            scores.append(s)
        return torch.stack(scores, dim=1)

    def generation_kwargs(self, model: nn.Module, tokenizer: Any) -> dict[str, Any]:
        return {"pad_token_id": pad_id(tokenizer)}

    def generated(self, out: torch.Tensor, batch: Batch) -> torch.Tensor:
        return out[:, batch.input_ids.shape[1]:]  # generate() returns the prompt too

    def input_embeddings(self, model: nn.Module) -> list[nn.Module]:
        return [model.get_input_embeddings()]

    def site_mask(self, group: NeuronGroup, site: int, batch: Batch, tf: TeacherForced) -> torch.Tensor:
        return tf.positions

    def calibration_forwards(self, model: nn.Module, batch: Batch, labels: LabelSpace
                             ) -> Iterator[CalibrationForward]:
        """The prompt once with a KV cache (causal attention: its tokens do not depend on what follows), weighted by
        the number of candidates, then each candidate's continuation on the cache (cropped back after it): the same
        sums as a teacher-forced pass per candidate for about 1/k of the compute."""
        state: list[Any] = []

        def prompt() -> None:
            state.append(self._prompt_pass(model, batch))

        yield CalibrationForward(prompt, batch.attention_mask, float(len(labels)))
        _, cache, last = state[0]
        n = len(batch)
        for target in labels.targets:
            if len(target) < 2:  # a one-token answer has no continuation to run
                continue
            ids = torch.tensor(target[:-1], device=last.device).expand(n, -1)
            mask = torch.cat([batch.attention_mask, torch.ones_like(ids)], dim=1)
            steps = torch.arange(1, len(target), device=last.device)

            def continuation(ids: torch.Tensor = ids, mask: torch.Tensor = mask, steps: torch.Tensor = steps) -> None:
                model(input_ids=ids, attention_mask=mask, position_ids=last.unsqueeze(1) + steps, cache=cache,
                      use_cache=True, logits_to_keep=1)

            yield CalibrationForward(continuation, torch.ones_like(ids))
            cache.crop(-(len(target) - 1))


KINDS: dict[str, ModelKind] = {k.name: k for k in (Seq2SeqKind(), CausalKind())}


def model_kind(model: nn.Module) -> ModelKind:
    """The kind of ``model``, as its adapter declares it."""
    return KINDS[get_adapter(model).kind_name]


def label_space(model: nn.Module, tokenizer: Any, task: Task) -> LabelSpace:
    """The task's label targets as ``model``'s kind spells them."""
    return model_kind(model).label_space(tokenizer, task)


def teacher_forced_logits(model: nn.Module, batch: Batch, labels: LabelSpace, classes: Sequence[int],
                          pieces_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``[B, L, V]`` and target ``[B, L]`` of ``model`` teacher-forced on one class per example."""
    tf = model_kind(model).teacher_forced(model, batch, labels, classes, pieces_only)
    return model(**tf.kwargs).logits, tf.target
