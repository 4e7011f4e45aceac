"""OpenAI-compatible routes: ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions``.

Model ids: each task with a plan (its sub-network cut from the base), and ``base`` (the dense base model).

- Classification (the default for a task id): the last user message (chat) or the prompt (completions) is the
  task's input — a string for a one-column task, a JSON object naming the columns for a task that reads several —
  rendered in the task's prompt exactly as evaluation does; the answer is the task's label word of highest
  probability (rank classification over the label words, the same batched call as ``/v1/predict``), every label
  word's log-probability in ``logprobs``. ``temperature``, ``top_p`` and ``seed`` do not apply: the answer is the
  classifier's.
- Free generation: ``"classify": false`` in the body (``extra_body`` in the openai SDK), or model ``base`` without
  ``"task"``: the messages go through the tokenizer's chat template (completions: the prompt as it is) and the
  model generates with the KV cache (:mod:`.generate`), one token per call on the inference thread.
  Model ``base`` with ``"task": T`` classifies T with the dense base.

Errors are OpenAI's shape (:func:`.openai_schema.error_body`); every value is checked before any work, and the
prompt is run before a stream's headers go out, so its failures get their status too. A decoder-only base only: a
seq2seq base has no chat template or free-running decoder to speak this API with (its tasks stay on
``/v1/predict``), so these routes answer 404 there.
"""

from __future__ import annotations

import asyncio
import copy
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ..lm import model_kind
from ..tasks import Example
from . import openai_format as fmt
from .batcher import Batcher
from .generate import Decoding, Sampling, end_ids
from .openai_schema import (
    ChatRequest,
    Common,
    CompletionRequest,
    OpenAIError,
    check_logprobs,
    check_sampling,
    error_body,
    messages_of,
    prompt_of,
    task_input,
)
from .service import ServeError, TaskService, observed

BASE_ID = "base"
PATHS = ("/v1/models", "/v1/chat/completions", "/v1/completions")
__all__ = ["BASE_ID", "PATHS", "OpenAIError", "add_routes", "error_body", "is_openai_path"]


class Slots:
    """At most ``size`` generations at once; a slot is released once, whichever way its generation ends."""

    def __init__(self, size: int) -> None:
        self.size, self.used = size, 0

    def take(self) -> Slot:
        if self.used >= self.size:
            raise OpenAIError(429, f"{self.size} generations are running; retry shortly", None, "rate_limit")
        self.used += 1
        return Slot(self)


class Slot:
    def __init__(self, pool: Slots) -> None:
        self.pool, self.held = pool, True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.pool.used -= 1


class SlotStream(StreamingResponse):
    """A stream that frees its slot however it ends, even when it is cancelled before its body starts."""

    def __init__(self, body: AsyncIterator[str], slot: Slot) -> None:
        super().__init__(body, media_type="text/event-stream")
        self._body, self._slot = body, slot

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:  # noqa: ANN401
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._body.aclose()  # type: ignore[attr-defined]
            self._slot.release()


