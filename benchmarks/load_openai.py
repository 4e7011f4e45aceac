"""Load test of `taskprune serve`'s OpenAI routes with the official openai client, and the bytes a task costs.

    python benchmarks/load_openai.py --model smollm2-glue6 --data-dir ../shared/data --plans /tmp/plans \\
        --tasks sst2 rte --clients 4 --seconds 30

1. Plans: for every --tasks task without a folder in --plans, the default compress (`taskprune compress --samples
   10 --rate 0.5 --no-eval`) writes one there: per-layer widths, least-squares repair, repair.safetensors.
2. Bytes per task: the repaired tensors it stores (repair.safetensors) and the memory its cached cut owns (sliced
   producers + repaired consumers; everything else is the base's), against a full copy of the pruned model.
3. Load: `taskprune serve` as a subprocess on a free loopback port; --clients threads, each its own
   ``openai.OpenAI`` client, send requests for --seconds round-robin over the tasks: classification chat
   completions of dev inputs, every --generate-every-th one a free generation (``classify: false``, 16 tokens,
   temperature 0), every --stream-every-th one streamed. Prints requests/s, p50/p99 latency per kind, generated
   tokens/s, errors, and the server's RSS before and after.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai

import taskprune as tp
from taskprune.pruning.repaired import REPAIR_FILE


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _raw_inputs(task: str, data_dir: str) -> list[str]:
    """What a user would send: the eval rows' one column, or a JSON object of the task's columns."""
    import json

    from load_serve import _inputs  # the eval rows' raw columns (benchmarks/ is on the path of a script run)

    return [next(iter(r.values())) if len(r) == 1 else json.dumps(r) for r in _inputs(task, data_dir, 64)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-glue6")
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--plans", type=Path, required=True)
    ap.add_argument("--tasks", nargs="+", default=["sst2", "rte"])
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--generate-every", type=int, default=4)
    ap.add_argument("--stream-every", type=int, default=3)
    args = ap.parse_args()
    args.plans.mkdir(parents=True, exist_ok=True)
    for task in args.tasks:
        folder = args.plans / f"{task}-default"
        if not (folder / "plan.json").is_file():
            subprocess.run([sys.executable, "-m", "taskprune", "compress", "--model", args.model, "--task", task,
                            "--data-dir", args.data_dir, "--samples", "10", "--rate", "0.5", "--no-eval",
                            "--out", str(folder)], check=True)

    print("| task | repair.safetensors (MB) | cut owns in memory (MB) | full pruned copy (MB) | model.safetensors (MB) |")
    print("|---|---:|---:|---:|---:|")
    base = tp.load_model(args.model)
    from taskprune.serve import TaskService

    service = TaskService(base, tp.load_tokenizer(args.model), plans_dir=args.plans)
    for task in args.tasks:
        folder = args.plans / f"{task}-default"
        service.model_for(task)
        full = sum(p.numel() * p.element_size() for p in tp.load_pruned(folder).parameters())
        print(f"| {task} | {(folder / REPAIR_FILE).stat().st_size / 1e6:.1f} | {service.cache.size_of(task) / 1e6:.1f} "
              f"| {full / 1e6:.1f} | {(folder / 'model.safetensors').stat().st_size / 1e6:.1f} |")
    del service, base

    tasks = {t: tp.get_task(t) for t in args.tasks}
    inputs = {t: _raw_inputs(t, args.data_dir) for t in tasks}
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen([sys.executable, "-m", "taskprune", "serve", "--model", args.model, "--plans",
                               str(args.plans), "--port", str(port), "--log-level", "warning",
                               "--max-generations", str(args.clients)], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:  # the server's own readiness, not a guessed delay
            if server.poll() is not None:
                raise SystemExit(f"the server exited with {server.returncode}")
            try:
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        warm = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        for t in args.tasks:  # cut each task once, so the load measures serving, not the first cut
            warm.chat.completions.create(model=t, messages=[{"role": "user", "content": inputs[t][0]}])
        rss_before = _rss_mb(server.pid)
        lat: dict[str, list[float]] = {"classify": [], "classify-stream": [], "generate": [], "generate-stream": []}
        errors: list[str] = []
        tokens = [0]
        lock = threading.Lock()
        stop_at = time.perf_counter() + args.seconds

        def client(k: int) -> None:
            c = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
            i = k
            while time.perf_counter() < stop_at:
                task = args.tasks[i % len(args.tasks)]
                text = inputs[task][i % len(inputs[task])]
                gen, stream = i % args.generate_every == 0, i % args.stream_every == 0
                kind = ("generate" if gen else "classify") + ("-stream" if stream else "")
                body = {"model": task, "messages": [{"role": "user", "content": text}]}
                if gen:
                    body.update(max_tokens=16, temperature=0, extra_body={"classify": False})
                t0 = time.perf_counter()
                try:
                    if stream:
                        n = 0
                        for chunk in c.chat.completions.create(stream=True, **body):
                            n += bool(chunk.choices and chunk.choices[0].delta.content)
                        used = n if gen else 0
                    else:
                        r = c.chat.completions.create(**body)
                        used = r.usage.completion_tokens if gen else 0
                    with lock:
                        lat[kind].append(time.perf_counter() - t0)
                        tokens[0] += used
                except openai.OpenAIError as err:
                    with lock:
                        errors.append(f"{type(err).__name__}: {err}"[:200])
                i += args.clients

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t0
        rss_after = _rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait()
    n = sum(len(v) for v in lat.values())
    print(f"\n{args.clients} openai clients x {args.seconds:g} s over {', '.join(args.tasks)}: {n} requests "
          f"({n / wall:.1f}/s), {len(errors)} errors, {tokens[0] / wall:.1f} generated tokens/s; "
          f"server RSS {rss_before:.0f} MB before, {rss_after:.0f} MB after")
    print("\n| request kind | n | p50 (ms) | p99 (ms) |\n|---|---:|---:|---:|")
    for kind, v in lat.items():
        if v:
            v = sorted(v)
            print(f"| {kind} | {len(v)} | {statistics.median(v) * 1e3:.0f} | {v[min(len(v) - 1, int(0.99 * len(v)))] * 1e3:.0f} |")
    for e in errors[:5]:
        print("error:", e)


if __name__ == "__main__":
    main()
