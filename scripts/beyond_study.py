"""Beyond the paper: paper-AP vs the baselines, the peers (FLAP, Kwon et al.) and taskprune's repair / allocation.

Every run compresses the model with ``taskprune.compress`` (physically sliced, repaired where the recipe repairs;
no masks, since masks cannot hold repaired weights) for one task, budget (fraction of prunable parameters removed,
both modules) and sample seed (10 class-balanced fit examples), evaluates it on the task's eval split and records
every eval example's correctness, so that comparisons are paired tests over the same examples
(:mod:`taskprune.experiments.stats`). One JSON row per run is appended to --out: an interrupted study resumes.
``--report DIR`` writes the table, the paired verdicts and the plot from the rows (no computation).

    python scripts/beyond_study.py --data-dir ../shared/data --out reports/beyond/results.jsonl
    python scripts/beyond_study.py --report reports/beyond --out reports/beyond/results.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import taskprune as tp
import taskprune.api
from taskprune.api import compress
from taskprune.cli.options import POSITIVE_INT
from taskprune.experiments.report import shared_legend
from taskprune.experiments.results import eval_set_id, pack_outcomes, row_outcomes
from taskprune.experiments.stats import Comparisons, Point, as_runs, holm, paired_compare
from taskprune.pruning.rates import RateSpec
from taskprune.pruning.repair import RepairConfig
from taskprune.recipe import DEFAULT_CALIBRATION, calibration_examples, resolve_method

#: name -> (method, allocate, repair); the order is the table's
VARIANTS: dict[str, tuple[str, str | None, str | None]] = {
    "paper-AP": ("attribution", "uniform", "none"),
    "FPP": ("activation", "uniform", "none"),
    "RP": ("random", "uniform", "none"),
    "FLAP": ("flap", None, None),  # as published: bias compensation, biases added where the model has none
    # FLAP's scores and allocation without its compensation: what the "FLAP" rows measured on Llama-layout models
    # before biases could be added (2026-12-02); on BERT, whose consumers have biases, FLAP never lacked it
    "FLAP-nobias": ("flap", None, "none"),
    "Kwon": ("kwon", None, None),
    "AP+global": ("attribution", "global", "none"),
    # the default: AP + global-sqrt allocation + least-squares repair, scoring the calibration inputs too, each
    # labelled by the dense model (self-labelling: the default since 2026-12-04, reports/beyond/README.md)
    "taskprune": ("taskprune", None, None),
    "AP+sqrt+repair": ("attribution", "global-sqrt", "ls"),  # ... without self-labelling: the default until then
    "AP+repair": ("attribution", "uniform", "ls"),
    "AP+global+repair": ("attribution", "global", "ls"),
    "AP+search+repair": ("attribution", "search", "ls"),
    "AP+raw+repair": ("attribution", "global-raw", "ls"),  # the default until 2026-12-04 (raw-score ranking)
    "AP+param+repair": ("attribution", "global-param", "ls"),  # the per-parameter ranking
    "AP+raw+centred": ("attribution", "global-raw", "ls+centred"),  # ... with a bias added and a centred solve
    # repair in forward order on the pruned model's own inputs (SparseGPT's order), against the dense outputs
    "AP+raw+seqrepair": ("attribution", "global-raw", "ls+sequential"),
    "AP+param+seqrepair": ("attribution", "global-param", "ls+sequential"),
}
#: variants pruned in rounds (``compress(steps=)``: re-scored after each round but the last)
STEPS = {"taskprune+iter3": 3, "AP+sqrt+repair+iter3": 3, "AP+raw+repair+iter3": 3, "AP+param+repair+iter3": 3,
         "AP+param+repair+iter3m": 3}
#: variants whose intermediate rounds are scored masked but unrepaired (only the final cut is repaired)
MASKED_ROUNDS = {"AP+param+repair+iter3m"}
VARIANTS.update({v: VARIANTS[v.rsplit("+", 1)[0]] for v in STEPS})
#: rows written by a peer's own code (benchmarks/peers/), reported beside the variants above
PEER_ROWS = {"TP-taylor": "Torch-Pruning's TaylorImportance, FFN units only (benchmarks/peers/torch_pruning_peer.py)",
             "TP-magnitude": "Torch-Pruning's MagnitudeImportance, FFN units only"}
#: rows of a variant the code no longer runs, kept for comparison (reproducible at the commit named)
EARLIER_ROWS = {"FLAP-headz": "FLAP's metric unsquared, summed per head and standardised over the heads (`global`): "
                              "taskprune's FLAP until 2026-12-04 (commit b297efb)",
                "FLAP-headz-nobias": "the same without its bias compensation (the 200-example table's FLAP-nobias)"}
RP_TRIALS = 5
#: (A, B) pairs the report tests at every budget
COMPARISONS = (("taskprune", "paper-AP"), ("taskprune", "FLAP"), ("taskprune", "Kwon"), ("AP+repair", "paper-AP"),
               ("AP+global", "paper-AP"), ("taskprune", "AP+sqrt+repair"), ("AP+sqrt+repair", "AP+raw+repair"),
               ("AP+search+repair", "AP+sqrt+repair"), ("AP+global+repair", "AP+sqrt+repair"),
               ("AP+param+repair", "AP+sqrt+repair"),
               ("AP+raw+centred", "AP+raw+repair"), ("FLAP", "FLAP-nobias"), ("FLAP", "FLAP-headz"),
               ("AP+raw+seqrepair", "AP+raw+repair"), ("AP+param+seqrepair", "AP+param+repair"),
               ("taskprune+iter3", "taskprune"), ("AP+sqrt+repair+iter3", "AP+sqrt+repair"),
               ("AP+raw+repair+iter3", "AP+raw+repair"), ("AP+param+repair+iter3", "AP+param+repair"),
               ("taskprune", "TP-taylor"), ("taskprune", "TP-magnitude"),
               ("paper-AP", "RP"), ("paper-AP", "FPP"))


def run(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model, tok = tp.load_model(args.model), tp.load_tokenizer(args.model)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done = {json.loads(x)["id"] for x in args.out.read_text().splitlines() if x.strip()} if args.out.exists() else set()
    plan: list[tuple[str, float, int, str, int]] = []
    for task_name in args.tasks:
        plan.append((task_name, 0.0, 0, "dense", 0))
        for budget in args.budgets:
            for seed in args.seeds:
                for v in args.variants:
                    for trial in range(RP_TRIALS if v == "RP" else 1):
                        plan.append((task_name, budget, seed, v, trial))
    cache: dict[str, Any] = {}
    for task_name, budget, seed, variant, trial in plan:
        rid = f"{task_name}-{variant}-{budget}-{seed}-{trial}" + _calibration_suffix(args.calibration, variant)
        if rid in done:
            continue
        if task_name not in cache:
            task = tp.get_task(task_name)
            fit_pool = tp.load_examples(task, "fit", args.data_dir)
            dev = tp.load_examples(task, "eval", args.data_dir)
            ev = (validation_examples(fit_pool, dev, args.validation_size, args.samples,
                                      args.validation_excludes or args.calibration)
                  if args.eval_split == "validation" else dev)[: args.eval_examples or None]
            # a seed the validation split was not built around draws its examples from the rest of the fit split
            held = {(e.text, e.prompt) for e in ev} if args.eval_split == "validation" else set()
            cache[task_name] = (task, fit_pool, [e for e in fit_pool if (e.text, e.prompt) not in held], ev,
                                eval_set_id(ev))
        task, fit_pool, fit_rest, ev, ev_id = cache[task_name]
        fit_all = fit_pool if seed in VALIDATION_EXCLUDES_SEEDS else fit_rest
        t0 = time.perf_counter()
        info: dict[str, Any] = {}
        if variant == "dense":
            pruned = model
        else:
            method, allocate, repair = VARIANTS[variant]
            fit = tp.sample_k_shot(fit_all, args.samples, seed=seed)
            calib = calibration_examples(fit_all, fit, args.calibration, seed)
            cfg = tp.ScoreConfig(seed=trial)
            res = compress(model, tok, task, fit, RateSpec(rate=budget), method=method, config=cfg, seed=seed,
                           allocate=allocate, repair=_repair_config(repair), calibration=calib,
                           steps=STEPS.get(variant, 1), round_repair=variant not in MASKED_ROUNDS,
                           self_label=None)  # the method's own: only taskprune's recipe self-labels
            pruned = res.model
            info = {"allocation": res.plan.allocation, "repair": res.plan.repair}
            if res.plan.self_labelled:
                info["self_labelled"] = res.plan.self_labelled
        seconds = time.perf_counter() - t0
        ev_res = tp.evaluate(pruned, tok, task, ev, batch_size=64)
        correct = [p == e.label for p, e in zip(ev_res.predictions, ev)]
        params = tp.count_parameters(pruned)
        row = {"id": rid, "task": task_name, "variant": variant, "budget": budget, "seed": seed, "trial": trial,
               "metrics": {k: round(v, 2) for k, v in ev_res.metrics.items()}, "n_eval": len(ev),
               "outcomes": pack_outcomes(correct, ev_id), "compress_seconds": round(seconds, 2),
               "prunable": params["prunable"], "total": params["total"], "model": args.model, "machine": platform.machine(),
               "threads": torch.get_num_threads(), "calibration": args.calibration, "eval_split": args.eval_split,
               **info}
        with args.out.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        print(f"{rid}: {row['metrics']} ({seconds:.1f} s)", flush=True)


#: sample seeds whose fit and calibration examples a validation split never holds (the reported studies' seeds);
#: other seeds, on a validation run, sample from the fit split less the validation examples
VALIDATION_EXCLUDES_SEEDS = (0, 1, 2)
#: a validation example has at least this many words: SST-2's train split holds every sub-sentence phrase of its
#: parse trees, its dev split whole sentences (median ~19 words); short phrases would validate another task
VALIDATION_MIN_WORDS = 10


def validation_examples(pool: list, dev: list, n: int, samples: int, calibration: int) -> list:
    """``n`` class-balanced examples of the fit split, for CHOOSING a recipe without looking at the reported dev
    split: none is a fit or calibration example of seeds 0-2 (at these sizes) or a dev text, and each has at least
    ``VALIDATION_MIN_WORDS`` words where that leaves enough (seeded, so every run validates on the same set)."""
    used = {(e.text, e.prompt) for e in dev}
    for seed in VALIDATION_EXCLUDES_SEEDS:
        fit = tp.sample_k_shot(pool, samples, seed=seed)
        used |= {(e.text, e.prompt) for e in calibration_examples(pool, fit, calibration, seed)}
    rest = [e for e in pool if (e.text, e.prompt) not in used]
    long = [e for e in rest if len(e.text.split()) >= VALIDATION_MIN_WORDS]
    return tp.sample_k_shot(long if len(long) >= 2 * n else rest, n, seed=10_007)


def _repair_config(repair: str | None) -> RepairConfig | None:
    """A variant's repair: ``mode``, ``mode+centred`` (a bias added where the consumer has none) or
    ``mode+sequential`` (forward order on the pruned model's inputs); None: the method's own."""
    if repair is None:
        return None
    mode, _, extra = repair.partition("+")
    return RepairConfig(mode, centred=extra == "centred", sequential=extra == "sequential")


def _repairs(variant: str) -> bool:
    """Whether the variant repairs, i.e. depends on the calibration inputs (the dense model does not)."""
    return variant in VARIANTS and resolve_method(*VARIANTS[variant])[2] != "none"  # dense and peers' rows: no


def _calibration_suffix(n: int, variant: str) -> str:
    """Row-id suffix of a non-default calibration size (rows at the default keep their historical ids); the
    dense model and variants without repair do not depend on it."""
    return f"-cal{n}" if _repairs(variant) and n != DEFAULT_CALIBRATION else ""


def _calibration(row: dict) -> int:
    return int(row.get("calibration", DEFAULT_CALIBRATION))


# ----- report ------------------------------------------------------------------------------------------------------
def _runs(rows: list[dict]) -> np.ndarray:
    """[runs, eval examples] 0/1 of rows that evaluated one eval set (seeds and trials are the runs)."""
    outs = [row_outcomes(r) for r in rows]
    if len({o[0] for o in outs}) != 1:
        raise SystemExit(f"rows {[r['id'] for r in rows]} evaluated different eval sets: cannot pair them")
    return as_runs([o[1] for o in outs])


#: a row removing this much less than its budget is marked in the tables
UNDER_BUDGET = 0.02


def _removed_share(row: dict, dense: dict) -> float:
    """Fraction of the dense model's prunable parameters the row's pruned model no longer has (NaN: a row written
    without parameter counts)."""
    if "prunable" not in row or "prunable" not in dense:
        return float("nan")
    return 1 - row["prunable"] / dense["prunable"]


def report(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    all_rows = [json.loads(x) for x in args.out.read_text().splitlines() if x.strip()]
    # the main table compares recipes at the default calibration; other sizes get their own section
    rows = [r for r in all_rows if not _calibration_suffix(_calibration(r), r["variant"])]
    out = args.report
    out.mkdir(parents=True, exist_ok=True)
    tasks = [t for t in args.tasks if any(r["task"] == t for r in rows)]
    lines = ["# Beyond the paper: repair and layer-adaptive rates (generated by scripts/beyond_study.py --report)", ""]
    model = rows[0]["model"] if rows else "?"
    lines += [f"Model `{model}`; budget = fraction of the prunable parameters removed from all modules (both of an encoder-decoder); "
              f"{args.samples} class-balanced fit examples per sample seed; cells are mean accuracy over the seeds "
              "measured (RP: over its 5 trials too), with the number of runs in brackets. Wall time: compress only "
              "(scoring + allocation + repair), model loading and evaluation excluded.", ""]
    fig, axes = plt.subplots(1, max(1, len(tasks)), figsize=(5 * max(1, len(tasks)), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        trows = [r for r in rows if r["task"] == task]
        dense = next((r for r in trows if r["variant"] == "dense"), None)
        budgets = sorted({r["budget"] for r in trows if r["variant"] != "dense"})
        lines += [f"## {task.upper()}" + (f" (dense {dense['metrics']['accuracy']:.2f}, {dense['n_eval']} eval "
                                          "examples)" if dense else ""), ""]
        lines += ["| method | " + " | ".join(str(b) for b in budgets) + " | compress s (mean) |",
                  "|---|" + "---:|" * (len(budgets) + 1)]
        removed_lines: list[str] = []
        for v in [*VARIANTS, *PEER_ROWS, *EARLIER_ROWS]:
            vrows = [r for r in trows if r["variant"] == v]
            if not vrows:
                continue
            cells, ys, shares = [], [], []
            for b in budgets:
                br = [r for r in vrows if r["budget"] == b]
                if br:
                    m = statistics.fmean(r["metrics"]["accuracy"] for r in br)
                    got = statistics.fmean(_removed_share(r, dense) for r in br) if dense else float("nan")
                    short = got < b - UNDER_BUDGET
                    cells.append(f"{m:.2f} ({len(br)})" + (" †" if short else ""))
                    shares.append("" if math.isnan(got) else f"{got:.3f}")
                    ys.append(m)
                else:
                    cells.append("")
                    shares.append("")
                    ys.append(float("nan"))
            secs = statistics.fmean(r["compress_seconds"] for r in vrows)
            lines.append(f"| {v} | " + " | ".join(cells) + f" | {secs:.1f} |")
            removed_lines.append(f"| {v} | " + " | ".join(shares) + " |")
            ax.plot(budgets, ys, marker="o", label=v)
        named = {**PEER_ROWS, **EARLIER_ROWS}
        lines += [""] + [f"- {v}: {named[v]}" for v in named if any(r["variant"] == v for r in trows)]
        lines += ["", f"† removed less than the budget by more than {UNDER_BUDGET} (the measured fraction below). "
                  "Measured fraction of the prunable parameters removed (1 - the pruned model's prunable parameters "
                  "/ the dense model's, mean over the runs): a uniform rate removes units, not parameters, and a "
                  "decoder-only head's key/value block leaves only with its whole key/value group; rows written "
                  "before 2026-12-03's accounting fix under-pruned where a global allocation cut heads.", "",
                  "| method | " + " | ".join(str(b) for b in budgets) + " |", "|---|" + "---:|" * len(budgets),
                  *removed_lines]
        if dense:
            ax.axhline(dense["metrics"]["accuracy"], color="k", ls="--", lw=0.8, label="dense")
        ax.set_title(task.upper())
        ax.set_xlabel("fraction of prunable parameters removed")
        ax.set_ylabel("accuracy")
        lines += ["", "Paired tests over the eval examples (`taskprune.experiments.stats.paired_compare`: exact McNemar "
                  "when each side is one run, else a two-level paired bootstrap over examples and seeds); p-values "
                  "Holm-adjusted over this table; verdict at adjusted p < 0.05:", "",
                  "| budget | A | B | A - B (points) | 95 % CI | test | p | Holm p | verdict |",
                  "|---:|---|---|---:|---|---|---:|---:|---|"]
        tests = []
        for b in budgets:
            for a_name, b_name in COMPARISONS:
                ra = [r for r in trows if r["variant"] == a_name and r["budget"] == b]
                rb = [r for r in trows if r["variant"] == b_name and r["budget"] == b]
                if ra and rb:
                    tests.append((b, a_name, b_name, paired_compare(_runs(ra), _runs(rb))))
        for (b, a_name, b_name, c), p_adj in zip(tests, holm([t[3].p for t in tests])):
            verdict = ("no significant difference" if p_adj >= 0.05 else "A better" if c.diff > 0 else "B better")
            lines.append(f"| {b} | {a_name} | {b_name} | {c.diff:+.2f} | [{c.ci[0]:+.2f}, {c.ci[1]:+.2f}] | {c.test} "
                         f"| {c.p:.3g} | {p_adj:.3g} | {verdict} |")
        lines.append("")
    lines += _pooled_section(rows, tasks)
    lines += _calibration_section(all_rows, tasks, out, plt, args.samples)
    shared_legend(fig, axes, panel_height=4)
    fig.savefig(out / "accuracy_vs_budget.png", dpi=120)
    lines += ["![accuracy vs budget](accuracy_vs_budget.png)", ""]
    (out / "TABLES.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {out / 'TABLES.md'} and {out / 'accuracy_vs_budget.png'}")


#: the headline comparisons, also tested pooled over the budgets
POOLED = COMPARISONS[:3]


def _pooled_section(rows: list[dict], tasks: list[str]) -> list[str]:
    """taskprune against each peer, its per-budget differences averaged into one test per task: "better over the
    budgets measured", which a per-budget family (Holm over many tests on a small eval set) can leave unanswered."""
    tests = []
    for task in tasks:
        for a_name, b_name in POOLED:
            points, budgets = [], []
            for b in sorted({r["budget"] for r in rows if r["task"] == task and r["variant"] != "dense"}):
                ra = [r for r in rows if r["task"] == task and r["variant"] == a_name and r["budget"] == b]
                rb = [r for r in rows if r["task"] == task and r["variant"] == b_name and r["budget"] == b]
                if ra and rb:
                    points.append(Point(_runs(ra), _runs(rb), examples=task))
                    budgets.append(b)
            if points:
                tests.append((task, a_name, b_name, budgets, Comparisons(points).pooled()))
    if not tests:
        return []
    lines = ["## Pooled over the budgets", "",
             "Each peer against taskprune once per task: the mean of the per-budget differences, paired over eval "
             "examples and seeds (one bootstrap resampling the examples for every budget together), Holm-adjusted "
             "over this table. Added after the per-budget tables (2026-12-01), when minilm-glue6 RTE's 27 "
             "per-budget tests left every verdict open: it asks whether taskprune is better over the budgets "
             "measured, not at each one.", "",
             "| task | A | B | budgets | A - B (points, mean over budgets) | 95 % CI | p | Holm p | verdict |",
             "|---|---|---|---|---:|---|---:|---:|---|"]
    for (task, a_name, b_name, budgets, c), p_adj in zip(tests, holm([t[4].p for t in tests])):
        verdict = "no significant difference" if p_adj >= 0.05 else "A better" if c.diff > 0 else "B better"
        lines.append(f"| {task.upper()} | {a_name} | {b_name} | {', '.join(map(str, budgets))} | {c.diff:+.2f} | "
                     f"[{c.ci[0]:+.2f}, {c.ci[1]:+.2f}] | {c.p:.3g} | {p_adj:.3g} | {verdict} |")
    return lines + [""]


def _calibration_section(rows: list[dict], tasks: list[str], out: Path, plt: Any, samples: int) -> list[str]:
    """How many unlabelled calibration inputs repair needs: accuracy per calibration size (``samples`` = the
    scoring examples only, no unlabelled inputs), each size paired-tested against the default (Holm-adjusted)."""
    default = DEFAULT_CALIBRATION
    groups: dict[tuple[str, str, float], dict[int, list[dict]]] = {}
    for r in rows:
        if _repairs(r["variant"]):
            groups.setdefault((r["task"], r["variant"], r["budget"]), {}).setdefault(_calibration(r), []).append(r)
    groups = {k: v for k, v in groups.items() if len(v) > 1 and default in v and k[0] in tasks}
    if not groups:
        return []
    lines = ["## Calibration inputs for repair", "",
             "Repair re-solves the kept weights on unlabelled task inputs: the scoring examples first, then "
             f"others drawn from the task's fit split (labels unused). A size of {samples} means the scoring examples "
             "alone. Cells: mean accuracy over the sample seeds (runs in brackets); A - B is each size against the "
             f"default {default}, paired over eval examples and seeds, Holm-adjusted over this table.", "",
             "| task | recipe | budget | calibration inputs | accuracy | compress s | vs " + str(default) +
             " (points) | 95 % CI | Holm p | verdict |", "|---|---|---:|---:|---:|---:|---:|---|---:|---|"]
    tests, cells = [], []
    for (task, variant, budget), by_n in sorted(groups.items()):
        for n in sorted(by_n):
            rs = by_n[n]
            c = paired_compare(_runs(rs), _runs(by_n[default])) if n != default else None
            cells.append((task, variant, budget, n, rs, c))
            if c is not None:
                tests.append(c.p)
    adjusted = iter(holm(tests))
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for task, variant, budget, n, rs, c in cells:
        acc = statistics.fmean(r["metrics"]["accuracy"] for r in rs)
        secs = statistics.fmean(r["compress_seconds"] for r in rs)
        if c is None:
            lines.append(f"| {task} | {variant} | {budget} | {n} | {acc:.2f} ({len(rs)}) | {secs:.1f} | (reference) | | | |")
        else:
            p_adj = next(adjusted)
            verdict = "no significant difference" if p_adj >= 0.05 else "better" if c.diff > 0 else "worse"
            lines.append(f"| {task} | {variant} | {budget} | {n} | {acc:.2f} ({len(rs)}) | {secs:.1f} | {c.diff:+.2f} "
                         f"| [{c.ci[0]:+.2f}, {c.ci[1]:+.2f}] | {p_adj:.3g} | {verdict} |")
    for (task, variant, budget), by_n in sorted(groups.items()):
        ns = sorted(by_n)
        ax.plot(ns, [statistics.fmean(r["metrics"]["accuracy"] for r in by_n[n]) for n in ns], marker="o",
                label=f"{task} {variant} @{budget}")
    ax.set_xscale("log")
    ax.set_xlabel("calibration inputs for repair")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "calibration.png", dpi=120)
    plt.close(fig)
    return lines + ["", "![accuracy vs calibration inputs](calibration.png)", ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(tp.api.default_model_dir() or "minilm-glue6"))
    ap.add_argument("--tasks", nargs="+", default=["sst2", "rte", "mrpc"])
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--calibration", type=POSITIVE_INT, default=DEFAULT_CALIBRATION)
    ap.add_argument("--eval-examples", type=int, default=0, help="cap on eval examples (0: the whole split)")
    ap.add_argument("--eval-split", choices=["dev", "validation"], default="dev",
                    help="dev: the reported split; validation: examples of the fit split held out from every seed's "
                         "fit and calibration examples, to choose a recipe on (keep its rows in their own --out)")
    ap.add_argument("--validation-size", type=POSITIVE_INT, default=300)
    ap.add_argument("--validation-excludes", type=POSITIVE_INT, default=None,
                    help="the calibration size whose inputs (seeds 0-2) the validation split leaves out (default: "
                         "--calibration); give the largest size compared so that every size validates on one set")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("reports/beyond/results.jsonl"))
    ap.add_argument("--report", type=Path, default=None, help="write TABLES.md and the plot here from --out's rows")
    args = ap.parse_args()
    (report if args.report else run)(args)


if __name__ == "__main__":
    main()
