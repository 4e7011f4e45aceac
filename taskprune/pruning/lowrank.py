"""The SVD baseline (DESIGN §1): every prunable weight W (d x k) becomes a rank-r factorisation.

The rank is the paper's ``r = floor(d*k*(1-p) / (d+k+1))``: U (d x r), the r singular values and Vh (r x k)
hold no more parameters than pruning a fraction p of W would keep, so both are compared at equal size.
A factorised model records ``taskprune_lowrank`` ({module name: rank}) and the base model's fingerprint in
its config; :func:`taskprune.load_pruned` (and ``load_model``) rebuild the factorised layers from it.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TaskpruneError
from ..method import Method, Transformed, TransformRequest, register_method
from ..models import get_adapter
from ..runtime.placement import has_offloaded
from ..sources.fingerprint import fingerprint
from .rates import RateSpec, check_rate

LOWRANK_KEY = "taskprune_lowrank"


class LowRankLinear(nn.Module):
    """``x -> U diag(S) Vh x + b``: a linear layer stored as a truncated SVD.

    S stays a parameter of its own (not folded into U) so the layer holds exactly ``r*(d+k+1)`` weights,
    the paper's count. Rank 0 is allowed: the layer then outputs only its bias (or zeros).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not 0 <= rank <= min(in_features, out_features):
            raise TaskpruneError(
                f"rank {rank} is outside 0..{min(in_features, out_features)} for a {out_features}x{in_features} weight"
            )
        self.in_features = in_features
        self.out_features = out_features
        self.rank = rank
        kw = {"device": device, "dtype": dtype}
        self.U = nn.Parameter(torch.empty(out_features, rank, **kw))
        self.S = nn.Parameter(torch.empty(rank, **kw))
        self.Vh = nn.Parameter(torch.empty(rank, in_features, **kw))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, **kw))
        else:
            self.register_parameter("bias", None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int) -> LowRankLinear:
        """The best rank-``rank`` approximation of ``linear`` (SVD in float32, stored in the linear's dtype)."""
        weight = linear.weight.detach()
        layer = cls(linear.in_features, linear.out_features, rank, linear.bias is not None,
                    device=weight.device, dtype=weight.dtype)
        u, s, vh = torch.linalg.svd(weight.float(), full_matrices=False)
        with torch.no_grad():
            layer.U.copy_(u[:, :rank])
            layer.S.copy_(s[:rank])
            layer.Vh.copy_(vh[:rank])
            if linear.bias is not None:
                layer.bias.copy_(linear.bias.detach())
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.Vh) * self.S, self.U, self.bias)

    @property
    def weight(self) -> torch.Tensor:
        """The dense ``U diag(S) Vh`` (d x k); assigning to it is refused.

        Exists because stock transformers code reads ``module.weight`` of layers it expects to be nn.Linear:
        T5's FFN reads ``wo.weight.dtype`` up to four times per forward. Recomputing the product on every
        read made a factorised t5-small 2.5x slower than the dense one, so outside autograd the product is
        cached until U, S or Vh change (new storage, dtype, device or an in-place update); with gradients
        on it is recomputed, so it stays differentiable.
        """
        params = (self.U, self.S, self.Vh)
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            return (self.U * self.S) @ self.Vh
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)
        cached = self.__dict__.get("_dense")
        if cached is None or cached[0] != key:
            with torch.no_grad():
                # the factors' storages are held with the key, so their addresses cannot be reused while cached
                cached = (key, (self.U * self.S) @ self.Vh, [p.data for p in params])
            self.__dict__["_dense"] = cached
        return cached[1]

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"bias={self.bias is not None}")


def lowrank_rank(d: int, k: int, rate: float) -> int:
    """The paper's rank for a d x k weight at pruning rate p: no more parameters than pruning keeps."""
    rate = check_rate(rate)
    return math.floor(d * k * (1.0 - rate) / (d + k + 1) + 1e-9)


