"""The OpenAI response shapes: chunks, choices, log-probabilities, usage; a whole response from a stream's chunks.

Chat and completions differ in their shapes only (``delta.content`` vs ``text``; ``logprobs.content`` entries vs
the legacy ``tokens`` / ``token_logprobs`` / ``top_logprobs`` lists), so one generation loop serves both and the
non-streaming answer is the stream's chunks put together (:func:`collect`).
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from typing import Any

from .generate import TokenOut, finite


def sse(obj: Any) -> str:  # noqa: ANN401
    return f"data: {json.dumps(obj)}\n\n"


DONE = "data: [DONE]\n\n"


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _entry(token: str, logprob: float, top: list[tuple[str, float]]) -> dict[str, Any]:
    return {"token": token, "logprob": finite(logprob), "bytes": list(token.encode()),
            "top_logprobs": [{"token": t, "logprob": finite(v), "bytes": list(t.encode())} for t, v in top]}


def logprobs(chat: bool, token: str, logprob: float, top: list[tuple[str, float]]) -> dict[str, Any]:
    """One token's log-probability (and its alternatives) in the route's shape."""
    if chat:
        return {"content": [_entry(token, logprob, top)]}
    return {"tokens": [token], "token_logprobs": [finite(logprob)], "top_logprobs": [{t: finite(v) for t, v in top}],
            "text_offset": [0]}


def label_logprobs(chat: bool, label: str, scores: dict[str, float], top: int | None) -> dict[str, Any]:
    """A classification's answer among the label words, and the label words' (all, or the ``top`` best)."""
    def lp(p: float) -> float:
        return math.log(p) if p > 0 else -math.inf

    alts = sorted(scores.items(), key=lambda kv: -kv[1])[: top if top is not None else None]
    return logprobs(chat, label, lp(scores[label]), [(w, lp(p)) for w, p in alts])


def choice(chat: bool, index: int, text: str, lp: dict[str, Any] | None, finish: str | None,
           delta: bool) -> dict[str, Any]:
    if not chat:
        return {"index": index, "text": text, "logprobs": lp, "finish_reason": finish}
    body = ({"content": text} if text else {}) if delta else {"role": "assistant", "content": text}
    return {"index": index, "delta" if delta else "message": body, "logprobs": lp, "finish_reason": finish}


def token_choice(chat: bool, e: TokenOut, want_lp: bool) -> dict[str, Any]:
    return choice(chat, e.index, e.text, logprobs(chat, e.token, e.logprob, e.top) if want_lp else None,
                  e.finish_reason, delta=True)


async def collect(chunks: AsyncIterator[str], chat: bool) -> dict[str, Any]:
    """The whole response from a stream's chunks (one code path for both); closes the stream."""
    choices: dict[int, dict[str, Any]] = {}
    head: dict[str, Any] = {}
    try:
        async for line in chunks:
            if line == DONE:
                break
            chunk = json.loads(line[len("data: "):])
            if "error" in chunk:
                return chunk
            head = head or {k: chunk[k] for k in ("id", "created", "model")}
            if chunk.get("usage"):
                head["usage"] = chunk["usage"]
            for c in chunk["choices"]:
                slot = choices.setdefault(c["index"], {"text": "", "lp": [], "finish": None})
                slot["text"] += ((c.get("delta") or {}).get("content") or "") if chat else (c.get("text") or "")
                if c.get("logprobs"):
                    slot["lp"].append(c["logprobs"])
                slot["finish"] = c.get("finish_reason") or slot["finish"]
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
    out = []
    for i in sorted(choices):
        c = choices[i]
        lp = None
        if c["lp"] and chat:
            lp = {"content": [t for x in c["lp"] for t in x["content"]]}
        elif c["lp"]:
            lp = {k: [t for x in c["lp"] for t in x[k]] for k in ("tokens", "token_logprobs", "top_logprobs")}
        out.append(choice(chat, i, c["text"], lp, c["finish"], delta=False))
    return {**head, "object": "chat.completion" if chat else "text_completion", "choices": out}


async def replay(body: dict[str, Any], chat: bool, include_usage: bool) -> AsyncIterator[str]:
    """A classification answer as a stream: (chat: the role first) the label, the finish reason, [DONE]."""
    head = {k: body[k] for k in ("id", "created", "model")}
    obj = "chat.completion.chunk" if chat else "text_completion"
    for c in body["choices"]:
        if chat:
            yield sse({**head, "object": obj, "choices": [choice(chat, c["index"], "", None, None, True)
                                                         | {"delta": {"role": "assistant", "content": ""}}]})
            yield sse({**head, "object": obj, "choices": [choice(chat, c["index"], c["message"]["content"],
                                                                 c["logprobs"], None, True)]})
            yield sse({**head, "object": obj, "choices": [choice(chat, c["index"], "", None, "stop", True)]})
        else:
            yield sse({**head, "object": obj, "choices": [c]})
    if include_usage:
        yield sse({**head, "object": obj, "choices": [], "usage": body["usage"]})
    yield DONE
