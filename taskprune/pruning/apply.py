"""Applying a plan: ``apply`` slices weights physically, ``mask`` zeroes the same units with hooks.

The two are equivalent by construction (a removed unit contributes nothing either way; BERT keeps its
original score scaling) and the tests hold them to it. ``mask`` costs nothing to set up and is what
sweeps over many rates use; ``apply`` is what makes a model smaller and faster.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..errors import TaskpruneError
from ..models import Adapter, NeuronGroup, get_adapter
from ..runtime.placement import has_offloaded
from .plan import PruningPlan


def slice_model(adapter: Adapter, keep: dict[str, torch.Tensor]) -> dict[str, int]:
    """Slice every group named in ``keep`` in place; returns the resulting width of every group.

    QK and VO of one attention must keep the same number of units per head. An attention cut to width
    0 keeps a one-unit all-zero placeholder per head (see :mod:`taskprune.models.slicing`). Whole-head
    groups (``heads``) are sliced by their adapter, which also keeps its GQA bookkeeping right.
    """
    groups = adapter.groups()
    widths = {g.name: g.size for g in groups}
    head_widths: dict[str, dict[str, int]] = {}
    for g in groups:
        in_head = g.role in ("qk", "vo")
        if g.name not in keep:
            if in_head:  # its current tensor width (a zero-width placeholder has 1 unit per head)
                tensor_width = adapter.parts(g).producers[0].out_features // g.n_heads
                head_widths.setdefault(g.attention, {}).setdefault(g.role, tensor_width)
            continue
        idx = keep[g.name].to(torch.long)
        _check_keep(adapter, g, idx)
        widths[g.name] = adapter.slice_group(g, idx)
        if in_head:
            head_widths.setdefault(g.attention, {})[g.role] = max(widths[g.name], g.n_heads) // g.n_heads
    by_attention = {g.attention: g for g in groups if g.role == "qk"}
    sliced = {g.attention for g in groups if g.name in keep and g.role in ("qk", "vo")}
    for attention, hw in head_widths.items():
        if attention not in sliced:
            continue
        if len(set(hw.values())) != 1:
            raise TaskpruneError(
                f"{attention}: Q/K keep {hw.get('qk')} and V/O keep {hw.get('vo')} units per head; they must "
                "be equal (prune both at the same rate)"
            )
        adapter.set_head_width(by_attention[attention], next(iter(hw.values())))
    return widths


def _check_keep(adapter: Adapter, group: NeuronGroup, idx: torch.Tensor) -> None:
    """Kept indices must be strictly increasing, in range, and fit the group's head structure."""
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= group.size):
        raise TaskpruneError(f"plan keeps unit indices outside 0..{group.size - 1} in {group.name}")
    if idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all()):
        raise TaskpruneError(f"plan for {group.name} lists kept units out of order or twice; they must increase")
    problem = adapter.check_keep(group, idx)
    if problem:
        raise TaskpruneError(f"plan for {group.name} {problem}")


def validate_plan(plan: PruningPlan, adapter: Adapter, slicing: bool = True) -> None:
    """Check a plan against the model's groups BEFORE anything is sliced or hooked (nothing half-done).

    Slicing also needs Q/K and V/O of one attention to keep the same width per head (one head size);
    masking does not, so hand-made plans that remove only one of them can still be studied with masks.
    """
    groups = adapter.group_by_name()
    plan.check_complete(groups.values())
    per_head: dict[str, dict[str, int]] = {}
    for name, g in plan.groups.items():
        if name not in groups or groups[name].size != g["size"]:
            raise TaskpruneError(f"plan group {name} does not exist in this model; the plan was made for another model")
        group = groups[name]
        _check_keep(adapter, group, plan.keep(name))
        if group.role in ("qk", "vo") and slicing:
            per_head.setdefault(group.attention, {})[group.role] = len(g["keep"]) // group.n_heads
    for attention, widths in per_head.items():
        if len(set(widths.values())) > 1:
            raise TaskpruneError(
                f"{attention}: the plan keeps {widths.get('qk')} Q/K and {widths.get('vo')} V/O units per head; "
                "they must be equal (prune both at the same rate)"
            )


def apply(plan: PruningPlan, model: nn.Module, *, inplace: bool = False, check: bool = True,
          share: bool = False, validated: bool = False) -> nn.Module:
    """Return a physically smaller model keeping exactly the plan's units; its config records the widths.

    ``share=True`` copies only the sliced tensors: every tensor the plan leaves whole (embeddings, norms,
    unpruned layers) is the base model's own object. That is what serving many tasks from one base wants (a
    cut costs the kept slices, not the whole model, in time and memory) but the result must be treated as
    read-only: training it would change the base. ``validated=True`` skips :func:`validate_plan` for a plan the
    caller has already validated against this model (the server does at registration, then cuts per request).
    """
    if check:
        plan.check_model(model)
    adapter = get_adapter(model)
    if not validated:
        validate_plan(plan, adapter)
    if not inplace:
        if has_offloaded(model):
            raise TaskpruneError("this model has weights offloaded by a device map: it is pruned in place "
                                 "(inplace=True), a copy would double what does not fit already")
        model = share_tensors_copy(model) if share else copy.deepcopy(model)
        adapter = get_adapter(model)
    widths = slice_model(adapter, {n: plan.keep(n) for n, g in plan.groups.items() if len(g["keep"]) < g["size"]})
    record_widths(adapter, widths, plan.base_fingerprint)
    return model


