"""OpenAI-compatible routes: ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions``.

Model ids: each task with a plan (its sub-network cut from the base), and ``base`` (the dense base model).

- Classification (the default for a task id): the last user message (chat) or the prompt (completions) is the
  task's input — a string for a one-column task, a JSON object naming the columns for a task that reads several
  (``{"premise": ..., "hypothesis": ...}``) — rendered in the task's prompt exactly as evaluation does; the answer
  is the task's label word of highest probability (rank classification over the label words, the same batched
  call as ``/v1/predict``), with every label word's log-probability in ``logprobs``. ``temperature``, ``top_p``
  and ``seed`` do not apply: the answer is the classifier's, deterministic.
- Free generation: ``"classify": false`` in the body (``extra_body`` in the openai SDK), or model ``base`` without
  ``"task"``: the messages go through the tokenizer's chat template (completions: the prompt as it is) and the
  sub-network generates with the KV cache, sampling at ``temperature``/``top_p`` with ``seed``, ``n`` choices,
  ``stop`` strings, ``max_tokens``. Model ``base`` with ``"task": T`` classifies T with the dense base.

Errors are OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``; every value is checked before any
work. A decoder-only base only: a seq2seq base has no chat template or free-running decoder to speak this API with
(its tasks stay on ``/v1/predict``), so these routes answer 404 there.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ..lm import model_kind
from ..tasks import Example
from .batcher import Batcher
from .generate import Decoding, Sampling, end_ids, finite
from .service import ServeError, TaskService

BASE_ID = "base"
ROLES = ("system", "developer", "user", "assistant")
PATHS = ("/v1/models", "/v1/chat/completions", "/v1/completions")


class OpenAIError(ServeError):
    """A :class:`ServeError` that names the request field at fault (OpenAI's ``param``) and a ``code``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(status, message)
        self.param, self.code = param, code


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    kind = {400: "invalid_request_error", 404: "invalid_request_error", 409: "invalid_request_error",
            413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error"}.get(status, "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    user: str | None = None
    classify: bool | None = Field(None, description="taskprune: false for free generation with a task's model")
    task: str | None = Field(None, description="taskprune: with model 'base', classify this task with the dense base")


class ChatRequest(_Common):
    messages: list[Message]
    logprobs: bool = False
    top_logprobs: int | None = None


class CompletionRequest(_Common):
    prompt: str | list[str]
    logprobs: int | None = None
    echo: bool = False


def _check(req: _Common, limit: int) -> tuple[Sampling, list[str]]:
    """Every value's range, before any work: OpenAI's limits where it has them."""
    if req.max_tokens is not None and req.max_completion_tokens is not None:
        raise OpenAIError(400, "give max_tokens or max_completion_tokens, not both", "max_tokens")
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    name = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    if max_tokens is not None and not 1 <= max_tokens <= limit:
        raise OpenAIError(400, f"{name} must be between 1 and {limit}, got {max_tokens}", name)
    if not (0 <= req.temperature <= 2) or math.isnan(req.temperature):
        raise OpenAIError(400, f"temperature must be between 0 and 2, got {req.temperature}", "temperature")
    if not (0 < req.top_p <= 1):
        raise OpenAIError(400, f"top_p must be in (0, 1], got {req.top_p}", "top_p")
    if not 1 <= req.n <= 8:
        raise OpenAIError(400, f"n must be between 1 and 8, got {req.n}", "n")
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > 4 or any(not s for s in stop):
        raise OpenAIError(400, "stop takes up to 4 non-empty strings", "stop")
    default = 16 if isinstance(req, CompletionRequest) else min(256, limit)
    return Sampling(max_tokens or default, req.temperature, req.top_p, stop, req.seed, req.n), stop


def _text(content: str | list[dict[str, Any]] | None, where: str) -> str:
    if isinstance(content, str):
        return content
    if content is None:
        raise OpenAIError(400, f"{where}.content is missing", f"{where}.content")
    parts = []
    for j, part in enumerate(content):
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise OpenAIError(400, f"{where}.content[{j}] is a {part.get('type')!r} part; only text parts are "
                                   "supported", f"{where}.content")
        parts.append(part["text"])
    return "".join(parts)


def _messages(req: ChatRequest) -> list[dict[str, str]]:
    if not req.messages:
        raise OpenAIError(400, "messages is empty: send at least one message", "messages")
    out = []
    for i, m in enumerate(req.messages):
        if m.role not in ROLES:
            raise OpenAIError(400, f"messages[{i}].role {m.role!r} is not one of {', '.join(ROLES)}",
                              f"messages[{i}].role")
        out.append({"role": "system" if m.role == "developer" else m.role,
                    "content": _text(m.content, f"messages[{i}]")})
    return out


def _task_input(service: TaskService, task: str, text: str) -> str | dict[str, Any]:
    """A one-column task reads the text; a task of several columns reads a JSON object naming them."""
    columns = service.task(task).columns
    if len(columns) == 1:
        return text
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        obj = None
    if not isinstance(obj, dict):
        raise OpenAIError(400, f"task {task!r} reads columns {list(columns)}: send the input as a JSON object "
                               "naming each of them", "messages")
    return obj


def add_routes(app: FastAPI, service: TaskService, executor: Executor, batcher: Batcher, max_tokens: int = 512,
               max_generations: int = 4) -> None:
    """The OpenAI routes on ``app``; generations run one token at a time on ``executor`` (the inference thread),
    at most ``max_generations`` at once (429 beyond: a slot is freed when a generation ends or its client goes)."""
    metrics = service.metrics
    slots = {"used": 0}
    causal = not model_kind(service.base).has_encoder
    model_name = getattr(service, "model_name", "model")

    def resolve(req: _Common) -> tuple[str | None, bool, bool]:
        """(task, dense, classify) of a request."""
        if not causal:
            raise OpenAIError(404, "the OpenAI routes serve decoder-only bases; this base is seq2seq: use "
                                   "/v1/predict", "model", "model_not_found")
        if req.model == BASE_ID:
            if req.task is not None:
                if not service.known(req.task):
                    raise OpenAIError(404, f"unknown task {req.task!r}", "task")
                return service.canonical(req.task), True, req.classify is not False
            if req.classify:
                raise OpenAIError(400, 'model "base" classifies only with "task": give the task', "classify")
            return None, True, False
        if req.task is not None:
            raise OpenAIError(400, '"task" goes with model "base"; a task id as model already names its task', "task")
        if not service.known(req.model) or service.canonical(req.model) not in service.plans:
            raise OpenAIError(404, f"the model {req.model!r} does not exist; models: "
                                   f"{', '.join([*sorted(service.plans), BASE_ID])}", "model", "model_not_found")
        return service.canonical(req.model), False, req.classify is not False

    def usage(prompt: int, completion: int) -> dict[str, int]:
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    async def classify(task: str, dense: bool, text: str) -> tuple[Any, int]:
        texts = service.render(task, [_task_input(service, task, text)])
        service.check_servable(task, dense)
        try:
            pred = (await asyncio.wait_for(batcher.submit(task, texts, dense), service.limits.timeout_s))[0]
        except TimeoutError:
            raise OpenAIError(504, f"no answer within {service.limits.timeout_s:g} s") from None
        kind = model_kind(service.base)
        n_prompt = len(kind.prompt_ids(service.tok, Example(texts[0], 0), service.limits.max_length))
        return pred, n_prompt

    def label_logprobs(pred: Any, top: int | None) -> list[dict[str, Any]]:  # noqa: ANN401
        """The answer's log-probability among the label words, and the label words' (all, or the ``top`` best)."""
        def lp(p: float) -> float:
            return finite(math.log(p) if p > 0 else -math.inf)

        alts = sorted(pred.scores.items(), key=lambda kv: -kv[1])[: top if top is not None else None]
        return [{"token": pred.label, "logprob": lp(pred.scores[pred.label]), "bytes": list(pred.label.encode()),
                 "top_logprobs": [{"token": w, "logprob": lp(p), "bytes": list(w.encode())} for w, p in alts]}]

    def acquire() -> None:
        if slots["used"] >= max_generations:
            raise OpenAIError(429, f"{max_generations} generations are running; retry shortly", None, "rate_limit")
        slots["used"] += 1

    def release() -> None:
        slots["used"] -= 1

    async def start(task: str | None, dense: bool, prompt: list[int], sampling: Sampling) -> Decoding:
        loop = asyncio.get_running_loop()
        if task is None:
            model = service.base
        else:
            service.check_servable(task, dense)
            model = await loop.run_in_executor(executor, service.model_for, task, dense)
        limit = getattr(model.config, "max_position_embeddings", None)
        if limit is not None and len(prompt) + sampling.max_tokens > limit:
            raise OpenAIError(400, f"the prompt ({len(prompt)} tokens) and max_tokens ({sampling.max_tokens}) "
                                   f"exceed the model's context of {limit} tokens", "max_tokens")
        return Decoding(model, service.tok, prompt, sampling, end_ids(model, service.tok))

    def chat_prompt(messages: list[dict[str, str]]) -> list[int]:
        tok = service.tok
        if not getattr(tok, "chat_template", None):
            raise OpenAIError(400, "this model's tokenizer has no chat template: use /v1/completions", "messages")
        return list(tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False))

    def sse(obj: Any) -> str:  # noqa: ANN401
        return f"data: {json.dumps(obj)}\n\n"

    def route_metrics(route: str, task: str | None, status: int, t0: float) -> None:
        metrics.openai_requests.labels(route, task or BASE_ID, str(status)).inc()
        if status == 200:
            metrics.openai_latency.labels(route).observe(time.perf_counter() - t0)

    async def respond(route: str, req: _Common, chat: bool) -> Any:  # noqa: ANN401
        t0, task, status = time.perf_counter(), None, 200
        try:
            sampling, _ = _check(req, max_tokens)
            task, dense, do_classify = resolve(req)
            rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
            created, model_id = int(time.time()), req.model
            if chat:
                messages = _messages(req)  # type: ignore[arg-type]
                want_lp, top = req.logprobs, req.top_logprobs  # type: ignore[attr-defined]
                if top is not None and not (0 <= top <= 20):
                    raise OpenAIError(400, f"top_logprobs must be between 0 and 20, got {top}", "top_logprobs")
                if top is not None and not want_lp:
                    raise OpenAIError(400, "top_logprobs needs logprobs: true", "top_logprobs")
            else:
                prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)  # type: ignore[attr-defined]
                if len(prompts) != 1:
                    raise OpenAIError(400, "send one prompt per request", "prompt")
                lp = req.logprobs  # type: ignore[attr-defined]
                if lp is not None and not (0 <= lp <= 5):
                    raise OpenAIError(400, f"logprobs must be between 0 and 5, got {lp}", "logprobs")
                want_lp, top = lp is not None, lp
            if do_classify:
                if chat:
                    users = [m for m in messages if m["role"] == "user"]
                    if not users:
                        raise OpenAIError(400, "classification reads the last user message; there is none", "messages")
                    text = users[-1]["content"]
                else:
                    text = prompts[0]
                pred, n_prompt = await classify(task, dense, text)  # type: ignore[arg-type]
                n_label = len(service.tok(pred.label, add_special_tokens=False)["input_ids"])
                lps = label_logprobs(pred, top) if want_lp else None
                if chat:
                    choices = [{"index": i, "message": {"role": "assistant", "content": pred.label},
                                "logprobs": {"content": lps} if lps else None, "finish_reason": "stop"}
                               for i in range(req.n)]
                else:
                    choices = [{"index": i, "text": pred.label, "finish_reason": "stop",
                                "logprobs": ({"tokens": [pred.label], "token_logprobs": [lps[0]["logprob"]],
                                              "top_logprobs": [{t["token"]: t["logprob"] for t in lps[0]["top_logprobs"]}],
                                              "text_offset": [0]} if lps else None)} for i in range(req.n)]
                body = {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
                        "model": model_id, "choices": choices, "usage": usage(n_prompt, n_label * req.n)}
                if not req.stream:
                    return JSONResponse(body)
                return StreamingResponse(_replay(body, chat), media_type="text/event-stream")
            prompt = chat_prompt(messages) if chat else list(service.tok(prompts[0])["input_ids"])
            sampling.top_logprobs = (top or 0) if want_lp else 0
            acquire()
            try:
                decoding = await start(task, dense, prompt, sampling)
            except BaseException:
                release()
                raise
            gen = _generate(decoding, executor, chat, want_lp, rid, created, model_id, len(prompt), release, metrics,
                            task or BASE_ID)
            if req.stream:
                return StreamingResponse(gen, media_type="text/event-stream")
            return JSONResponse(await _collect(gen, chat))
        except ServeError as err:
            status = err.status
            raise
        except Exception:
            status = 500
            raise
        finally:
            route_metrics(route, task, status, t0)

    async def _replay(body: dict[str, Any], chat: bool) -> AsyncIterator[str]:
        """A classification answer as a stream: the role, the label, the finish reason, then [DONE]."""
        base = {k: body[k] for k in ("id", "created", "model")}
        obj = "chat.completion.chunk" if chat else "text_completion"
        for c in body["choices"]:
            if chat:
                yield sse({**base, "object": obj, "choices": [{"index": c["index"], "delta": {"role": "assistant"},
                                                             "finish_reason": None}]})
                yield sse({**base, "object": obj, "choices": [{"index": c["index"], "delta": {"content":
                          c["message"]["content"]}, "logprobs": c["logprobs"], "finish_reason": None}]})
                yield sse({**base, "object": obj, "choices": [{"index": c["index"], "delta": {},
                                                             "finish_reason": "stop"}]})
            else:
                yield sse({**base, "object": obj, "choices": [{**c}]})
        yield "data: [DONE]\n\n"

    async def _generate(decoding: Decoding, executor: Executor, chat: bool, want_lp: bool, rid: str, created: int,
                        model_id: str, n_prompt: int, on_end: Any, metrics: Any, label: str) -> AsyncIterator[str]:  # noqa: ANN401
        loop = asyncio.get_running_loop()
        obj = "chat.completion.chunk" if chat else "text_completion"
        try:
            if chat:
                for i in range(decoding.s.n):
                    yield sse({"id": rid, "object": obj, "created": created, "model": model_id,
                               "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                            "finish_reason": None}]})
            while not decoding.done:
                events = await loop.run_in_executor(executor, decoding.step)
                metrics.generated_tokens.labels(label).inc(len(events))
                for e in events:
                    lp = None
                    if want_lp:
                        lp = ({"content": [{"token": e.token, "logprob": finite(e.logprob), "bytes": list(e.token.encode()),
                                            "top_logprobs": [{"token": t, "logprob": finite(v), "bytes": list(t.encode())}
                                                             for t, v in e.top]}]} if chat else
                              {"tokens": [e.token], "token_logprobs": [finite(e.logprob)],
                               "top_logprobs": [{t: finite(v) for t, v in e.top}]})
                    choice = ({"index": e.index, "delta": {"content": e.text} if e.text else {}, "logprobs": lp,
                               "finish_reason": e.finish_reason} if chat else
                              {"index": e.index, "text": e.text, "logprobs": lp, "finish_reason": e.finish_reason})
                    yield sse({"id": rid, "object": obj, "created": created, "model": model_id, "choices": [choice]})
            yield sse({"id": rid, "object": obj, "created": created, "model": model_id, "choices": [],
                       "usage": usage(n_prompt, decoding.completion_tokens)})
            yield "data: [DONE]\n\n"
        finally:  # also when the client went away (the stream is closed): the slot is free for the next
            on_end()

    async def _collect(gen: AsyncIterator[str], chat: bool) -> dict[str, Any]:
        """A whole response from the stream's chunks (one code path for both)."""
        choices: dict[int, dict[str, Any]] = {}
        head: dict[str, Any] = {}
        async for line in gen:
            if line.startswith("data: [DONE]"):
                break
            chunk = json.loads(line[6:])
            head = head or {k: chunk[k] for k in ("id", "created", "model")}
            if "usage" in chunk:
                head["usage"] = chunk["usage"]
            for c in chunk["choices"]:
                slot = choices.setdefault(c["index"], {"index": c["index"], "text": "", "lp": [], "finish_reason": None})
                slot["text"] += (c.get("delta") or {}).get("content") or "" if chat else c.get("text") or ""
                if c.get("logprobs"):
                    slot["lp"].append(c["logprobs"])
                slot["finish_reason"] = c.get("finish_reason") or slot["finish_reason"]
        out = []
        for i in sorted(choices):
            c = choices[i]
            if chat:
                lp = {"content": [t for x in c["lp"] for t in x["content"]]} if c["lp"] else None
                out.append({"index": i, "message": {"role": "assistant", "content": c["text"]}, "logprobs": lp,
                            "finish_reason": c["finish_reason"]})
            else:
                lp = ({"tokens": [t for x in c["lp"] for t in x["tokens"]],
                       "token_logprobs": [t for x in c["lp"] for t in x["token_logprobs"]],
                       "top_logprobs": [t for x in c["lp"] for t in x["top_logprobs"]]} if c["lp"] else None)
                out.append({"index": i, "text": c["text"], "logprobs": lp, "finish_reason": c["finish_reason"]})
        return {**head, "object": "chat.completion" if chat else "text_completion", "choices": out}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        if not causal:
            raise OpenAIError(404, "the OpenAI routes serve decoder-only bases; this base is seq2seq: use /v1/predict")
        now = int(time.time())
        ids = [*sorted(service.plans), BASE_ID]
        return {"object": "list", "data": [{"id": i, "object": "model", "created": now, "owned_by": "taskprune",
                                            "root": model_name} for i in ids]}

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest) -> Any:  # noqa: ANN401
        return await respond("chat", req, chat=True)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest) -> Any:  # noqa: ANN401
        return await respond("completions", req, chat=False)


def is_openai_path(request: Request) -> bool:
    return request.url.path in PATHS
