"""Attribution scores (DESIGN §1): activation x gradient of the label-token probabilities.

Supervised (eqs. 4-6): ``A_i(x, y) = sum_pos h_i * d(sum_j P(y_j | x, y_<j)) / d h_i`` for the gold
label's word-pieces, aggregated over examples as configured (see :class:`ScoreConfig`).
Unsupervised (eq. 10): no gold label; for every candidate label y,
``A_i += sum_pos |h_i| * sum_j |d P(y_j | x, y_<j) / d h_i|``. One forward and one backward per batch
(per candidate and label token for the unsupervised variant); the weights never change.
"""

from __future__ import annotations

import torch
from torch import nn

from ..data import IGNORE, Batch
from ..lm import teacher_forced_logits
from ..method import recipe
from .base import Scores, ScoringJob, register_scorer
from .hooks import ActivationRecorder, run_scoring


def _target_probs(model: nn.Module, batch: Batch, labels, classes: list[int]) -> torch.Tensor:  # noqa: ANN001
    """P(y_j | x, y_<j) of each class's word-pieces at every target position (0 where padding), shape [B, L]."""
    logits, target = teacher_forced_logits(model, batch, labels, classes, pieces_only=True)
    probs = logits.float().softmax(-1)
    valid = target != IGNORE
    picked = probs.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked * valid


def _per_example(h: torch.Tensor, g: torch.Tensor | None, position_agg: str) -> torch.Tensor:
    """Sum over positions of h*grad (or |h*grad|): [B, T, k] -> [B, k]."""
    if g is None:
        return torch.zeros(h.shape[0], h.shape[-1], device=h.device)
    hg = (h.detach().float() * g.float()).reshape(h.shape[0], -1, h.shape[-1])
    return (hg if position_agg == "sum" else hg.abs()).sum(1)


def _gated(position_agg: str) -> bool:
    """Whether gates can stand for the activations: only a sum over positions is a gate's gradient (``abs`` needs
    every position's h * grad)."""
    return position_agg == "sum"


@register_scorer("attribution", help="attribution (supervised, eqs. 4-6: the paper's method)", group_local=True,
                 order=10)
def supervised_attribution(job: ScoringJob) -> Scores:
    """Supervised attribution toward each example's gold label (eqs. 4-6)."""
    model, labels, config = job.model, job.labels, job.config

    def per_batch(rec: ActivationRecorder, batch: Batch, scores: Scores) -> None:
        objective = _target_probs(model, batch, labels, batch.gold.tolist()).sum()
        names, tensors = rec.flat()
        grads = torch.autograd.grad(objective, tensors, allow_unused=True)
        per_example: dict[str, torch.Tensor] = {}
        for name, h, g in zip(names, tensors, grads):
            a = _per_example(h, g, config.position_agg)
            per_example[name] = per_example[name] + a if name in per_example else a
        for name, a in per_example.items():  # .to(): with a device map, layers run on several devices
            scores[name] += (a.abs() if config.example_agg == "abs" else a).sum(0).to(scores[name].device)

    scores = run_scoring(job, "attribution", per_batch, gated=_gated(config.position_agg))
    return {k: v.abs() for k, v in scores.items()} if config.example_agg == "abs_sum" else scores


@register_scorer("fisher", help="fisher (Kwon et al.'s Fisher scores)", group_local=True, order=60)
def fisher(job: ScoringJob) -> Scores:
    """Kwon et al. (2022): the diagonal Fisher information of a unit's mask, ``sum_x (sum_pos h * d log P(y|x) / d h)^2``
    — each example's attribution of the gold label's log-likelihood, squared, then summed (instead of the paper's
    |sum a*g| over probabilities). Activations, not weights, are differentiated: a row's gradient is that example's."""
    model, labels = job.model, job.labels

    def per_batch(rec: ActivationRecorder, batch: Batch, scores: Scores) -> None:
        logits, target = teacher_forced_logits(model, batch, labels, batch.gold.tolist(), pieces_only=True)
        logp = logits.float().log_softmax(-1).gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        objective = (logp * (target != IGNORE)).sum()
        names, tensors = rec.flat()
        grads = torch.autograd.grad(objective, tensors, allow_unused=True)
        per_example: dict[str, torch.Tensor] = {}
        for name, h, g in zip(names, tensors, grads):
            a = _per_example(h, g, "sum")
            per_example[name] = per_example[name] + a if name in per_example else a
        for name, a in per_example.items():
            scores[name] += a.pow(2).sum(0).to(scores[name].device)

    return run_scoring(job, "fisher", per_batch, gated=_gated("sum"))


#: Kwon et al. 2022 as a recipe of this engine's parts: Fisher scores, one global ranking, per-unit rescaling
recipe("kwon", "fisher", "global-raw", "scale", help="kwon (Fisher + global ranking + rescaling)", order=80)


@register_scorer("attribution-unsupervised", help="attribution-unsupervised (eq. 10)", group_local=True, order=20)
def unsupervised_attribution(job: ScoringJob) -> Scores:
    """Label-free attribution over every candidate label with absolute values (eq. 10)."""
    model, labels = job.model, job.labels

    def per_batch(rec: ActivationRecorder, batch: Batch, scores: Scores) -> None:
        for c in range(len(labels)):
            probs = _target_probs(model, batch, labels, [c] * len(batch))
            names, tensors = rec.flat()
            grad_abs = [torch.zeros_like(t, dtype=torch.float32) for t in tensors]
            for j in range(labels.n_pieces[c]):
                grads = torch.autograd.grad(probs[:, j].sum(), tensors, retain_graph=True, allow_unused=True)
                for acc, g in zip(grad_abs, grads):
                    if g is not None:
                        acc += g.float().abs()
            for name, h, g in zip(names, tensors, grad_abs):
                scores[name] += (h.detach().float().abs() * g).reshape(-1, h.shape[-1]).sum(0).to(scores[name].device)
            rec.clear()

    return run_scoring(job, "attribution (unsupervised)", per_batch)
