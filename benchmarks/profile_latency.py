"""Where the time of one rank-classification pass goes, dense vs pruned (both modules, p = 0.5, batch 16, SST-2).

    python benchmarks/profile_latency.py        # torch.profiler tables; the reading is in benchmarks/RESULTS.md
"""

import torch
from torch.profiler import ProfilerActivity, profile

from taskprune.api import score
from taskprune.checkpoint import load_model, load_tokenizer
from taskprune.data import LabelSpace, batches, length_order
from taskprune.evaluate import rank_scores
from taskprune.models import get_adapter
from taskprune.plan import RateSpec, make_plan
from taskprune.prune import apply
from taskprune.tasks import get_task, load_examples, sample_k_shot

m = load_model("models/minilm-glue6", dtype=torch.float32); tok = load_tokenizer("models/minilm-glue6")
t = get_task("sst2")
fit = sample_k_shot(load_examples(t, "fit", "../shared/data"), 10, seed=0)
ev = sample_k_shot(load_examples(t, "eval", "../shared/data"), 16, seed=1)
ev = [ev[i] for i in length_order(ev, tok)]
s = score(m, tok, t, fit)
p = apply(make_plan(m, s, RateSpec(rate=0.5, modules=("encoder", "decoder"))), m, check=False).eval()
labels = LabelSpace.build(tok, t); start = get_adapter(m).decoder_start_token_id()
b = next(batches(ev, tok, 16))
def run(model):
    with torch.no_grad():
        for _ in range(5): rank_scores(model, b, labels, start)
for name, model in (("dense", m), ("pruned", p)):
    run(model)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run(model)
    ev_ = prof.key_averages()
    tot = sum(e.self_cpu_time_total for e in ev_)
    mm = sum(e.self_cpu_time_total for e in ev_ if e.key in ("aten::addmm", "aten::mm", "aten::bmm", "aten::matmul", "aten::linear", "aten::_scaled_dot_product_flash_attention_for_cpu", "aten::baddbmm"))
    print(name, f"total {tot/1e3:.0f} ms, matmul-like {mm/1e3:.0f} ms, other {(tot-mm)/1e3:.0f} ms")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))
