"""How much to prune where: a rate per group, from a scope, overrides and (after an allocation) per-group rates.

A :class:`RateSpec` is what ``--rate``, ``--modules``, ``--layer-types`` and the override flags describe; an
allocation (:mod:`taskprune.pruning.allocate`) turns a budget into one, and a plan (:mod:`.plan`) records it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from torch import nn

from ..errors import TaskpruneError
from ..models import LAYER_TYPES, MODULES, NeuronGroup, get_adapter

#: what a whole-head group removes: query heads (as many per KV group) or whole key/value groups
HEAD_GRANULARITIES: tuple[str, ...] = ("query", "kv")


def check_rate(rate: float, what: str = "rate") -> float:
    """A pruning rate is a fraction of units to remove: it must lie in [0, 1]."""
    if not isinstance(rate, (int, float)) or math.isnan(rate) or not 0.0 <= rate <= 1.0:
        raise TaskpruneError(f"{what} {rate!r} is outside [0, 1] (it is the fraction of units removed)")
    return float(rate)


@dataclass
class RateSpec:
    """Pruning rate per group: a scope, a rate, and overrides inside the scope; the most specific rule wins.

    The scope is ``modules`` x ``layer_types``: groups outside it are never pruned. Inside it, ``rate``
    applies, then ``module_rates`` (encoder/decoder), ``layer_type_rates`` (self_attn/cross_attn/ffn) and
    ``depth_rates`` (``[lo, hi, rate]``, inclusive block indices, last match wins) override it, in that order.
    An override naming a module or layer type outside the scope is a contradiction and is refused.
    QK and VO of one attention always share a rate, so every head keeps one width (a stock ``d_kv``).
    ``multiple_of`` rounds every kept width up to a multiple of it (never prunes more than asked), because matrix
    kernels work in blocks of 8 or 16 and a width off the block pays for the padding (see :func:`select_units`).
    ``head_granularity`` says what a whole-head group (decoder-only LMs, ``heads``) removes: ``query`` heads, as
    many in every key/value group, or whole ``kv`` groups with their query heads (which also shrinks the KV cache).
    Dims inside a rotary head are never removed (rotary pairs and per-head q/k norms would break).
    ``group_rates`` (group name -> rate, inside the scope) override everything: what a layer-adaptive allocation
    (:mod:`taskprune.pruning.allocate`) produces and a plan records.
    """

    rate: float = 0.0
    modules: tuple[str, ...] = MODULES
    layer_types: tuple[str, ...] = LAYER_TYPES
    module_rates: dict[str, float] = field(default_factory=dict)
    layer_type_rates: dict[str, float] = field(default_factory=dict)
    depth_rates: list[tuple[int, int, float]] = field(default_factory=list)
    multiple_of: int = 1
    head_granularity: str = "query"
    group_rates: dict[str, float] = field(default_factory=dict)  # per group, most specific (layer-adaptive rates)

    def __post_init__(self) -> None:
        if self.head_granularity not in HEAD_GRANULARITIES:
            raise TaskpruneError(
                f"head granularity {self.head_granularity!r} is not one of {', '.join(HEAD_GRANULARITIES)}: "
                "decoder-only attention is pruned by whole heads (query heads, or whole key/value groups); dims "
                "inside a rotary head are never pruned (rotary pairs and per-head q/k norms would break)")
        if isinstance(self.multiple_of, bool) or not isinstance(self.multiple_of, int) or self.multiple_of < 1:
            raise TaskpruneError(f"multiple_of must be a positive integer (a width granularity), got {self.multiple_of!r}")
        self.modules = tuple(self.modules)
        self.layer_types = tuple(self.layer_types)
        self.depth_rates = [tuple(x) for x in self.depth_rates]  # type: ignore[misc]
        check_rate(self.rate)
        _check_names(self.modules, MODULES, "module")
        _check_names(self.layer_types, LAYER_TYPES, "layer type")
        _check_names(tuple(self.module_rates), MODULES, "module")
        _check_names(tuple(self.layer_type_rates), LAYER_TYPES, "layer type")
        for name, r in {**self.module_rates, **self.layer_type_rates}.items():
            check_rate(r, f"rate for {name}")
        outside = [m for m in self.module_rates if m not in self.modules]
        outside += [t for t in self.layer_type_rates if t not in self.layer_types]
        if outside:
            raise TaskpruneError(
                f"a rate is given for {', '.join(outside)}, which lies outside the pruned scope (modules "
                f"{'+'.join(self.modules)}, layer types {'+'.join(self.layer_types)}); widen --modules/--layer-types"
            )
        self.group_rates = {str(k): check_rate(v, f"rate for group {k}") for k, v in dict(self.group_rates).items()}
        for item in self.depth_rates:
            if len(item) != 3 or int(item[0]) > int(item[1]) or int(item[0]) < 0:
                raise TaskpruneError(f"depth rate {item!r} must be (lo, hi, rate) with 0 <= lo <= hi")
            check_rate(item[2], f"rate for depths {item[0]}-{item[1]}")

    def rate_for(self, group: NeuronGroup) -> float:
        if group.module not in self.modules or group.layer_type not in self.layer_types:
            return 0.0
        rate = self.module_rates.get(group.module, self.rate)
        rate = self.layer_type_rates.get(group.layer_type, rate)
        for lo, hi, r in self.depth_rates:
            if lo <= group.depth <= hi:
                rate = r
        return self.group_rates.get(group.name, rate)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["modules"], d["layer_types"] = list(self.modules), list(self.layer_types)
        d["depth_rates"] = [list(x) for x in self.depth_rates]
        if self.multiple_of == 1:  # the default stays out: plans and sweep rows from before it compare equal
            del d["multiple_of"]
        if self.head_granularity == "query":
            del d["head_granularity"]
        if not self.group_rates:
            del d["group_rates"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RateSpec:
        return cls(**d)

    @classmethod
    def parse(cls, rate: float = 0.0, modules: str = "all", layer_types: str = "all",
              module_rates: Iterable[str] = (), layer_type_rates: Iterable[str] = (), depth_rates: Iterable[str] = (),
              multiple_of: int = 1, head_granularity: str = "query") -> RateSpec:
        """A RateSpec from the CLI's spellings (``--modules all``, ``--module-rate encoder=0.3``, ``--depth-rate
        0-1=0.2``, ``--layer-types ffn,self_attn``); a malformed item is one line naming its flag."""
        depth: list[tuple[int, int, float]] = []
        for key, value in _pairs(depth_rates, "--depth-rate").items():
            lo, _, hi = key.partition("-")
            try:
                depth.append((int(lo), int(hi or lo), value))
            except ValueError:
                raise TaskpruneError(f"--depth-rate expects LO-HI=RATE (block indices), got {key!r}") from None
        return cls(
            rate=rate,
            modules=MODULES if modules == "all" else (modules,),
            layer_types=LAYER_TYPES if layer_types == "all" else tuple(t.strip() for t in layer_types.split(",")),
            module_rates=_pairs(module_rates, "--module-rate"),
            layer_type_rates=_pairs(layer_type_rates, "--layer-type-rate"),
            depth_rates=depth,
            multiple_of=multiple_of,
            head_granularity=head_granularity,
        )

    def describe(self, model: nn.Module) -> str:
        """``rate 0.5 on encoder+decoder``: the scope's modules that ``model`` has (a decoder-only model's one
        module is its decoder, so "all" reads ``on decoder``), then the overrides and rounding."""
        has = {g.module for g in get_adapter(model).groups()}
        modules = [m for m in self.modules if m in has] or list(self.modules)
        text = f"rate {self.rate:g} on {'+'.join(modules)}"
        extra = {**self.module_rates, **self.layer_type_rates}
        if extra or self.depth_rates:
            text += f" with overrides {extra} {self.depth_rates or ''}".rstrip()
        if self.multiple_of > 1:
            text += f", widths rounded up to multiples of {self.multiple_of}"
        if self.head_granularity != "query":
            text += ", whole key/value groups"
        return text


def _check_names(given: tuple[str, ...], allowed: tuple[str, ...], what: str) -> None:
    for name in given:
        if name not in allowed:
            raise TaskpruneError(f"unknown {what} {name!r}; choose from {', '.join(allowed)}")

def _pairs(items: Iterable[str], flag: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise TaskpruneError(f"{flag} expects NAME=RATE, got {item!r}")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            raise TaskpruneError(f"{flag}: {value!r} is not a number") from None
    return out


def scaled_rates(rates: RateSpec, factor: float) -> RateSpec:
    """Every rate of ``rates`` times ``factor`` (0 < factor <= 1): one round of an iterative schedule."""
    f = lambda r: round(r * factor, 9)  # noqa: E731
    return replace(rates, rate=f(rates.rate), module_rates={k: f(v) for k, v in rates.module_rates.items()},
                   layer_type_rates={k: f(v) for k, v in rates.layer_type_rates.items()},
                   depth_rates=[(lo, hi, f(r)) for lo, hi, r in rates.depth_rates],
                   group_rates={k: f(v) for k, v in rates.group_rates.items()})


def check_rates_fit(rates: RateSpec, model: nn.Module, what: str = "depth rate") -> None:
    """Refuse rates that name parts ``model`` lacks, which would silently prune nothing: a scope holding none of
    its groups (an encoder or cross-attention in a decoder-only LM) or depth overrides beyond its blocks."""
    from ..validate import check_depths

    adapter = get_adapter(model)
    groups = adapter.groups()
    if not any(g.module in rates.modules and g.layer_type in rates.layer_types for g in groups):
        raise TaskpruneError(
            f"the pruning scope (modules {'+'.join(rates.modules)}, layer types {'+'.join(rates.layer_types)}) holds "
            f"no group of this {adapter.family} model, whose groups are in modules "
            f"{'+'.join(sorted({g.module for g in groups}))} and layer types "
            f"{'+'.join(sorted({g.layer_type for g in groups}))}")
    if rates.head_granularity == "kv":
        from ..applies import check_applies

        check_applies("--head-granularity kv", model)
        if not any(g.role == "heads" and g.module in rates.modules and g.layer_type in rates.layer_types
                   for g in groups):
            raise TaskpruneError("head granularity kv would change nothing: the pruning scope (layer types "
                                 f"{'+'.join(rates.layer_types)}) holds no attention heads; add self_attn to "
                                 "--layer-types or leave the granularity at query")
    depths = [g.depth for g in groups if g.module in rates.modules]
    check_depths(rates.depth_rates, 1 + max(depths, default=-1), what)
    names = {g.name for g in groups}
    unknown = [n for n in rates.group_rates if n not in names]
    if unknown:
        raise TaskpruneError(f"a rate is given for group {unknown[0]}, which this {adapter.family} model does not have")
