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
    """Holds, per group, the activation tensors (one per site) of the last forward pass.

    ``gated``: instead of each activation ``h``, hold a gate of ones ``[B, 1, ..., units]`` that the site's
    activation is multiplied by (``h * gate``, the same values). The gradient with respect to the gate is the
    per-example sum over positions of ``h * dL/dh``, which is what attribution with ``position_agg="sum"`` needs:
    the backward pass then returns ``[B, units]`` per site instead of an activation-sized gradient, and nothing
    outside the graph keeps the activations (a checkpointed block frees them). ``_per_example(gate, grad)`` reads
    the same as ``_per_example(h, grad)``, so scorers do not change.
    """

    def __init__(self, adapter: Adapter, groups: list[NeuronGroup], grad: bool = True, gated: bool = False) -> None:
        self.adapter = adapter
        self.groups = groups
        self.grad = grad
        self.gated = gated and grad
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

        def store(t: torch.Tensor) -> torch.Tensor | None:
            if not self.gated:
                if not self.frozen:
                    slots[index] = t
                return None
            if not self.frozen:  # a checkpointed block's recomputation multiplies by the same gate again
                shape = (t.shape[0], *([1] * (t.dim() - 2)), t.shape[-1])
                slots[index] = torch.ones(shape, dtype=t.dtype, device=t.device, requires_grad=True)
            gate = slots[index]
            return t if gate is None else t * gate

        return store

    def attach(self) -> None:
        model = self.adapter.model
        # gates start the graph themselves; captured activations need it rooted below them
        for emb in model_kind(model).input_embeddings(model) if self.grad and not self.gated else ():
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

    # accelerate's offload hooks are themselves an instance attribute ``forward``: put back what was there
    own = [block.__dict__.get("forward") for block in blocks]
    for block in blocks:
        block.forward = wrap(block.forward)
    try:
        yield
    finally:
        for block, forward in zip(blocks, own):
            if forward is None:
                del block.forward  # the class's forward again
            else:
                block.forward = forward


@contextmanager
def recording(adapter: Adapter, groups: list[NeuronGroup], grad: bool = True,
              gated: bool = False) -> Iterator[ActivationRecorder]:
    """Eval mode, frozen parameters and activation hooks (or gates: :class:`ActivationRecorder`) for the duration
    of the block; all restored."""
    model = adapter.model
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    recorder = ActivationRecorder(adapter, groups, grad, gated)
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
    gated: bool = False,
) -> Scores:
    """Shared loop of activation-based scorers: record, call ``per_batch`` to accumulate, return CPU scores.

    ``gated``: the recorder holds gates, not activations (for scores that sum h * grad over positions).
    ``job.config.checkpoint`` recomputes blocks in the backward pass, except in a model with offloaded weights;
    each batch runs in passes of at most ``job.config.micro_batch`` examples (``per_batch`` sees one pass).

    Only this process's batches are scored (all of them in one process; see :attr:`ScoringJob.shard`).
    """
    from ..runtime.placement import execution_device, has_offloaded, offloaded_weights_refetched

    adapter = get_adapter(job.model)
    device = execution_device(job.model)
    # offloaded weights already bound the memory, and recomputing a block would read them from disk once more
    # (the refetching below and checkpointing both hook the saved tensors): no recomputation there
    offloaded = has_offloaded(job.model)
    scores: Scores = {g.name: torch.zeros(g.size, device=device) for g in job.groups}
    mine = job.my_batches()
    with torch.set_grad_enabled(grad), recording(adapter, job.groups, grad, gated) as rec, \
            checkpointed(job.model, grad and job.config.checkpoint and not offloaded), \
            offloaded_weights_refetched(job.model):
        for i in job.progress(mine, desc, len(mine)):
            for part in job.batches[i].split(job.config.micro_batch):
                per_batch(rec, part.to(device), scores)
                rec.clear()
    return {k: v.cpu() for k, v in scores.items()}
