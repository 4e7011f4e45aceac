"""The library's front door: score -> plan -> prune -> save, each step callable alone.

The CLI is a thin layer over these functions; notebooks and scripts call them directly::

    model, tok = load_model(path), load_tokenizer(path)
    task = get_task("sst2")
    fit = sample_k_shot(load_examples(task, "fit", data_dir), 10, seed=0)
    result = compress(model, tok, task, fit, RateSpec(rate=0.5))
    save_compressed(result, tok, "out/")
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from .checkpoint import save_pruned
from .data import LabelSpace, batches
from .errors import TaskpruneError
from .models import get_adapter
from .plan import PruningPlan, RateSpec, make_plan
from .prune import apply
from .scoring import ScoreConfig, Scores, get_scorer, save_scores, score_metadata
from .scoring.base import Progress, no_progress
from .tasks import Example, Task

DEFAULT_MODEL_NAME = "minilm-glue6"


def default_model_dir() -> Path | None:
    """The project's default model: $TASKPRUNE_MODEL, else models/minilm-glue6 in the source tree."""
    env = os.environ.get("TASKPRUNE_MODEL")
    if env:
        return Path(env)
    candidate = Path(__file__).resolve().parents[1] / "models" / DEFAULT_MODEL_NAME
    return candidate if (candidate / "config.json").is_file() else None


def default_data_dir() -> Path | None:
    """Where GLUE/SuperGLUE data lives when --data-dir is not given: $TASKPRUNE_DATA."""
    env = os.environ.get("TASKPRUNE_DATA")
    return Path(env) if env else None


def score(
    model: nn.Module,
    tokenizer: Any,
    task: Task,
    examples: list[Example],
    *,
    method: str = "attribution",
    config: ScoreConfig | None = None,
    batch_size: int = 8,
    max_length: int = 256,
    progress: Progress = no_progress,
) -> Scores:
    """Importance of every unit of every group of ``model`` for ``task``, from ``examples``."""
    if not examples:
        raise TaskpruneError(f"no examples to score task {task.name} with")
    scorer = get_scorer(method)
    adapter = get_adapter(model)
    labels = LabelSpace.build(tokenizer, task)
    batch_list = list(batches(examples, tokenizer, batch_size, max_length))
    groups = [g for g in adapter.groups() if g.size > 0]
    return scorer(model, batch_list, labels, groups, config or ScoreConfig(), progress)


@dataclass
class CompressResult:
    model: nn.Module
    plan: PruningPlan
    scores: Scores
    scoring_seconds: float


def compress(
    model: nn.Module,
    tokenizer: Any,
    task: Task,
    examples: list[Example],
    rates: RateSpec,
    *,
    method: str = "attribution",
    config: ScoreConfig | None = None,
    seed: int | None = None,
    batch_size: int = 8,
    max_length: int = 256,
    progress: Progress = no_progress,
) -> CompressResult:
    """Score ``model`` on ``examples``, plan at ``rates`` and return the physically pruned copy."""
    config = config or ScoreConfig()
    t0 = time.perf_counter()
    scores = score(model, tokenizer, task, examples, method=method, config=config, batch_size=batch_size,
                   max_length=max_length, progress=progress)
    seconds = time.perf_counter() - t0
    plan = make_plan(model, scores, rates, task=task.name, method=method, samples=len(examples), seed=seed,
                     options=config.to_dict())
    return CompressResult(apply(plan, model, check=False), plan, scores, seconds)


def _meta(plan: PruningPlan) -> dict[str, str]:
    return score_metadata(plan.task or "", plan.method or "", plan.samples or 0, plan.seed,
                          ScoreConfig(**plan.options))


def save_compressed(result: CompressResult, tokenizer: Any, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Checkpoint + tokenizer + ``plan.json`` + ``scores.safetensors``, in one atomic folder."""
    return save_pruned(
        result.model,
        out_dir,
        tokenizer,
        extra_files={
            "plan.json": lambda p: result.plan.save(p),
            "scores.safetensors": lambda p: save_scores(result.scores, p, meta=_meta(result.plan)),
        },
        overwrite=overwrite,
    )
