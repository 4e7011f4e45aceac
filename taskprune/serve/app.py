"""The HTTP layer: FastAPI routes over a :class:`TaskService`; every error is ``{"error": "<one message>"}``, on the
OpenAI routes (:mod:`.openai`) OpenAI's ``{"error": {"message", "type", "param", "code"}}``.

Routes: ``POST /v1/predict``, ``GET /v1/tasks``, ``POST /v1/plans/{task}`` (``?replace=true`` to replace; a plan,
or ``{"plan": ..., "repair": <base64 of repair.safetensors>}``), ``DELETE /v1/plans/{task}``, ``GET /healthz``,
``GET /metrics`` (Prometheus text), ``/docs`` (OpenAPI); ``GET /v1/models``, ``POST /v1/chat/completions``,
``POST /v1/completions``.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Body, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from . import openai
from .batcher import Batcher
from .service import ServeError, TaskService, observed


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task: str = Field(description="task name, e.g. sst2")
    inputs: list[str | dict[str, str]] = Field(min_length=1, description="strings for one-column tasks, or "
                                               "objects naming the task's columns, e.g. {premise, hypothesis}")
    dense: bool = Field(False, description="serve with the dense base model instead of the task's cut model")


class LabelScores(BaseModel):
    label: str
    scores: dict[str, float]


class PredictResponse(BaseModel):
    task: str
    model: str = Field(description="'pruned' (the task's cut model) or 'dense'")
    predictions: list[LabelScores]


def _error(status: int, message: str, request: Request | None = None, param: str | None = None,
           code: str | None = None) -> JSONResponse:
    if request is not None and openai.is_openai_path(request):
        return JSONResponse(status_code=status, content=openai.error_body(status, message, param, code))
    return JSONResponse(status_code=status, content={"error": message})


async def _validation_message(request: Request, err: RequestValidationError) -> str:
    first = err.errors()[0]
    if first.get("type") == "json_invalid":
        try:
            (await request.body()).decode("utf-8")
        except UnicodeDecodeError as bad:
            return f"the request body is not UTF-8 text (byte {bad.start}); JSON must be sent as UTF-8"
        return "the request body is not valid JSON"
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    return f"{where}: {first.get('msg', 'invalid')}"


def _is_json(content_type: str) -> bool:
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


async def require_json(request: Request) -> None:
    """A body must be declared JSON: otherwise 422 naming the content type (FastAPI would only say that the body is
    not an object). A route dependency, so it runs before the body is validated and leaves other routes' 404s alone."""
    content_type = request.headers.get("content-type", "")
    if not _is_json(content_type):
        got = f"got {content_type!r}" if content_type else "the request has none"
        raise ServeError(422, f"the request body must be JSON sent with Content-Type: application/json ({got})")


class BodyLimit:
    """ASGI middleware: 413 for a body over ``limit`` bytes, by its declared Content-Length before anything is read,
    and by the bytes actually received when there is none (a chunked upload): then the counting ``receive`` raises
    inside the route, where the app's handlers turn it into the usual one-message JSON error."""

    def __init__(self, app: Any, limit: int, on_refuse: Any, plan_limit: int | None = None) -> None:
        self.app, self.on_refuse = app, on_refuse
        self.default, self.plan_limit = limit, plan_limit or limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        # a plan posted with its repair file carries the repaired tensors: its route has its own, larger bound
        limit = self.plan_limit if scope.get("path", "").startswith("/v1/plans/") else self.default
        size = dict(scope.get("headers") or []).get(b"content-length", b"")
        if size.isdigit() and int(size) > limit:
            self.on_refuse()
            body = f"request body of {int(size)} bytes; the limit is {limit}"
            response = (JSONResponse(status_code=413, content=openai.error_body(413, body))
                        if scope.get("path") in openai.PATHS else _error(413, body))
            return await response(scope, receive, send)
        received = 0

        async def counted() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise StarletteHTTPException(413, f"request body of more than {limit} bytes; the limit is "
                                                      f"{limit}")
            return message

        await self.app(scope, counted, send)