def is_lowrank(model: nn.Module) -> bool:
    """True if ``model`` holds factorised layers (or its config says it was factorised)."""
    return bool(getattr(model.config, LOWRANK_KEY, None)) or any(isinstance(m, LowRankLinear) for m in model.modules())


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _check_unpruned(model: nn.Module, base: str) -> None:
    """Refuse a model whose units were removed (its weights are no longer those of its recorded base model).

    Factorising a pruned model would record the pruned model as the base and mix two baselines in one.
    """
    config = model.config
    if getattr(config, "taskprune_widths", None) and getattr(config, "taskprune_base_fingerprint", base) != base:
        raise TaskpruneError(
            "this model is already pruned (its config records taskprune_widths); factorise the unpruned base model"
        )


def factorize(model: nn.Module, rates: RateSpec, *, inplace: bool = False) -> nn.Module:
    """Replace every producer and consumer linear of each group pruned at rate p > 0 by its rank-r SVD.

    Each weight gets ``r = lowrank_rank(d, k, p)`` with p the group's rate; rate 0 leaves a layer untouched
    (pruning nothing changes nothing). The config records the ranks and the base model's fingerprint.
    """
    if rates.multiple_of != 1:
        raise TaskpruneError("multiple_of rounds pruned widths; the SVD baseline's ranks follow the paper's parameter "
                             "budget and are not rounded: leave multiple_of at 1 for svd")
    if is_lowrank(model):
        raise TaskpruneError("this model is already factorised (its config records taskprune_lowrank); "
                             "factorise the original model instead")
    base = fingerprint(model)
    _check_unpruned(model, base)
    if not inplace:
        model = copy.deepcopy(model)
    adapter = get_adapter(model)
    names = {id(m): n for n, m in model.named_modules()}
    ranks: dict[str, int] = {}
    for group in adapter.groups():
        rate = rates.rate_for(group)
        if rate == 0.0:
            continue
        parts = adapter.parts(group)
        for linear in (*parts.producers, *parts.consumers):
            name = names[id(linear)]
            rank = lowrank_rank(linear.out_features, linear.in_features, rate)
            _set_module(model, name, LowRankLinear.from_linear(linear, rank))
            ranks[name] = rank
    setattr(model.config, LOWRANK_KEY, ranks)
    model.config.taskprune_base_fingerprint = base
    return model


def restore_lowrank(model: nn.Module, ranks: dict[str, int]) -> nn.Module:
    """Swap the named linears for empty LowRankLinear of the recorded ranks, ready for a state dict (in place)."""
    for name, rank in ranks.items():
        try:
            linear = model.get_submodule(name)
        except AttributeError:
            raise TaskpruneError(f"the recorded low-rank layer {name} does not exist in this model") from None
        if not isinstance(linear, nn.Linear):
            raise TaskpruneError(f"the recorded low-rank layer {name} is a {type(linear).__name__}, not a Linear")
        if not isinstance(rank, int) or isinstance(rank, bool):
            raise TaskpruneError(f"the recorded rank of {name} is {rank!r}, not an integer")
        w = linear.weight
        _set_module(model, name, LowRankLinear(linear.in_features, linear.out_features, rank,
                                               linear.bias is not None, device=w.device, dtype=w.dtype))
    setattr(model.config, LOWRANK_KEY, dict(ranks))
    return model


def _svd_transform(req: TransformRequest) -> Transformed:
    """``--method svd``: every prunable weight factorised at the paper's parameter budget (no examples read)."""
    if has_offloaded(req.model):
        raise TaskpruneError("svd factorises every weight in memory: it does not run on a model with offloaded "
                             "weights (--device-map with cpu/disk offload); load the model whole")
    return Transformed(factorize(req.model, req.rates),
                       note="low-rank factorisation (no examples used)")


register_method(Method("svd", "svd (low-rank factorisation, the paper's baseline)", transform=_svd_transform,
                       needs_examples=False, combine="same", whole_model=True, scores_alone=False, order=90))
