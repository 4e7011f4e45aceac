"""SMP, the peer method (Static Model Pruning, ACL 2023): masks learnt with every weight frozen.

A mask score is learnt per unit or per weight by first-order optimisation of the task loss (optionally
with distillation from the dense model). The forward pass uses the hard top-k mask of the scores and the
backward pass hands the mask's gradient to the scores unchanged (straight-through estimator); the
removed fraction grows from 0 to the target rate on a schedule (:class:`SMPConfig`). Only the scores
get gradients: the weights stay bit-identical.

- ``smp`` (structured): one score per unit of every neuron group in scope, top-k within each head exactly
  as the planner selects (:func:`~taskprune.pruning.plan.select_units`). The learnt scores then go through the
  same plan -> apply/mask path as attribution, so the two compare at equal widths.
- ``smp-unstructured`` (the SMP paper's setting): one score per weight of every prunable linear; the
  result keeps the dense shapes with zeros (plus the masks). It saves nothing and runs no faster
  unless a sparse kernel or format is used: :func:`learn_weight_masks`, :func:`apply_weight_masks`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..data import IGNORE
from ..errors import TaskpruneError
from ..lm import TeacherForced, model_kind
from ..method import Method, Transformed, TransformRequest, register_method
from ..models import NeuronGroup, get_adapter
from ..pruning.plan import select_units
from ..pruning.rates import RateSpec
from ..runtime.placement import execution_device, is_dispatched, offloaded_weights_refetched
from .base import Scores, ScoringJob, SMPConfig, register_scorer
from .hooks import recording

Masks = dict[str, torch.Tensor]


def removed_fraction(step: int, cfg: SMPConfig, rate: float) -> float:
    """Fraction removed at optimisation ``step`` (0-based): 0 during warm-up, the target from the ramp's end."""
    if cfg.schedule == "constant":
        return rate
    start = cfg.warmup * cfg.steps
    end = (1.0 - cfg.cooldown) * cfg.steps
    if step + 1 <= start:
        return 0.0
    x = min(1.0, (step + 1 - start) / max(end - start, 1.0))
    return rate * (1.0 - (1.0 - x) ** 3) if cfg.schedule == "cubic" else rate * x


def _target_spec(job: ScoringJob) -> RateSpec:
    """The rates (and width rounding) the plan will be made at: SMP learns its masks for exactly those."""
    if job.config.target_rates is None:
        raise TaskpruneError(
            "SMP learns its masks for a target rate: run it through `taskprune compress` (or "
            "taskprune.compress), which passes the rates"
        )
    return RateSpec.from_dict(job.config.target_rates)


def _target_rates(job: ScoringJob, spec: RateSpec | None = None) -> dict[str, float]:
    spec = spec or _target_spec(job)
    return {g.name: spec.rate_for(g) for g in job.groups if spec.rate_for(g) > 0 and g.size > 0}


def _loss(logits: torch.Tensor, target: torch.Tensor, teacher: torch.Tensor | None, cfg: SMPConfig) -> torch.Tensor:
    """Cross-entropy on the gold target, mixed with KL toward the dense model's distribution if asked."""
    logits = logits.float()
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE)
    if teacher is None or cfg.distill == 0.0:
        return ce
    t = cfg.temperature
    valid = target != IGNORE
    kl = F.kl_div(F.log_softmax(logits[valid] / t, -1), F.log_softmax(teacher[valid] / t, -1),
                  log_target=True, reduction="batchmean")
    return (1.0 - cfg.distill) * ce + cfg.distill * t * t * kl