def add_routes(app: FastAPI, service: TaskService, executor: Executor, batcher: Batcher) -> None:
    """The OpenAI routes on ``app``; generations run one token per call on ``executor`` (the inference thread),
    at most ``service.limits.max_generations`` at once."""
    metrics, limits = service.metrics, service.limits
    slots = Slots(limits.max_generations)
    causal = not model_kind(service.base).has_encoder
    tok = copy.deepcopy(service.tok)  # the event loop's own: the inference thread's tokenizer is never shared
    app.state.generation_slots = slots

    def seq2seq_refusal() -> OpenAIError:
        return OpenAIError(404, "the OpenAI routes serve decoder-only bases; this base is seq2seq: use /v1/predict",
                           "model", "model_not_found")

    def resolve(req: Common) -> tuple[str | None, bool, bool]:
        """(task, dense, classify) of a request."""
        if not causal:
            raise seq2seq_refusal()
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

    async def classify(req: Common, chat: bool, task: str, dense: bool, text: str, top: int | None,
                       want_lp: bool) -> Any:  # noqa: ANN401
        try:
            texts = service.render(task, [task_input(service.task(task).columns, task, text)])
        except OpenAIError:
            raise
        except ServeError as err:  # OpenAI answers a request it cannot use with 400
            raise OpenAIError(400 if err.status == 422 else err.status, err.message, "messages") from None
        service.check_servable(task, dense)
        try:
            pred = (await asyncio.wait_for(batcher.submit(task, texts, dense), limits.timeout_s))[0]
        except TimeoutError:
            raise OpenAIError(504, f"no answer within {limits.timeout_s:g} s") from None
        n_prompt = len(model_kind(service.base).prompt_ids(tok, Example(texts[0], 0), limits.max_length))
        n_label = len(tok(pred.label, add_special_tokens=False)["input_ids"])
        lp = fmt.label_logprobs(chat, pred.label, pred.scores, top) if want_lp else None
        body = {"id": _id(chat), "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                "model": req.model, "choices": [fmt.choice(chat, i, pred.label, lp, "stop", delta=False)
                                                for i in range(req.n)],
                "usage": fmt.usage(n_prompt, n_label * req.n)}
        if req.stream:
            return StreamingResponse(fmt.replay(body, chat, req.include_usage), media_type="text/event-stream")
        return JSONResponse(body)

    async def generate(req: Common, chat: bool, task: str | None, dense: bool, prompt: list[int],
                       sampling: Sampling, want_lp: bool, top: int | None) -> Any:  # noqa: ANN401
        sampling.top_logprobs = (top or 0) if want_lp else 0
        slot = slots.take()
        try:
            loop = asyncio.get_running_loop()
            model = service.base
            if task is not None:
                service.check_servable(task, dense)
                model = await loop.run_in_executor(executor, service.model_for, task, dense)
            context = getattr(model.config, "max_position_embeddings", None) or len(prompt) + limits.max_tokens
            if not sampling.max_tokens:  # not given: as many as the context leaves, up to the server's limit
                sampling.max_tokens = max(0, min(limits.max_tokens, context - len(prompt)))
            if sampling.max_tokens < 1 or len(prompt) + sampling.max_tokens > context:
                raise OpenAIError(400, f"the prompt ({len(prompt)} tokens) and max_tokens ({sampling.max_tokens}) "
                                       f"exceed the model's context of {context} tokens", "max_tokens")
            decoding = Decoding(model, service.tok, prompt, sampling, end_ids(model, service.tok))
            first = await loop.run_in_executor(executor, decoding.step)  # the prompt: its errors get a status
        except BaseException:
            slot.release()
            raise
        chunks = stream(decoding, first, chat, want_lp, req.model, len(prompt), task or BASE_ID,
                        usage=req.include_usage or not req.stream)
        if req.stream:
            return SlotStream(chunks, slot)
        try:
            body = await fmt.collect(chunks, chat)
        finally:
            slot.release()
        if "error" in body:
            raise OpenAIError(500, body["error"]["message"])
        return JSONResponse(body)

    async def stream(decoding: Decoding, first: list, chat: bool, want_lp: bool, model_id: str, n_prompt: int,
                     label: str, usage: bool) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        head = {"id": _id(chat), "object": "chat.completion.chunk" if chat else "text_completion",
                "created": int(time.time()), "model": model_id}
        if chat:
            for i in range(decoding.s.n):
                yield fmt.sse({**head, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                    "logprobs": None, "finish_reason": None}]})
        events = first
        while True:
            metrics.generated_tokens.labels(label).inc(len(events))
            for e in events:
                yield fmt.sse({**head, "choices": [fmt.token_choice(chat, e, want_lp)]})
            if decoding.done:
                break
            try:
                events = await loop.run_in_executor(executor, decoding.step)
            except Exception as err:  # noqa: BLE001 - after the headers: the error goes in the stream, as OpenAI's
                yield fmt.sse(error_body(500, f"generation failed: {type(err).__name__}: {err}"[:500]))
                return
        if usage:
            yield fmt.sse({**head, "choices": [], "usage": fmt.usage(n_prompt, decoding.completion_tokens)})
        yield fmt.DONE

    async def respond(route: str, req: Common, chat: bool) -> Any:  # noqa: ANN401
        task = None

        def done(status: int, seconds: float) -> None:
            metrics.openai_requests.labels(route, task or BASE_ID, str(status)).inc()
            if status == 200:
                metrics.openai_latency.labels(route).observe(seconds)

        with observed(done):
            sampling = check_sampling(req, limits.max_tokens)  # every value, before any work
            want_lp, top = check_logprobs(req)
            messages = messages_of(req) if chat else None  # type: ignore[arg-type]
            text = None if chat else prompt_of(req)  # type: ignore[arg-type]
            task, dense, do_classify = resolve(req)
            if do_classify:
                if chat:
                    users = [m for m in messages if m["role"] == "user"]
                    if not users:
                        raise OpenAIError(400, "classification reads the last user message; there is none", "messages")
                    text = users[-1]["content"]
                return await classify(req, chat, task, dense, text, top, want_lp)
            if chat:
                if not getattr(tok, "chat_template", None):
                    raise OpenAIError(400, "this model's tokenizer has no chat template: use /v1/completions",
                                      "messages")
                prompt = list(tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                                      return_dict=False))
            else:
                prompt = list(tok(text)["input_ids"])
            return await generate(req, chat, task, dense, prompt, sampling, want_lp, top)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        if not causal:
            raise seq2seq_refusal()
        now = int(time.time())
        return {"object": "list", "data": [{"id": i, "object": "model", "created": now, "owned_by": "taskprune",
                                            "root": service.model_name} for i in [*sorted(service.plans), BASE_ID]]}

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest) -> Any:  # noqa: ANN401
        return await respond("chat", req, chat=True)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest) -> Any:  # noqa: ANN401
        return await respond("completions", req, chat=False)


def _id(chat: bool) -> str:
    return f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"


def is_openai_path(request: Request) -> bool:
    return request.url.path in PATHS
