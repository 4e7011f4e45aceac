"""Neuron groups and the adapter interface: the only layer that knows a model's module names.

Scorers, the planner, the pruner and the evaluator see a model only through :class:`NeuronGroup`
descriptions and the :class:`Site` list where a group's activation ``h`` can be observed. Every site's
tensor carries the group's units on its LAST dimension, so masking, scoring and slicing all index it the
same way. Adding an architecture means writing one adapter file and registering it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

ModuleName = Literal["encoder", "decoder"]
LayerType = Literal["self_attn", "cross_attn", "ffn"]
GroupKind = Literal["ffn", "qk", "vo"]

MODULES: tuple[str, ...] = ("encoder", "decoder")
LAYER_TYPES: tuple[str, ...] = ("self_attn", "cross_attn", "ffn")
GROUP_KINDS: tuple[str, ...] = ("ffn", "qk", "vo")


@dataclass(frozen=True)
class NeuronGroup:
    """A set of hidden units that are removed together with the weights producing and consuming them.

    ``size`` units are split into ``n_heads`` equal blocks (1 block for FFN); selection ranks units
    within each block so that every head keeps the same width and the result is a stock architecture.
    """

    name: str  # e.g. "decoder.3.cross_attn.qk"
    module: ModuleName
    layer_type: LayerType
    kind: GroupKind
    depth: int
    size: int
    n_heads: int = 1

    @property
    def head_size(self) -> int:
        return self.size // self.n_heads

    @property
    def attention(self) -> str:
        """Name of the sublayer this group belongs to (QK and VO of one attention share it)."""
        return f"{self.module}.{self.depth}.{self.layer_type}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Site:
    """Where a group's activation is observed: the input or the output of ``module`` (units on the last dim)."""

    module: nn.Module
    where: Literal["input", "output"]

    def hook(self, fn: Callable[[torch.Tensor], torch.Tensor | None]) -> RemovableHandle:
        """Call ``fn`` on the site's activation at every forward; a tensor it returns replaces the activation."""
        if self.where == "output":
            return self.module.register_forward_hook(lambda _m, _i, output: fn(output))

        def pre(_m: nn.Module, inputs: tuple) -> tuple | None:
            new = fn(inputs[0])
            return None if new is None else (new, *inputs[1:])

        return self.module.register_forward_pre_hook(pre)


@dataclass(frozen=True)
class GroupParts:
    """The linear layers of a group: producers own units as output rows, consumers as input columns.

    For QK groups the producers are (query, key) in that order: site 1 is the key side, which in
    cross-attention runs over the encoder's positions.
    """

    producers: tuple[nn.Linear, ...]
    consumers: tuple[nn.Linear, ...]


class Adapter(ABC):
    """Knows one model family: lists its neuron groups, where their weights live and how heads are sized.

    Slicing, masking, scoring and parameter counting are generic over :class:`GroupParts`; an adapter
    only maps group names to modules and keeps the attention modules' head-size bookkeeping right.
    """

    family: ClassVar[str]

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    @classmethod
    @abstractmethod
    def matches(cls, model: nn.Module) -> bool:
        """True if this adapter understands ``model``."""

    @abstractmethod
    def groups(self) -> list[NeuronGroup]:
        """All prunable groups at the model's CURRENT widths, in a stable order."""

    @abstractmethod
    def parts(self, group: NeuronGroup) -> GroupParts:
        """The linear layers that produce and consume the group's units."""

    @abstractmethod
    def set_head_width(self, group: NeuronGroup, head_width: int) -> None:
        """Update an attention module's head size after its QK and VO groups were sliced to ``head_width``."""

    @abstractmethod
    def write_widths(self, config: Any, widths: dict[str, int]) -> None:
        """Record widths in ``config``: stock fields (d_ff, d_kv, intermediate_size) where uniform and > 0."""

    @abstractmethod
    def decoder_start_token_id(self) -> int:
        """Token that starts every decoder sequence (teacher forcing and generation)."""

    # ----- generic behaviour built on the abstract pieces -------------------------------------------

    def sites(self, group: NeuronGroup) -> list[Site]:
        """Where the activation h lives: Q and K outputs (QK) or the consumer's input (FFN, VO)."""
        parts = self.parts(group)
        if group.kind == "qk":
            return [Site(p, "output") for p in parts.producers]
        return [Site(parts.consumers[0], "input")]

    def prunable_parameters(self, group: NeuronGroup, width: int | None = None) -> int:
        """Parameters owned by ``group`` at ``width`` units (default: its current size)."""
        width = group.size if width is None else width
        parts = self.parts(group)
        per_unit = sum(p.in_features + (p.bias is not None) for p in parts.producers)
        per_unit += sum(c.out_features for c in parts.consumers)
        return per_unit * width

    def group_by_name(self) -> dict[str, NeuronGroup]:
        return {g.name: g for g in self.groups()}


_REGISTRY: dict[str, type[Adapter]] = {}


def register_adapter(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator: make an adapter discoverable by :func:`get_adapter`."""
    _REGISTRY[cls.family] = cls
    return cls


def registered_adapters() -> dict[str, type[Adapter]]:
    return dict(_REGISTRY)
