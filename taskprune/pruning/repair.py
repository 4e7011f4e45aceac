"""Training-free weight repair: after a plan chooses the kept units, re-solve what consumes them.

Removing units from an FFN or an attention changes the sublayer's output; the kept units' outgoing weights (the
FFN output projection, the attention output projection: the group's *consumer*) were fit for the dense model.
Repair solves, per group and in closed form, for new consumer weights that make the pruned sublayer reproduce the
dense sublayer's output on calibration activations (Kwon et al. 2022, FLAP 2024, SlimGPT/OSSCAR; no gradient
step, no labels). With x the consumer's input (units of the group; ``S`` the kept ones), y = W x the dense
sublayer's output and C = W[:, S] the kept weights:

- ``ls``: ridge least squares toward the kept weights, ``W' = (E[y x_S^T] + λ C)(E[x_S x_S^T] + λ I)^-1``,
  centred with the bias updated where the consumer has a bias (BERT), uncentred where it has none (T5, Llama),
  unless ``centred`` asks to add one there (:mod:`.biases`: a stock flag or the checkpoint's remote code). A
  ridge toward C, not toward zero: with few calibration tokens per kept unit a ridge toward zero shrinks the
  layer and collapses the model to one class. ``λ = alpha x mean diag E[x_S x_S^T]``.
- ``bias``: FLAP's bias compensation, ``b' = b + E[y] - C E[x_S]`` (the removed units' mean contribution), weights
  unchanged; a consumer without a bias gets one (:mod:`.biases`), as FLAP's own code adds them to LLaMA.
- ``scale``: Kwon et al.'s mask tuning, one least-squares scale per kept unit (``W' = C diag(m)``, ridge toward 1).

One-shot (default) solves every group on the dense model's inputs, from one pass over the calibration set.
``sequential`` repairs groups in the order the forward pass meets them, each solved on inputs from the pruned model
with every earlier group already repaired, against targets from the dense model (SparseGPT's order), so later
layers could correct what earlier ones left; it costs one (early-stopped) pass per group, and on minilm-glue6
(SST-2, 50 %) it did not beat one-shot (reports/beyond).

Calibration inputs are task inputs without labels: a seq2seq decoder (and a causal LM's answer) is teacher-forced
over EVERY candidate label, so the decoder's positions are covered without knowing the gold one.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..data import Batch, LabelSpace
from ..errors import TaskpruneError
from ..lm import model_kind
from ..models import Adapter, NeuronGroup, get_adapter
from ..scoring.base import Progress, no_progress
from .apply import mask
from .biases import add_biases
from .plan import PruningPlan

REPAIR_MODES = ("none", "ls", "bias", "scale")
#: group kinds with a linear consumer whose input is the group's units (QK units feed a softmax: not repairable)
REPAIRABLE = ("ffn", "vo", "heads")


@dataclass
class RepairConfig:
    """How kept weights are re-solved; ``alpha`` scales the ridge (relative to the mean input energy)."""

    mode: str = "ls"
    alpha: float = 0.1
    sequential: bool = False
    #: ls/scale: add a bias to bias-less consumers and solve the centred problem (mode ``bias`` always adds one)
    centred: bool = False

    def __post_init__(self) -> None:
        if self.mode not in REPAIR_MODES:
            raise TaskpruneError(f"repair {self.mode!r} is not one of {', '.join(REPAIR_MODES)}")
        if not (isinstance(self.alpha, (int, float)) and self.alpha >= 0 and self.alpha == self.alpha):
            raise TaskpruneError(f"repair alpha must be a non-negative number, got {self.alpha!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def kept_columns(group: NeuronGroup, keep: torch.Tensor) -> torch.Tensor:
    """Consumer input columns of the kept units (a whole head spans ``unit_width`` columns)."""
    w = group.unit_width
    return (keep.unsqueeze(1) * w + torch.arange(w)).reshape(-1) if w > 1 else keep


class _Stop(Exception):
    """Raised by a capture hook once the group it waits for has been seen: the rest of the pass is not needed."""


@dataclass
class _Stats:
    """Sums over calibration tokens, in float64: n, Σx_S, Σy, Σ x_S x_S^T, Σ y x_S^T."""

    n: float
    sx: torch.Tensor
    sy: torch.Tensor
    sxx: torch.Tensor
    syx: torch.Tensor

    @classmethod
    def zeros(cls, k: int, o: int) -> _Stats:
        f = torch.float64
        return cls(0.0, torch.zeros(k, dtype=f), torch.zeros(o, dtype=f), torch.zeros(k, k, dtype=f),
                   torch.zeros(o, k, dtype=f))

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One batch's tokens: products in float32 (a few hundred tokens each; float64 for a float64 model),
        accumulated in float64."""
        f = torch.float64 if x.dtype == torch.float64 else torch.float32
        x, y = x.to(f), y.to(f)
        self.n += x.shape[0]
        self.sx += x.sum(0).double()
        self.sy += y.sum(0).double()
        self.sxx += (x.T @ x).double()
        self.syx += (y.T @ x).double()