def _optimise(
    job: ScoringJob,
    scores: dict[str, torch.Tensor],
    rates: dict[str, float],
    hard_mask: Callable[[str, torch.Tensor, float], torch.Tensor],
    forward: Callable[[TeacherForced, Masks], torch.Tensor],
    desc: str,
) -> list[float]:
    """The SMP loop shared by both granularities; returns the loss of every step (of this rank's batches).

    ``forward(teacher_forced, masks)`` runs the model with the given (STE) masks applied and returns the logits
    ``[B, L, V]`` next to ``teacher_forced.target`` (:mod:`taskprune.lm`).

    Several processes (``job.shard``) learn like DDP: each steps on one of its own batches, the mask-score
    gradients are averaged over the ranks before every Adam step, so every rank holds the same scores (rank 0's
    are broadcast at the end to rule out rounding drift). A step then sees ``world_size`` batches at once: the
    result equals a one-process run with that many times the batch size, not the one-process run itself.
    """
    from ..runtime.distributed import all_reduce_mean_, broadcast_

    model, config, shard = job.model, job.config, job.shard
    cfg = config.smp
    kind = model_kind(model)
    device = execution_device(model)
    if shard.active and len(job.batches) < shard.world_size:
        raise TaskpruneError(f"SMP under {shard.world_size} processes needs at least {shard.world_size} batches of "
                             f"examples, one per process (it has {len(job.batches)}): use fewer processes, more "
                             "examples or a smaller --batch-size")
    prepared = []
    for i in job.my_batches():
        batch = job.batches[i].to(device)
        tf = kind.teacher_forced(model, batch, job.labels, batch.gold.tolist())
        teacher = None
        if cfg.distill > 0:
            with torch.no_grad():
                teacher = forward(tf, {}).float()
        prepared.append((tf, teacher))
    optimiser = torch.optim.Adam(list(scores.values()), lr=cfg.lr)
    order = torch.Generator().manual_seed(config.seed)
    queue: list[int] = []
    losses: list[float] = []
    # callers may run under no_grad; only the scores get gradients
    with torch.enable_grad(), offloaded_weights_refetched(model):
        for step in job.progress(range(cfg.steps), desc, cfg.steps):
            if not queue:
                queue = torch.randperm(len(prepared), generator=order).tolist()
            tf, teacher = prepared[queue.pop()]
            masks = {}
            for name, s in scores.items():
                hard = hard_mask(name, s.detach(), removed_fraction(step, cfg, rates[name]))
                masks[name] = hard + s - s.detach()  # straight-through: forward uses the hard mask, grad flows to s
            loss = _loss(forward(tf, masks), tf.target, teacher, cfg)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            if shard.active:
                for s in scores.values():  # a score no layer used this step has no gradient yet: zero, like DDP
                    if s.grad is None:
                        s.grad = torch.zeros_like(s)
                all_reduce_mean_([s.grad for s in scores.values()])
            optimiser.step()
            losses.append(float(loss.detach()))
    if shard.active:
        with torch.no_grad():
            broadcast_([s.data for s in scores.values()])
    return losses


# -- structured: one score per unit ------------------------------------------------------------------

def _unit_mask(group: NeuronGroup, multiple_of: int = 1) -> Callable[[str, torch.Tensor, float], torch.Tensor]:
    def hard(_name: str, s: torch.Tensor, rate: float) -> torch.Tensor:
        m = torch.zeros_like(s)
        m[select_units(s, group.n_heads, rate, multiple_of).to(s.device)] = 1.0
        return m

    return hard


def learn_unit_scores(job: ScoringJob) -> tuple[Scores, list[float]]:
    """Learnt per-unit mask scores of the groups pruned at the target rates, and the loss per step."""
    model = job.model
    adapter = get_adapter(model)
    spec = _target_spec(job)
    rates = _target_rates(job, spec)
    learnt = [g for g in job.groups if g.name in rates]
    device = execution_device(model)
    scores = {g.name: torch.zeros(g.size, device=device, requires_grad=True) for g in learnt}
    masks_now: Masks = {}
    per_group = {g.name: _unit_mask(g, spec.multiple_of) for g in learnt}  # the widths the plan will keep

    def hard(name: str, s: torch.Tensor, rate: float) -> torch.Tensor:
        return per_group[name](name, s, rate)

    def forward(tf: TeacherForced, masks: Masks) -> torch.Tensor:
        masks_now.clear()
        masks_now.update(masks)
        return model(**tf.kwargs).logits

    def site_fn(name: str) -> Callable[[torch.Tensor], torch.Tensor | None]:
        return lambda t: t * masks_now[name].to(t.device, t.dtype) if name in masks_now else None

    with recording(adapter, [], grad=False):  # eval mode and frozen weights, restored afterwards
        handles = [site.hook(site_fn(g.name)) for g in learnt for site in adapter.sites(g)]
        try:
            losses = _optimise(job, scores, rates, hard, forward, "smp")
        finally:
            for h in handles:
                h.remove()
    return {k: v.detach().cpu() for k, v in scores.items()}, losses


@register_scorer("smp", help="smp (Static Model Pruning, learnt per-unit masks)", combine="self", rate_targeted=True,
                 order=100)
def smp_scores(job: ScoringJob) -> Scores:
    """Structured SMP: per-unit mask scores learnt for the target rates (groups at rate 0 get none)."""
    return learn_unit_scores(job)[0]


