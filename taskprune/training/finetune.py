"""Multi-task fine-tuning on text-to-text classification tasks (how ``minilm-glue6`` and ``smollm2-glue6`` are
made): seq2seq models and decoder-only LMs alike, fully or through a LoRA adapter.

Recipe (docs/finetune.md): every step draws ONE task (examples-proportional mixing with a per-task cap, as in
T5: weight of task t ∝ min(n_fit(t), cap)), takes the next ``batch_size`` examples of that task (a fresh
seeded permutation per epoch of the task), pads them to their own longest input and trains with teacher
forcing on exactly the targets that evaluation and attribution use (:mod:`taskprune.data`: label
word-pieces + EOS, decoder input = start id + target shifted right, cross-entropy ignoring ``IGNORE``).
AdamW, linear warm-up then linear decay, gradient clipping. A causal LM reads its task prompt (chat template
applied) and is trained on the label continuation only, with logits computed at the answer positions alone
(:mod:`taskprune.lm`).

Cheaper steps where a CPU needs them: ``lora_rank`` trains a PEFT LoRA adapter instead of every weight (the export
is then the adapter alone, megabytes instead of the model); ``autocast="bfloat16"`` runs forward and backward in
bf16 with float32 master weights; ``bucket`` > 1 pools that many consecutive batches of a task and cuts the pool,
sorted by length, into batches, so a batch pads to examples of similar length.

The task schedule and every batch are pure functions of (seed, step), so a run resumed from
``out_dir/checkpoint/state.pt`` (model, optimizer, scheduler, RNG, step) continues exactly where it stopped.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data import IGNORE, LabelSpace
from ..lm import label_space, model_kind, teacher_forced_logits
from ..errors import TaskpruneError
from ..evaluate import evaluate
from ..files import atomic_write, atomic_write_text, check_writable
from ..tasks import Example, Task, get_task, load_examples, require_data_dir
from ..validate import nonneg_float, nonneg_int, optional, positive_float, positive_int

Progress = Callable[[Iterable[Any], str, int], Iterable[Any]]
Log = Callable[[dict[str, Any]], None]

DEFAULT_TASKS = ("sst2", "mrpc", "qnli", "rte", "cb", "boolq")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class FinetuneConfig:
    """Everything a fine-tuning run depends on; the CLI (``python -m taskprune.training.finetune``) mirrors it."""

    model: str
    out_dir: str
    data_dir: str | None = None
    tasks: tuple[str, ...] = DEFAULT_TASKS
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-4
    warmup_steps: int | None = None  # None: 5 % of steps
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    max_length: int = 128
    task_max_length: dict[str, int] = field(default_factory=dict)  # per-task override, e.g. {"boolq": 256}
    mixing_cap: int = 16384
    eval_every: int = 500  # 0: no periodic evaluation
    eval_examples: int = 200  # per task for periodic evaluation (a fixed seeded subset); the final one is full
    eval_batch_size: int = 64
    log_every: int = 50
    save_every: int = 250
    seed: int = 0
    resume: bool = True
    export: str = "last"  # "last" or "best" (best mean periodic-eval accuracy)
    dtype: str = "float16"  # of the final export
    threads: int | None = None  # torch.set_num_threads
    lora_rank: int = 0  # 0: full fine-tuning; > 0: a LoRA adapter of this rank (PEFT) on every linear layer
    lora_alpha: float | None = None  # None: 2 x rank
    lora_dropout: float = 0.0
    autocast: str = "none"  # "bfloat16": forward/backward in bf16 (float32 master weights and optimizer state)
    bucket: int = 1  # batches of a task pooled and cut by length (1: no length bucketing)
    init_adapter: str | None = None  # a taskprune LoRA adapter of ``model`` to train further (a second stage)

    def __post_init__(self) -> None:
        self.tasks = tuple(self.tasks)
        self.task_max_length = {str(k): positive_int(v, f"task_max_length {k}")
                                for k, v in dict(self.task_max_length).items()}
        if self.model:  # a real run (the empty config that holds the defaults names no tasks to check)
            names = [get_task(t).name for t in self.tasks]  # an unknown task fails now, not after the model loads
            known = {t.lower(): n for t, n in zip(self.tasks, names)} | {n.lower(): n for n in names}
            stray = [k for k in self.task_max_length if k.lower() not in known]
            if stray:  # a typo would otherwise be ignored: that task trained at the default length
                raise TaskpruneError(f"task_max_length (--task-max-length) names {', '.join(stray)}, which is not "
                                     f"among the tasks trained ({', '.join(names)})")
            self.task_max_length = {known[k.lower()]: v for k, v in self.task_max_length.items()}
        # the same checks as the CLI's flags (taskprune.validate): a NaN learning rate or a zero log interval
        # fails here, not minutes in (AdamW's ValueError, a modulo by zero)
        for name in ("steps", "batch_size", "max_length", "mixing_cap", "eval_examples", "eval_batch_size",
                     "log_every"):
            setattr(self, name, positive_int(getattr(self, name), name))
        self.bucket = positive_int(self.bucket, "bucket")
        for name in ("eval_every", "save_every", "seed", "lora_rank"):
            setattr(self, name, nonneg_int(getattr(self, name), name))
        self.lr = positive_float(self.lr, "lr")
        self.max_grad_norm = positive_float(self.max_grad_norm, "max_grad_norm")
        self.weight_decay = nonneg_float(self.weight_decay, "weight_decay")
        self.warmup_steps = optional(nonneg_int, self.warmup_steps, "warmup_steps")  # type: ignore[assignment]
        self.threads = optional(positive_int, self.threads, "threads")  # type: ignore[assignment]
        self.lora_alpha = optional(positive_float, self.lora_alpha, "lora_alpha")  # type: ignore[assignment]
        self.lora_dropout = nonneg_float(self.lora_dropout, "lora_dropout")
        if self.lora_dropout >= 1:
            raise TaskpruneError(f"lora_dropout must be below 1, got {self.lora_dropout}")
        if self.autocast not in ("none", "bfloat16"):
            raise TaskpruneError(f"autocast must be 'none' or 'bfloat16', got {self.autocast!r}")
        if self.export not in ("last", "best"):
            raise TaskpruneError(f"export must be 'last' or 'best', got {self.export!r}")
        if self.export == "best" and not self.eval_every:  # else "best" would quietly be the last step
            raise TaskpruneError("export best picks the step of the best periodic evaluation: it needs eval_every > 0 "
                                 "(--eval-every)")
        if not self.lora_rank and self.init_adapter is None and (self.lora_alpha is not None or self.lora_dropout):
            raise TaskpruneError("lora_alpha and lora_dropout (--lora-alpha, --lora-dropout) shape a LoRA adapter: "
                                 "they need lora_rank > 0 (--lora-rank)")
        if self.dtype not in DTYPES:
            raise TaskpruneError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if not self.tasks:
            raise TaskpruneError("no tasks to fine-tune on")
        if self.init_adapter is not None:
            self._check_init_adapter()

    def _check_init_adapter(self) -> None:
        """A second stage trains the first stage's adapter further, so the export stays ONE adapter of the same
        base (loadable from the package base alone): its base must be ``model``, and its rank is the run's."""
        from ..sources.lora import is_lora_dir, read_manifest

        folder = Path(self.init_adapter)
        if not is_lora_dir(folder):
            raise TaskpruneError(f"--init-adapter {folder}: not a LoRA adapter folder (no adapter_config.json)")
        base = read_manifest(folder)["base"]
        if base != self.model:
            raise TaskpruneError(f"--init-adapter {folder} was trained on {base}, not on {self.model}: "
                                 f"pass --model {base}")
        rank = int(json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))["r"])
        if self.lora_rank not in (0, rank):
            raise TaskpruneError(f"--init-adapter {folder} has rank {rank}; --lora-rank {self.lora_rank} differs")
        self.lora_rank = rank

    @property
    def n_warmup(self) -> int:
        return int(round(0.05 * self.steps)) if self.warmup_steps is None else int(self.warmup_steps)

    def max_length_for(self, task: str) -> int:
        return self.task_max_length.get(task, self.max_length)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tasks"] = list(self.tasks)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FinetuneConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TaskpruneError(f"unknown fine-tuning settings: {', '.join(unknown)}")
        return cls(**data)


