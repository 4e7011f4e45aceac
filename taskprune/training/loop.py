"""The fine-tuning run (how ``minilm-glue6`` and ``smollm2-glue6`` are made): seq2seq models and decoder-only LMs
alike, fully or through a LoRA adapter, on text-to-text classification tasks.

Recipe (docs/finetune.md): each step's batch comes from :mod:`taskprune.training.mixing`, is padded to its own
longest input and trained with teacher forcing on exactly the targets that evaluation and attribution use
(:mod:`taskprune.data`: label word-pieces + EOS, decoder input = start id + target shifted right, cross-entropy
ignoring ``IGNORE``). AdamW, linear warm-up then linear decay, gradient clipping. A causal LM reads its task
prompt (chat template applied) and is trained on the label continuation only, with logits computed at the answer
positions alone (:mod:`taskprune.lm`).

Cheaper steps where a CPU needs them: ``lora_rank`` trains a PEFT LoRA adapter instead of every weight (the export
is then the adapter alone, megabytes instead of the model); ``autocast="bfloat16"`` runs forward and backward in
bf16 with float32 master weights; ``bucket`` > 1 batches examples of similar length.

The task schedule and every batch are pure functions of (seed, step), so a run resumed from
``out_dir/checkpoint/state.pt`` (model, optimizer, scheduler, RNG, step) continues exactly where it stopped.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data import IGNORE, LabelSpace
from ..errors import TaskpruneError
from ..evaluate import evaluate
from ..files import atomic_write, atomic_write_text, check_writable
from ..lm import label_space, model_kind, teacher_forced_logits
from ..tasks import Example, Task, get_task, load_examples, require_data_dir
from .config import DTYPES, RESUME_KEYS, FinetuneConfig
from .mixing import batch_for_step, mixture_weights, task_schedule, text_lengths

Progress = Callable[[Iterable[Any], str, int], Iterable[Any]]
Log = Callable[[dict[str, Any]], None]


def teacher_forcing_loss(
    model: nn.Module,
    tokenizer: Any,
    examples: Sequence[Example],
    labels: LabelSpace,
    max_length: int,
    autocast: bool = False,
) -> torch.Tensor:
    """Mean cross-entropy over the gold targets' tokens (word-pieces + EOS / end of turn) of ``examples``, read
    as the model's kind reads them (:mod:`taskprune.lm`: a causal LM's loss is on the continuation only);
    ``autocast``: the model runs in bf16."""
    kind = model_kind(model)
    batch = kind.encode(tokenizer, examples, max_length).to(next(model.parameters()).device)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits, target = teacher_forced_logits(model, batch, labels, [e.label for e in examples])
    return nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE
    )


# ----- optimisation ----------------------------------------------------------------------------------------


def make_optimizer(model: nn.Module, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    decay, no_decay, seen = [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: FinetuneConfig) -> torch.optim.lr_scheduler.LambdaLR:
    warm, total = cfg.n_warmup, cfg.steps

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / max(1, warm)
        return max(0.0, (total - step) / max(1, total - warm))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ----- the run ---------------------------------------------------------------------------------------------


@dataclass
class _TaskData:
    task: Task
    fit: list[Example]
    eval_all: list[Example]
    eval_periodic: list[Example]
    labels: LabelSpace


def _load_tasks(cfg: FinetuneConfig, tokenizer: Any, model: nn.Module) -> list[_TaskData]:
    out = []
    for name in cfg.tasks:
        task = get_task(name)
        fit = load_examples(task, "fit", data_dir=cfg.data_dir)
        ev = load_examples(task, "eval", data_dir=cfg.data_dir)
        if not fit or not ev:
            raise TaskpruneError(f"task {task.name}: no {'fit' if not fit else 'eval'} examples found")
        n = min(cfg.eval_examples, len(ev))
        sub = sorted(random.Random(cfg.seed).sample(range(len(ev)), n))
        out.append(_TaskData(task, fit, ev, [ev[i] for i in sub], label_space(model, tokenizer, task)))
    return out


def _evaluate_all(
    model: nn.Module, tokenizer: Any, data: list[_TaskData], cfg: FinetuneConfig, full: bool, progress: Progress | None
) -> dict[str, dict[str, float]]:
    metrics = {}
    for d in data:
        exs = d.eval_all if full else d.eval_periodic
        kw = {"progress": progress} if progress is not None else {}
        res = evaluate(model, tokenizer, d.task, exs, batch_size=cfg.eval_batch_size,
                       max_length=cfg.max_length_for(d.task.name), **kw)
        metrics[d.task.name] = {k: round(v, 2) for k, v in res.metrics.items()}
    return metrics


def _mean_accuracy(metrics: dict[str, dict[str, float]]) -> float:
    return float(np.mean([m["accuracy"] for m in metrics.values()]))


def _load_base(cfg: FinetuneConfig) -> tuple[nn.Module, Any]:
    from ..checkpoint import load_model, load_tokenizer

    model = load_model(cfg.model)
    return model.float(), load_tokenizer(cfg.model)


def add_lora(model: nn.Module, cfg: FinetuneConfig) -> Any:  # noqa: ANN401
    """Wrap ``model`` in a PEFT LoRA adapter on every linear layer (the LM head excepted); returns the PeftModel.
    Its LoRA layers are injected into ``model`` in place, so ``model`` itself trains and evaluates with them."""
    try:
        from peft import LoraConfig, PeftModel, get_peft_model
    except ImportError:
        raise TaskpruneError("LoRA fine-tuning needs the peft package: pip install peft") from None
    if cfg.init_adapter:
        peft_model = PeftModel.from_pretrained(model, cfg.init_adapter, is_trainable=True)
        for p in peft_model.parameters():
            if p.requires_grad:  # exported in bf16/fp16: train in float32 like a fresh adapter
                p.data = p.data.float()
        return peft_model
    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha or 2 * cfg.lora_rank,
                      lora_dropout=cfg.lora_dropout, target_modules="all-linear", bias="none")
    return get_peft_model(model, lora)


def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint must hold: the trainable weights (all of them, or the LoRA matrices alone)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _load_trainable(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(state) != trainable:
        raise TaskpruneError("the checkpoint's trained weights do not match this model's (another LoRA setting?)")
    model.load_state_dict(state, strict=False)


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def finetune(cfg: FinetuneConfig, progress: Progress | None = None, log: Log | None = None) -> dict[str, Any]:
    """Fine-tune ``cfg.model`` on ``cfg.tasks``; returns the final per-task metrics (percent, full eval split).

    Writes ``out_dir/log.jsonl`` (one row per log/eval step), ``out_dir/checkpoint/state.pt`` (every
    ``save_every`` steps, atomically; resumed automatically with ``resume``), ``out_dir/config.json`` and the
    exported model in ``out_dir/final/`` (``dtype`` safetensors + config + tokenizer + metrics.json).
    """
    from ..checkpoint import save_pruned
    from ..sources.lora import save_lora

    out = check_writable(cfg.out_dir, folder=True, update=True)  # a run folder is resumed: existing is fine
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    emit = log or (lambda _row: None)
    ckpt_path = out / "checkpoint" / "state.pt"
    best_path = out / "checkpoint" / "best.pt"
    log_path = out / "log.jsonl"
    final_dir = out / "final"
    if final_dir.exists() and any(final_dir.iterdir()):
        raise TaskpruneError(f"{final_dir} already exists: this run is finished; choose another out_dir")
    if ckpt_path.exists() and not cfg.resume:
        raise TaskpruneError(f"{ckpt_path} exists; pass resume=True (--resume) to continue it or use another out_dir")
    if ckpt_path.exists() and (out / "config.json").is_file():  # the run's settings, read before the model loads
        _refuse_changed(json.loads((out / "config.json").read_text()), cfg, ckpt_path)

    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.data_dir:  # before minutes of loading and merging the model
        require_data_dir(cfg.data_dir)
    model, tokenizer = _load_base(cfg)
    data = _load_tasks(cfg, tokenizer, model)
    peft_model = add_lora(model, cfg) if cfg.lora_rank else None
    sizes = [len(d.fit) for d in data]
    lengths = [text_lengths(d.fit) for d in data] if cfg.bucket > 1 else None
    schedule = task_schedule(sizes, cfg.mixing_cap, cfg.steps, cfg.seed)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg)

    step, best = 0, {"score": -math.inf, "step": None}
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        _refuse_changed(state["config"], cfg, ckpt_path)
        _load_trainable(model, state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        step, best = int(state["step"]), state["best"]
        _truncate_log(log_path, step)
        emit({"event": "resume", "step": step})
    else:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.json", json.dumps(cfg.to_dict(), indent=2) + "\n", overwrite=True)
        row = {"event": "start", "step": 0, "mixture": dict(zip(cfg.tasks, mixture_weights(sizes, cfg.mixing_cap))),
               "fit_examples": dict(zip(cfg.tasks, sizes))}
        _append_log(log_path, row)
        emit(row)

    def save_checkpoint() -> None:
        state = {"model": _trainable_state(model), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "rng": _rng_state(), "step": step, "best": best,
                 "config": cfg.to_dict()}
        atomic_write(ckpt_path, lambda p: torch.save(state, p), overwrite=True)

    def periodic_eval() -> None:
        nonlocal best
        t0 = time.perf_counter()
        metrics = _evaluate_all(model, tokenizer, data, cfg, full=False, progress=None)
        score = _mean_accuracy(metrics)
        row = {"event": "eval", "step": step, "mean_accuracy": round(score, 2), "metrics": metrics,
               "eval_seconds": round(time.perf_counter() - t0, 1)}
        if cfg.export == "best" and score > best["score"]:
            best = {"score": score, "step": step}
            atomic_write(best_path, lambda p: torch.save(_trainable_state(model), p), overwrite=True)
        _append_log(log_path, row)
        emit(row)
        model.train()

    model.train()
    t_start = time.perf_counter()
    window: list[float] = []
    task_counts = [0] * len(data)
    steps_iter: Iterable[int] = range(step, cfg.steps)
    if progress is not None:
        steps_iter = progress(steps_iter, "finetune", cfg.steps - step)
    for s in steps_iter:
        t, idx = batch_for_step(s, schedule, sizes, cfg.batch_size, cfg.seed, lengths, cfg.bucket)
        d = data[t]
        loss = teacher_forcing_loss(model, tokenizer, [d.fit[i] for i in idx], d.labels,
                                    cfg.max_length_for(d.task.name), autocast=cfg.autocast == "bfloat16")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                                   cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        step = s + 1
        window.append(float(loss.detach()))
        task_counts[t] += 1
        if step % cfg.log_every == 0 or step == cfg.steps:
            row = {"event": "train", "step": step, "loss": round(float(np.mean(window)), 5),
                   "lr": scheduler.get_last_lr()[0], "grad_norm": round(float(grad_norm), 4),
                   "seconds": round(time.perf_counter() - t_start, 1),
                   "batches": dict(zip(cfg.tasks, task_counts))}
            window, task_counts = [], [0] * len(data)
            _append_log(log_path, row)
            emit(row)
        if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
            periodic_eval()
        if cfg.save_every and step % cfg.save_every == 0:
            save_checkpoint()

    if cfg.export == "best":
        if cfg.eval_every:
            periodic_eval()  # the last model competes too
        if best_path.exists():
            _load_trainable(model, torch.load(best_path, map_location="cpu"))
    model.eval()
    t0 = time.perf_counter()
    metrics = _evaluate_all(model, tokenizer, data, cfg, full=True, progress=progress)
    result = {"step": cfg.steps, "exported": cfg.export, "best_step": best["step"] if cfg.export == "best" else None,
              "metrics": metrics, "mean_accuracy": round(_mean_accuracy(metrics), 2),
              "eval_examples": {d.task.name: len(d.eval_all) for d in data}}
    row = {"event": "final", "step": cfg.steps, "eval_seconds": round(time.perf_counter() - t0, 1), **result}
    _append_log(log_path, row)
    emit(row)
    text = json.dumps({"config": cfg.to_dict(), **result}, indent=2) + "\n"
    if peft_model is not None:
        save_lora(peft_model, final_dir, base=cfg.model, dtype=DTYPES[cfg.dtype],
                  extra_files={"metrics.json": lambda p: p.write_text(text, encoding="utf-8")})
    else:
        save_pruned(model, final_dir, tokenizer, dtype=DTYPES[cfg.dtype], overwrite=True,
                    extra_files={"metrics.json": lambda p: p.write_text(text, encoding="utf-8")})
    return metrics


def _append_log(path: Path, row: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps({"time": round(time.time(), 1), **row}) + "\n")


def _refuse_changed(saved: dict[str, Any], cfg: FinetuneConfig, ckpt_path: Path) -> None:
    """A resumed run must be the run that wrote the checkpoint: other settings would mix two runs in one."""
    defaults = FinetuneConfig(model="", out_dir="").to_dict()
    changed = [k for k in RESUME_KEYS if saved.get(k, defaults[k]) != cfg.to_dict().get(k)]
    if changed:
        raise TaskpruneError(f"{ckpt_path} was written with other settings ({', '.join(changed)}); use another out_dir")


def _truncate_log(path: Path, step: int) -> None:
    """Drop rows logged after the checkpoint we resume from (they will be logged again)."""
    if not path.exists():
        return
    rows = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    keep = [r for r in rows if json.loads(r).get("step", 0) <= step or json.loads(r).get("event") == "resume"]
    atomic_write_text(path, "".join(r + "\n" for r in keep), overwrite=True)
