"""`make bench`: scoring cost, real speed-up and memory of the default model, as ratios measured in ONE run.

    python benchmarks/bench.py [--model models/minilm-glue6] [--task sst2] [--repeats 5]

a. attribution scoring throughput ÷ a bare forward+backward on the same batches (backward to the input
   embeddings of encoder and decoder, no weight gradients: the cheapest pass that reaches every unit), and
   peak memory while scoring ÷ peak memory of inference at the same batch (each measured in a fresh process,
   peak RSS reset after loading: the total, and the part above the loaded model). Scoring runs as the library
   does, in passes of at most ``ScoreConfig.micro_batch`` examples (``--micro-batch``); the ratio with whole
   batches per pass is printed beside it;
b. pruned ÷ dense latency at p in {0.3, 0.5, 0.7} for encoder, decoder and both, batch 1 and 16, next to the
   FLOP-ideal speed-up (FLOPs of both models counted by torch.utils.flop_counter on the same inputs);
c. wall time of a 10-example `compress` of the model, model loading excluded.

For a decoder-only LM (``--model smollm2-135m-instruct``) part b prunes the FFN only, or whole attention heads and the
FFN, at p in {0.3, 0.5}, and part b2 adds greedy generation at batch 1 (tokens/s with the KV cache, pruned vs dense).

Timings run with glibc's allocator told to keep freed memory (GLIBC_TUNABLES, set by re-running this script;
--default-malloc opts out). By default every activation above 128 KiB gets fresh pages from the kernel, and the
page faults cost more than the arithmetic on small VMs: one profile of the dense model spent 167 ms in GELU and
154 ms in copies that took 27 and 15 ms with the setting, and which model paid more varied from run to run. The
memory probes run with the caller's allocator settings, as users run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from timing import STEADY_MARK, median_seconds, paired_seconds, rerun_with_steady_allocator  # noqa: E402

from taskprune.api import compress, score, scoring_job  # noqa: E402
from taskprune.catalogue import DEFAULT_METHOD, get_method  # noqa: E402
from taskprune.checkpoint import load_model, load_tokenizer  # noqa: E402
from taskprune.data import LabelSpace
from taskprune.evaluate import rank_scores  # noqa: E402
from taskprune.lm import model_kind  # noqa: E402
from taskprune.lm.batching import batches, length_order  # noqa: E402
from taskprune.pruning.apply import apply  # noqa: E402
from taskprune.pruning.plan import make_plan  # noqa: E402
from taskprune.pruning.rates import RateSpec  # noqa: E402
from taskprune.scoring import ScoreConfig  # noqa: E402
from taskprune.scoring.hooks import checkpointed  # noqa: E402
from taskprune.tasks import Example, get_task, load_examples, sample_k_shot  # noqa: E402

FALLBACK = ["a gripping, beautifully acted film", "dull and lifeless", "the plot makes no sense at all",
            "one of the best films of the year", "i wanted to leave after ten minutes", "warm, funny and wise"]


def _examples(task: str, data_dir: str | None, split: str, n: int, seed: int = 0) -> list[Example]:
    if data_dir:
        return sample_k_shot(load_examples(get_task(task), split, data_dir), n, seed=seed)
    return [Example(FALLBACK[i % len(FALLBACK)] + " " * (i // len(FALLBACK)), i % 2) for i in range(n)]


def _median(fn, repeats: int) -> float:  # noqa: ANN001
    return median_seconds(fn, repeats, warmup=1)


def bare_forward_backward(model: torch.nn.Module, batch_list: list, labels: LabelSpace) -> None:
    """Forward teacher-forced on the gold labels, backward of the summed label-piece probabilities to the input
    embeddings (the cheapest pass that reaches every unit); no activation recording, no weight gradients."""
    kind = model_kind(model)
    hooks = [emb.register_forward_hook(lambda _m, _i, out: out.detach().requires_grad_())
             for emb in kind.input_embeddings(model)]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        for b in batch_list:
            tf = kind.teacher_forced(model, b, labels, b.gold.tolist(), pieces_only=True)
            logits = model(**tf.kwargs).logits
            probs = logits.float().softmax(-1).gather(-1, tf.target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            (probs * (tf.target >= 0)).sum().backward()
    finally:
        for h in hooks:
            h.remove()


# -- a. memory, in a fresh process --------------------------------------------------------------------------
def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_probe(args: argparse.Namespace) -> None:
    """Child process: load, reset the peak, run one workload, print {'base_kb', 'peak_kb'} as JSON."""
    model, tok = load_model(args.model, dtype=torch.float32), load_tokenizer(args.model)
    task = get_task(args.task)
    examples = _examples(args.task, args.data_dir, "fit", args.examples)
    job = scoring_job(model, tok, task, examples, batch_size=args.batch_size)
    first = next(iter(job.batches))
    rank_scores(model, first, job.labels)  # allocator warm
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (peak RSS) to the current RSS
    base = _rss_kb("VmRSS")
    if args.memory_probe == "score":
        score(model, tok, task, examples, batch_size=args.batch_size, config=_score_config(args))
    else:
        with torch.no_grad():
            for b in job.batches:
                rank_scores(model, b, job.labels)
    print(json.dumps({"base_kb": base, "peak_kb": _rss_kb("VmHWM")}))


def _score_config(args: argparse.Namespace) -> ScoreConfig:
    return ScoreConfig(checkpoint=args.checkpoint, micro_batch=args.micro_batch or None)


def _probe(args: argparse.Namespace, kind: str, micro_batch: int | None = None) -> dict:
    micro = args.micro_batch if micro_batch is None else micro_batch
    cmd = [sys.executable, __file__, "--memory-probe", kind, "--model", args.model, "--task", args.task,
           "--examples", str(args.examples), "--batch-size", str(args.batch_size), "--micro-batch", str(micro),
           "--checkpoint" if args.checkpoint else "--no-checkpoint"]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error"}
    if env.pop(STEADY_MARK, None):  # undo what this script set, not what the caller did
        env.pop("GLIBC_TUNABLES", None)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def part_a(args: argparse.Namespace, model: torch.nn.Module, tok, task) -> None:  # noqa: ANN001
    examples = _examples(args.task, args.data_dir, "fit", args.examples)
    job = scoring_job(model, tok, task, examples, batch_size=args.batch_size)
    batch_list = list(job.batches)
    cfg = _score_config(args)
    t_score = _median(lambda: score(model, tok, task, examples, batch_size=args.batch_size, config=cfg), args.repeats)
    with torch.enable_grad():
        t_bare = _median(lambda: bare_forward_backward(model, batch_list, job.labels), args.repeats)
        with checkpointed(model, args.checkpoint):  # the same pass recomputing its blocks as scoring does
            t_bare_ck = _median(lambda: bare_forward_backward(model, batch_list, job.labels), args.repeats)
    mem_s, mem_i = _probe(args, "score"), _probe(args, "infer")
    split = cfg.micro_batch is not None and cfg.micro_batch < args.batch_size
    mem_w = _probe(args, "score", micro_batch=0) if split else mem_s  # whole batches per pass
    total = mem_s["peak_kb"] / mem_i["peak_kb"]
    above = (mem_s["peak_kb"] - mem_s["base_kb"]) / max(1, mem_i["peak_kb"] - mem_i["base_kb"])
    passes = f", scoring in passes of at most {cfg.micro_batch}" if split else ""
    print(f"\n## a. Scoring cost ({args.examples} {args.task} examples, batch {args.batch_size}{passes})\n")
    print("| measure | value | goal |")
    print("|---|---:|---|")
    print(f"| attribution scoring, s (median of {args.repeats}) | {t_score:.3f} | |")
    print(f"| bare forward+backward, same batches, s | {t_bare:.3f} | |")
    print(f"| **throughput ratio** (bare time ÷ scoring time) | **{t_bare / t_score:.2f}** | >= 0.9 |")
    if args.checkpoint:
        print(f"| bare forward+backward recomputing its blocks as scoring does, s | {t_bare_ck:.3f} | |")
        print(f"| throughput ratio at the same recomputation (its time ÷ scoring time) | {t_bare_ck / t_score:.2f} | |")
    print(f"| peak RSS scoring / inference, MB | {mem_s['peak_kb'] / 1024:.0f} / {mem_i['peak_kb'] / 1024:.0f} | |")
    print(f"| **peak memory ratio**, total | **{total:.2f}** | <= 1.5 |")
    print(f"| peak memory ratio, above the loaded model ({(mem_s['peak_kb'] - mem_s['base_kb']) / 1024:.0f} MB / "
          f"{(mem_i['peak_kb'] - mem_i['base_kb']) / 1024:.0f} MB) | {above:.2f} | |")
    if split:
        print(f"| peak memory ratio, total, scoring whole batches of {args.batch_size} per pass ("
              f"{mem_w['peak_kb'] / 1024:.0f} MB) | {mem_w['peak_kb'] / mem_i['peak_kb']:.2f} | |")


# -- b. latency vs FLOP ideal -------------------------------------------------------------------------------
def _flops(run) -> int:  # noqa: ANN001
    """FLOPs of ``run()``, the attention kernels included.

    torch's counter has no formula for the CPU flash-attention op that SDPA dispatches to here, so without one the
    attention products (QK^T and PV, which shrink with the head widths) would be missing from both counts.
    """
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    try:
        op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    except (AttributeError, RuntimeError):  # an older torch without that kernel: nothing to add
        cpu_sdpa = {}
    else:
        cpu_sdpa = {op: lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v)}
    with FlopCounterMode(display=False, custom_mapping=cpu_sdpa) as counter, torch.no_grad():
        run()
    return counter.get_total_flops()


def _variants(model: torch.nn.Module) -> list[tuple[str, float, RateSpec]]:
    """What part b prunes: per module (seq2seq) or FFN only / heads + FFN (decoder-only, whole heads under GQA)."""
    if model_kind(model).name == "causal":
        return [(name, p, RateSpec(rate=p, layer_types=types)) for p in (0.3, 0.5)
                for name, types in (("ffn", ("ffn",)), ("heads+ffn", ("self_attn", "ffn")))]
    out = []
    for modules, multiple in [(("encoder",), 1), (("decoder",), 1), (("encoder", "decoder"), 1),
                              (("encoder", "decoder"), 8)]:
        name = ("both" if len(modules) == 2 else modules[0]) + (f", widths x{multiple}" if multiple > 1 else "")
        out += [(name, p, RateSpec(rate=p, modules=modules, multiple_of=multiple)) for p in (0.3, 0.5, 0.7)]
    return out


def part_b(args: argparse.Namespace, model: torch.nn.Module, tok, task) -> None:  # noqa: ANN001
    fit = _examples(args.task, args.data_dir, "fit", 10)
    scores = score(model, tok, task, fit)
    evals = _examples(args.task, args.data_dir, "eval", 16, seed=1)
    kind = model_kind(model)
    evals = [evals[i] for i in length_order(evals, tok, kind=kind)]
    labels = kind.label_space(tok, task)
    inputs = {1: list(batches(evals, tok, 1, kind=kind)), 16: list(batches(evals, tok, 16, kind=kind))}
    print("\n## b. Pruned ÷ dense latency vs the FLOP ideal\n")
    print("Per batch size: the same 16 eval examples (16 calls at batch 1, one call at batch 16). Dense and pruned "
          f"are timed in {args.latency_repeats} adjacent pairs (order alternating); the latencies are the medians, "
          "the speed-up is the median of the pairs' dense ÷ pruned ratios (drift of the machine cancels within a "
          "pair). ideal = FLOPs(dense) ÷ FLOPs(pruned), attention products included; efficiency = speed-up ÷ ideal "
          "(goal >= 0.9 at batch 16).\n")
    print("| pruned | p | batch | dense ms | pruned ms | speed-up | ideal | efficiency |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    pruned_models = []
    for name, p, rates in _variants(model):
        pruned = apply(make_plan(model, scores, rates), model, check=False).eval()
        pruned_models.append((name, p, pruned))
        for bs, blist in inputs.items():
            def run(m: torch.nn.Module, bl: list = blist) -> None:
                with torch.no_grad():
                    for b in bl:
                        rank_scores(m, b, labels)
            d, q = paired_seconds(lambda: run(model), lambda: run(pruned), args.latency_repeats)
            dense_ms, pruned_ms = statistics.median(d) * 1e3, statistics.median(q) * 1e3
            ideal = _flops(lambda: run(model)) / _flops(lambda: run(pruned))
            speed = statistics.median(a / b for a, b in zip(d, q))
            print(f"| {name} | {p} | {bs} | {dense_ms:.1f} | {pruned_ms:.1f} | {speed:.2f} | {ideal:.2f} | "
                  f"{speed / ideal:.2f} |")
    if not kind.has_encoder:  # decoder-only: generation speed too
        _generation(args, model, pruned_models, inputs[1][0])


def _generation(args: argparse.Namespace, model: torch.nn.Module, pruned_models: list, batch) -> None:  # noqa: ANN001
    """Greedy generation at batch 1 with the KV cache: tokens/s of pruned vs dense, paired, next to the FLOP ideal."""
    n = args.new_tokens

    def gen(m: torch.nn.Module) -> None:
        with torch.no_grad():
            m.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask, max_new_tokens=n,
                       min_new_tokens=n, do_sample=False, pad_token_id=0)

    print(f"\n## b2. Greedy generation, batch 1, {n} new tokens with the KV cache\n")
    print("| pruned | p | dense tokens/s | pruned tokens/s | speed-up | ideal | efficiency |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, p, pruned in pruned_models:
        d, q = paired_seconds(lambda: gen(model), lambda: gen(pruned), args.latency_repeats)
        speed = statistics.median(a / b for a, b in zip(d, q))
        ideal = _flops(lambda: gen(model)) / _flops(lambda: gen(pruned))
        print(f"| {name} | {p} | {n / statistics.median(d):.1f} | {n / statistics.median(q):.1f} | {speed:.2f} | "
              f"{ideal:.2f} | {speed / ideal:.2f} |")


# -- c. compress wall time ----------------------------------------------------------------------------------
def part_c(args: argparse.Namespace, model: torch.nn.Module, tok, task) -> None:  # noqa: ANN001
    fit = _examples(args.task, args.data_dir, "fit", 10)
    paper = _median(lambda: compress(model, tok, task, fit, RateSpec(rate=0.5, modules=("decoder",)),
                                     method="attribution"), args.repeats)
    ours = _median(lambda: compress(model, tok, task, fit, RateSpec(rate=0.5)), args.repeats)
    print("\n## c. compress, 10 examples, model loading excluded\n")
    print(f"| method | rate | wall time, s (median of {args.repeats}) | goal |\n|---|---|---:|---|")
    print(f"| attribution (the paper's) | decoder 0.5 | **{paper:.2f}** | < 5 |")
    default = get_method(DEFAULT_METHOD)  # the label says what ran, from the recipe itself
    print(f"| taskprune (default: + {default.allocate} allocation + {default.repair} repair) | all 0.5 | "
          f"**{ours:.2f}** | < 30 |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT / "models" / "minilm-glue6"))
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--data-dir", default=os.environ.get("TASKPRUNE_DATA") or str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--examples", type=int, default=256, help="examples for the scoring comparison")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--latency-repeats", type=int, default=15, help="dense/pruned pairs per row of part b")
    ap.add_argument("--only", choices=["a", "b", "c"], nargs="+", default=["a", "b", "c"])
    ap.add_argument("--new-tokens", type=int, default=32, help="tokens generated per call in part b2 (causal LMs)")
    ap.add_argument("--default-malloc", action="store_true", help="time with the allocator as configured")
    ap.add_argument("--checkpoint", action=argparse.BooleanOptionalAction, default=True,
                    help="part a: score with activation checkpointing (ScoreConfig.checkpoint, the default: blocks "
                         "recomputed in the backward pass; less memory, more time); --no-checkpoint: keep them")
    ap.add_argument("--micro-batch", type=int, default=ScoreConfig().micro_batch or 0,
                    help="part a: most examples per scoring pass (ScoreConfig.micro_batch; default %(default)s, the "
                         "library's; 0: whole batches)")
    ap.add_argument("--memory-probe", choices=["score", "infer"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.data_dir = args.data_dir if args.data_dir and Path(args.data_dir).is_dir() else None
    if args.memory_probe:
        memory_probe(args)
        return
    rerun_with_steady_allocator(args.default_malloc)
    model, tok = load_model(args.model, dtype=torch.float32), load_tokenizer(args.model)
    task = get_task(args.task)
    print(f"model {args.model}; torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
          f"inputs from {'the ' + args.task + ' data' if args.data_dir else 'fixed sentences (no data dir)'}; "
          f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '(unset)')}")
    for part in args.only:
        {"a": part_a, "b": part_b, "c": part_c}[part](args, model, tok, task)


if __name__ == "__main__":
    main()
