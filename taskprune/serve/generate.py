"""Token-by-token generation with the KV cache, one step per call, for the OpenAI routes.

A :class:`Decoding` holds ``n`` rows of one prompt, their cache, a seeded random generator and the stop rules.
Each :meth:`Decoding.step` is one forward pass of the new tokens (the first one runs the prompt) and returns what
each row added; the HTTP layer runs steps one at a time on the single inference thread, so classification batches
and other generations interleave at token granularity, and a client that goes away stops costing anything at the
next step. Text is decoded incrementally: a delta holds back a trailing partial UTF-8 character and any tail that
could still become a stop string.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..lm.kinds import cache_of


@dataclass
class Sampling:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    n: int = 1
    top_logprobs: int = 0  # alternatives reported per token (0: none)


@dataclass
class TokenOut:
    """One generated token of one row; ``text`` is the new text it releases (may be empty while held back)."""

    index: int
    token: str
    logprob: float
    top: list[tuple[str, float]]
    text: str
    finish_reason: str | None = None


def _sample(logits: torch.Tensor, s: Sampling, gen: torch.Generator) -> torch.Tensor:
    """Next token per row: greedy at temperature 0, else nucleus sampling of softmax(logits / T) at ``top_p``."""
    if s.temperature == 0:
        return logits.argmax(-1)
    probs = (logits.float() / s.temperature).softmax(-1)
    if s.top_p < 1:
        sorted_p, order = probs.sort(-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p >= s.top_p  # keep the smallest prefix reaching top_p (at least one)
        sorted_p = sorted_p.masked_fill(drop, 0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    # the generator is a CPU one (seeded per request): sample on the CPU, wherever the model runs
    return torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(-1).to(logits.device)


class Decoding:
    """``n`` continuations of ``prompt`` by ``model``; :meth:`step` until :attr:`done`."""

    def __init__(self, model: nn.Module, tokenizer: Any, prompt: list[int], sampling: Sampling,  # noqa: ANN401
                 end_ids: set[int]) -> None:
        self.model, self.tok, self.s, self.end_ids = model, tokenizer, sampling, end_ids
        self.prompt = prompt
        self.gen = torch.Generator().manual_seed(sampling.seed if sampling.seed is not None
                                                 else int(torch.randint(0, 2**62, (1,))))
        n = sampling.n
        self.tokens: list[list[int]] = [[] for _ in range(n)]
        self.text = [""] * n  # text released so far per row
        self.finish: list[str | None] = [None] * n
        self._cache: Any = None
        self._logits: torch.Tensor | None = None
        self._hold = max((len(x) for x in sampling.stop), default=1) - 1
        self.generated = 0  # tokens sampled, end tokens included (usage's completion_tokens)

    @property
    def done(self) -> bool:
        return all(f is not None for f in self.finish)

    @property
    def completion_tokens(self) -> int:
        return self.generated

    @torch.inference_mode()
    def step(self) -> list[TokenOut]:
        """One token for every unfinished row (the first call also runs the prompt)."""
        device = next(self.model.parameters()).device
        if self._logits is None:
            ids = torch.tensor([self.prompt] * self.s.n, device=device)
            out = self.model(input_ids=ids, use_cache=True)
            self._cache, self._logits = cache_of(out), out.logits[:, -1]
        logits = self._logits
        nxt = _sample(logits, self.s, self.gen)
        logp = logits.float().log_softmax(-1)
        events = []
        for i in range(self.s.n):
            if self.finish[i] is not None:
                continue
            t = int(nxt[i])
            top = []
            if self.s.top_logprobs:
                vals, idx = logp[i].topk(self.s.top_logprobs)
                top = [(self.tok.decode([int(j)]), float(v)) for v, j in zip(vals, idx)]
            events.append(self._advance(i, t, float(logp[i, t]), top))
        if not self.done:
            out = self.model(input_ids=nxt.unsqueeze(1), cache=self._cache, use_cache=True)
            self._cache, self._logits = cache_of(out), out.logits[:, -1]
        return events

    def _advance(self, i: int, t: int, logprob: float, top: list[tuple[str, float]]) -> TokenOut:
        self.generated += 1
        piece = self.tok.decode([t])
        if t in self.end_ids:
            self.finish[i] = "stop"
            return TokenOut(i, piece, logprob, top, self._release(i, final=True), "stop")
        self.tokens[i].append(t)
        full = self.tok.decode(self.tokens[i], skip_special_tokens=True)
        cut = min((full.find(x) for x in self.s.stop if x in full), default=-1)
        if cut >= 0:
            self.finish[i] = "stop"
            return TokenOut(i, piece, logprob, top, self._release(i, final=True, full=full[:cut]), "stop")
        if len(self.tokens[i]) >= self.s.max_tokens:
            self.finish[i] = "length"
            return TokenOut(i, piece, logprob, top, self._release(i, final=True, full=full), "length")
        return TokenOut(i, piece, logprob, top, self._release(i, final=False, full=full))

    def _release(self, i: int, final: bool, full: str | None = None) -> str:
        """New text of row ``i``: all of it when ``final``, else what can no longer change."""
        if full is None:
            full = self.tok.decode(self.tokens[i], skip_special_tokens=True)
        if not final:
            if full.endswith("\ufffd"):  # a multi-byte character not complete yet
                full = full[:-1]
            full = full[: max(len(self.text[i]), len(full) - self._hold)]
        delta = full[len(self.text[i]):]
        self.text[i] += delta
        return delta


def end_ids(model: nn.Module, tokenizer: Any) -> set[int]:  # noqa: ANN401
    """Tokens that end a generation: the tokenizer's end of sequence and the generation config's."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    gc = getattr(model, "generation_config", None)
    eos = getattr(gc, "eos_token_id", None)
    ids |= set(eos) if isinstance(eos, (list, tuple)) else ({eos} if eos is not None else set())
    return {int(i) for i in ids}


def finite(x: float) -> float:
    """A log-probability JSON can carry (-inf becomes the most negative float)."""
    return x if math.isfinite(x) else -1e30
