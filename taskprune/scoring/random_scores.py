"""RP baseline: random scores, one independent draw per trial seed (``ScoreConfig.seed``)."""

from __future__ import annotations

import torch

from .base import Scores, ScoringJob, register_scorer


@register_scorer("random", help="random (RP)", needs_examples=False, combine="same", random=True, order=50)
def random_scores(job: ScoringJob) -> Scores:
    """Uniform random scores: deterministic given the seed, independent across seeds and groups."""
    g = torch.Generator().manual_seed(job.config.seed)
    return {grp.name: torch.rand(grp.size, generator=g) for grp in job.groups}
