"""``taskprune serve``: one base model, each task's pruned sub-network cut on demand (Algorithm 2 of the paper)."""

from __future__ import annotations

import argparse
import socket
from collections.abc import Callable

from ..errors import TaskpruneError
from . import inputs
from .options import NONNEG_FLOAT, PORT, POSITIVE_FLOAT, POSITIVE_INT, add_model
from .render import echo


def register(command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command("serve", help="HTTP server: one base model, each task's pruned sub-network cut on demand",
                description="Serve predictions for every task with a plan in --plans (Algorithm 2 of the "
                            "paper): the task's pruned model is cut from the base on first use and kept in "
                            "an LRU cache bounded in bytes. Speaks taskprune's /v1/predict and, for decoder-only "
                            "bases, the OpenAI API (/v1/models, /v1/chat/completions, /v1/completions; "
                            "docs/serve.md). OpenAPI docs at /docs.")
    add_model(p)
    p.add_argument("--plans", required=True, help="folder of tasks: plan JSON files (taskprune plan output) and "
                                                  "compress output folders (a repaired compression is served "
                                                  "with its repair.safetensors); plans added or removed through "
                                                  "the API are written there")
    p.add_argument("--task-file", action="append", default=[],
                   help="serve a task of your own too (a task file, docs/tasks.md); repeatable")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=PORT, default=8000, help="TCP port, 1-65535 (default 8000)")
    p.add_argument("--cache-mb", type=POSITIVE_FLOAT, default=1024, help="bound of the cut-model cache in MiB")
    p.add_argument("--max-inputs", type=POSITIVE_INT, default=64, help="inputs per request (more: 413)")
    p.add_argument("--max-input-chars", type=POSITIVE_INT, default=4000,
                   help="characters of one input's own text, all its columns together (more: 413); the task's "
                        "template is not counted")
    p.add_argument("--max-batch", type=POSITIVE_INT, default=32, help="inputs per model call when batching requests")
    p.add_argument("--max-wait-ms", type=NONNEG_FLOAT, default=0.0,
                   help="extra wait for more requests to batch (default 0: a batch takes the requests that queued "
                        "while the previous one ran, so a lone request waits for nothing)")
    p.add_argument("--timeout-s", type=POSITIVE_FLOAT, default=60.0,
                   help="seconds a prediction request may wait in the queue and the model (then 504; default 60)")
    p.add_argument("--max-tokens", type=POSITIVE_INT, default=512,
                   help="most tokens one OpenAI-route generation may ask for (more: 400; default 512)")
    p.add_argument("--max-generations", type=POSITIVE_INT, default=4,
                   help="OpenAI-route generations running at once (more: 429; default 4)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=run)


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port``: a busy port or an unknown host is one line now, before the model loads and
    before anything is announced (uvicorn then serves on this socket instead of binding its own)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as err:
        raise TaskpruneError(f"--host {host}: cannot resolve it ({err.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        raise TaskpruneError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    return sock


def run(args: argparse.Namespace) -> None:
    try:
        import uvicorn

        from ..serve.app import create_app
    except ImportError as err:
        raise TaskpruneError(f"serving needs the serve extra ({err.name} is missing): pip install 'taskprune[serve]'") from None
    from ..serve import ServeLimits, TaskService
    from ..serve.service import check_plans_dir

    check_plans_dir(args.plans)
    extra = [inputs.task(f) for f in args.task_file]
    limits = ServeLimits(max_inputs=args.max_inputs, max_input_chars=args.max_input_chars, max_batch=args.max_batch,
                         max_wait_ms=args.max_wait_ms, cache_bytes=int(args.cache_mb * 2**20),
                         timeout_s=args.timeout_s, max_tokens=args.max_tokens,
                         max_generations=args.max_generations)
    sock = listen(args.host, args.port)
    try:
        path, model, tok = inputs.load(args)
        service = TaskService(model, tok, plans_dir=args.plans, limits=limits, model_name=str(path),
                              extra_tasks=extra)
        app = create_app(service)
        host = f"[{args.host}]" if ":" in args.host else args.host
        echo(f"serving {path} ({service.fingerprint}) with plans for {', '.join(sorted(service.plans)) or 'no task'}; "
             f"http://{host}:{sock.getsockname()[1]}/docs")
        config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
