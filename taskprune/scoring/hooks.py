"""Recording group activations during a forward pass so gradients can be taken with respect to them.

All parameters are frozen while recording: the backward pass computes gradients with respect to
activations only, and no weight gradient is ever allocated. The graph is rooted at the input
embeddings' outputs (made to require grad), so every recorded activation is part of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..models import Adapter, NeuronGroup


class ActivationRecorder:
    """Holds, per group, the activation tensors (one per site) of the last forward pass."""

    def __init__(self, adapter: Adapter, groups: list[NeuronGroup]) -> None:
        self.adapter = adapter
        self.groups = groups
        self.captured: dict[str, list[torch.Tensor]] = {g.name: [] for g in groups}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def clear(self) -> None:
        for tensors in self.captured.values():
            tensors.clear()

    def flat(self) -> tuple[list[str], list[torch.Tensor]]:
        """(group name per tensor, tensors) in one list, for ``torch.autograd.grad``."""
        names, tensors = [], []
        for name, ts in self.captured.items():
            for t in ts:
                names.append(name)
                tensors.append(t)
        return names, tensors

    def _hook(self, name: str, where: str):  # noqa: ANN202 - torch hook signatures
        store = self.captured[name]

        def on_output(_m: nn.Module, _i: tuple, output: torch.Tensor) -> None:
            store.append(output)

        def on_input(_m: nn.Module, inputs: tuple) -> None:
            store.append(inputs[0])

        return on_output if where == "output" else on_input

    def attach(self) -> None:
        model = self.adapter.model
        seen: set[int] = set()
        for stack in (model.get_encoder(), model.get_decoder()):
            emb = stack.get_input_embeddings()
            if id(emb) not in seen:
                seen.add(id(emb))
                self._handles.append(emb.register_forward_hook(_require_grad))
        for g in self.groups:
            for site in self.adapter.sites(g):
                hook = self._hook(g.name, site.where)
                if site.where == "output":
                    self._handles.append(site.module.register_forward_hook(hook))
                else:
                    self._handles.append(site.module.register_forward_pre_hook(hook))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.clear()


def _require_grad(_m: nn.Module, _i: tuple, output: torch.Tensor) -> torch.Tensor:
    return output.detach().requires_grad_(True)


@contextmanager
def recording(adapter: Adapter, groups: list[NeuronGroup]) -> Iterator[ActivationRecorder]:
    """Eval mode, frozen parameters and activation hooks for the duration of the block; all restored."""
    model = adapter.model
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    recorder = ActivationRecorder(adapter, groups)
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
