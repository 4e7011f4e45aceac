"""From a sweep's rows to a Markdown report with PNG figures (the paper's Figures 2-5 and Table 1).

Every experiment is drawn according to what its runs vary, read from the rows themselves:

- module scopes (``setting`` = encoder / decoder / all): accuracy vs rate, a panel per task and module, a line
  per method (and per example count where several were run), ± one std band over seeds (Fig. 2, 4a, 4b);
- an encoder x decoder rate grid (``enc=..,dec=..``): a heatmap per task (Fig. 3);
- unseen domain (scored on one task, evaluated on another): a panel per evaluated task, a line per scored task (Fig. 4c);
- layer types or depths (``module:ffn``, ``module:low``): a panel per task and module, a line per part (Fig. 5);
- Table 1: the std over trial seeds of the random methods, per task and module, averaged over rates;
- "The paper's claims, checked": one verdict per claim the rows can test, decided by paired tests over the eval
  examples (:mod:`.claims`, :mod:`.stats`).

The last row of each run id wins (a failed run retried later replaces its error row).
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import TaskpruneError
from ..files import atomic_write_text, check_writable
from .claims import TOLERANCE, Claim, check_claims, unpaired_rows
from .results import METRIC, dense_accuracy, latest_rows, row_kind, row_rate
from .stats import ALPHA


def _task_label(task: str) -> str:
    return Path(task).stem.upper() if Path(task).suffix else task.upper()


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _line_label(row: dict[str, Any], vary_samples: bool) -> str:
    label = row["method"]
    if vary_samples and row["samples"] not in (0, None):
        label += f" ({row['samples']} ex)"
    return label


def _curves(rows: list[dict[str, Any]], line_of, x_of) -> dict[str, list[tuple[float, float, float, int]]]:
    """{line: [(x, mean, std, n)]} over the seeds at each x."""
    points: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        points[line_of(r)][x_of(r)].append(r["metrics"][METRIC])
    return {line: [(x, *_mean_std(v), len(v)) for x, v in sorted(xs.items())] for line, xs in points.items()}


def _line_plot(ax, curves, dense: float | None, title: str, xlabel: str) -> None:
    if dense is not None:
        ax.axhline(dense, color="black", linestyle="--", linewidth=1, label="dense")
    for line, pts in sorted(curves.items()):
        xs = [p[0] for p in pts]
        means = [p[1] for p in pts]
        drawn = ax.plot(xs, means, marker="o", markersize=3, label=line)[0]
        if any(p[2] for p in pts):
            ax.fill_between(xs, [p[1] - p[2] for p in pts], [p[1] + p[2] for p in pts], color=drawn.get_color(),
                            alpha=0.15)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{METRIC} (%)")
    ax.grid(alpha=0.3)


def shared_legend(fig: Any, axes: Any, panel_height: float) -> None:
    """One legend below all panels (each line once, in first-seen order) and a layout that leaves it room: panels
    that share their lines should not each repeat the same legend."""
    rows, cols = axes.shape
    handles: dict[str, Any] = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    if not handles:
        fig.tight_layout()
        return
    # about two entries fit per panel's width: a one-panel figure gets a legend of several short rows, not one
    # row wider than the figure
    ncol = max(1, min(len(handles), 2 * cols, 6))
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=ncol, fontsize=8,
               bbox_to_anchor=(0.5, 0.0))
    legend_rows = -(-len(handles) // ncol)
    fig.tight_layout(rect=(0, min(0.4, 0.02 + 0.24 * legend_rows / (panel_height * rows)), 1, 1))


def _figure(panels: list[tuple[str, Any]], path: Path, xlabel: str, dense: dict[str, float], ncols: int = 3) -> None:
    """``panels`` = [(title, (eval task, curves))]; one PNG with a shared legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(panels)
    cols = min(ncols, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.8 * rows), squeeze=False)
    for ax, (title, (task, curves)) in zip(axes.flat, panels):
        _line_plot(ax, curves, dense.get(task), title, xlabel)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    shared_legend(fig, axes, panel_height=3.8)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def grid_cells(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str, str], dict[tuple[float, float], float]]:
    """Mean accuracy per (encoder rate, decoder rate), one panel per (scored task, eval task, method, examples):
    only seeds are averaged within a cell."""
    acc: dict[tuple, dict[tuple[float, float], list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        mr = r["rates"]["module_rates"]
        acc[(r["task"], r["eval_task"], r["method"], str(r["samples"]))][(mr["encoder"], mr["decoder"])].append(
            r["metrics"][METRIC])
    return {k: {c: statistics.fmean(v) for c, v in cells.items()} for k, cells in sorted(acc.items())}


def _heatmap(rows: list[dict[str, Any]], path: Path, dense: dict[str, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = grid_cells(rows)
    several_methods = len({p[2] for p in panels}) > 1
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2), squeeze=False)
    for ax, (panel, cells) in zip(axes[0], panels.items()):
        src, task, method, samples = panel
        enc = sorted({k[0] for k in cells})
        dec = sorted({k[1] for k in cells})
        grid = [[cells.get((e, d), float("nan")) for d in dec] for e in enc]
        im = ax.imshow(grid, origin="lower", cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(dec)), [f"{d:g}" for d in dec])
        ax.set_yticks(range(len(enc)), [f"{e:g}" for e in enc])
        ax.set_xlabel("decoder rate")
        ax.set_ylabel("encoder rate")
        ref = f" (dense {dense[task]:.1f})" if task in dense else ""
        name = _task_label(task) if src == task else f"{_task_label(src)} → {_task_label(task)}"
        extra = f", {method}" if several_methods else ""
        ax.set_title(f"{name}{extra} ({samples} ex): {METRIC}{ref}", fontsize=10)
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7, color="white")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _table(curves_by_panel: dict[str, dict[str, list]], rates_header: list[float]) -> list[str]:
    lines = ["| panel | line | " + " | ".join(f"{x:g}" for x in rates_header) + " |",
             "|---|---|" + "---:|" * len(rates_header)]
    for panel, curves in curves_by_panel.items():
        for line, pts in sorted(curves.items()):
            by_x = {p[0]: p for p in pts}
            cells = [(f"{by_x[x][1]:.2f}" + (f" ± {by_x[x][2]:.2f}" if by_x[x][3] > 1 else "")) if x in by_x else "–"
                     for x in rates_header]
            lines.append(f"| {panel} | {line} | " + " | ".join(cells) + " |")
    return lines


