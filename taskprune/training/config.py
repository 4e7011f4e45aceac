"""The settings of a fine-tuning run: :class:`FinetuneConfig` checks every value when it is made, so a bad one
fails before minutes of loading a model, and round-trips through ``out_dir/config.json``, which a resumed run is
compared with (:data:`RESUME_KEYS`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from ..errors import TaskpruneError
from ..tasks import get_task
from ..validate import nonneg_float, nonneg_int, optional, positive_float, positive_int

DEFAULT_TASKS = ("sst2", "mrpc", "qnli", "rte", "cb", "boolq")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# settings that must not change between a checkpoint and its resumption
RESUME_KEYS = ("model", "tasks", "batch_size", "seed", "mixing_cap", "steps", "max_length", "task_max_length",
               "lora_rank", "lora_alpha", "lora_dropout", "bucket", "init_adapter")


@dataclass
class FinetuneConfig:
    """Everything a fine-tuning run depends on; the CLI (``taskprune finetune``) mirrors it."""

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