# -- unstructured: one score per weight --------------------------------------------------------------

def prunable_weights(model: nn.Module, rates: dict[str, float]) -> dict[str, tuple[nn.Linear, float]]:
    """``{parameter name: (linear, rate)}`` for every producer/consumer weight of the groups in ``rates``."""
    adapter = get_adapter(model)
    names = {id(m): n for n, m in model.named_modules()}
    out: dict[str, tuple[nn.Linear, float]] = {}
    for g in adapter.groups():
        if g.name not in rates:
            continue
        parts = adapter.parts(g)
        for lin in (*parts.producers, *parts.consumers):
            out[f"{names[id(lin)]}.weight"] = (lin, rates[g.name])
    return out


def _weight_mask(_name: str, s: torch.Tensor, rate: float) -> torch.Tensor:
    n = s.numel()
    n_keep = n - math.floor(n * rate + 1e-9)
    m = torch.zeros(n, device=s.device)
    if n_keep:
        m[torch.topk(s.reshape(-1), n_keep, sorted=False).indices] = 1.0
    return m.reshape(s.shape)


def learn_weight_masks(job: ScoringJob) -> tuple[Masks, list[float]]:
    """Unstructured SMP: a boolean keep-mask per prunable weight matrix (top-k per matrix), and the losses."""
    from torch.func import functional_call

    model = job.model
    rates = _target_rates(job)
    weights = prunable_weights(model, rates)
    device = execution_device(model)
    scores = {n: torch.zeros(lin.weight.shape, device=device, requires_grad=True) for n, (lin, _) in weights.items()}
    rate_of = {n: r for n, (_, r) in weights.items()}

    def forward(tf: TeacherForced, masks: Masks) -> torch.Tensor:
        params = {n: weights[n][0].weight * m.to(weights[n][0].weight.dtype) for n, m in masks.items()}
        return functional_call(model, params, args=(), kwargs=tf.kwargs, strict=False).logits

    with recording(get_adapter(model), [], grad=False):
        losses = _optimise(job, scores, rate_of, _weight_mask, forward, "smp (unstructured)")
    masks = {n: _weight_mask(n, s.detach(), rate_of[n]).bool().cpu() for n, s in scores.items()}
    return masks, losses


def apply_weight_masks(model: nn.Module, masks: Masks, *, inplace: bool = False) -> nn.Module:
    """Zero the masked-out weights (same shapes: smaller only once sparsely stored, no faster as is)."""
    if not inplace:
        model = copy.deepcopy(model)
    params = dict(model.named_parameters())
    kept = total = 0
    for name, m in masks.items():
        if name not in params or params[name].shape != m.shape:
            raise TaskpruneError(f"weight mask {name} does not fit this model; the masks were made for another model")
        with torch.no_grad():
            params[name].mul_(m.to(params[name].device, params[name].dtype))
        kept += int(m.sum())
        total += m.numel()
    model.config.taskprune_weight_sparsity = {"masked_weights": total, "zeroed": total - kept,
                                              "fraction_zeroed": (total - kept) / max(total, 1)}
    return model


def _unstructured_transform(req: TransformRequest) -> Transformed:
    """``--method smp-unstructured``: a mask per weight, learnt like SMP's unit masks; zeros in dense shapes."""
    from safetensors.torch import save_file

    if is_dispatched(req.model):
        raise TaskpruneError("smp-unstructured learns a mask per weight through a functional call of the whole "
                             "model: it does not run on a model placed by --device-map; load the model whole")
    if req.rates.multiple_of != 1:
        raise TaskpruneError("multiple_of rounds the widths of pruned units; smp-unstructured zeroes single weights "
                             "in dense shapes: leave multiple_of at 1 for it")
    masks, _ = learn_weight_masks(req.scoring_job())
    out = apply_weight_masks(req.model, masks)
    tensors = {k: v.to(dtype=torch.uint8).contiguous() for k, v in masks.items()}
    return Transformed(
        out, note="unstructured: the zeroed weights keep their dense shapes, so the model is neither smaller nor "
                  "faster without a sparse kernel or format (masks in masks.safetensors)",
        extra_files={"masks.safetensors": lambda p: save_file(tensors, str(p), metadata={"task": req.task.name})},
    )


register_method(Method("smp-unstructured", "smp-unstructured (per-weight masks: zeros, no speed-up)",
                       transform=_unstructured_transform, combine="self", whole_model=True, rate_targeted=True,
                       scores_alone=False, order=110))
