"""Biases that repair adds to bias-less consumers (Llama's o_proj/down_proj, T5's wo), and how configs carry them.

FLAP's bias compensation, and a centred least-squares repair, put the removed units' mean contribution into the
consumer's bias; Llama, Mistral, Qwen and T5 have none there. The bias is added as a zero parameter before the
solve, and the model's config is made to describe it at once, so every later step (slicing, saving, loading,
serving, GGUF export) sees a model whose config and tensors agree:

- where the family has a stock flag (Llama: ``attention_bias`` for q/k/v/o, ``mlp_bias`` for gate/up/down;
  Qwen3: ``attention_bias``) the flag is set and the flag's other projections get zero biases, so plain
  ``from_pretrained`` builds the same modules;
- elsewhere the Linear's name goes into ``config.taskprune_biases``, which :func:`taskprune.load_pruned` and the
  checkpoint's remote code (``portable/modeling_taskprune_*.py``) read to add the same zero biases before the
  weights load.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..models import get_adapter

#: config key: names (in the model) of the Linears given a bias the stock architecture does not have
BIASES_KEY = "taskprune_biases"


def zero_bias(linear: nn.Linear) -> None:
    """Give a bias-less Linear a zero bias (its output is unchanged) on its weight's device and dtype."""
    if linear.bias is None:
        w = linear.weight
        linear.bias = nn.Parameter(torch.zeros(linear.out_features, dtype=w.dtype, device=w.device),
                                   requires_grad=w.requires_grad)


def add_biases(model: nn.Module, names: Iterable[str]) -> None:
    """Zero biases on the named Linears of ``model``, recorded in its config (stock flags first, see the module)."""
    pending = {n for n in names if model.get_submodule(n).bias is None}
    if not pending:
        return
    for flag, governed in get_adapter(model).bias_flags().items():
        if pending.isdisjoint(governed):
            continue
        setattr(model.config, flag, True)
        for name in governed:
            zero_bias(model.get_submodule(name))
        pending -= set(governed)
    for n in pending:
        zero_bias(model.get_submodule(n))
    if pending:
        recorded = set(getattr(model.config, BIASES_KEY, None) or [])
        setattr(model.config, BIASES_KEY, sorted(recorded | pending))


def restore_biases(model: nn.Module) -> None:
    """Before a checkpoint's weights load: the zero biases its config records (``taskprune_biases``)."""
    for name in getattr(model.config, BIASES_KEY, None) or []:
        module = model.get_submodule(name)
        if not isinstance(module, nn.Linear):
            raise ValueError(f"config.{BIASES_KEY} names {name}, which is not a Linear layer of this model")
        zero_bias(module)
