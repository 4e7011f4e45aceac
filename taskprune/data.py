"""Turning task examples into model batches: inputs, gold targets and every candidate label's targets.

A label's target is its word-pieces (tokenised without special tokens) followed by the end-of-sequence
token, exactly as the model was trained to generate it; the decoder input is the target shifted right
behind the decoder start token. Attribution uses the probabilities of the word-pieces only (the EOS
token says nothing about which class), evaluation scores the whole target.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .errors import TaskpruneError
from .tasks import Task

IGNORE = -100


@dataclass(frozen=True)
class LabelSpace:
    """Target ids of every class, plus how many leading ids are the label's word-pieces."""

    targets: tuple[tuple[int, ...], ...]
    n_pieces: tuple[int, ...]

    @classmethod
    def build(cls, tokenizer, task: Task, eos_token_id: int | None = None, prefix: str = "") -> LabelSpace:  # noqa: ANN001
        """``prefix`` goes before every word (a space, where the word continues a plain-text prompt)."""
        eos = eos_token_id if eos_token_id is not None else end_token_id(tokenizer)
        targets, pieces = [], []
        for word in task.label_words:
            ids = tokenizer(prefix + word, add_special_tokens=False)["input_ids"]
            if not ids:
                raise TaskpruneError(f"label word {word!r} of task {task.name} tokenises to nothing")
            targets.append(tuple(ids) + (eos,))
            pieces.append(len(ids))
        if len(set(targets)) != len(targets):
            raise TaskpruneError(f"label words of task {task.name} are not distinct after tokenisation")
        return cls(tuple(targets), tuple(pieces))

    def __len__(self) -> int:
        return len(self.targets)


def end_token_id(tokenizer) -> int:  # noqa: ANN001
    """The token that ends a target: EOS where the tokenizer has one (T5), else SEP (BERT)."""
    for tok_id in (tokenizer.eos_token_id, tokenizer.sep_token_id):
        if tok_id is not None:
            return int(tok_id)
    raise TaskpruneError("the tokenizer has neither an EOS nor a SEP token to end label targets with")


@dataclass
class Batch:
    """Tokenised inputs of a few examples and their gold class indices."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    gold: torch.Tensor

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.gold.to(device))

    def split(self, size: int | None) -> list[Batch]:
        """Consecutive row slices of at most ``size`` examples (the whole batch for ``None``), padding kept: each
        row sees exactly the inputs it had in the whole batch, so per-example results do not change."""
        if size is None or size >= len(self):
            return [self]
        return [Batch(self.input_ids[i:i + size], self.attention_mask[i:i + size], self.gold[i:i + size])
                for i in range(0, len(self), size)]


def targets_for(labels: LabelSpace, classes: Sequence[int], start_id: int, pieces_only: bool = False):  # noqa: ANN201
    """Decoder inputs, target ids (``IGNORE``-padded) for one class per example.

    With ``pieces_only`` the EOS position is ignored too (attribution looks at word-pieces only).
    """
    seqs = [labels.targets[c] for c in classes]
    width = max(len(s) for s in seqs)
    target = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
    dec_in = torch.full((len(seqs), width), start_id, dtype=torch.long)
    for i, (c, s) in enumerate(zip(classes, seqs)):
        n = labels.n_pieces[c] if pieces_only else len(s)
        target[i, :n] = torch.tensor(s[:n])
        dec_in[i, 1 : len(s)] = torch.tensor(s[:-1])
    return dec_in, target
