"""T5-family models (T5, T5 v1.1 / Flan-T5, mT5) with per-layer widths, as taskprune prunes them.

Saved next to the weights of a taskprune checkpoint whose blocks differ in width (per-block ``d_ff``, per-attention
head widths ``d_kv``), and named by its config's ``auto_map``, so that

    AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True)

loads it with only torch and transformers installed (the config stays the stock one). Nothing of transformers' modeling code is copied: each
class below IS the stock class; the only difference is that every sublayer of every block (self-attention,
cross-attention, feed-forward) is rebuilt by its own stock class from a copy of its stack's config holding that
sublayer's ``d_kv`` or ``d_ff`` (``config.taskprune_layers``). T5 does not scale attention scores, so a smaller
per-head width is exactly a smaller ``d_kv``.

This file is the same in every checkpoint of this family (taskprune records its SHA-256 in the config).
Tested with transformers 5.24.0 and torch 2.13.0.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn
from transformers import MT5ForConditionalGeneration, T5ForConditionalGeneration


def _with(config, **fields):  # noqa: ANN001, ANN003, ANN202
    cfg = copy.deepcopy(config)
    for key, value in fields.items():
        setattr(cfg, key, int(value))
    return cfg


def add_recorded_biases(model, config) -> None:  # noqa: ANN001
    """Zero biases on the Linears named by ``config.taskprune_biases``: biases taskprune's repair added where the
    stock architecture has none (their values come with the weights)."""
    for name in getattr(config, "taskprune_biases", None) or []:
        linear = model.get_submodule(name)
        if linear.bias is None:
            linear.bias = nn.Parameter(torch.zeros(linear.out_features, dtype=linear.weight.dtype))


class PerLayerWidths:
    """Mixin for a stock ``...ForConditionalGeneration``: rebuild each sublayer at its recorded width."""

    def _resize_layers(self, config) -> None:  # noqa: ANN001
        layers = getattr(config, "taskprune_layers", None)
        if not isinstance(layers, dict):
            raise ValueError("config.taskprune_layers must map encoder/decoder to the widths of every block")
        with warnings.catch_warnings():  # a feed-forward pruned away has zero-element weights
            warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")
            for name in ("encoder", "decoder"):
                stack = getattr(self, name)
                if len(layers[name]) != len(stack.block):
                    raise ValueError(f"config.taskprune_layers[{name!r}] must list all {len(stack.block)} blocks")
                for i, (block, widths) in enumerate(zip(stack.block, layers[name])):
                    sub = block.layer
                    self_attn = sub[0]
                    sub[0] = type(self_attn)(_with(stack.config, d_kv=widths["self_attn"]), layer_idx=i,
                                             has_relative_attention_bias=self_attn.SelfAttention.has_relative_attention_bias)
                    if stack.config.is_decoder:
                        sub[1] = type(sub[1])(_with(stack.config, d_kv=widths["cross_attn"]), layer_idx=i)
                    sub[-1] = type(sub[-1])(_with(stack.config, d_ff=widths["ffn"]))
        add_recorded_biases(self, config)


class TaskpruneT5ForConditionalGeneration(PerLayerWidths, T5ForConditionalGeneration):
    def __init__(self, config) -> None:  # noqa: ANN001
        super().__init__(config)
        self._resize_layers(config)


class TaskpruneMT5ForConditionalGeneration(PerLayerWidths, MT5ForConditionalGeneration):
    def __init__(self, config) -> None:  # noqa: ANN001
        super().__init__(config)
        self._resize_layers(config)
