"""Does attribution pick the FFN units (or heads) a real decoder-only LM needs? Attribution vs random (RP) vs activation (FPP).

Scores SmolLM2-135M-Instruct (or --model) once per method on k class-balanced fit examples, prunes the FFN of
every layer at each rate with masks (equal to slicing, tested in tests/test_causal.py) and evaluates rank
classification on a fixed random subset of the eval split. Writes one JSON row per run to --out (appending, so
an interrupted run resumes) and prints a table.

    python scripts/causal_ffn_study.py --data-dir ../shared/data --out reports/causal-ffn/results.jsonl
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from pathlib import Path

import torch

import taskprune as tp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--rates", type=float, nargs="+", default=[0.1, 0.3, 0.5])
    ap.add_argument("--random-seeds", type=int, default=3)
    ap.add_argument("--eval-examples", type=int, default=256, help="fixed random subset of the eval split")
    ap.add_argument("--layer-types", nargs="+", default=["ffn"], help="what is pruned (default: the FFN)")
    ap.add_argument("--head-granularity", default="query", choices=["query", "kv"])
    ap.add_argument("--depths", default=None, metavar="LO-HI", help="prune only these layers (inclusive)")
    ap.add_argument("--methods", nargs="+", default=["attribution", "activation"],
                    help="scored methods besides the random trials")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.manual_seed(0)
    model, tok = tp.load_model(args.model), tp.load_tokenizer(args.model)
    task = tp.get_task(args.task)
    fit = tp.sample_k_shot(tp.load_examples(task, "fit", args.data_dir), args.samples, seed=0)
    ev = tp.load_examples(task, "eval", args.data_dir)
    ev = [ev[i] for i in sorted(random.Random(0).sample(range(len(ev)), min(args.eval_examples, len(ev))))]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done = {json.loads(line)["id"] for line in args.out.read_text().splitlines()} if args.out.exists() else set()
    runs = [("dense", None, 0.0)] + [(m, s, r) for r in args.rates for m, s in
                                     [(m, 0) for m in args.methods]
                                     + [("random", s) for s in range(args.random_seeds)]]
    scope = "+".join(args.layer_types) + ("" if args.head_granularity == "query" else "-kv")
    lo, hi = (int(x) for x in args.depths.split("-")) if args.depths else (None, None)
    scope += f"@{lo}-{hi}" if args.depths else ""
    scores: dict[tuple[str, int | None], dict] = {}
    for method, seed, rate in runs:
        rid = f"{args.task}-{method}-{seed}-{rate}" + ("" if scope == "ffn" else f"-{scope}")
        if rid in done:
            continue
        t0 = time.perf_counter()
        if method == "dense":
            res = tp.evaluate(model, tok, task, ev, batch_size=16)
        else:
            if (method, seed) not in scores:
                cfg = tp.ScoreConfig(seed=seed or 0)
                scores[(method, seed)] = tp.score(model, tok, task, fit, method=method, config=cfg, batch_size=5)
            rates = tp.RateSpec(rate=0.0 if args.depths else rate, layer_types=tuple(args.layer_types),
                                head_granularity=args.head_granularity,
                                depth_rates=[(lo, hi, rate)] if args.depths else [])
            plan = tp.make_plan(model, scores[(method, seed)], rates)
            with tp.masked(plan, model):
                res = tp.evaluate(model, tok, task, ev, batch_size=16)
        row = {"id": rid, "task": args.task, "method": method, "seed": seed, "rate": rate, "scope": scope,
               **res.metrics,
               "eval_examples": len(ev), "samples": args.samples, "seconds": time.perf_counter() - t0,
               "machine": f"{platform.machine()} {torch.get_num_threads()} threads"}
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    rows = [json.loads(line) for line in args.out.read_text().splitlines()]
    rows = [r for r in rows if r.get("scope", "ffn") == scope or r["method"] == "dense"]
    print(f"\n{args.task} accuracy, {scope} of every layer pruned, {args.samples} fit examples, {len(ev)} eval examples")
    dense = [r["accuracy"] for r in rows if r["method"] == "dense"]
    print(f"dense: {dense[0]:.2f}" if dense else "dense: -")
    for rate in args.rates:
        cells = []
        for method in (*args.methods, "random"):
            acc = [r["accuracy"] for r in rows if r["method"] == method and r["rate"] == rate]
            sd = f" ± {statistics.stdev(acc):.2f}" if len(acc) > 1 else ""
            cells.append(f"{method} {statistics.mean(acc):.2f}{sd} (n={len(acc)})" if acc else f"{method} -")
        print(f"p = {rate}: " + ", ".join(cells))


if __name__ == "__main__":
    main()