def create_app(service: TaskService, max_body_bytes: int = 4 << 20, max_plan_bytes: int = 1 << 30) -> FastAPI:
    """A FastAPI app serving ``service``; one inference thread, requests for one task batched."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="taskprune-infer")
    lim = service.limits
    batcher = Batcher(service.predict_texts, executor, lim.max_batch, lim.max_wait_ms / 1000)
    metrics = service.metrics

    @asynccontextmanager
    async def lifespan(_app: FastAPI):  # noqa: ANN202
        yield
        await batcher.close()
        executor.shutdown(wait=True)

    app = FastAPI(title="taskprune serve", version=__version__, lifespan=lifespan,
                  description="Task-specific sub-networks cut on demand from one multi-task base model.")
    app.state.service = service

    @app.exception_handler(ServeError)
    async def _serve_error(req: Request, err: ServeError) -> JSONResponse:
        metrics.errors.labels(str(err.status)).inc()
        return _error(err.status, err.message, req, getattr(err, "param", None), getattr(err, "code", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(req: Request, err: RequestValidationError) -> JSONResponse:
        status = 400 if openai.is_openai_path(req) else 422  # OpenAI answers a malformed request with 400
        metrics.errors.labels(str(status)).inc()
        loc = [str(p) for p in err.errors()[0].get("loc", ()) if p != "body"]
        return _error(status, await _validation_message(req, err), req, ".".join(loc) or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(req: Request, err: StarletteHTTPException) -> JSONResponse:
        metrics.errors.labels(str(err.status_code)).inc()
        return _error(err.status_code, str(err.detail), req)

    @app.exception_handler(Exception)
    async def _unexpected(req: Request, err: Exception) -> JSONResponse:
        metrics.errors.labels("500").inc()
        return _error(500, f"internal error: {type(err).__name__}: {err}"[:500], req)

    app.add_middleware(BodyLimit, limit=max_body_bytes, on_refuse=lambda: metrics.errors.labels("413").inc(),
                       plan_limit=max_plan_bytes)

    @app.post("/v1/predict", response_model=PredictResponse, dependencies=[Depends(require_json)],
              responses={404: {"description": "unknown task or no plan"}, 413: {"description": "too large"},
                         422: {"description": "malformed request"}, 504: {"description": "timed out"}})
    async def predict(req: PredictRequest) -> PredictResponse:
        task = "_unknown"  # metric label until the name is known: label values stay bounded

        def done(status: int, seconds: float) -> None:
            metrics.requests.labels(task, str(status)).inc()
            if status == 200:
                metrics.latency.labels(task).observe(seconds)

        with observed(done):
            task = service.canonical(req.task)
            texts = service.render(task, req.inputs)
            service.check_servable(task, req.dense)  # 404 before queueing
            try:
                preds = await asyncio.wait_for(batcher.submit(task, texts, req.dense), lim.timeout_s)
            except TimeoutError:  # the batcher skips a request whose waiter has gone
                raise ServeError(504, f"no prediction within {lim.timeout_s:g} s: the server is overloaded or "
                                      "the model is stuck") from None
            return PredictResponse(task=task, model="dense" if req.dense else "pruned",
                                   predictions=[LabelScores(label=p.label, scores=p.scores) for p in preds])

    @app.get("/v1/tasks")
    async def tasks() -> dict[str, Any]:
        return {"model": service.model_name, "fingerprint": service.fingerprint, "tasks": service.describe(),
                "cache": {"bytes": service.cache.total_bytes, "max_bytes": service.cache.max_bytes,
                          "tasks": service.cache.keys()}}

    @app.post("/v1/plans/{task}", status_code=201, dependencies=[Depends(require_json)])
    async def add_plan(task: str, plan: dict[str, Any] = Body(...), replace: bool = False) -> dict[str, Any]:
        # decoding, loading and checking a repair file, a trial cut, writing: off the event loop (streams go on)
        replaced = await run_in_threadpool(service.register, task, plan, replace=replace)
        name = service.canonical(task)
        p = service.plans[name]
        return {"task": name, "method": p.method, "rates": p.rates, "replaced": replaced}

    @app.delete("/v1/plans/{task}")
    async def remove_plan(task: str) -> dict[str, Any]:
        service.unregister(task)
        return {"task": service.canonical(task), "removed": True}

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "model": service.model_name, "fingerprint": service.fingerprint,
                "plans": len(service.plans)}

    openai.add_routes(app, service, executor, batcher)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