def write_report(results: str | Path | Sequence[str | Path], out_dir: str | Path, overwrite: bool = False,
                 title: str | None = None, notes: str | Path | None = None) -> Path:
    """Markdown (README.md) and one PNG per experiment, written atomically into ``out_dir``, from one results file
    or several of one model (the last row of a run id wins: :func:`~.results.latest_rows`).

    The folder is updated, not rebuilt: each file the report writes replaces its old version atomically, the
    figures a previous report wrote (listed in ``.taskprune-report``) and this one no longer draws are removed,
    and every other file (the results file itself, even while a sweep appends to it; configs; notes) is left
    alone. ``notes`` (a Markdown file) is appended to the README: the hand-written reading of the numbers.
    """
    out = check_writable(out_dir, folder=True, update=True)  # before any reading or drawing
    if (out / "README.md").exists() and not overwrite:
        raise TaskpruneError(f"{out} already holds a report; pass --overwrite (overwrite=True) to replace it")
    rows = latest_rows(results)
    note_text = _read_notes(notes)
    dense = dense_accuracy(rows)
    experiments = list(dict.fromkeys(r["experiment"] for r in rows if r["experiment"] != "dense"))
    run_hours = sum(float(r.get("seconds", 0.0)) for r in rows) / 3600

    def write(tmp: Path) -> None:
        sources = " + ".join(f"`{p}`" for p in ([results] if isinstance(results, (str, Path)) else results))
        md = [f"# {title or 'Sweep report'}", "", f"From {sources} ({len(rows)} runs, {run_hours:.2f} h of run time "
              f"summed over rows). Metric: {METRIC} (%) on each task's eval split; dashed line = the dense model; "
              "bands = ± one sample std over seeds.", ""]
        if dense:
            md += ["Dense model: " + ", ".join(f"{_task_label(t)} {v:.2f}" for t, v in sorted(dense.items())), ""]
        for exp in experiments:
            erows = [r for r in rows if r["experiment"] == exp]
            kinds = {row_kind(r) for r in erows}
            md += [f"## {exp}", ""]
            png = f"{exp}.png"
            if kinds == {"grid"}:
                _heatmap(erows, tmp / png, dense)
                md += [f"![{exp}]({png})", ""]
                continue
            unseen = "unseen" in kinds and kinds <= {"unseen", "module"}
            vary_samples = len({r["samples"] for r in erows if r["samples"] not in (0, None)}) > 1
            panels: dict[str, tuple[str, dict]] = {}
            for key in sorted({(r["task"], r["eval_task"], r["setting"].split(":")[0]) for r in erows}):
                task, eval_task, module = key
                sel = [r for r in erows if (r["task"], r["eval_task"], r["setting"].split(":")[0]) == key]
                several = len({x["method"] for x in erows}) > 1
                if kinds <= {"layer_type", "depth"}:
                    line_of = lambda r: r["setting"].split(":", 1)[1] + (f", {_line_label(r, vary_samples)}" if several or vary_samples else "")
                elif unseen:
                    line_of = lambda r: f"scored on {_task_label(r['task'])}" + (f", {_line_label(r, vary_samples)}" if several or vary_samples else "")
                else:
                    line_of = lambda r: _line_label(r, vary_samples)
                name = f"{_task_label(task)} → {_task_label(eval_task)}" if task != eval_task else _task_label(task)
                panels[f"{name}, {module}"] = (eval_task, _curves(sel, line_of, row_rate))
            if unseen:  # one panel per evaluated task: lines are the scored tasks (its own = the reference)
                merged: dict[str, tuple[str, dict]] = {}
                for title_, (eval_task, curves) in panels.items():
                    module = title_.rsplit(", ", 1)[1]
                    key_ = f"evaluated on {_task_label(eval_task)}, {module}"
                    merged.setdefault(key_, (eval_task, {}))[1].update(curves)
                panels = merged
            _figure(list(panels.items()), tmp / png, "pruning rate", dense)
            md += [f"![{exp}]({png})", ""]
            rates = sorted({row_rate(r) for r in erows})
            md += _table({t: c for t, (_, c) in panels.items()}, rates) + [""]
        md += _std_table(rows)
        md += claims_section(rows)
        if note_text:
            md += [note_text.rstrip(), ""]
        (tmp / "README.md").write_text("\n".join(md) + "\n", encoding="utf-8")

    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".report.", suffix=".tmp", dir=out))
    try:
        write(tmp)
        made = sorted(f.name for f in tmp.iterdir())
        manifest = out / MANIFEST
        before = manifest.read_text(encoding="utf-8").split() if manifest.is_file() else []
        for name in made:
            os.replace(tmp / name, out / name)
        for name in set(before) - set(made):
            (out / name).unlink(missing_ok=True)
        atomic_write_text(manifest, "\n".join(made) + "\n", overwrite=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


MANIFEST = ".taskprune-report"  # the files the last report wrote into its folder


def _read_notes(notes: str | Path | None) -> str:
    if notes is None:
        return ""
    path = Path(notes)
    if not path.is_file():
        raise TaskpruneError(f"notes file {path} not found")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise TaskpruneError(f"notes file {path} is not UTF-8 text") from None


def _std_table(rows: list[dict[str, Any]]) -> list[str]:
    """Table 1: std over trial seeds of the random methods, per task and module, averaged over rates."""
    groups: dict[tuple[str, str, str], dict[tuple, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if row_kind(r) == "module" and r["method"] in ("random", "random-attribution"):
            groups[(r["task"], r["setting"], r["method"])][(r["experiment"], row_rate(r), r["samples"],
                                                             r["sample_seed"])].append(r["metrics"][METRIC])
    if not groups:
        return []
    lines = ["## Std of the random methods over trial seeds (Table 1)", "",
             "Mean over rates of the sample std across trial seeds (rate 0 and 1 excluded: nothing random there).", "",
             "| task | module | method | mean std | trials |", "|---|---|---|---:|---:|"]
    for (task, module, method), cells in sorted(groups.items()):
        stds = [statistics.stdev(v) for (_, rate, _, _), v in cells.items() if len(v) > 1 and 0 < rate < 1]
        if stds:
            n = max(len(v) for v in cells.values())
            lines.append(f"| {_task_label(task)} | {module} | {method} | {statistics.fmean(stds):.2f} | {n} |")
    return lines + [""]


def _claim_row(claim: Claim) -> str:
    """One row of the claims table."""
    cells = (c.replace("|", "\\|") for c in (claim.text, claim.evidence))  # |x| must not split the table
    text, evidence = cells
    return f"| {text} | **{claim.verdict}** | {evidence} |"


#: how the verdicts are decided, stated above the claims table (the code that decides them: :mod:`.claims`)
RULES = (
    "Verdicts come from paired tests over the eval examples (`taskprune/experiments/stats.py`), never from counting "
    "wins of any size: exact McNemar when each side is one run; a two-level paired bootstrap (10,000 replicates "
    "resampling the eval examples and, where a side has several seeds, its seeds; seed 0) otherwise. "
    f"The p-values of one claim's tests are Holm-adjusted together; alpha = {ALPHA:g}. "
    "\"Beats\"/\"better\"/\"more robust\" = significantly higher at more than half of the compared points; "
    "\"matters more\"/\"hurts most\" = pruning it costs significantly more, pooled over the rates both were run at. "
    f"\"≈\" = the one-sided 95 % upper bound of the mean absolute gap over the points ≤ {TOLERANCE:g} accuracy "
    "points (TOST-style: shown close, not merely not shown different); \"does not hold\" when its lower bound is "
    f"above {TOLERANCE:g}, \"inconclusive\" in between. \"As good as\" and \"can go\" = shown at most "
    f"{TOLERANCE:g} points worse (one-sided non-inferiority test), \"does not hold\" when shown more than "
    f"{TOLERANCE:g} points worse where it matters, \"inconclusive\" in between; for \"beats\" and \"matters "
    "more\", \"does not hold\" means not shown. Brackets are 95 % intervals of the difference "
    "in accuracy points; means are over seeds; rates 0 and 1 are left out of method comparisons. Rows recorded "
    "without per-example outcomes (older sweeps) give \"not tested\": re-run the sweep. "
    "Code: `taskprune/experiments/claims.py`."
)


def claims_section(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown: the claims table, or nothing when no claim can be tested."""
    claims = check_claims(rows)
    if all(c.verdict == "not measured" for c in claims):
        return []
    left_out = unpaired_rows(rows)
    note = (f" {left_out} of the {len(rows)} rows were recorded without per-example outcomes (an older sweep): "
            "each claim is judged on the rows that have them, and only a claim with none of its rows among them "
            "falls back to the older rows (\"not tested\")." if left_out else "")
    return ["## The paper's claims, checked", "", RULES + note, "",
            "| claim | verdict | our numbers |", "|---|---|---|", *(_claim_row(c) for c in claims), ""]
