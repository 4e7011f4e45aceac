"""Attribution against the baselines and the SMP peer, on one model, tasks and decoder-only rates.

For every task: the dense model, then every method at every rate, evaluated on the task's whole eval split.
Unit-selecting methods (attribution, FPP, RAP, RP, structured SMP) are evaluated through the plan's masks
(equal to the sliced model: tests/test_prune.py); SVD and unstructured SMP on the changed copy. Decoder-only
plans leave the encoder untouched, so its outputs are computed once per eval batch and reused by every
evaluation (``evaluate(encoder_cache=...)``). Rows go to results.jsonl as they finish; a re-run skips them.
Then README.md (tables) and accuracy_vs_rate.png are written from all rows.

    python scripts/baselines_report.py --model models/minilm-glue6 --data-dir ../shared/data \
        --out reports/baselines
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

import taskprune as tp
from taskprune.catalogue import get_method
from taskprune.files import atomic_write_text
from taskprune.models import get_adapter

# label -> (method, samples: "k" for --samples, "all" for every fit example, None for none, trials)
METHODS: dict[str, tuple[str, str | None, int]] = {
    "AP (k ex)": ("attribution", "k", 1),
    "AP (all fit ex)": ("attribution", "all", 1),
    "FPP (k ex)": ("activation", "k", 1),
    "RAP (k ex)": ("random-attribution", "k", 5),
    "RP": ("random", None, 5),
    "SVD": ("svd", None, 1),
    "SMP structured (k ex)": ("smp", "k", 1),
    "SMP unstructured (k ex)": ("smp-unstructured", "k", 1),
}


NOTES_MARK = "<!-- hand-written reading below: kept when the tables above are regenerated -->"


def _key(row: dict[str, Any]) -> tuple:
    return (row["task"], row["label"], row.get("rate"), row.get("trial"))


def _done(path: Path) -> dict[tuple, dict[str, Any]]:
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {_key(r): r for r in rows}


def _append(path: Path, row: dict[str, Any]) -> None:
    with path.open("a") as f:  # one line per finished run: a kill loses at most the run in flight
        f.write(json.dumps(row) + "\n")
        f.flush()


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    done = _done(results)
    model, tok = tp.load_model(args.model, dtype=torch.float32), tp.load_tokenizer(args.model)
    rates_of = {p: tp.RateSpec(rate=p, modules=("decoder",)) for p in args.rates}
    base_params = tp.count_parameters(model)["prunable"]
    for task_name in args.tasks:
        task = tp.get_task(task_name)
        fit_all = tp.load_examples(task, "fit", args.data_dir)
        fit_k = tp.sample_k_shot(fit_all, args.samples, seed=0)
        eval_set = tp.load_examples(task, "eval", args.data_dir)[: args.eval_examples]
        cache: dict[int, Any] = {}  # encoder outputs per eval batch: valid because the encoder is never changed

        def evaluate(m: torch.nn.Module) -> dict[str, float]:
            return tp.evaluate(m, tok, task, eval_set, batch_size=args.eval_batch_size, encoder_cache=cache).metrics

        def record(row: dict[str, Any]) -> None:
            row = {"task": task_name, **row}
            _append(results, row)
            done[_key(row)] = row
            acc = row["metrics"].get("accuracy")
            print(f"{task_name:5s} {row['label']:26s} p={row.get('rate')} trial={row.get('trial')} acc={acc:.2f} "
                  f"({row.get('compress_seconds', 0):.1f} s)", flush=True)

        if (task_name, "dense", None, None) not in done:
            record({"label": "dense", "metrics": evaluate(model), "eval_examples": len(eval_set),
                    "fit_examples": len(fit_all)})
        for label, (method, samples, trials) in METHODS.items():
            if args.only and not any(label.startswith(o) for o in args.only):
                continue
            label = label.replace("k ex", f"{args.samples} ex")
            fit = fit_all if samples == "all" else fit_k
            n_samples = 0 if samples is None else len(fit)
            for trial in range(trials if trials > 1 else 1):
                todo = [p for p in args.rates if (task_name, label, p, trial if trials > 1 else None) not in done]
                if not todo:
                    continue
                trial_key = trial if trials > 1 else None
                config = tp.ScoreConfig(seed=trial, smp=tp.SMPConfig(steps=args.smp_steps))
                scores, seconds = None, 0.0
                if method in ("attribution", "activation", "random-attribution", "random"):
                    t0 = time.perf_counter()
                    scores = tp.score(model, tok, task, fit, method=method, config=config,
                                      batch_size=32 if samples == "all" else args.batch_size)
                    seconds = time.perf_counter() - t0
                for p in todo:
                    row = _one(model, tok, task, fit, method, rates_of[p], config, scores, seconds, evaluate, args)
                    row.update(label=label, method=method, rate=p, trial=trial_key, samples=n_samples,
                               kept_prunable=row.pop("prunable") / base_params)
                    record(row)
    write_report(out, list(done.values()), args)


def _one(model: torch.nn.Module, tok: Any, task: tp.Task, fit: list, method: str, rates: tp.RateSpec,
         config: tp.ScoreConfig, scores: dict | None, score_seconds: float,
         evaluate: Callable[[torch.nn.Module], dict[str, float]], args: argparse.Namespace) -> dict[str, Any]:
    """One method at one rate: compress (timed), evaluate, count the prunable parameters left."""
    t0 = time.perf_counter()
    if not get_method(method).selects_units:  # svd, smp-unstructured: the library's compress step, timed as a whole
        result = tp.compress(model, tok, task, fit, rates, method=method, config=config, batch_size=args.batch_size)
        seconds = time.perf_counter() - t0
        changed = result.model
        prunable = tp.count_parameters(changed)["prunable"]
        row = {"metrics": evaluate(changed), "compress_seconds": seconds}
        if method == "smp-unstructured":
            prunable -= changed.config.taskprune_weight_sparsity["zeroed"]
            row["note"] = "zeros in dense shapes"
        return {**row, "prunable": prunable}
    if scores is None:  # smp: the scores are learnt for this rate
        scores = tp.score(model, tok, task, fit, method=method, config=replace(config, target_rates=rates.to_dict()),
                          batch_size=args.batch_size)
    plan = tp.make_plan(model, scores, rates, method=method)
    seconds = score_seconds + time.perf_counter() - t0
    assert all(len(g["keep"]) == g["size"] for n, g in plan.groups.items() if n.startswith("encoder"))
    with tp.masked(plan, model, check=False):
        metrics = evaluate(model)
    prunable = sum(get_adapter(model).prunable_parameters(g, len(plan.groups[g.name]["keep"]))
                   for g in get_adapter(model).groups())
    return {"metrics": metrics, "compress_seconds": seconds, "prunable": prunable}


# -- report ---------------------------------------------------------------------------------------------

def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"


def write_report(out: Path, rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    labels = list(dict.fromkeys(r["label"] for r in rows if r["label"] != "dense"))
    rates = sorted({r["rate"] for r in rows if r.get("rate") is not None})
    lines = [
        "# Attribution vs. the baselines and SMP (decoder-only pruning)",
        "",
        f"Model `{args.model}`; every group of the decoder (self-attention, cross-attention, FFN) pruned at rate p,",
        "the encoder untouched. Metric: accuracy (%) on the task's whole eval split (rank classification).",
        f"RAP and RP: mean ± sample std over 5 trial seeds. Few-shot methods use {args.samples} class-balanced fit",
        f"examples (sample seed 0); \"all fit ex\" uses every fit example. SMP: {args.smp_steps} steps of Adam",
        "(lr 0.01) on the mask scores, cubic schedule, task loss only, weights frozen. SVD: every pruned weight",
        "W (d×k) replaced by its rank-r truncation, r = ⌊d·k·(1−p)/(d+k+1)⌋ (no examples used).",
        "",
        "Regenerate (resumes from results.jsonl; delete it to start over):",
        "",
        "```",
        f"python scripts/baselines_report.py --model {args.model} --data-dir {args.data_dir} --out {args.out}",
        "```",
        "",
        f"Machine: {platform.machine()} CPU, {torch.get_num_threads()} torch threads, torch {torch.__version__}.",
        "",
    ]
    for task in tasks:
        trows = [r for r in rows if r["task"] == task]
        dense = next(r for r in trows if r["label"] == "dense")
        lines += [f"## {task.upper()} (dense {dense['metrics']['accuracy']:.2f}, {dense['eval_examples']} eval "
                  f"examples, {dense['fit_examples']} fit examples)", "",
                  "| method | " + " | ".join(f"p = {p}" for p in rates) + " | compress step (s) | prunable kept |",
                  "|---|" + "---:|" * len(rates) + "---:|---:|"]
        for label in labels:
            cells, secs, kept = [], [], []
            for p in rates:
                sel = [r for r in trows if r["label"] == label and r["rate"] == p]
                cells.append(_cell([r["metrics"]["accuracy"] for r in sel]) if sel else "–")
                secs += [r["compress_seconds"] for r in sel]
                kept += [f"{r['kept_prunable']:.2f}" for r in sel[:1]]
            if not secs:
                continue
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {statistics.fmean(secs):.1f} | "
                         + " / ".join(dict.fromkeys(kept)) + " |")
        lines.append("")
    lines += [
        "Compress step: wall time of the method's own work per run (scoring, mask learning or factorising, plus",
        "planning), averaged over rates and trials; scoring is done once per trial and shared by the rates, so",
        "its time is counted in every rate's row. Prunable kept: fraction of the prunable parameters left at",
        "p = " + " / ".join(str(p) for p in rates) + " (unstructured SMP keeps the dense shapes: its figure",
        "counts non-zeros, and it is neither smaller nor faster without a sparse format).",
        "",
        "![accuracy vs rate](accuracy_vs_rate.png)",
        "",
    ]
    old = out / "README.md"
    if old.is_file() and NOTES_MARK in old.read_text():  # the hand-written reading survives regeneration
        lines += [NOTES_MARK + old.read_text().split(NOTES_MARK, 1)[1].rstrip("\n"), ""]
    atomic_write_text(out / "README.md", "\n".join(lines), overwrite=True)
    _plot(out / "accuracy_vs_rate.png", rows, tasks, labels, rates)


def _plot(path: Path, rows: list[dict[str, Any]], tasks: list[str], labels: list[str], rates: list[float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.5), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        trows = [r for r in rows if r["task"] == task]
        dense = next(r for r in trows if r["label"] == "dense")["metrics"]["accuracy"]
        ax.axhline(dense, color="black", linestyle="--", linewidth=1, label="dense")
        for label in labels:
            xs, means, stds = [], [], []
            for p in rates:
                vals = [r["metrics"]["accuracy"] for r in trows if r["label"] == label and r["rate"] == p]
                if vals:
                    xs.append(p)
                    means.append(statistics.fmean(vals))
                    stds.append(statistics.stdev(vals) if len(vals) > 1 else 0.0)
            if not xs:
                continue
            line = ax.plot(xs, means, marker="o", label=label)[0]
            if any(stds):
                lo = [m - s for m, s in zip(means, stds)]
                hi = [m + s for m, s in zip(means, stds)]
                ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15)
        ax.set_title(f"{task.upper()}: decoder pruned at rate p")
        ax.set_xlabel("pruning rate p (fraction of units removed per group)")
        ax.set_ylabel("accuracy (%)")
        ax.set_xticks(rates)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    tmp.replace(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/minilm-glue6")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--out", default="reports/baselines")
    ap.add_argument("--tasks", nargs="+", default=["sst2", "rte"])
    ap.add_argument("--rates", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--smp-steps", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--eval-batch-size", type=int, default=32)
    ap.add_argument("--eval-examples", type=int, default=None, help="cap the eval split (smoke runs only)")
    ap.add_argument("--only", nargs="+", default=None, help="run only the methods whose label starts with these")
    ap.add_argument("--report-only", action="store_true", help="rewrite README.md and the plot from results.jsonl")
    args = ap.parse_args()
    if args.report_only:
        write_report(Path(args.out), list(_done(Path(args.out) / "results.jsonl").values()), args)
        return
    t0 = time.time()
    run(args)
    print(f"wall time {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
