"""GGUF export measured in llama.cpp itself: parity with torch, accuracy, file sizes and speed, dense vs pruned.

For a dense model (default smollm2-glue6) and its compression (default recipe, --rate, both made here unless
--pruned names a folder), one run prints:
- parity: max |logit difference| torch vs llama.cpp on --parity-prompts SST-2 prompts (f32 file, F32 KV cache),
  and greedy agreement of --greedy-tokens tokens on 16 prompts (f16 file, llama.cpp's default F16 cache);
- accuracy of the task's dev split (--eval-examples, 0 = all) through llama.cpp at every --types, dense and pruned,
  next to torch's on the same examples;
- file sizes; prompt-processing and batch-1 generation tokens/s (--threads), pruned / dense at the same type in
  --pairs adjacent, order-alternating pairs (median ratio), next to the ideal: the tensor bytes read per generated
  token, and the multiply-accumulates per prompt token.

    python benchmarks/gguf_bench.py --data-dir ../shared/data --out-dir /tmp/gguf-bench
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import taskprune as tp
from taskprune.lm import KINDS
from taskprune.lm.kinds import cache_of
from taskprune.portable.gguf import export_gguf
from taskprune.portable.llamacpp import LlamaCppModel, evaluate_gguf
from taskprune.runtime.timing import alternating_pairs


def _tensor_bytes(path: Path) -> tuple[int, int]:
    """(bytes of every tensor, multiply-accumulates per token of the matrices a token passes through)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    total, macs = 0, 0
    for t in reader.tensors:
        total += int(t.n_bytes)
        if len(t.shape) == 2 and not t.name.startswith("token_embd") or t.name == "output.weight":
            macs += int(np.prod(t.shape))
    if not any(t.name == "output.weight" for t in reader.tensors):  # tied head: token_embd is the output matrix
        macs += int(np.prod(next(t.shape for t in reader.tensors if t.name == "token_embd.weight")))
    return total, macs


