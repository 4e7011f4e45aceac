"""Evaluate a model on the six built-in tasks and write eval_results.json for its model card.

The numbers are exactly what `taskprune eval --model M --task T --data-dir D` prints (rank classification,
float32 compute, inputs truncated at 256 tokens), so the card can be reproduced task by task.

    python scripts/card_eval.py --model models/minilm-glue6 --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import taskprune as tp
from taskprune.files import atomic_write_text
from taskprune.tasks import list_tasks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--out", default=None, help="default: MODEL/eval_results.json")
    ap.add_argument("--tasks", nargs="+", default=None, help="default: all six; others already in --out are kept")
    args = ap.parse_args()
    model, tok = tp.load_model(args.model, dtype=torch.float32), tp.load_tokenizer(args.model)
    out = Path(args.out) if args.out else Path(args.model) / "eval_results.json"
    results = json.loads(out.read_text()) if args.tasks and out.is_file() else {}
    for name in args.tasks or list_tasks():
        task = tp.get_task(name)
        examples = tp.load_examples(task, "eval", args.data_dir)
        t0 = time.perf_counter()
        res = tp.evaluate(model, tok, task, examples)
        results[name] = {**{k: round(v, 2) for k, v in res.metrics.items()}, "examples": len(examples),
                         "seconds": round(time.perf_counter() - t0, 1)}
        print(name, results[name], flush=True)
    atomic_write_text(out, json.dumps(results, indent=2) + "\n", overwrite=True)
    print("| task | eval examples | metrics |\n|---|---:|---|")
    for name, r in results.items():
        metrics = ", ".join(f"{k} {v:.2f}" for k, v in r.items() if k not in ("examples", "seconds"))
        print(f"| {name} | {r['examples']} | {metrics} |")


if __name__ == "__main__":
    main()
