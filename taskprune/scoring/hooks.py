"""Recording group activations during a forward pass so gradients can be taken with respect to them.

All parameters are frozen while recording: the backward pass computes gradients with respect to
activations only, and no weight gradient is ever allocated. The graph is rooted at the input
embeddings' outputs (made to require grad), so every recorded activation is part of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..data import Batch
from ..lm import TeacherForced, model_kind
from ..models import Adapter, NeuronGroup, get_adapter
from .base import Scores, ScoringJob


class ActivationRecorder:
    """Holds, per group, the activation tensors (one per site) of the last forward pass."""

    def __init__(self, adapter: Adapter, groups: list[NeuronGroup], grad: bool = True) -> None:
        self.adapter = adapter
        self.groups = groups
        self.grad = grad
        # one slot per site of each group (site order of Adapter.sites), filled by the last forward pass
        self.captured: dict[str, list[torch.Tensor | None]] = {g.name: [None] * len(adapter.sites(g)) for g in groups}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self.frozen = False

    def clear(self) -> None:
        for tensors in self.captured.values():
            tensors[:] = [None] * len(tensors)
        self.frozen = False

    def freeze(self) -> None:
        """Keep what the forward pass captured: a checkpointed block's recomputation in the backward pass runs
        the same hooks again, and its tensors (outside the graph) must neither replace nor add to these."""
        self.frozen = True

    def flat(self) -> tuple[list[str], list[torch.Tensor]]:
        """(group name per tensor, tensors) in one list, for ``torch.autograd.grad`` (the recorder is frozen
        from here until :meth:`clear`: see :meth:`freeze`)."""
        self.freeze()
        names, tensors = [], []
        for name, ts in self.captured.items():
            for t in ts:
                if t is not None:
                    names.append(name)
                    tensors.append(t)
        return names, tensors

    def position_masks(self, batch: Batch, tf: TeacherForced) -> dict[str, list[torch.Tensor]]:
        """Per captured tensor, a [B, T] mask of its real (non-padding) positions (the model kind knows which
        sequence each site runs over). Needed where no gradient zeroes padding for us (activation scores)."""
        kind = model_kind(self.adapter.model)
        by_name = {g.name: g for g in self.groups}
        return {name: [kind.site_mask(by_name[name], i, batch, tf) for i, t in enumerate(tensors) if t is not None]
                for name, tensors in self.captured.items()}

    def _store(self, name: str, index: int):  # noqa: ANN202
        slots = self.captured[name]

        def store(t: torch.Tensor) -> None:
            if not self.frozen:
                slots[index] = t

        return store

    def attach(self) -> None:
        model = self.adapter.model
        for emb in model_kind(model).input_embeddings(model) if self.grad else ():
            self._handles.append(emb.register_forward_hook(_require_grad))
        for g in self.groups:
            for index, site in enumerate(self.adapter.sites(g)):
                self._handles.append(site.hook(self._store(g.name, index)))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.clear()


def _require_grad(_m: nn.Module, _i: tuple, output: torch.Tensor) -> torch.Tensor:
    return output.detach().requires_grad_(True)


@contextmanager
def checkpointed(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Activation checkpointing of every transformer block for the duration of the block: each block's forward
    keeps only its inputs, and the backward pass recomputes the rest (torch.utils.checkpoint, non-reentrant, so
    gradients with respect to the recorded activations inside a block are still defined). Blocks are
    transformers' GradientCheckpointingLayer instances (Llama, Mistral, Qwen, T5 and BERT layers)."""
    from torch.utils.checkpoint import checkpoint
    from transformers.modeling_layers import GradientCheckpointingLayer

    blocks = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)] if enabled else []

    def wrap(forward):  # noqa: ANN001, ANN202
        def run(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            if not torch.is_grad_enabled():
                return forward(*args, **kwargs)
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return run

    for block in blocks:
        block.forward = wrap(block.forward)
    try:
        yield
    finally:
        for block in blocks:
            del block.forward  # the instance attribute: the class's forward again


@contextmanager
def recording(adapter: Adapter, groups: list[NeuronGroup], grad: bool = True) -> Iterator[ActivationRecorder]:
    """Eval mode, frozen parameters and activation hooks for the duration of the block; all restored."""
    model = adapter.model
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    recorder = ActivationRecorder(adapter, groups, grad)
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        recorder.attach()
        yield recorder
    finally:
        recorder.detach()
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def run_scoring(
    job: ScoringJob,
    desc: str,
    per_batch: Callable[[ActivationRecorder, Batch, Scores], None],
    grad: bool = True,
) -> Scores:
    """Shared loop of activation-based scorers: record, call ``per_batch`` to accumulate, return CPU scores.

    Only this process's batches are scored (all of them in one process; see :attr:`ScoringJob.shard`).
    """
    from ..runtime.placement import execution_device, offloaded_weights_refetched

    adapter = get_adapter(job.model)
    device = execution_device(job.model)
    scores: Scores = {g.name: torch.zeros(g.size, device=device) for g in job.groups}
    mine = job.my_batches()
    with torch.set_grad_enabled(grad), recording(adapter, job.groups, grad) as rec, \
            checkpointed(job.model, grad and job.config.checkpoint), offloaded_weights_refetched(job.model):
        for i in job.progress(mine, desc, len(mine)):
            per_batch(rec, job.batches[i].to(device), scores)
            rec.clear()
    return {k: v.cpu() for k, v in scores.items()}