@dataclass
class _Pass:
    """One calibration forward: a batch teacher-forced on candidate ``label`` (``kwargs`` for the model)."""

    kwargs: dict[str, Any]
    batch: Batch
    tf: Any
    label: int


def calibration_passes(model: nn.Module, batches: Iterable[Batch], labels: LabelSpace) -> list[_Pass]:
    """Forward inputs covering every candidate label of every calibration example."""
    kind = model_kind(model)
    out = []
    for batch in batches:
        for c in range(len(labels)):
            tf = kind.teacher_forced(model, batch, labels, [c] * len(batch))
            out.append(_Pass(tf.kwargs, batch, tf, c))
    return out


def _reads(model: nn.Module, group: NeuronGroup, p: _Pass) -> bool:
    """Whether ``group`` sees new tokens in pass ``p``: a seq2seq encoder reads the same input whatever the
    candidate label, so only its first candidate's pass counts (the others would count its tokens again)."""
    return p.label == 0 or not (group.module == "encoder" and model_kind(model).has_encoder)


def _positions(adapter: Adapter, group: NeuronGroup, p: _Pass) -> torch.Tensor:
    return model_kind(adapter.model).site_mask(group, 0, p.batch, p.tf).bool()


def _tokens(t: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Rows of the real positions of a [B, T, d] activation."""
    return t.reshape(m.shape[0], -1, t.shape[-1])[m.reshape(m.shape[0], -1)]


_LAYER_ORDER = {"self_attn": 0, "cross_attn": 1, "ffn": 2}


def _forward_order(groups: list[NeuronGroup]) -> list[NeuronGroup]:
    """``groups`` in the order a forward pass reaches them: the encoder (if any) before the decoder, blocks in
    depth order, and in a block self-attention, cross-attention, then the FFN (every family here is pre- or
    post-norm residual in that order)."""
    return sorted(groups, key=lambda g: (g.module != "encoder", g.depth, _LAYER_ORDER[g.layer_type]))


def _capture(model: nn.Module, consumer: nn.Linear, kwargs: dict, stop: bool) -> torch.Tensor:
    """The consumer's input on one forward pass (stopped right after it when ``stop``)."""
    got: list[torch.Tensor] = []

    def hook(_m: nn.Module, inputs: tuple) -> None:
        got.append(inputs[0].detach())
        if stop:
            raise _Stop

    h = consumer.register_forward_pre_hook(hook)
    try:
        with torch.inference_mode():
            model(**kwargs)
    except _Stop:
        pass
    finally:
        h.remove()
    return got[0]


def solve(stats: _Stats, weight: torch.Tensor, bias: torch.Tensor | None, mode: str, alpha: float
          ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """New kept weights ``[o, k]`` (and bias) from the token sums; see the module docstring for each mode."""
    c = weight.double()
    n = max(stats.n, 1.0)
    mx, my = stats.sx / n, stats.sy / n
    centred = bias is not None
    if mode == "bias":
        if bias is None:
            return weight, None
        return weight, (bias.double() + my - c @ mx).to(bias.dtype)
    xx = stats.sxx / n - (torch.outer(mx, mx) if centred else 0)
    yx = stats.syx / n - (torch.outer(my, mx) if centred else 0)
    lam = alpha * float(xx.diagonal().mean().clamp(min=1e-12))
    eye = torch.eye(xx.shape[0], dtype=xx.dtype)
    if mode == "scale":
        h = (c.T @ c) * xx + lam * eye
        rhs = (c * yx).sum(0) + lam
        m = torch.linalg.solve(h, rhs)
        new = c * m
    else:  # ls: W' (xx + λI) = yx + λC, solved as (xx + λI) W'^T = (yx + λC)^T (xx is symmetric)
        new = torch.linalg.solve(xx + lam * eye, (yx + lam * c).T).T
    new_bias = None if bias is None else (bias.double() + my - new @ mx).to(bias.dtype)
    return new.to(weight.dtype), new_bias


def repair(model: nn.Module, plan: PruningPlan, batches: Sequence[Batch], labels: LabelSpace,
           config: RepairConfig, progress: Progress = no_progress) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of ``model`` whose repairable groups' consumer weights are re-solved for ``plan`` on the calibration
    ``batches`` (their labels are not used); the copy is still dense-shaped (slice it with ``prune.apply``, which
    keeps exactly the repaired columns). Returns it and a summary for the plan's provenance."""
    if config.mode == "none":
        return model, {"mode": "none"}
    base = get_adapter(model)
    work = copy.deepcopy(model).eval()
    adapter = get_adapter(work)
    by_name = base.group_by_name()
    groups = [by_name[n] for n, g in plan.groups.items()
              if len(g["keep"]) < g["size"] and by_name[n].role in REPAIRABLE and g["keep"]]
    if not groups:
        return work, {**config.to_dict(), "groups": 0, "tokens": 0}
    device = next(model.parameters()).device
    passes = calibration_passes(model, [b.to(device) for b in batches], labels)
    order = _forward_order(groups)
    # dense targets y = W x (no bias) per group and pass, and (one-shot) the dense inputs' statistics
    targets: dict[str, dict[int, torch.Tensor]] = {g.name: {} for g in order}
    stats: dict[str, _Stats] = {}
    keep_cols = {g.name: kept_columns(g, plan.keep(g.name)).to(device) for g in order}
    current = [0]

    def dense_hook(g: NeuronGroup):  # noqa: ANN202
        consumer = base.parts(g).consumers[0]

        def hook(_m: nn.Module, inputs: tuple) -> None:
            p = passes[current[0]]
            if not _reads(model, g, p):
                return
            x = _tokens(inputs[0].detach(), _positions(base, g, p))
            y = x @ consumer.weight.detach().T
            targets[g.name][current[0]] = y.cpu()
            if not config.sequential:
                stats.setdefault(g.name, _Stats.zeros(len(keep_cols[g.name]), y.shape[1])).add(
                    x[:, keep_cols[g.name]].cpu(), y.cpu())

        return consumer.register_forward_pre_hook(hook)

    kind = model_kind(model)
    handles = [dense_hook(g) for g in order]
    try:
        with torch.inference_mode():
            encoder_out: dict[int, Any] = {}
            for i, p in enumerate(passes):
                current[0] = i
                if kind.has_encoder:  # the encoder runs once per batch, on its first candidate's pass
                    if p.label == 0:
                        encoder_out[id(p.batch)] = kind.encode_only(model, p.batch)
                    model(**p.kwargs, encoder_outputs=encoder_out[id(p.batch)])
                else:
                    model(**p.kwargs)
    finally:
        for h in handles:
            h.remove()

    if config.mode == "bias" or config.centred:  # the compensation needs a bias to live in
        names = {id(m): n for n, m in work.named_modules()}
        add_biases(work, [names[id(adapter.parts(g).consumers[0])] for g in order])
    handle = mask(plan, work, check=False)  # the work copy computes the pruned model; its weights change below
    encoded: dict[int, Any] = {}  # seq2seq: the pruned, repaired encoder's output per batch, once it is final
    try:
        for g in progress(order, "repair", len(order)):
            consumer = adapter.parts(g).consumers[0]
            cols = keep_cols[g.name]
            if config.sequential:
                if g.module == "decoder" and kind.has_encoder and not encoded:
                    for p in passes:  # every encoder group is repaired by now (forward order): run it once
                        if id(p.batch) not in encoded:
                            encoded[id(p.batch)] = kind.encode_only(work, p.batch)
                st = None
                for i, p in enumerate(passes):
                    if i not in targets[g.name]:
                        continue
                    kwargs = dict(p.kwargs)
                    if g.module == "decoder" and encoded:
                        kwargs["encoder_outputs"] = encoded[id(p.batch)]
                    x = _tokens(_capture(work, consumer, kwargs, stop=True), _positions(adapter, g, p))
                    y = targets[g.name][i]
                    st = st or _Stats.zeros(len(cols), y.shape[1])
                    st.add(x[:, cols].cpu(), y)
                stats[g.name] = st  # type: ignore[assignment]
            weight = consumer.weight.detach()[:, cols].cpu()
            bias = None if consumer.bias is None else consumer.bias.detach().cpu()
            new_w, new_b = solve(stats[g.name], weight, bias, config.mode, config.alpha)
            with torch.no_grad():
                consumer.weight[:, cols] = new_w.to(device, consumer.weight.dtype)
                if new_b is not None:
                    consumer.bias.copy_(new_b.to(device, consumer.bias.dtype))
    finally:
        handle.remove()
    n_tokens = {g.name: int(stats[g.name].n) for g in order}
    return work, {**config.to_dict(), "groups": len(order), "tokens": min(n_tokens.values()),
                  "calibration_examples": sum(len(b) for b in batches)}