# ----- mixing and batches: pure functions of (seed, step) ---------------------------------------------------


def mixture_weights(sizes: Sequence[int], cap: int) -> list[float]:
    """Examples-proportional mixing with a cap (T5): weight ∝ min(n, cap), normalised."""
    capped = [min(int(n), cap) for n in sizes]
    total = sum(capped)
    if total <= 0:
        raise TaskpruneError("every task has zero fit examples")
    return [c / total for c in capped]


def task_schedule(sizes: Sequence[int], cap: int, steps: int, seed: int) -> np.ndarray:
    """The task index of every step."""
    rng = np.random.default_rng([seed, 1])
    return rng.choice(len(sizes), size=steps, p=mixture_weights(sizes, cap))


def batch_indices(n: int, k: int, batch_size: int, seed: int, task_index: int) -> list[int]:
    """Example indices of the ``k``-th batch of a task with ``n`` examples: consecutive slices of seeded
    per-epoch permutations (a batch that crosses an epoch boundary continues into the next permutation)."""
    out: list[int] = []
    pos = k * batch_size
    perms: dict[int, np.ndarray] = {}
    while len(out) < batch_size:
        epoch, offset = divmod(pos, n)
        if epoch not in perms:
            perms[epoch] = np.random.default_rng([seed, 2, task_index, epoch]).permutation(n)
        take = min(batch_size - len(out), n - offset)
        out.extend(perms[epoch][offset : offset + take].tolist())
        pos += take
    return out


