"""Load test of `taskprune serve` on loopback, plus the two serving ratios, measured in one run.

    python benchmarks/load_serve.py --model models/minilm-glue6 --plans plans/minilm-glue6 \\
        --tasks sst2 rte mrpc --clients 8 --seconds 60

1. Ratios, in process (no HTTP), for each task:
   - time to cut the task model from the base ÷ time to copy its kept weights (every tensor of the cut model
     cloned once); goal <= 2. Both are memory-bound, so both are the best of 3 x --repeats runs. The cut shares
     the tensors the plan leaves whole, so it only copies the slices. Timed, like bench.py, with the steady
     allocator of timing.py (--default-malloc opts out); the server subprocess inherits it.
   - latency of a batch-1 request on a cached task through the service (``TaskService.predict_texts``: cache
     lookup, tokenising, scoring, label probabilities) ÷ calling the pruned model directly (tokenising and
     ``rank_scores``); goal <= 1.05. The batcher's thread hand-off is part of the HTTP figure.
2. Load: starts the server as a subprocess on 127.0.0.1 (a free port), N clients send one-input requests for
   T seconds, round-robin over the tasks; prints throughput, p50/p99 latency, errors; HTTP overhead = median
   single-client HTTP latency − median in-process latency. Bounded: --seconds (at most 600) and --max-requests.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from timing import median_seconds, rerun_with_steady_allocator  # noqa: E402

from taskprune.checkpoint import load_model, load_tokenizer  # noqa: E402
from taskprune.data import LabelSpace
from taskprune.evaluate import rank_scores  # noqa: E402
from taskprune.lm.batching import batches  # noqa: E402
from taskprune.pruning.apply import apply  # noqa: E402
from taskprune.serve import ServeLimits, TaskService  # noqa: E402
from taskprune.tasks import Example, get_task  # noqa: E402

FALLBACK = {"sentence": "a gripping, beautifully acted film", "sentence1": "The cat sat on the mat.",
            "sentence2": "A cat was sitting.", "question": "is the sky blue", "passage": "The sky is blue.",
            "premise": "The cat sat on the mat.", "hypothesis": "A cat was sitting."}


def _inputs(task: str, data_dir: str | None, n: int = 32) -> list[dict[str, str]]:
    """Raw inputs for a task: its first eval rows' columns when the data is here, else a fixed example."""
    t = get_task(task)
    if data_dir:
        from taskprune.tasks.loaders import DIR_SPECS, find_task_dir
        from taskprune.tasks.readers import read_rows

        spec = DIR_SPECS[t.name]
        rows = []
        for _, raw in read_rows(find_task_dir(spec, Path(data_dir)) / spec.eval_file):
            row = {dict(spec.renames).get(k, k): v for k, v in raw.items()}
            rows.append({c: str(row[c]) for c in t.columns})
            if len(rows) == n:
                break
        return rows
    return [{c: FALLBACK.get(c, "text") for c in t.columns}]


def ratios(service: TaskService, tasks: list[str], inputs: dict[str, list[dict]], repeats: int) -> list[dict]:
    out = []
    for task in tasks:  # warm-up: the first cuts of a process pay one-off costs (allocator growth, lazy imports)
        for _ in range(repeats):
            apply(service.plans[task], service.base, check=False, share=True, validated=True)
    for task in tasks:
        plan = service.plans[task]
        base = service.base
        # memory-bound work: page faults of fresh allocations make single runs noisy, so best of 3 x repeats
        best = lambda fn: min(median_seconds(fn, 1) for _ in range(3 * repeats))  # noqa: E731
        cut_s = best(lambda: apply(plan, base, check=False, share=True, validated=True))  # as the service cuts
        full_s = best(lambda: apply(plan, base, check=False))
        model = service.model_for(task)
        tensors = list({t.data_ptr(): t for t in model.state_dict().values()}.values())
        copy_s = best(lambda: [t.clone() for t in tensors])
        text = service.render(task, inputs[task][:1])
        t = get_task(task)
        labels = LabelSpace.build(service.tok, t)
        with torch.no_grad():
            direct = lambda: [rank_scores(model, b, labels).softmax(-1).tolist()  # noqa: E731
                              for b in batches([Example(text[0], 0)], service.tok, 1)]
            via = lambda: service.predict_texts(task, text)  # noqa: E731
            for _ in range(3):
                direct(), via()
            d, v = [], []
            for _ in range(repeats * 4):  # interleaved, so drifts hit both alike
                d.append(median_seconds(direct, 1))
                v.append(median_seconds(via, 1))
        out.append({"task": task, "cut_ms": cut_s * 1e3, "full_copy_cut_ms": full_s * 1e3,
                    "copy_kept_ms": copy_s * 1e3, "cut_over_copy": cut_s / copy_s,
                    "direct_ms": statistics.median(d) * 1e3, "service_ms": statistics.median(v) * 1e3,
                    "service_over_direct": statistics.median(v) / statistics.median(d)})
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _load(url: str, tasks: list[str], inputs: dict[str, list[dict]], clients: int, seconds: float,
                max_requests: int) -> dict:
    import httpx

    latencies: list[float] = []
    per_task: dict[str, int] = dict.fromkeys(tasks, 0)
    errors: dict[str, int] = {}
    sent = 0
    stop = time.perf_counter() + seconds

    async def client(i: int, http: httpx.AsyncClient) -> None:
        nonlocal sent
        k = i
        while time.perf_counter() < stop and sent < max_requests:
            sent += 1
            task = tasks[k % len(tasks)]
            rows = inputs[task]
            body = {"task": task, "inputs": [rows[k % len(rows)]]}
            k += clients
            t0 = time.perf_counter()
            try:
                r = await http.post(f"{url}/v1/predict", json=body)
                ok = r.status_code == 200
                key = str(r.status_code)
            except httpx.HTTPError as err:
                ok, key = False, type(err).__name__
            if ok:
                latencies.append(time.perf_counter() - t0)
                per_task[task] += 1
            else:
                errors[key] = errors.get(key, 0) + 1

    t_start = time.perf_counter()
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        await asyncio.gather(*(client(i, http) for i in range(clients)))
    wall = time.perf_counter() - t_start
    lat = sorted(latencies)
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1e3 if lat else float("nan")  # noqa: E731
    return {"requests": len(lat), "errors": errors, "seconds": wall, "throughput": len(lat) / wall,
            "p50_ms": q(0.50), "p99_ms": q(0.99), "per_task": per_task}


