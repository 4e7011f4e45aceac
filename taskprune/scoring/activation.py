"""FPP baseline: |activation| summed over real positions and examples, no gradient.

The decoder runs teacher-forced on the gold label (its units need some decoder input); padding positions
are masked out, since without a gradient nothing else zeroes them. For Q/K groups the score is |q| + |k|.
"""

from __future__ import annotations

import torch

from ..data import IGNORE, Batch, targets_for
from .base import Scores, ScoringJob, register_scorer
from .hooks import ActivationRecorder, run_scoring


@register_scorer("activation")
def activation_scores(job: ScoringJob) -> Scores:
    """Feature-based pruning (FPP): mean-free activation magnitude, summed."""
    model, labels = job.model, job.labels

    def per_batch(rec: ActivationRecorder, batch: Batch, start: int, scores: Scores) -> None:
        device = batch.input_ids.device
        dec_in, target = targets_for(labels, batch.gold.tolist(), start)
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, decoder_input_ids=dec_in.to(device),
              use_cache=False)
        masks = rec.position_masks(batch, (target != IGNORE).to(device))
        for name, tensors in rec.captured.items():
            for h, m in zip([t for t in tensors if t is not None], masks[name]):
                scores[name] += (h.float().abs() * m.unsqueeze(-1).to(torch.float32)).reshape(-1, h.shape[-1]).sum(0)

    return run_scoring(job, "activation", per_batch, grad=False)
