"""Which aggregation of attributions keeps accuracy best? (DESIGN §1: measured, not assumed.)

For every task, sample seed and aggregation variant: score the model on k class-balanced fit examples,
prune at the given settings with masks (equivalent to slicing, tested) and evaluate on the whole eval
split. Random scores are the floor. Writes results.jsonl and README.md (mean ± std over seeds) to --out.

    python scripts/aggregation_study.py --model models/minilm-glue6 --data-dir ../shared/data \
        --out reports/aggregation
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import taskprune as tp
from taskprune.files import atomic_write_text
from taskprune.models import get_adapter

VARIANTS = {  # name -> ScoreConfig, or None for random scores
    "signed sum (eq. 6 literally)": tp.ScoreConfig(example_agg="signed", position_agg="sum"),
    "abs(signed sum)": tp.ScoreConfig(example_agg="abs_sum", position_agg="sum"),
    "sum of abs(A) per example (positions summed first)": tp.ScoreConfig(example_agg="abs", position_agg="sum"),
    "sum of abs(h*grad) per position": tp.ScoreConfig(example_agg="abs", position_agg="abs"),
    "random scores": None,
}
SETTINGS = {
    "FFN 50% (encoder+decoder)": tp.RateSpec(rate=0.5, layer_types=("ffn",)),
    "all groups 50% (decoder)": tp.RateSpec(rate=0.5, modules=("decoder",)),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--tasks", nargs="+", default=["sst2", "rte"])
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--eval-examples", type=int, default=None)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    t_start = time.time()
    model, tok = tp.load_model(args.model, dtype=torch.float32), tp.load_tokenizer(args.model)
    groups = get_adapter(model).groups()
    rows = []
    for task_name in args.tasks:
        task = tp.get_task(task_name)
        fit_all = tp.load_examples(task, "fit", args.data_dir)
        eval_set = tp.load_examples(task, "eval", args.data_dir)[: args.eval_examples]
        dense = tp.evaluate(model, tok, task, eval_set).metrics["accuracy"]
        rows.append({"task": task_name, "variant": "dense", "setting": "none", "seed": None, "accuracy": dense})
        print(f"{task_name}: dense {dense:.2f} on {len(eval_set)}", flush=True)
        for seed in args.seeds:
            fit = tp.sample_k_shot(fit_all, args.samples, seed=seed)
            for variant, config in VARIANTS.items():
                t0 = time.perf_counter()
                if config is None:
                    g = torch.Generator().manual_seed(seed)
                    scores = {grp.name: torch.rand(grp.size, generator=g) for grp in groups}
                else:
                    scores = tp.score(model, tok, task, fit, config=config)
                seconds = time.perf_counter() - t0
                for setting, rates in SETTINGS.items():
                    plan = tp.make_plan(model, scores, rates)
                    with tp.masked(plan, model, check=False):
                        acc = tp.evaluate(model, tok, task, eval_set).metrics["accuracy"]
                    rows.append({"task": task_name, "variant": variant, "setting": setting, "seed": seed,
                                 "accuracy": acc, "scoring_seconds": seconds, "samples": len(fit)})
                    print(f"{task_name} seed {seed} {variant:45s} {setting:28s} {acc:6.2f}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in rows), overwrite=True)
    atomic_write_text(out / "README.md", report(rows, args, time.time() - t_start), overwrite=True)


def report(rows: list[dict], args: argparse.Namespace, wall: float) -> str:
    lines = [
        "# Aggregating attributions over examples and positions",
        "",
        f"Model `{args.model}`, {args.samples} class-balanced fit examples per seed (seeds {args.seeds}), "
        "whole eval split, pruning by masks (equal to slicing, see tests/test_prune.py). Accuracy in %, "
        "mean ± std over seeds.",
        "",
        f"Command: `python scripts/aggregation_study.py --model {args.model} --data-dir {args.data_dir} "
        f"--tasks {' '.join(args.tasks)} --samples {args.samples} --out {args.out}`  ",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}; "
        f"wall time {wall / 60:.1f} min.",
        "",
    ]
    for task in dict.fromkeys(r["task"] for r in rows):
        dense = next(r["accuracy"] for r in rows if r["task"] == task and r["variant"] == "dense")
        lines += [f"## {task} (dense {dense:.2f})", "", "| aggregation | " + " | ".join(SETTINGS) + " |",
                  "|---|" + "---:|" * len(SETTINGS)]
        for variant in VARIANTS:
            cells = []
            for setting in SETTINGS:
                accs = [r["accuracy"] for r in rows if r["task"] == task and r["variant"] == variant
                        and r["setting"] == setting]
                sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
                cells.append(f"{statistics.mean(accs):.2f} ± {sd:.2f}")
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