async def _single(url: str, task: str, row: dict, n: int) -> float:
    import httpx

    async with httpx.AsyncClient(timeout=60) as http:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            r = await http.post(f"{url}/v1/predict", json={"task": task, "inputs": [row]})
            r.raise_for_status()
            times.append(time.perf_counter() - t0)
    return statistics.median(times[3:]) if n > 3 else statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT / "models" / "minilm-glue6"))
    ap.add_argument("--plans", default=str(ROOT / "plans" / "minilm-glue6"))
    ap.add_argument("--tasks", nargs="+", default=["sst2", "rte", "mrpc"])
    ap.add_argument("--data-dir", default=os.environ.get("TASKPRUNE_DATA") or str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--max-requests", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--ratios-only", action="store_true", help="skip the server and the load test")
    ap.add_argument("--default-malloc", action="store_true", help="time with the allocator as configured")
    args = ap.parse_args()
    rerun_with_steady_allocator(args.default_malloc)  # the server subprocess inherits it
    if not 0 < args.seconds <= 600 or args.clients <= 0:
        ap.error("--seconds must be in (0, 600] and --clients positive")
    if args.threads:
        torch.set_num_threads(args.threads)
    data_dir = args.data_dir if Path(args.data_dir).is_dir() else None
    inputs = {t: _inputs(t, data_dir) for t in args.tasks}
    service = TaskService(load_model(args.model, dtype=torch.float32), load_tokenizer(args.model),
                          plans_dir=args.plans, limits=ServeLimits())
    missing = [t for t in args.tasks if t not in service.plans]
    if missing:
        sys.exit(f"no plan for {missing} in {args.plans}")
    print(f"model {args.model}, plans {sorted(service.plans)}, torch threads {torch.get_num_threads()}, "
          f"inputs from {'the eval splits' if data_dir else 'a fixed example'}, "
          f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '(unset)')}")
    print("\n## Ratios (in process; cut and copy: best of 3 x repeats, latencies: medians)\n")
    print("| task | cut (shared) ms | cut (full copy) ms | copy kept weights ms | cut ÷ copy | direct ms | "
          "service ms | service ÷ direct |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    rs = ratios(service, args.tasks, inputs, args.repeats)
    for r in rs:
        print(f"| {r['task']} | {r['cut_ms']:.1f} | {r['full_copy_cut_ms']:.1f} | {r['copy_kept_ms']:.1f} | "
              f"{r['cut_over_copy']:.2f} | {r['direct_ms']:.2f} | {r['service_ms']:.2f} | "
              f"{r['service_over_direct']:.3f} |")
    del service
    if args.ratios_only:
        return

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "taskprune.cli", "serve", "--model", args.model, "--plans", args.plans,
           "--port", str(port), "--log-level", "warning"]
    server = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        import httpx

        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.time() > deadline:
                sys.exit(f"server did not start: {server.stdout.read() if server.stdout else ''}")
            time.sleep(0.5)
        for t in args.tasks:  # cut every task model once, so the load measures cached serving
            httpx.post(f"{url}/v1/predict", json={"task": t, "inputs": inputs[t][:1]}, timeout=60).raise_for_status()
        http_ms = {t: asyncio.run(_single(url, t, inputs[t][0], 23)) * 1e3 for t in args.tasks}
        print("\n## HTTP overhead (one client, batch 1, medians)\n")
        print("| task | HTTP request ms | in-process service ms | overhead ms |")
        print("|---|---:|---:|---:|")
        for r in rs:
            print(f"| {r['task']} | {http_ms[r['task']]:.2f} | {r['service_ms']:.2f} | "
                  f"{http_ms[r['task']] - r['service_ms']:.2f} |")
        res = asyncio.run(_load(url, args.tasks, inputs, args.clients, args.seconds, args.max_requests))
        print(f"\n## Load: {args.clients} clients x {args.seconds:g} s over {', '.join(args.tasks)}\n")
        print("| requests | errors | throughput (req/s) | p50 ms | p99 ms | per task |")
        print("|---:|---|---:|---:|---:|---|")
        print(f"| {res['requests']} | {res['errors'] or 0} | {res['throughput']:.1f} | {res['p50_ms']:.1f} | "
              f"{res['p99_ms']:.1f} | {res['per_task']} |")
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        batch_lines = [x for x in metrics.splitlines() if x.startswith("taskprune_batch_inputs_")]
        count = next(float(x.split()[-1]) for x in batch_lines if x.startswith("taskprune_batch_inputs_count"))
        total = next(float(x.split()[-1]) for x in batch_lines if x.startswith("taskprune_batch_inputs_sum"))
        print(f"\nmodel calls {count:.0f} for {total:.0f} inputs: {total / max(count, 1):.2f} inputs per call "
              "(concurrent requests merged)")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
