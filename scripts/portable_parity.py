"""Parity of a compressed real model loaded WITHOUT taskprune (remote code) against taskprune.load_pruned.

1. ``taskprune compress`` with the default recipe (both modules, --rate 0.5) writes the checkpoint (skipped when
   --out already holds one).
2. Teacher-forced inputs of --examples dev examples are built here and run by a subprocess in which
   ``import taskprune`` raises ImportError: ``AutoModel...from_pretrained(out, trust_remote_code=True)``; the
   largest |logit difference| to load_pruned's logits on the same inputs is printed.
3. The task's dev accuracy through the remote-code model (loaded in this process with trust_remote_code and
   evaluated by taskprune's evaluator) next to ``taskprune eval --model out`` (load_pruned).

    python scripts/portable_parity.py --model minilm-glue6 --out /tmp/minilm-default
    python scripts/portable_parity.py --model smollm2-glue6 --out /tmp/smollm2-default --threads 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

import taskprune as tp
from taskprune.cli import main as cli
from taskprune.lm import model_kind
from taskprune.lm.batching import batches

BLOCKED = r'''
import importlib.abc, sys
class NoTaskprune(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "taskprune" or name.startswith("taskprune."):
            raise ImportError("taskprune is not installed here")
sys.meta_path.insert(0, NoTaskprune())
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM
folder, inputs, out, seq2seq = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
torch.set_num_threads(int(sys.argv[5]))
m = (AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM).from_pretrained(folder, trust_remote_code=True).eval()
batches = load_file(inputs)
got = {}
with torch.no_grad():
    for key in sorted(k for k in batches if k.startswith("input_ids")):
        i = key.removeprefix("input_ids")
        kw = {"input_ids": batches[key], "attention_mask": batches["attention_mask" + i]}
        if seq2seq:
            kw["decoder_input_ids"] = batches["decoder_input_ids" + i]
        got["logits" + i] = m(**kw).logits.contiguous()
save_file(got, out)
print(type(m).__name__)
'''


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm-glue6")
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--out", type=Path, required=True, help="compressed checkpoint folder (made if missing)")
    ap.add_argument("--examples", type=int, default=32, help="dev examples of the logit parity")
    ap.add_argument("--eval-examples", type=int, default=0, help="dev examples of the accuracy (0: all)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not (args.out / "config.json").is_file():
        t0 = time.perf_counter()
        assert cli(["compress", "--model", args.model, "--task", args.task, "--data-dir", args.data_dir,
                    "--samples", "10", "--rate", "0.5", "--no-eval", "--out", str(args.out)]) == 0
        print(f"compress: {time.perf_counter() - t0:.0f} s")
    config = json.loads((args.out / "config.json").read_text())
    print(f"model_type {config['model_type']}, auto_map {config.get('auto_map')}")
    reference, tok = tp.load_pruned(args.out), tp.load_tokenizer(args.out)
    kind = model_kind(reference)
    task = tp.get_task(args.task)
    dev = tp.load_examples(task, "eval", args.data_dir)
    labels = kind.label_space(tok, task)
    inputs, want = {}, {}
    for i, batch in enumerate(batches(dev[: args.examples], tok, 8, 256, kind)):
        tf = kind.teacher_forced(reference, batch, labels, batch.gold.tolist())
        inputs[f"input_ids{i}"] = tf.kwargs["input_ids"].contiguous()
        inputs[f"attention_mask{i}"] = tf.kwargs["attention_mask"].contiguous()
        if kind.has_encoder:
            inputs[f"decoder_input_ids{i}"] = tf.kwargs["decoder_input_ids"].contiguous()
        with torch.no_grad():
            want[f"logits{i}"] = reference(**{k: v for k, v in tf.kwargs.items()
                                              if k in ("input_ids", "attention_mask", "decoder_input_ids")}).logits
    with tempfile.TemporaryDirectory() as tmp:
        save_file(inputs, f"{tmp}/inputs.safetensors")
        proc = subprocess.run([sys.executable, "-c", BLOCKED, str(args.out), f"{tmp}/inputs.safetensors",
                               f"{tmp}/out.safetensors", "1" if kind.has_encoder else "0", str(args.threads)],
                              capture_output=True, text=True, cwd="/")
        if proc.returncode:
            raise SystemExit(proc.stderr[-3000:])
        got = load_file(f"{tmp}/out.safetensors")
    worst = max((got[k] - want[k]).abs().max().item() for k in want)
    print(f"without taskprune: {proc.stdout.strip()}; max |logit - load_pruned's| on {min(args.examples, len(dev))} "
          f"dev examples: {worst:.2e}")
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    remote = (AutoModelForSeq2SeqLM if kind.has_encoder else AutoModelForCausalLM).from_pretrained(
        str(args.out), trust_remote_code=True).eval()
    ev = dev[: args.eval_examples or None]
    acc_remote = tp.evaluate(remote, tok, task, ev, batch_size=32).metrics
    acc_cli = tp.evaluate(reference, tok, task, ev, batch_size=32).metrics
    print(f"{task.name} dev ({len(ev)} examples): remote-code model {acc_remote}, load_pruned (taskprune eval) {acc_cli}")


if __name__ == "__main__":
    main()
