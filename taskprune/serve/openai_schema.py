"""What an OpenAI-route request may hold, and every check of its values, made before any work.

OpenAI's limits where it has them (temperature in [0, 2], top_p in (0, 1], up to 4 stop strings, top_logprobs
0-20); fields this server does not implement are refused by name (400), except the neutral values clients send by
default (``frequency_penalty: 0``, ``presence_penalty: 0``).
"""

from __future__ import annotations

import json
import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .generate import Sampling
from .service import ServeError

ROLES = ("system", "developer", "user", "assistant")


class OpenAIError(ServeError):
    """A :class:`ServeError` that names the request field at fault (OpenAI's ``param``) and a ``code``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(status, message)
        self.param, self.code = param, code


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    kind = "rate_limit_error" if status == 429 else "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None


class Common(BaseModel):
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
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    user: str | None = None
    classify: bool | None = Field(None, description="taskprune: false for free generation with a task's model")
    task: str | None = Field(None, description="taskprune: with model 'base', classify this task with the dense base")

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class ChatRequest(Common):
    messages: list[Message]
    logprobs: bool = False
    top_logprobs: int | None = None


class CompletionRequest(Common):
    prompt: str | list[str]
    logprobs: int | None = None
    echo: bool = False


def check_sampling(req: Common, limit: int) -> Sampling:
    """The sampling settings, every value in range. ``max_tokens`` stays 0 when not given (the caller fills it
    in from the model's context once the prompt is known)."""
    if req.max_tokens is not None and req.max_completion_tokens is not None:
        raise OpenAIError(400, "give max_tokens or max_completion_tokens, not both", "max_tokens")
    name = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    max_tokens = getattr(req, name)
    if max_tokens is not None and not 1 <= max_tokens <= limit:
        raise OpenAIError(400, f"{name} must be between 1 and {limit}, got {max_tokens}", name)
    if math.isnan(req.temperature) or not 0 <= req.temperature <= 2:
        raise OpenAIError(400, f"temperature must be between 0 and 2, got {req.temperature}", "temperature")
    if math.isnan(req.top_p) or not 0 < req.top_p <= 1:
        raise OpenAIError(400, f"top_p must be in (0, 1], got {req.top_p}", "top_p")
    if not 1 <= req.n <= 8:
        raise OpenAIError(400, f"n must be between 1 and 8, got {req.n}", "n")
    for name_ in ("frequency_penalty", "presence_penalty"):
        if getattr(req, name_) != 0:
            raise OpenAIError(400, f"{name_} is not supported (only 0)", name_)
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > 4 or any(not s for s in stop):
        raise OpenAIError(400, "stop takes up to 4 non-empty strings", "stop")
    if isinstance(req, CompletionRequest) and req.echo:
        raise OpenAIError(400, "echo is not supported", "echo")
    return Sampling(max_tokens or 0, req.temperature, req.top_p, stop, req.seed, req.n)


def check_logprobs(req: Common) -> tuple[bool, int | None]:
    """(whether log-probabilities are wanted, how many alternatives per token)."""
    if isinstance(req, ChatRequest):
        if req.top_logprobs is not None and not 0 <= req.top_logprobs <= 20:
            raise OpenAIError(400, f"top_logprobs must be between 0 and 20, got {req.top_logprobs}", "top_logprobs")
        if req.top_logprobs is not None and not req.logprobs:
            raise OpenAIError(400, "top_logprobs needs logprobs: true", "top_logprobs")
        return req.logprobs, req.top_logprobs
    lp = req.logprobs  # type: ignore[attr-defined]
    if lp is not None and not 0 <= lp <= 5:
        raise OpenAIError(400, f"logprobs must be between 0 and 5, got {lp}", "logprobs")
    return lp is not None, lp


def text_of(content: str | list[dict[str, Any]] | None, where: str) -> str:
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


def messages_of(req: ChatRequest) -> list[dict[str, str]]:
    if not req.messages:
        raise OpenAIError(400, "messages is empty: send at least one message", "messages")
    out = []
    for i, m in enumerate(req.messages):
        if m.role not in ROLES:
            raise OpenAIError(400, f"messages[{i}].role {m.role!r} is not one of {', '.join(ROLES)}",
                              f"messages[{i}].role")
        out.append({"role": "system" if m.role == "developer" else m.role,
                    "content": text_of(m.content, f"messages[{i}]")})
    return out


def prompt_of(req: CompletionRequest) -> str:
    prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
    if len(prompts) != 1:
        raise OpenAIError(400, "send one prompt per request", "prompt")
    return prompts[0]


def task_input(columns: tuple[str, ...], task: str, text: str) -> str | dict[str, Any]:
    """A one-column task reads the text; a task of several columns reads a JSON object naming them."""
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
