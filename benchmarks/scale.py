"""How taskprune's cost grows with model size: random-weight decoder-only LMs of published shapes, 135M to 3B.

    python benchmarks/scale.py [--sizes smollm2-135m smollm2-360m ...] [--out benchmarks/scale/results.jsonl]
    python benchmarks/scale.py --report benchmarks/scale            # table, log-log fit and plot from the rows

Nothing is downloaded: each shape is written below from its published config (hidden size, layers, query heads, KV
heads, FFN width, vocabulary, tied embeddings) and built with random weights (transformers' own initialisation,
seeded), float32 where the size allows, bfloat16 above ``--bf16-above`` parameters (said per row). Costs of
attribution scoring and pruning depend on the shapes, not on the weights' values; accuracy is not measured here.
Scoring reads ``--examples`` real SST-2 fit-split sentences (../shared/data; a built-in fallback without it),
tokenised by SmolLM2's tokenizer (every id is < 49,152, valid in each vocabulary).

Per size, in one run (three fresh processes: the two memory probes, then the timings):
- scoring time (the default ScoreConfig: gates + activation checkpointing) and the bare forward+backward of the
  same batches, plain and recomputing its blocks as scoring does, after one warm bare pass, in ``--score-rounds``
  rounds of all three with the order rotated per round; medians of the times and of each round's ratios;
- compress wall time of the default recipe at ``--budget`` (``--method taskprune``: attribution scores of the 10
  examples and, self-labelled, of the other calibration inputs, its global allocation, least-squares repair on
  128 calibration inputs), the rest of it (the method's steps, ``CompressResult.scoring_seconds``, less the
  10-example scoring time above: self-labelling, allocation and repair) and its peak RSS; in place
  (``inplace=True``, as the CLI runs it; rows before 2026-12-04 05:30 UTC compressed a copy and are marked so),
  the dense model rebuilt from its seed afterwards;
- peak RSS of scoring and of inference over the same batches (VmHWM reset after loading);
- pruned vs dense forward latency at batch 1 and 16 and greedy generation tokens/s at batch 1 (KV cache), in
  adjacent, order-alternating pairs (ratios are medians of per-pair ratios).
Rows are appended to ``--out`` as they finish (a killed run resumes at the next size).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _examples, _rss_kb, bare_forward_backward  # noqa: E402

import taskprune as tp  # noqa: E402
from taskprune.api import scoring_job  # noqa: E402
from taskprune.cli.options import POSITIVE_INT  # noqa: E402
from taskprune.evaluate import rank_scores  # noqa: E402
from taskprune.recipe import DEFAULT_CALIBRATION, calibration_examples  # noqa: E402
from taskprune.runtime.timing import paired_seconds, round_robin, timed  # noqa: E402
from taskprune.scoring.hooks import checkpointed  # noqa: E402


@dataclass(frozen=True)
class Shape:
    """A published decoder-only configuration (transformers' config names in :meth:`config`)."""

    family: str  # transformers model_type
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    tied: bool = True
    rope_theta: float = 10000.0

    def config(self):  # noqa: ANN201
        from transformers import AutoConfig

        return AutoConfig.for_model(
            self.family, hidden_size=self.hidden, num_hidden_layers=self.layers, num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads, intermediate_size=self.ffn, vocab_size=self.vocab,
            tie_word_embeddings=self.tied, rope_theta=self.rope_theta, max_position_embeddings=2048,
            pad_token_id=0, bos_token_id=1, eos_token_id=2)


#: from the models' published config.json files (SmolLM2: HuggingFaceTB; Qwen2.5: Qwen; Llama 3.2: meta-llama);
#: every one ties its input and output embeddings
SHAPES: dict[str, Shape] = {
    "smollm2-135m": Shape("llama", 576, 30, 9, 3, 1536, 49152, rope_theta=100000.0),
    "smollm2-360m": Shape("llama", 960, 32, 15, 5, 2560, 49152, rope_theta=100000.0),
    "qwen2.5-0.5b": Shape("qwen2", 896, 24, 14, 2, 4864, 151936, rope_theta=1000000.0),
    "llama-3.2-1b": Shape("llama", 2048, 16, 32, 8, 8192, 128256, rope_theta=500000.0),
    "qwen2.5-1.5b": Shape("qwen2", 1536, 28, 12, 2, 8960, 151936, rope_theta=1000000.0),
    "llama-3.2-3b": Shape("llama", 3072, 28, 24, 8, 8192, 128256, rope_theta=500000.0),
    "tiny": Shape("llama", 32, 2, 4, 2, 48, 49152),  # the tests' smoke shape (not reported)
}


def build(shape: Shape, bf16_above: float) -> tuple[torch.nn.Module, str]:
    """The random-weight model (seeded) and its dtype's name."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device("meta"):
        n = sum(p.numel() for p in AutoModelForCausalLM.from_config(shape.config()).parameters())
    dtype = torch.bfloat16 if n > bf16_above else torch.float32
    model = AutoModelForCausalLM.from_config(shape.config(), dtype=dtype).eval()
    return model, str(dtype).removeprefix("torch.")


def _inputs(args: argparse.Namespace) -> tuple:
    tok = tp.load_tokenizer(args.tokenizer)
    task = tp.get_task("sst2")
    data = args.data_dir if args.data_dir and Path(args.data_dir).exists() else None
    fit = _examples("sst2", data, "fit", args.examples)
    pool = tp.load_examples(task, "fit", data) if data else fit
    return tok, task, fit, calibration_examples(pool, fit, args.calibration, 0)


def probe(args: argparse.Namespace) -> dict:
    """Child: peak RSS of scoring or of inference over the scoring batches (VmHWM reset after loading)."""
    model, _ = build(SHAPES[args.child], args.bf16_above)
    tok, task, fit, _ = _inputs(args)
    job = scoring_job(model, tok, task, fit, batch_size=args.batch_size)
    with torch.no_grad():
        rank_scores(model, next(iter(job.batches)), job.labels)  # allocator warm
    Path("/proc/self/clear_refs").write_text("5")
    base = _rss_kb("VmRSS")
    if args.probe == "score":
        tp.score(model, tok, task, fit, batch_size=args.batch_size)
    else:
        with torch.no_grad():
            for b in job.batches:
                rank_scores(model, b, job.labels)
    return {"base_kb": base, "peak_kb": _rss_kb("VmHWM")}


def _compress(args: argparse.Namespace, model: torch.nn.Module, tok: Any, task: Any, fit: list, calib: list) -> tuple:
    """The default compress in place, as `taskprune compress` runs it (the process holds the model, the solved
    consumers at the kept width and the repair's statistics, not a second model): its row fields and result."""
    Path("/proc/self/clear_refs").write_text("5")
    base = _rss_kb("VmRSS")
    t0 = time.perf_counter()
    res = tp.compress(model, tok, task, fit, tp.RateSpec(rate=args.budget), calibration=calib,
                      batch_size=args.batch_size, inplace=True)
    return {"compress_s": time.perf_counter() - t0, "compress_scoring_s": res.scoring_seconds,
            "compress_base_kb": base, "compress_peak_kb": _rss_kb("VmHWM"), "compress_inplace": True,
            "self_labelled": res.plan.self_labelled or 0,  # the default recipe's self-labelled inputs (2026-12-04)
            "pruned_params": sum(p.numel() for p in res.model.parameters())}, res


def compress_probe(args: argparse.Namespace) -> dict:
    """Child of ``--compress-only``: the default compress in place and its peak RSS, nothing else. For a size whose
    timing pairs need the dense and the pruned model at once beyond this machine's memory (3B in float32: 12.8 GB
    + ~7 GB), this still answers whether the default compress fits and what it costs."""
    model, dtype = build(SHAPES[args.child], args.bf16_above)
    tok, task, fit, calib = _inputs(args)
    params = sum(p.numel() for p in model.parameters())
    fields, _ = _compress(args, model, tok, task, fit, calib)
    return {"dtype": dtype, "params": params, **fields, "compress_only": True}


def main_child(args: argparse.Namespace) -> dict:
    """Child: the timings (scoring, bare passes, compress, latency pairs, generation)."""
    model, dtype = build(SHAPES[args.child], args.bf16_above)
    tok, task, fit, calib = _inputs(args)
    job = scoring_job(model, tok, task, fit, batch_size=args.batch_size)
    batches = list(job.batches)
    row: dict = {"dtype": dtype, "params": sum(p.numel() for p in model.parameters())}

    def bare() -> None:
        bare_forward_backward(model, batches, job.labels)

    def recomputing() -> None:
        with checkpointed(model):
            bare()

    with torch.enable_grad():
        bare()  # warm: the process's first backward pays set-up
        runs = round_robin([timed(lambda: tp.score(model, tok, task, fit, batch_size=args.batch_size)), timed(bare),
                            timed(recomputing)], args.score_rounds)
    for key, times in zip(("scoring_s", "bare_s", "bare_recompute_s"), runs):
        row[key] = statistics.median(times)
        row[key.removesuffix("_s") + "_runs_s"] = [round(t, 3) for t in times]
    # each round's bare ÷ scoring, then the median: a round's three passes saw the same machine
    row["bare_ratio"] = statistics.median(b / s for b, s in zip(runs[1], runs[0]))
    row["bare_recompute_ratio"] = statistics.median(b / s for b, s in zip(runs[2], runs[0]))
    fields, res = _compress(args, model, tok, task, fit, calib)
    row.update(fields)
    pruned = res.model
    del res, model
    model, _ = build(SHAPES[args.child], args.bf16_above)  # the dense model again (seeded: the same weights)
    enc = tok([e.prompt or e.text for e in fit], return_tensors="pt", padding=True)
    for bs in (1, 16):
        reps = -(-bs // len(fit))
        ids = enc.input_ids.repeat(reps, 1)[:bs]
        mask = enc.attention_mask.repeat(reps, 1)[:bs]

        def fwd(m: torch.nn.Module, ids: torch.Tensor = ids, mask: torch.Tensor = mask) -> None:
            with torch.no_grad():
                m(input_ids=ids, attention_mask=mask, use_cache=False)

        d, p = paired_seconds(lambda: fwd(model), lambda: fwd(pruned), args.pairs)
        row[f"latency_b{bs}_ms"] = [1e3 * statistics.median(d), 1e3 * statistics.median(p)]
        row[f"speedup_b{bs}"] = statistics.median(a / b for a, b in zip(d, p))
    ids, mask = enc.input_ids[:1], enc.attention_mask[:1]

    def gen(m: torch.nn.Module) -> None:
        with torch.no_grad():
            m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.new_tokens,
                       min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)

    d, p = paired_seconds(lambda: gen(model), lambda: gen(pruned), args.pairs)
    row["gen_tokens_s"] = [args.new_tokens / statistics.median(d), args.new_tokens / statistics.median(p)]
    row["gen_speedup"] = statistics.median(a / b for a, b in zip(d, p))
    return row


def _child(args: argparse.Namespace, name: str, what: str) -> dict:
    cmd = [sys.executable, __file__, "--child", name, "--probe", what, "--tokenizer", args.tokenizer,
           "--examples", str(args.examples), "--calibration", str(args.calibration), "--budget", str(args.budget),
           "--batch-size", str(args.batch_size), "--pairs", str(args.pairs), "--new-tokens", str(args.new_tokens),
           "--score-rounds", str(args.score_rounds),
           "--bf16-above", str(args.bf16_above), "--threads", str(args.threads)]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"})
    if out.returncode != 0:
        raise SystemExit(f"scale.py: {name} {what} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(x) for x in args.out.read_text().splitlines() if x.strip()] if args.out.exists() else []
    done = {(r["size"], bool(r.get("compress_only"))) for r in rows}
    for name in args.sizes:
        if (name, args.compress_only) in done:
            continue
        t0 = time.perf_counter()
        if args.compress_only:
            row = {"size": name, **asdict(SHAPES[name]), **_child(args, name, "compress")}
        else:
            infer, score = _child(args, name, "infer"), _child(args, name, "score")
            row = {"size": name, **asdict(SHAPES[name]), **_child(args, name, "main"),
                   "infer_peak_kb": infer["peak_kb"], "score_peak_kb": score["peak_kb"],
                   "infer_base_kb": infer["base_kb"], "score_base_kb": score["base_kb"]}
        row |= {"examples": args.examples, "calibration": args.calibration, "budget": args.budget,
                "batch_size": args.batch_size, "threads": args.threads, "machine": platform.machine(),
                "cpus": os.cpu_count(), "torch": torch.__version__,
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "run_s": 0.0}
        row["run_s"] = round(time.perf_counter() - t0, 1)
        with args.out.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        if args.compress_only:
            print(f"{name}: {row['params'] / 1e6:.0f}M {row['dtype']}, compress {row['compress_s']:.1f} s, peak "
                  f"{row['compress_peak_kb'] / 2**20:.1f} GB (compress only)", flush=True)
        else:
            print(f"{name}: {row['params'] / 1e6:.0f}M {row['dtype']}, scoring {row['scoring_s']:.1f} s, compress "
                  f"{row['compress_s']:.1f} s, score/infer peak {row['score_peak_kb'] / row['infer_peak_kb']:.2f}",
                  flush=True)


def slope(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares fit of log y = a + b log x: (b, a)."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    b = sum((u - mx) * (v - my) for u, v in zip(lx, ly)) / sum((u - mx) ** 2 for u in lx)
    return b, my - b * mx


def _ratio(row: dict, bare: str) -> float:
    """Bare ÷ scoring: the median of the rounds' ratios (rows of 2026-12-04 on), else the one cold scoring pass
    timed before the bare passes (older rows: it paid the process's first backward)."""
    return row.get(f"{bare}_ratio", row[f"{bare}_s"] / row["scoring_s"])


def report(args: argparse.Namespace) -> None:
    rows = [json.loads(x) for x in args.out.read_text().splitlines() if x.strip()]
    rows = sorted((r for r in rows if r["size"] != "tiny" or args.include_tiny), key=lambda r: r["params"])
    only = [r for r in rows if r.get("compress_only")]
    rows = [r for r in rows if not r.get("compress_only")]
    lines = ["| size | params | dtype | scoring s | bare f+b s (recomputing) | bare ÷ scoring (recomputing) | "
             "compress s | compress less a 10-example scoring s | peak MB score / infer | ratio | compress peak MB | speed-up b1 / b16 | "
             "tokens/s dense → pruned |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        rest = r["compress_scoring_s"] - r["scoring_s"]  # the method's steps less a 10-example scoring
        lines.append(
            f"| {r['size']} | {r['params'] / 1e6:.0f}M → {r['pruned_params'] / 1e6:.0f}M | {r['dtype']} | "
            f"{r['scoring_s']:.1f} | {r['bare_s']:.1f} ({r['bare_recompute_s']:.1f}) | "
            f"{_ratio(r, 'bare'):.2f} ({_ratio(r, 'bare_recompute'):.2f}) | "
            f"{r['compress_s']:.1f}{'' if 'self_labelled' in r else ' †'} | {rest:.1f} | "
            f"{r['score_peak_kb'] / 1024:.0f} / {r['infer_peak_kb'] / 1024:.0f} | "
            f"{r['score_peak_kb'] / r['infer_peak_kb']:.2f} | {r['compress_peak_kb'] / 1024:.0f}"
            f"{'' if r.get('compress_inplace') else ' (copy)'} | "
            f"{r['speedup_b1']:.2f} / {r['speedup_b16']:.2f} | {r['gen_tokens_s'][0]:.1f} → {r['gen_tokens_s'][1]:.1f} |")
    if any("self_labelled" not in r for r in rows):
        lines.append("\n- † compressed by the default recipe of its day, which did not yet self-label (before "
                     "2026-12-04, commit b70e29d): today's default scores the 128 calibration inputs, not the 10 "
                     "examples alone (SmolLM2: ~35 s instead of ~11 s, reports/beyond/README.md)")
    if only:
        lines += ["", "Compress only (`--compress-only`: the default compress in place and its peak; the timing pairs "
                  "need the dense and the pruned model at once, which these sizes do not fit beside each other):", "",
                  "| size | params | dtype | compress s | method steps s | compress peak MB "
                  "(before: model loaded) |", "|---|---:|---|---:|---:|---:|"]
        lines += [f"| {r['size']} | {r['params'] / 1e6:.0f}M → {r['pruned_params'] / 1e6:.0f}M | {r['dtype']} | "
                  f"{r['compress_s']:.1f} | {r['compress_scoring_s']:.1f} | {r['compress_peak_kb'] / 1024:.0f} "
                  f"({r['compress_base_kb'] / 1024:.0f}) |" for r in only]
    fits = {}
    if len(rows) >= 2:
        xs = [r["params"] for r in rows]
        for key, label in (("scoring_s", "scoring s"), ("compress_s", "compress s"),
                           ("score_peak_kb", "scoring peak RSS")):
            fits[key] = slope(xs, [r[key] for r in rows])
            lines.append(f"\n- log-log slope of {label} against parameters: **{fits[key][0]:.2f}**")
        for n, label in ((7e9, "7B"), (70e9, "70B")):
            b, a = fits["compress_s"]
            lines.append(f"- compress extrapolated from the fit to {label} (NOT measured): "
                         f"{math.exp(a + b * math.log(n)) / 60:.0f} min on this CPU")
        _plot(rows, fits, args.report / "scale.png")
        lines.append("\n![cost against parameters](scale.png)")
    args.report.mkdir(parents=True, exist_ok=True)
    (args.report / "TABLE.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


def _plot(rows: list[dict], fits: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["params"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for key, label, scale in (("scoring_s", "scoring, s", 1.0), ("compress_s", "compress (default), s", 1.0),
                              ("score_peak_kb", "scoring peak RSS, GB", 1 / 2**20)):
        ys = [r[key] * scale for r in rows]
        b, a = fits[key]
        line = ax.loglog(xs, ys, "o", label=f"{label} (slope {b:.2f})")[0]
        ax.loglog(xs, [math.exp(a + b * math.log(x)) * scale for x in xs], "-", color=line.get_color(), alpha=0.6)
    ax.set_xlabel("parameters")
    ax.set_title("taskprune cost against model size (random weights, published shapes)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=[s for s in SHAPES if s != "tiny"], choices=list(SHAPES))
    ap.add_argument("--tokenizer", default="smollm2-135m-instruct")
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--examples", type=int, default=10)
    ap.add_argument("--calibration", type=int, default=DEFAULT_CALIBRATION)
    ap.add_argument("--budget", type=float, default=0.5)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--pairs", type=int, default=5, help="dense/pruned timing pairs per latency row")
    ap.add_argument("--score-rounds", type=POSITIVE_INT, default=3,
                    help="rounds of scoring, bare and recomputing bare forward+backward, order rotated per round")
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--bf16-above", type=float, default=2e9,
                    help="parameters above which the model is bfloat16 (Llama-3.2-3B: its float32 compress would "
                         "need ~2.5x its 12.8 GB of weights; on a CPU without avx512_bf16/AMX, bf16 matmuls are so "
                         "slow that its 10-example scoring probe ran over 40 min without finishing, 2026-12-03)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", type=Path, default=Path("benchmarks/scale/results.jsonl"))
    ap.add_argument("--report", type=Path, default=None, help="write TABLE.md and scale.png here from --out's rows")
    ap.add_argument("--compress-only", action="store_true",
                    help="measure only the default compress and its peak (sizes whose timing pairs do not fit)")
    ap.add_argument("--include-tiny", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--child", choices=list(SHAPES), help=argparse.SUPPRESS)
    ap.add_argument("--probe", choices=["infer", "score", "main", "compress"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        child = {"main": main_child, "compress": compress_probe}.get(args.probe, probe)
        print(json.dumps(child(args)))
    elif args.report:
        report(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