def _speed(path: Path, prompt: list[int], threads: int, n_gen: int) -> tuple[float, float]:
    """(prompt tokens/s, generated tokens/s) of one timed pass."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=len(prompt) + n_gen + 8, n_threads=threads,
                          n_threads_batch=threads, n_batch=512, verbose=False)
    llm.eval(prompt[:8])  # warm-up
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt)
    pp = len(prompt) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(n_gen):
        llm.eval([int(llm.sample(temp=0.0))])
    return pp, n_gen / (time.perf_counter() - t0)


SECTIONS = ["parity", "greedy", "accuracy", "speed"]


def _torch_greedy(model: torch.nn.Module, ids: list[int], n: int) -> list[int]:
    """``n`` greedy tokens with the KV cache, end-of-sequence tokens included (as :meth:`LlamaCppModel.greedy`
    without ``stop``): ``generate`` would stop there, or with ``min_new_tokens`` mask them, and compare nothing."""
    out: list[int] = []
    with torch.no_grad():
        step = model(torch.tensor([ids]), use_cache=True)
        for _ in range(n):
            token = int(step.logits[0, -1].argmax())
            out.append(token)
            step = model(torch.tensor([[token]]), cache=cache_of(step), use_cache=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-glue6")
    ap.add_argument("--pruned", type=Path, default=None, help="compressed checkpoint (default: compress one here)")
    ap.add_argument("--rate", type=float, default=0.5)
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--out-dir", type=Path, required=True)
    ap.add_argument("--types", nargs="+", default=["f16", "q8_0", "q4_k_m"])
    ap.add_argument("--eval-examples", type=int, default=0)
    ap.add_argument("--parity-prompts", type=int, default=32)
    ap.add_argument("--greedy-tokens", type=int, default=32)
    ap.add_argument("--pairs", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", nargs="+", choices=SECTIONS, default=SECTIONS, help="run only these sections")
    ap.add_argument("--re-export", action="store_true", help="export again files already in --out-dir")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    task = tp.get_task(args.task)
    dense, tok = tp.load_model(args.model), tp.load_tokenizer(args.model)
    if args.pruned is None:
        args.pruned = args.out_dir / "pruned"
        if not (args.pruned / "config.json").is_file():
            fit = tp.sample_k_shot(tp.load_examples(task, "fit", args.data_dir), 10, seed=0)
            from taskprune.recipe import calibration_examples

            calib = calibration_examples(tp.load_examples(task, "fit", args.data_dir), fit, 128, 0)
            tp.save_compressed(tp.compress(dense, tok, task, fit, tp.RateSpec(rate=args.rate), calibration=calib),
                               tok, args.pruned)
    pruned = tp.load_pruned(args.pruned)
    dev = tp.load_examples(task, "eval", args.data_dir)
    kind = KINDS["causal"]
    files: dict[tuple[str, str], Path] = {}
    for name, model in (("dense", dense), ("pruned", pruned)):
        for kind_ in dict.fromkeys(("f32", "f16", *args.types)):
            path = args.out_dir / f"{name}-{kind_}.gguf"
            files[name, kind_] = (path if path.is_file() and not args.re_export
                                  else export_gguf(model, tok, path, kind_, overwrite=True)[0])

    # parity: f32 file, F32 KV cache; greedy tokens with the f16 file and the default cache
    if "parity" in args.only:
        _parity(files["pruned", "f32"], pruned, tok, dev, kind, args)
    if "greedy" in args.only:
        _greedy(files["pruned", "f16"], pruned, tok, dev, kind, args)
    if "accuracy" in args.only:
        _accuracy(files, dense, pruned, tok, task, dev, args)
    if "speed" in args.only:
        _speed_table(files, tok, dev, kind, args)


def _parity(path, pruned, tok, dev, kind, args) -> None:  # noqa: ANN001
    llm = LlamaCppModel(path, n_ctx=512, threads=args.threads, f32_cache=True, all_logits=True)
    worst = 0.0
    for e in dev[: args.parity_prompts]:
        ids = kind.prompt_ids(tok, e, 256)
        with torch.no_grad():
            want = pruned(torch.tensor([ids])).logits[0].numpy()
        worst = max(worst, float(np.abs(llm.logits(ids) - want).max()))
    print(f"parity (pruned, f32 file, F32 KV cache): max |logit torch - llama.cpp| on {args.parity_prompts} prompts: "
          f"{worst:.2e}")


def _greedy(path, pruned, tok, dev, kind, args) -> None:  # noqa: ANN001
    llm16 = LlamaCppModel(path, n_ctx=512, threads=args.threads)
    same, prefix = 0, []
    for e in dev[:16]:
        ids = kind.prompt_ids(tok, e, 256)
        want, got = _torch_greedy(pruned, ids, args.greedy_tokens), llm16.greedy(ids, args.greedy_tokens)
        same += want == got
        prefix.append(next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), len(want)))
    print(f"greedy (pruned, f16 file): {same} of 16 prompts give the same {args.greedy_tokens} tokens as torch; "
          f"tokens equal before the first difference: median {statistics.median(prefix):g}, min {min(prefix)}")



def _accuracy(files, dense, pruned, tok, task, dev, args) -> None:  # noqa: ANN001
    examples = dev[: args.eval_examples or None]
    print(f"\n| {task.name} dev ({len(examples)}) | " + " | ".join(["torch f32", *args.types]) + " |")
    print("|---|" + "---:|" * (1 + len(args.types)))
    for name, model in (("dense", dense), ("pruned", pruned)):
        accs = [tp.evaluate(model, tok, task, examples, batch_size=32).metrics["accuracy"]]
        accs += [evaluate_gguf(files[name, t], tok, task, examples, threads=args.threads).metrics["accuracy"]
                 for t in args.types]
        print(f"| {name} | " + " | ".join(f"{a:.2f}" for a in accs) + " |")



def _speed_table(files, tok, dev, kind, args) -> None:  # noqa: ANN001
    prompt = kind.prompt_ids(tok, dev[0], 256) * 4  # ~250 tokens
    print("\n| type | size dense / pruned (MB) | prompt tok/s dense / pruned | ratio (ideal) | "
          "generation tok/s dense / pruned | ratio (ideal) |")
    print("|---|---:|---:|---:|---:|---:|")
    for t in args.types:
        (db, dm), (pb, pm) = _tensor_bytes(files["dense", t]), _tensor_bytes(files["pruned", t])
        dense_file, pruned_file = files["dense", t], files["pruned", t]
        d_runs, p_runs = alternating_pairs(lambda f=dense_file: _speed(f, prompt, args.threads, 32),
                                           lambda f=pruned_file: _speed(f, prompt, args.threads, 32), args.pairs)
        pp = statistics.median(p[0] / d[0] for d, p in zip(d_runs, p_runs))
        tg = statistics.median(p[1] / d[1] for d, p in zip(d_runs, p_runs))
        print(f"| {t} | {files['dense', t].stat().st_size / 1e6:.1f} / {files['pruned', t].stat().st_size / 1e6:.1f} | "
              f"{statistics.median(d[0] for d in d_runs):.0f} / {statistics.median(p[0] for p in p_runs):.0f} | "
              f"{pp:.2f} ({dm / pm:.2f}) | {statistics.median(d[1] for d in d_runs):.1f} / "
              f"{statistics.median(p[1] for p in p_runs):.1f} | {tg:.2f} ({db / pb:.2f}) |")
    print(f"\n{args.pairs} adjacent alternating pairs per type, {args.threads} threads, prompt {len(prompt)} tokens, "
          "32 generated; ideal = dense / pruned multiply-accumulates per prompt token, tensor bytes per generated token")


if __name__ == "__main__":
    main()
