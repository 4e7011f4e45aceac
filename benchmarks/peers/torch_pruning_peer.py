"""A peer run by its own code: Torch-Pruning (VainF; `pip install -e ".[peers]"` installs 1.6.1, the version
tested) prunes a decoder-only LM through its own API, and taskprune's evaluation scores the result on the same eval examples,
writing rows in scripts/beyond_study.py's format (per-example outcomes), so its report pairs them with every
taskprune row of the same budget.

What runs, and why only this (measured 2026-12-02, torch-pruning 1.6.1, transformers 5.24, torch 2.13):
- Its dependency graph loops forever on these models as its LLM example builds it (MetaPruner with num_heads,
  prune_num_heads): in ``DependencyGraph.get_pruning_group`` -> ``_fix_dependency_graph_non_recursive`` the index
  mappings of the attention block (SDPA / eager repeat_kv, reshapes, RoPE's concat) give a new index list on every
  pass, so ``Group.has_pruning_op`` never matches and the group grows without end (a 1-layer random Llama: 2,878
  dependencies after 3,000 additions, each of ~30 attention nodes visited ~100 times). Two causes, each alone
  enough: the KV cache (transformers 5 returns a DynamicCache; ``forward_fn`` with ``use_cache=False`` removes
  it: a 2-layer multi-head model then builds in 0.1 s) and grouped-query attention (4 heads over 2 KV heads loops
  even without the cache, with SDPA's enable_gqa and with eager repeat_kv alike); open upstream as
  VainF/Torch-Pruning#527 (Qwen3-8B, "infinite loop while it creates the dependency graph"). SmolLM2-135M is GQA
  (9 heads over 3 KV heads), so Torch-Pruning cannot prune its attention here.
- What it CAN prune on SmolLM2: the FFN units (roots gate_proj/up_proj; the attention projections, down_proj and
  lm_head ignored as roots, so the hidden size stays): its graph for these builds in under a second. The FFN
  ratio is set so the budget (fraction of the prunable parameters, FFN + attention, removed) equals taskprune's;
  the removed fraction reached is recorded per row. Uniform per layer (global_pruning=False, as its example).
- Importances: its ``MagnitudeImportance`` (L2 of the group's weights; no data, so one run per budget) and its
  ``TaylorImportance`` (|w x dL/dw| with the gradient of the label tokens' cross-entropy on the same 10 labelled
  examples per sample seed as taskprune's scoring).

    python benchmarks/peers/torch_pruning_peer.py --model smollm2-glue6 --data-dir ../shared/data --task sst2 \
        --budgets 0.5 --seeds 0 1 2 --importance taylor magnitude --out reports/beyond/smollm2-full/results.jsonl
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from torch.nn import functional as F

import taskprune as tp
from taskprune.data import IGNORE
from taskprune.experiments.results import eval_set_id, pack_outcomes
from taskprune.lm import label_space, model_kind
from taskprune.lm.batching import batches

VARIANT = {"magnitude": "TP-magnitude", "taylor": "TP-taylor"}


def ffn_ratio(model: torch.nn.Module, budget: float) -> float:
    """The FFN pruning ratio that removes ``budget`` of the prunable parameters by FFN units alone."""
    params = tp.count_parameters(model)["prunable"]
    ffn = sum(3 * layer.mlp.gate_proj.weight.numel() for layer in model.model.layers)
    ratio = budget * params / ffn
    if ratio >= 1:
        raise SystemExit(f"budget {budget} needs more than every FFN unit ({ratio:.2f}): FFN-only pruning cannot reach it")
    return ratio


def taylor_gradients(model: torch.nn.Module, tok, task, fit) -> None:  # noqa: ANN001
    """dL/dw of the label tokens' cross-entropy (gold class) over the fit examples, accumulated in .grad."""
    kind, labels = model_kind(model), label_space(model, tok, task)
    model.zero_grad()
    for b in batches(fit, tok, 4, 256, kind):
        tf = kind.teacher_forced(model, b, labels, b.gold.tolist())
        logits = model(**tf.kwargs).logits
        loss = F.cross_entropy(logits.transpose(1, 2).float(), tf.target, ignore_index=IGNORE, reduction="sum")
        (loss / len(fit)).backward()


def prune(model: torch.nn.Module, importance: str, ratio: float, example: torch.Tensor) -> None:
    import torch_pruning

    ignored = [model.lm_head] + [m for n, m in model.named_modules()
                                 if n.endswith(("q_proj", "k_proj", "v_proj", "o_proj", "down_proj"))]
    imp = (torch_pruning.importance.TaylorImportance() if importance == "taylor"
           else torch_pruning.importance.MagnitudeImportance(p=2))
    pruner = torch_pruning.pruner.MetaPruner(
        model, example_inputs=example, importance=imp, pruning_ratio=ratio, ignored_layers=ignored,
        global_pruning=False, output_transform=lambda out: out.logits,
        forward_fn=lambda m, x: m(x, use_cache=False))
    for group in pruner.step(interactive=True):
        group.prune()
    model.config.intermediate_size = model.model.layers[0].mlp.gate_proj.out_features


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-glue6")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--importance", nargs="+", choices=sorted(VARIANT), default=sorted(VARIANT))
    ap.add_argument("--eval-examples", type=int, default=0, help="cap on eval examples (0: the whole split)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    done = {json.loads(x)["id"] for x in args.out.read_text().splitlines() if x.strip()} if args.out.exists() else set()
    task = tp.get_task(args.task)
    fit_all = tp.load_examples(task, "fit", args.data_dir)
    ev = tp.load_examples(task, "eval", args.data_dir)[: args.eval_examples or None]
    ev_id = eval_set_id(ev)
    tok = tp.load_tokenizer(args.model)
    example = tok("Review: a fine film. Answer:", return_tensors="pt")["input_ids"]
    for budget in args.budgets:
        for importance in args.importance:
            for seed in args.seeds if importance == "taylor" else args.seeds[:1]:  # magnitude reads no data
                rid = f"{args.task}-{VARIANT[importance]}-{budget}-{seed}-0"
                if rid in done:
                    continue
                model = tp.load_model(args.model)
                dense = tp.count_parameters(model)
                ratio = ffn_ratio(model, budget)
                t0 = time.perf_counter()
                if importance == "taylor":
                    taylor_gradients(model, tok, task, tp.sample_k_shot(fit_all, args.samples, seed=seed))
                prune(model, importance, ratio, example)
                model.zero_grad(set_to_none=True)
                seconds = time.perf_counter() - t0
                model.eval()
                res = tp.evaluate(model, tok, task, ev, batch_size=64)
                params = tp.count_parameters(model)
                row = {"id": rid, "task": args.task, "variant": VARIANT[importance], "budget": budget, "seed": seed,
                       "trial": 0, "metrics": {k: round(v, 2) for k, v in res.metrics.items()}, "n_eval": len(ev),
                       "outcomes": pack_outcomes([p == e.label for p, e in zip(res.predictions, ev)], ev_id),
                       "compress_seconds": round(seconds, 2), "prunable": params["prunable"],
                       "total": params["total"], "model": args.model, "machine": platform.machine(),
                       "threads": torch.get_num_threads(), "peer": f"torch-pruning {_version()}",
                       "ffn_ratio": round(ratio, 4),
                       "removed": round(1 - params["prunable"] / dense["prunable"], 4)}
                with args.out.open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(f"{rid}: {row['metrics']} removed {row['removed']} ({seconds:.1f} s)", flush=True)


def _version() -> str:
    from importlib.metadata import version

    return version("torch-pruning")


if __name__ == "__main__":
    main()