def bucketed_batch(
    lengths: Sequence[int], k: int, batch_size: int, seed: int, task_index: int, bucket: int
) -> list[int]:
    """The ``k``-th batch of a task whose examples have ``lengths``, with length bucketing: the ``bucket`` batches
    of a pool (consecutive slices of the same permutations as :func:`batch_indices`) are re-cut by length, in a
    seeded order, so each epoch still visits every example once and a batch pads to similar lengths."""
    n = len(lengths)
    if bucket <= 1:
        return batch_indices(n, k, batch_size, seed, task_index)
    pool_no, j = divmod(k, bucket)
    pool = batch_indices(n, pool_no, batch_size * bucket, seed, task_index)
    pool.sort(key=lambda i: (lengths[i], i))
    order = np.random.default_rng([seed, 3, task_index, pool_no]).permutation(bucket)
    c = int(order[j])
    return pool[c * batch_size : (c + 1) * batch_size]


def batch_for_step(
    step: int, schedule: np.ndarray, sizes: Sequence[int], batch_size: int, seed: int,
    lengths: Sequence[Sequence[int]] | None = None, bucket: int = 1,
) -> tuple[int, list[int]]:
    """(task index, example indices) of ``step``; ``lengths`` (per task, per example) when ``bucket`` > 1."""
    t = int(schedule[step])
    k = int((schedule[:step] == t).sum())
    if bucket > 1:
        if lengths is None:
            raise ValueError("length bucketing needs the examples' lengths")
        return t, bucketed_batch(lengths[t], k, batch_size, seed, t, bucket)
    return t, batch_indices(sizes[t], k, batch_size, seed, t)


def teacher_forcing_loss(
    model: nn.Module,
    tokenizer: Any,
    examples: Sequence[Example],
    labels: LabelSpace,
    max_length: int,
    autocast: bool = False,
) -> torch.Tensor:
    """Mean cross-entropy over the gold targets' tokens (word-pieces + EOS / end of turn) of ``examples``, read
    as the model's kind reads them (:mod:`taskprune.lm`: a causal LM's loss is on the continuation only); ``autocast``: the model runs in bf16."""
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
    from ..checkpoint import load_model, load_tokenizer, tie_embeddings

    model = load_model(cfg.model)
    tie_embeddings(model)  # bert2bert folders store the tied embedding twice (see seq2seq_init)
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


def _text_lengths(examples: Sequence[Example]) -> list[int]:
    """A length key for bucketing that needs no tokenizer pass: characters of the input."""
    return [len(e.prompt or e.text) for e in examples]


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


# settings that must not change between a checkpoint and its resumption
_RESUME_KEYS = ("model", "tasks", "batch_size", "seed", "mixing_cap", "steps", "max_length", "task_max_length",
                "lora_rank", "lora_alpha", "lora_dropout", "bucket", "init_adapter")


def finetune(cfg: FinetuneConfig, progress: Progress | None = None, log: Log | None = None) -> dict[str, Any]:
    """Fine-tune ``cfg.model`` on ``cfg.tasks``; returns the final per-task metrics (percent, full eval split).

    Writes ``out_dir/log.jsonl`` (one row per log/eval step), ``out_dir/checkpoint/state.pt`` (every
    ``save_every`` steps, atomically; resumed automatically with ``resume``), ``out_dir/config.json`` and the
    exported model in ``out_dir/final/`` (``dtype`` safetensors + config + tokenizer + metrics.json).
    """
    from ..sources.lora import save_lora
    from ..checkpoint import save_pruned

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
    lengths = [_text_lengths(d.fit) for d in data] if cfg.bucket > 1 else None
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
    changed = [k for k in _RESUME_KEYS if saved.get(k, defaults[k]) != cfg.to_dict().get(k)]
    if changed:
        raise TaskpruneError(f"{ckpt_path} was written with other settings ({', '.join(changed)}); use another out_dir")


def _truncate_log(path: Path, step: int) -> None:
    """Drop rows logged after the checkpoint we resume from (they will be logged again)."""
    if not path.exists():
        return
    rows = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    keep = [r for r in rows if json.loads(r).get("step", 0) <= step or json.loads(r).get("event") == "resume"]
    atomic_write_text(path, "".join(r + "\n" for r in keep), overwrite=True)