def share_tensors_copy(model: nn.Module) -> nn.Module:
    """A new module tree that shares every tensor with ``model``: new module objects, each with its own parameter,
    buffer, child and hook dicts (every dict, set and list a module holds is copied shallowly), and deep copies of
    the configs (pruning writes widths into them).

    ``copy.deepcopy`` with the tensors memoised gives the same result but walks every attribute of ~4,000 Python
    objects on MiniLM (80 % of a 23-25 ms cut, by cProfile); this copies the ~300 modules' containers only.
    Anything else a module holds (ints, strings, functions, tensors kept as plain attributes) is shared, as the
    tensors are.
    """
    from transformers import GenerationConfig, PretrainedConfig

    memo: dict[int, object] = {}

    def clone(module: nn.Module) -> nn.Module:
        if id(module) in memo:  # a module reachable twice stays one module
            return memo[id(module)]  # type: ignore[return-value]
        new = copy.copy(module)
        memo[id(module)] = new
        for key, value in list(new.__dict__.items()):
            if isinstance(value, (PretrainedConfig, GenerationConfig)):
                new.__dict__[key] = copy.deepcopy(value, memo)  # one copy per config, shared as in the original
            elif isinstance(value, (dict, set, list)):  # _parameters, _buffers, _modules, hooks, buffer sets...
                new.__dict__[key] = value.copy()  # so registering on the cut never registers on the base
        for name, child in module._modules.items():
            new._modules[name] = None if child is None else clone(child)
        return new

    return clone(model)


def own_tensors(model: nn.Module, base: nn.Module) -> nn.Module:
    """Give ``model`` its own copy of every parameter and buffer it still shares with ``base`` (a cut made with
    ``share=True``, or weight repair's copy after slicing), so that changing one never changes the other; a
    parameter reachable twice (tied embeddings) stays one parameter."""
    held = {t.untyped_storage().data_ptr() for t in [*base.parameters(), *base.buffers()] if t.numel()}
    clones: dict[int, torch.Tensor] = {}
    for module in model.modules():
        for table in (module._parameters, module._buffers):
            for name, t in table.items():
                if t is None or not t.numel() or t.untyped_storage().data_ptr() not in held:  # views too
                    continue
                if id(t) not in clones:
                    copied = t.detach().clone()
                    clones[id(t)] = nn.Parameter(copied, requires_grad=t.requires_grad) if isinstance(
                        t, nn.Parameter) else copied
                table[name] = clones[id(t)]
    return model


def record_widths(adapter: Adapter, widths: dict[str, int], base_fingerprint: str | None) -> None:
    """Write the new widths into the model config so that saving and loading reproduce the shapes."""
    config = adapter.model.config
    adapter.write_widths(config, widths)
    config.taskprune_widths = dict(widths)
    if base_fingerprint is not None:
        config.taskprune_base_fingerprint = base_fingerprint


class MaskHandle:
    """Hooks that zero the pruned units; ``remove()`` (or leaving the ``with`` block) restores the model."""

    def __init__(self, handles: list[RemovableHandle]) -> None:
        self._handles = handles

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> MaskHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def mask(plan: PruningPlan, model: nn.Module, *, check: bool = True) -> MaskHandle:
    """Make ``model`` compute what ``apply(plan, model)`` computes, without copying any weight.

    Plans made with weight repair are refused: a plan holds the kept units, not the repaired weights, so a mask
    would silently give the unrepaired model.
    """
    if plan.repaired_with:
        raise TaskpruneError(f"this plan was made with weight repair ({plan.repaired_with}): masks cannot hold the "
                             "repaired weights; use the compressed model (apply/compress) or a plan made without repair")
    if check:
        plan.check_model(model)
    adapter = get_adapter(model)
    validate_plan(plan, adapter, slicing=False)
    groups = adapter.group_by_name()
    handles: list[RemovableHandle] = []
    for name, g in plan.groups.items():
        if len(g["keep"]) == g["size"]:
            continue
        group = groups[name]
        device = adapter.parts(group).producers[0].weight.device
        device = torch.device("cpu") if device.type == "meta" else device  # offloaded: the hook moves it
        m = torch.zeros(g["size"], device=device)
        m[plan.keep(name).to(device)] = 1.0
        for site in adapter.sites(group):
            handles.append(site.hook(lambda t, m=m: t * m.to(t.device, t.dtype)))
    return MaskHandle(handles)


@contextmanager
def masked(plan: PruningPlan, model: nn.Module, *, check: bool = True) -> Iterator[nn.Module]:
    """``with masked(plan, model): ...`` runs the block with the plan's units zeroed."""
    handle = mask(plan, model, check=check)
    try:
        yield model
    finally:
        handle.remove()
