"""Where the time of one rank-classification pass goes, dense vs pruned (default: both modules, p = 0.5, batch 16).

    python benchmarks/profile_latency.py [--modules encoder decoder] [--rate 0.5] [--batch 16]

Prints torch.profiler's op table for both models and splits the self time into matmul-like ops (which shrink
with the widths) and everything else; the reading is in benchmarks/RESULTS.md.
"""

import argparse
import os
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from taskprune.api import score
from taskprune.checkpoint import load_model, load_tokenizer
from taskprune.data import LabelSpace
from taskprune.evaluate import rank_scores
from taskprune.lm.batching import batches, length_order
from taskprune.pruning.apply import apply
from taskprune.pruning.plan import make_plan
from taskprune.pruning.rates import RateSpec
from taskprune.tasks import get_task, load_examples, sample_k_shot

MATMULS = ("aten::addmm", "aten::mm", "aten::bmm", "aten::matmul", "aten::baddbmm",
           "aten::_scaled_dot_product_flash_attention_for_cpu")

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="models/minilm-glue6")
ap.add_argument("--data-dir", default="../shared/data")
ap.add_argument("--modules", nargs="+", default=["encoder", "decoder"])
ap.add_argument("--rate", type=float, default=0.5)
ap.add_argument("--batch", type=int, default=16)
ap.add_argument("--passes", type=int, default=5)
ap.add_argument("--threads", type=int, default=0, help="torch threads (0: the default)")
args = ap.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)
print(f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '(unset)')}", file=sys.stderr)

m, tok = load_model(args.model, dtype=torch.float32).eval(), load_tokenizer(args.model)
t = get_task("sst2")
fit = sample_k_shot(load_examples(t, "fit", args.data_dir), 10, seed=0)
ev = sample_k_shot(load_examples(t, "eval", args.data_dir), args.batch, seed=1)
ev = [ev[i] for i in length_order(ev, tok)]
s = score(m, tok, t, fit)
p = apply(make_plan(m, s, RateSpec(rate=args.rate, modules=tuple(args.modules))), m, check=False).eval()
labels = LabelSpace.build(tok, t)
b = next(batches(ev, tok, args.batch))


def run(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for _ in range(args.passes):
            rank_scores(model, b, labels)


rows = {}
for name, model in (("dense", m), ("pruned", p)):
    run(model)
    t0 = time.perf_counter()
    run(model)
    wall = (time.perf_counter() - t0) * 1e3 / args.passes
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run(model)
    ev_ = prof.key_averages()
    per_pass = lambda keep: sum(e.self_cpu_time_total for e in ev_ if keep(e.key)) / 1e3 / args.passes  # noqa: E731
    ops = per_pass(lambda k: True)
    rows[name] = {"matrix products (addmm, mm, bmm)": per_pass(lambda k: k in MATMULS and "attention" not in k),
                  "attention kernel": per_pass(lambda k: k in MATMULS and "attention" in k),
                  "other ops": per_pass(lambda k: k not in MATMULS),
                  "outside ops (Python, dispatch; wall - ops)": max(0.0, wall - ops), "wall": wall}
    print(name, f"per pass: wall {wall:.0f} ms, ops {ops:.0f} ms")
    print(ev_.table(sort_by="self_cpu_time_total", row_limit=10))

print(f"\nms per pass ({'+'.join(args.modules)} p = {args.rate}, batch {args.batch}, {torch.get_num_threads()} threads; "
      "op times from a profiled pass, wall from an unprofiled one)\n")
print("| | dense | pruned | dense ÷ pruned |\n|---|---:|---:|---:|")
for kind in rows["dense"]:
    d, q = rows["dense"][kind], rows["pruned"][kind]
    print(f"| {kind} | {d:.1f} | {q:.1f} | {d / q if q else float('nan'):.2f} |")
