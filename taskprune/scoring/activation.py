"""FPP baseline: |activation| summed over real positions and examples, no gradient.

The decoder (or the causal LM after its prompt) runs teacher-forced on the gold label; padding positions
are masked out, since without a gradient nothing else zeroes them. For Q/K groups the score is |q| + |k|.
"""

from __future__ import annotations

import torch

from ..data import Batch
from ..lm import model_kind
from .base import Scores, ScoringJob, register_scorer
from .hooks import ActivationRecorder, run_scoring


@register_scorer("activation", help="activation (FPP, the paper's baseline)", group_local=True, order=30)
def activation_scores(job: ScoringJob) -> Scores:
    """Feature-based pruning (FPP): mean-free activation magnitude, summed."""
    model, labels = job.model, job.labels

    kind = model_kind(model)

    def per_batch(rec: ActivationRecorder, batch: Batch, scores: Scores) -> None:
        tf = kind.teacher_forced(model, batch, labels, batch.gold.tolist())
        model(**tf.kwargs)
        masks = rec.position_masks(batch, tf)
        for name, tensors in rec.captured.items():
            for h, m in zip([t for t in tensors if t is not None], masks[name]):
                m = m.to(torch.float32).reshape(*m.shape, *[1] * (h.dim() - m.dim()))  # [B, T, 1...] over h's units
                m = m.to(h.device)
                scores[name] += (h.float().abs() * m).reshape(-1, h.shape[-1]).sum(0).to(scores[name].device)

    return run_scoring(job, "activation", per_batch, grad=False)
