"""FLAP's fluctuation metric (An et al., AAAI 2024) with its adaptive structure, the peer's importance in this engine.

A unit whose input to the consumer barely varies over tokens can be replaced by its mean (FLAP's bias
compensation, :mod:`taskprune.pruning.repair` ``bias``), so a channel's importance is how much it fluctuates, weighted
by how strongly the consumer reads it: ``m_c = Var_t(x_c) * ||W[:, c]||^2`` (WIFV). As FLAP's own code
(CASIA-IVA-Lab/FLAP ``lib/prune.py``, structure AL-AM, the paper's default) does: an attention's channel metric is
squared; each layer's metrics are standardised over that layer's channels (mean and sample standard deviation over
the o_proj inputs of all its heads, over the FFN's units); a head scores the MEAN of its channels' standardised
metrics. Scores of every group are then on one scale and compress ranks them together by raw value
(``global-raw``, each unit weighted by the parameters it owns, as FLAP's ``compression_weight``).
No labels: the decoder (a causal LM's answer) is teacher-forced over every candidate label, as in repair's
calibration. FLAP removes whole heads; for the per-dim Q/K units of T5/BERT attentions, which feed a softmax rather
than a linear consumer, the metric is ``Var(q_j) * Var(k_j)`` (our extension: a dim matters when both sides vary),
standardised over the group's dims.
"""

from __future__ import annotations

import torch

from ..data import Batch
from ..lm import model_kind
from ..models import get_adapter
from ..runtime.placement import weight_value
from .base import Scores, ScoringJob, register_scorer, standardised
from .hooks import ActivationRecorder, run_scoring


def _pooled(sums: dict[str, list[list]]) -> dict[str, list[list]]:
    """Every rank's [n, Σx, Σx²] per group and site, added up (a rank that scored no batch adds nothing)."""
    from ..runtime.distributed import all_gather_objects

    pooled: dict[str, list[list]] = {}
    for part in all_gather_objects({k: [[float(n), s1, s2] for n, s1, s2 in v] for k, v in sums.items()}):
        for name, sites in part.items():
            acc = pooled.setdefault(name, [])
            for i, (n, s1, s2) in enumerate(sites):
                while len(acc) <= i:
                    acc.append([0.0, 0.0, 0.0])
                acc[i] = [acc[i][0] + n, acc[i][1] + s1, acc[i][2] + s2]
    return pooled


@register_scorer("flap", help="flap (FLAP's fluctuation scores, standardised per layer; compress adds its global "
                 "ranking and bias compensation)", combine="self", group_local=True, allocate="global-raw",
                 repair="bias", order=70)
def flap_scores(job: ScoringJob) -> Scores:
    model, labels = job.model, job.labels
    kind = model_kind(model)
    adapter = get_adapter(model)
    groups = {g.name: g for g in job.groups}
    sums: dict[str, list[list[torch.Tensor | float]]] = {}  # per group and site: [n, Σx, Σx²] over tokens

    def per_batch(rec: ActivationRecorder, batch: Batch, _scores: Scores) -> None:
        for c in range(len(labels)):
            tf = kind.teacher_forced(model, batch, labels, [c] * len(batch))
            model(**tf.kwargs)
            masks = rec.position_masks(batch, tf)
            for name, tensors in rec.captured.items():
                acc = sums.setdefault(name, [])
                for i, (h, m) in enumerate(zip([t for t in tensors if t is not None], masks[name])):
                    # [B, T, (w,) units] -> real tokens x channels (a whole head's w dims are channels too)
                    x = h.float().reshape(m.shape[0], m.shape[1], -1)[m.bool()].double()
                    while len(acc) <= i:
                        acc.append([0.0, 0.0, 0.0])
                    acc[i][0] += x.shape[0]
                    acc[i][1] = acc[i][1] + x.sum(0)
                    acc[i][2] = acc[i][2] + x.pow(2).sum(0)
            rec.clear()

    run_scoring(job, "flap", per_batch, grad=False)
    if job.shard.active:  # variances are not sums: pool every rank's token counts and moment sums first
        sums = _pooled(sums)
    out: Scores = {}
    for name, sites in sums.items():
        g = groups[name]
        var = []
        for n, s1, s2 in sites:
            n = max(float(n), 1.0)
            var.append((s2 / n - (s1 / n) ** 2).clamp(min=0).float())  # type: ignore[operator]
        if g.role == "qk":
            out[name] = standardised(var[0] * var[1] if len(var) > 1 else var[0]).float()
            continue
        col = weight_value(adapter.parts(g).consumers[0], "weight").detach().float().pow(2).sum(0).cpu()  # ||W[:, c]||^2
        w = g.unit_width  # the site showed a whole head as [w, units]; the consumer's columns are [units, w]
        v = var[0].cpu().reshape(w, g.size).T.reshape(-1) if w > 1 else var[0].cpu()
        out[name] = unit_scores(v, col, g.size, attention=g.role != "ffn")
    for name, g in groups.items():
        out.setdefault(name, torch.zeros(g.size))
    return out


def unit_scores(variance: torch.Tensor, column_norms: torch.Tensor, units: int, attention: bool) -> torch.Tensor:
    """FLAP's AL-AM score of each of ``units`` units from its channels' input variances and consumer columns'
    squared norms (both per channel, units-major): WIFV, squared for an attention, standardised over the layer's
    channels, averaged over each unit's channels."""
    metric = variance * column_norms
    if attention:
        metric = metric.pow(2)
    return standardised(metric).reshape(units, -1).mean(1).float()
