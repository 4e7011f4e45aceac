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

One-shot (default) solves every group on the dense model's inputs. The statistics come from forward hooks on the
consumers during the model kind's calibration forwards (:meth:`ModelKind.calibration_forwards`: the encoder, or a
causal prompt's KV cache, runs once per example and only the candidates' continuations run per candidate), and
they are gathered in chunks of groups that fit :func:`statistics_budget` (half the available memory), each chunk
solved and freed before the next, so a 3B model's second moments never sit in memory at once.
``sequential`` repairs groups in the order the forward pass meets them, each solved on inputs from the pruned model
with every earlier group already repaired, against targets from the dense model (SparseGPT's order), so later
layers could correct what earlier ones left; it costs one (early-stopped) pass per group, and on minilm-glue6
(SST-2, 50 %) it did not beat one-shot (reports/beyond).

Calibration inputs are task inputs without labels: a seq2seq decoder (and a causal LM's answer) is teacher-forced
over EVERY candidate label, so the decoder's positions are covered without knowing the gold one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..data import Batch, LabelSpace
from ..errors import TaskpruneError
from ..lm import model_kind
from ..lm.kinds import CalibrationForward
from ..models import REPAIRABLE_ROLES, Adapter, NeuronGroup, get_adapter
from ..scoring.base import Progress, no_progress
from .apply import mask, own_tensors, share_tensors_copy
from .biases import add_biases
from .plan import PruningPlan

REPAIR_MODES = ("none", "ls", "bias", "scale")


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
    """Sums over calibration tokens, in float64: n, Σx_S, Σy, and (unless only means are needed) Σ x_S x_S^T and
    Σ y x_S^T."""

    n: float
    sx: torch.Tensor
    sy: torch.Tensor
    sxx: torch.Tensor | None
    syx: torch.Tensor | None

    @staticmethod
    def nbytes(k: int, o: int, second: bool = True) -> int:
        """What the sums of ``k`` kept inputs and ``o`` outputs hold (float64)."""
        return 8 * (k + o + (k * k + o * k if second else 0))

    @classmethod
    def zeros(cls, k: int, o: int, second: bool = True) -> _Stats:
        f = torch.float64
        return cls(0.0, torch.zeros(k, dtype=f), torch.zeros(o, dtype=f),
                   torch.zeros(k, k, dtype=f) if second else None, torch.zeros(o, k, dtype=f) if second else None)

    def add(self, x: torch.Tensor, y: torch.Tensor, weight: float = 1.0) -> None:
        """One batch's tokens, each standing for ``weight`` tokens: products in float32 on the tokens' device (a few
        hundred tokens each; float64 for a float64 model), accumulated in float64 on the CPU."""
        f = torch.float64 if x.dtype == torch.float64 else torch.float32
        x, y = x.to(f), y.to(f)
        self.n += weight * x.shape[0]
        self.sx.add_(x.sum(0).to("cpu", torch.float64), alpha=weight)
        self.sy.add_(y.sum(0).to("cpu", torch.float64), alpha=weight)
        if self.sxx is not None and self.syx is not None:
            self.sxx.add_((x.T @ x).to("cpu", torch.float64), alpha=weight)
            self.syx.add_((y.T @ x).to("cpu", torch.float64), alpha=weight)


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
    assert stats.sxx is not None and stats.syx is not None
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


def statistics_budget() -> int:
    """Bytes the one-shot statistics may hold at once: half the memory available now (``/proc/meminfo``), 4 GiB
    where that cannot be read. Above it the groups are split into chunks, one calibration pass each."""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 // 2
    except OSError:
        pass
    return 4 << 30


def _chunks(groups: list[NeuronGroup], sizes: dict[str, int], budget: int) -> list[list[NeuronGroup]]:
    """``groups`` (in forward order) cut into runs whose statistics fit ``budget`` bytes (at least one group each)."""
    out: list[list[NeuronGroup]] = [[]]
    held = 0
    for g in groups:
        if out[-1] and held + sizes[g.name] > budget:
            out.append([])
            held = 0
        out[-1].append(g)
        held += sizes[g.name]
    return out


def _work_copy(model: nn.Module, consumers: list[str]) -> nn.Module:
    """A copy of ``model`` that owns the ``consumers``' weights (repair rewrites them) and shares every other tensor
    with ``model``: a whole deep copy would double the model's memory for tensors repair never touches."""
    work = share_tensors_copy(model).eval()
    own_tensors(nn.ModuleList([work.get_submodule(name) for name in consumers]), model)
    return work


def _solved(consumer: nn.Linear, cols: torch.Tensor, stats: _Stats, config: RepairConfig
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One group's new kept weights (and bias), solved from its statistics."""
    weight = consumer.weight.detach()[:, cols].cpu()
    bias = None if consumer.bias is None else consumer.bias.detach().cpu()
    new_w, new_b = solve(stats, weight, bias, config.mode, config.alpha)
    # in the consumer's dtype at once: solutions waiting for an in-place write hold no float64 copies
    return new_w.to(consumer.weight.dtype), None if new_b is None else new_b.to(consumer.bias.dtype)


def _store(consumer: nn.Linear, cols: torch.Tensor, new_w: torch.Tensor, new_b: torch.Tensor | None) -> None:
    with torch.no_grad():
        consumer.weight[:, cols] = new_w.to(consumer.weight.device, consumer.weight.dtype)
        if new_b is not None:
            consumer.bias.copy_(new_b.to(consumer.bias.device, consumer.bias.dtype))


def _write(consumer: nn.Linear, cols: torch.Tensor, stats: _Stats, config: RepairConfig) -> None:
    """Solve one group and write its new kept weights (and bias) into ``consumer``."""
    _store(consumer, cols, *_solved(consumer, cols, stats, config))


def gather(model: nn.Module, groups: list[NeuronGroup], keep_cols: dict[str, torch.Tensor],
           batches: Sequence[Batch], labels: LabelSpace, second: bool = True, progress: Progress = no_progress,
           desc: str = "repair statistics") -> dict[str, _Stats]:
    """The dense model's token sums of ``groups`` over the calibration ``batches`` teacher-forced on every candidate
    (the kind's :meth:`calibration_forwards`: a shared prompt or encoder runs once); ``second``: the second moments
    too (not needed for bias compensation)."""
    adapter, kind = get_adapter(model), model_kind(model)
    consumers = {g.name: adapter.parts(g).consumers[0] for g in groups}
    stats = {g.name: _Stats.zeros(len(keep_cols[g.name]), consumers[g.name].out_features, second) for g in groups}
    current: list[tuple[CalibrationForward, torch.Tensor]] = []  # the forward running and its positions

    def hook(g: NeuronGroup):  # noqa: ANN202
        consumer, cols, st = consumers[g.name], keep_cols[g.name], stats[g.name]

        def record(_m: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            forward, m = current[0]
            y = _tokens(output.detach(), m)  # y = W x: the consumer's own output, less its bias
            st.add(_tokens(inputs[0].detach(), m)[:, cols], y if consumer.bias is None else y - consumer.bias,
                   forward.weight)

        return consumer.register_forward_hook(record)

    handles = [hook(g) for g in groups]
    try:
        with torch.inference_mode():
            for batch in progress(batches, desc, len(batches)):
                for forward in kind.calibration_forwards(model, batch, labels):
                    current[:] = [(forward, forward.mask.bool())]  # once per forward, not per consumer
                    forward.run()
    finally:
        for h in handles:
            h.remove()
    return stats


def _one_shot(model: nn.Module, work: nn.Module, order: list[NeuronGroup], keep_cols: dict[str, torch.Tensor],
              batches: Sequence[Batch], labels: LabelSpace, config: RepairConfig, budget: int | None,
              progress: Progress) -> dict[str, float]:
    """Every group solved on the dense model's inputs. The sums of a run of groups that fits ``budget`` are gathered
    in one calibration pass, the run is solved and its sums freed before the next run's pass (so the statistics of
    a 3B model need not fit at once). Returns the calibration tokens per group."""
    base, adapter = get_adapter(model), get_adapter(work)
    second = config.mode != "bias"
    sizes = {g.name: _Stats.nbytes(len(keep_cols[g.name]), base.parts(g).consumers[0].out_features, second)
             for g in order}
    chunks = _chunks(order, sizes, statistics_budget() if budget is None else budget)
    tokens: dict[str, float] = {}
    # repairing the model itself: a later run's statistics must still come from the dense model, so the solved
    # weights (at the kept width) wait until every run is gathered
    pending: list[tuple[nn.Linear, torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
    for i, chunk in enumerate(chunks):
        desc = "repair statistics" + (f" ({i + 1}/{len(chunks)})" if len(chunks) > 1 else "")
        stats = gather(model, chunk, keep_cols, batches, labels, second, progress, desc)
        for g in chunk:
            consumer, cols = adapter.parts(g).consumers[0], keep_cols[g.name]
            if work is model:
                pending.append((consumer, cols, *_solved(consumer, cols, stats[g.name], config)))
            else:
                _write(consumer, cols, stats[g.name], config)
            tokens[g.name] = stats.pop(g.name).n
    for consumer, cols, new_w, new_b in pending:
        _store(consumer, cols, new_w, new_b)
    return tokens


def _sequential(model: nn.Module, work: nn.Module, plan: PruningPlan, order: list[NeuronGroup],
                keep_cols: dict[str, torch.Tensor], batches: Sequence[Batch], labels: LabelSpace,
                config: RepairConfig, progress: Progress) -> dict[str, float]:
    """Groups solved in forward order on inputs of the pruned model with every earlier group repaired, against the
    dense model's outputs (one teacher-forced pass per candidate, so the pruned passes line up with the dense ones)."""
    base, adapter, kind = get_adapter(model), get_adapter(work), model_kind(model)
    passes = calibration_passes(model, batches, labels)
    targets: dict[str, dict[int, torch.Tensor]] = {g.name: {} for g in order}
    current = [0]

    def dense_hook(g: NeuronGroup):  # noqa: ANN202
        consumer = base.parts(g).consumers[0]

        def hook(_m: nn.Module, inputs: tuple) -> None:
            p = passes[current[0]]
            if _reads(model, g, p):
                x = _tokens(inputs[0].detach(), _positions(base, g, p))
                targets[g.name][current[0]] = (x @ consumer.weight.detach().T).cpu()

        return consumer.register_forward_pre_hook(hook)

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

    handle = mask(plan, work, check=False)  # the work copy computes the pruned model; its weights change below
    encoded: dict[int, Any] = {}  # seq2seq: the pruned, repaired encoder's output per batch, once it is final
    tokens: dict[str, float] = {}
    try:
        for g in progress(order, "repair", len(order)):
            consumer, cols = adapter.parts(g).consumers[0], keep_cols[g.name]
            if g.module == "decoder" and kind.has_encoder and not encoded:
                for p in passes:  # every encoder group is repaired by now (forward order): run it once
                    if id(p.batch) not in encoded:
                        encoded[id(p.batch)] = kind.encode_only(work, p.batch)
            st = _Stats.zeros(len(cols), consumer.out_features, config.mode != "bias")
            for i, p in enumerate(passes):
                if i not in targets[g.name]:
                    continue
                kwargs = dict(p.kwargs)
                if g.module == "decoder" and encoded:
                    kwargs["encoder_outputs"] = encoded[id(p.batch)]
                x = _tokens(_capture(work, consumer, kwargs, stop=True), _positions(adapter, g, p))
                st.add(x[:, cols].cpu(), targets[g.name].pop(i))
            _write(consumer, cols, st, config)
            tokens[g.name] = st.n
    finally:
        handle.remove()
    return tokens


def repaired_consumers(model: nn.Module, plan: PruningPlan) -> tuple[list[NeuronGroup], list[str]]:
    """The groups repair re-solves for ``plan`` (repairable roles, cut but not emptied) and their consumers' module
    names in ``model``."""
    base = get_adapter(model)
    by_name = base.group_by_name()
    groups = [by_name[n] for n, g in plan.groups.items()
              if len(g["keep"]) < g["size"] and by_name[n].role in REPAIRABLE_ROLES and g["keep"]]
    names = {id(m): n for n, m in model.named_modules()}
    return groups, [names[id(base.parts(g).consumers[0])] for g in groups]


def repair(model: nn.Module, plan: PruningPlan, batches: Sequence[Batch], labels: LabelSpace,
           config: RepairConfig, progress: Progress = no_progress, *, budget: int | None = None,
           inplace: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of ``model`` whose repairable groups' consumer weights are re-solved for ``plan`` on the calibration
    ``batches`` (their labels are not used). The copy is still dense-shaped (slice it with ``prune.apply``, which
    keeps exactly the repaired columns) and owns only the consumers it rewrote: every other tensor is ``model``'s
    own (slice it in place, then :func:`taskprune.pruning.apply.own_tensors`, as ``compress`` does). ``budget``:
    bytes of one-shot statistics held at once (default :func:`statistics_budget`). ``inplace``: rewrite
    ``model``'s own consumers instead (no copy of them: a model pruned in place next, e.g. a 3B model in float32 on
    24 GiB, does not hold its consumers twice); every group is still solved on the dense model's inputs (one-shot:
    the solutions wait at the kept width until every statistic is gathered; sequential: the dense targets are
    taken first). Returns the copy (or ``model``) and a summary for the plan's provenance."""
    if config.mode == "none":
        return model, {"mode": "none"}
    groups, consumers = repaired_consumers(model, plan)
    work = model.eval() if inplace else _work_copy(model, consumers)
    if not groups:
        return work, {**config.to_dict(), "groups": 0, "tokens": 0}
    device = next(model.parameters()).device
    batches = [b.to(device) for b in batches]
    order = _forward_order(groups)
    keep_cols = {g.name: kept_columns(g, plan.keep(g.name)).to(device) for g in order}
    if config.mode == "bias" or config.centred:  # the compensation needs a bias to live in
        add_biases(work, consumers)
    if config.sequential:
        tokens = _sequential(model, work, plan, order, keep_cols, batches, labels, config, progress)
    else:
        tokens = _one_shot(model, work, order, keep_cols, batches, labels, config, budget, progress)
    return work, {**config.to_dict(), "groups": len(order), "tokens": int(min(tokens.values())),
                  "calibration_examples": sum(len(b) for b in batches)}
