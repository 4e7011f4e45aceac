"""RP baseline: random scores, one independent draw per trial seed (``ScoreConfig.seed``)."""

from __future__ import annotations

import torch
from torch import nn

from ..data import Batch, LabelSpace
from ..models import NeuronGroup
from .base import Progress, ScoreConfig, Scores, no_progress, register_scorer


@register_scorer("random")
def random_scores(
    model: nn.Module,
    batches: list[Batch],
    labels: LabelSpace,
    groups: list[NeuronGroup],
    config: ScoreConfig,
    progress: Progress = no_progress,
) -> Scores:
    """Uniform random scores: deterministic given the seed, independent across seeds and groups."""
    g = torch.Generator().manual_seed(config.seed)
    return {grp.name: torch.rand(grp.size, generator=g) for grp in groups}
