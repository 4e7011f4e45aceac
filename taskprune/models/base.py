"""Neuron groups and the adapter interface: the only layer that knows a model's module names.

Scorers, the planner, the pruner and the evaluator see a model only through :class:`NeuronGroup`
descriptions and the :class:`Site` list where a group's activation ``h`` can be observed. Every site's
tensor carries the group's units on its LAST dimension, so masking, scoring and slicing all index it the
same way. Adding an architecture means writing one adapter file and registering it.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

ModuleName = Literal["encoder", "decoder"]
LayerType = Literal["self_attn", "cross_attn", "ffn"]
#: ``qk``/``vo``: dims inside the heads of an attention (T5, BERT); ``heads``: whole query heads of a
#: grouped-query attention, units blocked by the key/value head they read (decoder-only LMs, rotary heads)
GroupRole = Literal["ffn", "qk", "vo", "heads"]

MODULES: tuple[str, ...] = ("encoder", "decoder")
LAYER_TYPES: tuple[str, ...] = ("self_attn", "cross_attn", "ffn")
GROUP_ROLES: tuple[str, ...] = ("ffn", "qk", "vo", "heads")
#: roles whose consumer is a Linear that weight repair re-solves (QK units feed a softmax: not repairable)
REPAIRABLE_ROLES: tuple[str, ...] = ("ffn", "vo", "heads")


@dataclass(frozen=True)
class NeuronGroup:
    """A set of hidden units that are removed together with the weights producing and consuming them.

    ``size`` units are split into ``n_heads`` equal blocks (1 block for FFN); selection ranks units
    within each block so that every head keeps the same width and the result is a stock architecture.
    For ``heads`` groups a unit is a whole query head (``unit_width`` = head_dim activations at the output
    projection's input) and a block is a key/value group: under GQA every KV head keeps as many query heads.
    """

    name: str  # e.g. "decoder.3.cross_attn.qk"
    module: ModuleName
    layer_type: LayerType
    role: GroupRole  # what the units are: FFN units, QK or VO dims of heads, or whole heads
    depth: int
    size: int
    n_heads: int = 1
    unit_width: int = 1  # activations per unit at the group's site (head_dim for whole-head units)

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
    """Where a group's activation is observed: the input or the output of ``module`` (units on the last dim).

    With ``unit_width`` w > 1 (whole heads) the tensor ``[..., units * w]`` is shown to ``fn`` as
    ``[..., w, units]``: the units are still on the last dim and the head's dims count as positions, so a
    sum over positions of h * grad is the attribution of the head's gate, and a mask of one value per unit
    broadcasts. The view ``fn`` sees is what flows on (reshaped back), so gradients reach it.
    """

    module: nn.Module
    where: Literal["input", "output"]
    unit_width: int = 1

    def hook(self, fn: Callable[[torch.Tensor], torch.Tensor | None]) -> RemovableHandle:
        """Call ``fn`` on the site's activation at every forward; a tensor it returns replaces the activation."""
        w = self.unit_width

        def call(t: torch.Tensor) -> torch.Tensor | None:
            if w == 1:
                return fn(t)
            view = t.unflatten(-1, (-1, w)).transpose(-1, -2)  # [..., w, units]
            new = fn(view)
            return (view if new is None else new).transpose(-1, -2).flatten(-2)

        if self.where == "output":
            return self.module.register_forward_hook(lambda _m, _i, output: call(output))

        def pre(_m: nn.Module, inputs: tuple) -> tuple | None:
            new = call(inputs[0])
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
    #: the name of the :class:`taskprune.lm.ModelKind` that reads this family's inputs: "seq2seq" or "causal"
    #: (only :func:`taskprune.lm.model_kind` reads it; every other question goes to that object)
    kind_name: ClassVar[str] = "seq2seq"

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

    # ----- save/load hooks: what a family needs beyond save_pretrained / from_pretrained ----------

    def after_load(self) -> None:
        """Restore, after loading, what saving could not keep (bert2bert: the encoder/decoder embedding tie)."""

    def savable(self, dtype: torch.dtype | None) -> nn.Module:
        """The model as ``save_pretrained`` should see it: itself, or a copy cast to ``dtype``."""
        if dtype is None:
            return self.model
        out = copy.deepcopy(self.model)
        return out.to(dtype)

    def bias_flags(self) -> dict[str, list[str]]:
        """Stock config flags that give Linears a bias (Llama's ``mlp_bias``), each with the names of every Linear
        it governs; empty where the family has none (then added biases are recorded by name)."""
        return {}

    def remote_code(self) -> dict[str, Any] | None:
        """How a checkpoint of this family whose widths no stock field holds loads without taskprune: ``file`` (a
        modeling file in :mod:`taskprune.portable`), ``auto_map`` (Auto class -> class in that file) and ``config``
        (what the file reads: the physical per-layer shapes); None where this model type
        has none (its checkpoints then load through :func:`taskprune.load_pruned` only)."""
        return None

    def decoder_start_token_id(self) -> int:
        """Token that starts every decoder sequence (teacher forcing and generation); seq2seq families only."""
        raise NotImplementedError(f"{self.family} models have no decoder start token")

    # ----- generic behaviour built on the abstract pieces -------------------------------------------

    def sites(self, group: NeuronGroup) -> list[Site]:
        """Where the activation h lives: Q and K outputs (QK) or the consumer's input (FFN, VO)."""
        parts = self.parts(group)
        if group.role == "qk":
            return [Site(p, "output") for p in parts.producers]
        return [Site(parts.consumers[0], "input", group.unit_width)]

    def slice_group(self, group: NeuronGroup, keep: torch.Tensor) -> int:
        """Slice ``group`` in place to the units ``keep`` (validated); returns the width it now reports.

        Rows of the producers and columns of the consumers. An attention group cut to nothing keeps one
        all-zero unit per head as a placeholder (see :mod:`.slicing`); whole-head families override this.
        """
        from .slicing import slice_cols, slice_rows

        zero = keep.numel() == 0 and group.role != "ffn"
        idx = torch.arange(group.n_heads) * group.head_size if zero else keep
        parts = self.parts(group)
        for lin in parts.producers:
            slice_rows(lin, idx, zero)
        for lin in parts.consumers:
            slice_cols(lin, idx, zero)
        return 0 if zero else int(idx.numel())

    def skeleton_keep(self, group: NeuronGroup, width: int) -> torch.Tensor:
        """Units to keep so that a freshly built (unpruned) model gets the shape a pruned one recorded as ``width``:
        the first ``width / n_heads`` units of every head (the weights are loaded afterwards)."""
        per_head = width // group.n_heads
        starts = torch.arange(group.n_heads).unsqueeze(1) * group.head_size
        return (torch.arange(per_head).unsqueeze(0) + starts).reshape(-1)

    def check_keep(self, group: NeuronGroup, keep: torch.Tensor) -> str | None:
        """Why ``keep`` cannot be this group's kept units (None if it can): every head keeps as many units."""
        if keep.numel() % group.n_heads:
            return f"keeps {keep.numel()} units, not a multiple of {group.n_heads} heads"
        per_head = torch.bincount(keep // group.head_size, minlength=group.n_heads) if keep.numel() else None
        if per_head is not None and len(set(per_head.tolist())) != 1:
            return "keeps unequal numbers of units per head"
        return None

    def prunable_parameters(self, group: NeuronGroup, width: int | None = None) -> int:
        """Parameters owned by ``group`` at ``width`` units (default: its current size)."""
        width = group.size if width is None else width
        parts = self.parts(group)
        per_unit = sum(p.in_features + (p.bias is not None) for p in parts.producers)
        per_unit += sum(c.out_features for c in parts.consumers)
        return per_unit * width * group.unit_width

    def group_by_name(self) -> dict[str, NeuronGroup]:
        return {g.name: g for g in self.groups()}


_REGISTRY: dict[str, type[Adapter]] = {}


def register_adapter(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator: make an adapter discoverable by :func:`get_adapter`."""
    _REGISTRY[cls.family] = cls
    return cls


def registered_adapters() -> dict[str, type[Adapter]]:
    return dict(_REGISTRY)
