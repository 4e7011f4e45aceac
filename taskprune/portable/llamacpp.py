"""llama.cpp as an evaluation backend: accuracy measured in the runtime the user deploys (a GGUF file).

The prompts are taskprune's own (:meth:`taskprune.lm.kinds.CausalKind.prompt_ids`: the task's causal template in
the tokenizer's chat template), tokenised by the Hugging Face tokenizer and fed to llama.cpp as token ids, so
torch and llama.cpp read the same tokens. Rank classification is the same as in torch: the prompt is evaluated
ONCE, then each candidate label continuation on its KV cache (truncated back to the prompt before the next),
and log P(candidate | prompt) summed from llama.cpp's logits.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TaskpruneError
from ..evaluate import EvalResult
from ..lm import KINDS
from ..scoring.base import Progress, no_progress
from ..tasks import Example, Task, compute_metrics
from .gguf import llama_cpp


def _log_softmax(row: np.ndarray) -> np.ndarray:
    row = row.astype(np.float64)
    return row - (np.log(np.exp(row - row.max()).sum()) + row.max())


class LlamaCppModel:
    """A GGUF file loaded by llama.cpp.

    With ``all_logits`` every position's logits are computed and kept (``logits_all``: needed only by
    :meth:`logits`); without it llama.cpp computes the output layer for the last position of each ``eval`` only,
    which is all rank classification and greedy decoding read (the output matmul over the whole prompt was most
    of the time of a classification prompt).
    """

    def __init__(self, path: str | Path, n_ctx: int = 1024, threads: int | None = None,
                 f32_cache: bool = False, all_logits: bool = False) -> None:
        self._lib = llama_cpp()
        self.all_logits = all_logits
        kw: dict[str, Any] = {"type_k": 0, "type_v": 0} if f32_cache else {}  # GGML_TYPE_F32 KV cache: exact parity
        try:
            self.llm = self._lib.Llama(model_path=str(path), logits_all=all_logits, n_ctx=n_ctx, n_threads=threads,
                                       n_threads_batch=threads, verbose=False, **kw)
        except ValueError as err:
            raise TaskpruneError(f"llama.cpp cannot load {path}: {err}") from None

    def logits(self, ids: list[int]) -> np.ndarray:
        """[len(ids), vocab] logits of a fresh sequence (needs ``all_logits``)."""
        if not self.all_logits:
            raise ValueError("LlamaCppModel.logits needs all_logits=True")
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids)])

    def _eval_last(self, ids: list[int]) -> np.ndarray:
        """Evaluate ``ids`` after the cache; the logits of the last of them."""
        self.llm.eval(ids)
        if self.all_logits:
            return np.array(self.llm.scores[self.llm.n_tokens - 1])
        row = self._lib.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(row, shape=(self.llm.n_vocab(),)).copy()

    def rank_scores(self, prompt: list[int], targets: list[list[int]]) -> list[float]:
        """log P(target | prompt) of each candidate; the prompt is evaluated once."""
        self.llm.reset()
        last = self._eval_last(prompt)
        n = self.llm.n_tokens
        out = []
        for target in targets:
            self.llm.n_tokens = n  # eval() drops the KV cache from here on: the next candidate reuses the prompt's
            rows = [last] + [self._eval_last([t]) for t in target[:-1]]
            out.append(float(sum(_log_softmax(r)[t] for r, t in zip(rows, target))))
        return out

    def greedy(self, prompt: list[int], n: int, stop: int | None = None) -> list[int]:
        """Up to ``n`` greedy tokens after ``prompt`` (ending at ``stop``, which is not returned)."""
        self.llm.reset()
        row = self._eval_last(prompt)
        out: list[int] = []
        for _ in range(n):
            token = int(np.argmax(row))
            if token == stop:
                break
            out.append(token)
            row = self._eval_last([token])
        return out


def evaluate_gguf(path: str | Path, tokenizer: Any, task: Task, examples: list[Example], *,
                  max_length: int = 256, threads: int | None = None, f32_cache: bool = False,
                  generate: bool = False, progress: Progress = no_progress) -> EvalResult:
    """The task's metrics by rank classification on llama.cpp's logits (see the module docstring), or with
    ``generate`` by greedy generation (an output that is no label word counts as wrong), as in torch."""
    if not examples:
        raise TaskpruneError(f"no examples to evaluate task {task.name} on")
    kind = KINDS["causal"]
    labels = kind.label_space(tokenizer, task)
    targets = [list(t) for t in labels.targets]
    model = LlamaCppModel(path, n_ctx=max_length + max(len(t) for t in targets) + 8, threads=threads,
                          f32_cache=f32_cache)
    t0 = time.perf_counter()
    preds = []
    words = {tokenizer.decode(t[:n], skip_special_tokens=True).strip().lower(): c
             for c, (t, n) in enumerate(zip(labels.targets, labels.n_pieces))}
    for example in progress(examples, f"eval {task.name} (llama.cpp)", len(examples)):
        prompt = kind.prompt_ids(tokenizer, example, max_length)
        if generate:
            out = model.greedy(prompt, max(len(t) for t in targets) + 1, stop=targets[0][-1])
            preds.append(words.get(tokenizer.decode(out, skip_special_tokens=True).strip().lower(), -1))
        else:
            preds.append(int(np.argmax(model.rank_scores(prompt, targets))))
    metrics = compute_metrics(task, preds, [e.label for e in examples])
    return EvalResult(metrics, len(examples), time.perf_counter() - t0, preds)
