"""Llama-layout models (Llama, Mistral, Qwen2, Qwen3, SmolLM2) with per-layer widths, as taskprune prunes them.

Saved next to the weights of a taskprune checkpoint whose layers differ in width (per-layer FFN sizes, query or
key/value head counts), and named by its config's ``auto_map``, so that

    AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)

loads it with only torch and transformers installed (the config stays the stock one: tokenizers, configs and
tools that read ``model_type`` see the family's own). Nothing of transformers' modeling code is copied: each
class below IS the stock class, and the only difference is that every decoder layer i is rebuilt by the stock
layer class from a copy of the config holding that layer's ``num_attention_heads``, ``num_key_value_heads`` and
``intermediate_size`` (``config.taskprune_layers[i]``; ``head_dim`` is explicit and the same in every layer).
The KV cache follows each layer's own key/value head count. Static caches, which size every layer from the
config's one head count, do not apply; the default dynamic cache does.

This file is the same in every checkpoint of this family (taskprune records its SHA-256 in the config).
Tested with transformers 5.24.0 and torch 2.13.0.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn
from transformers import LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM

#: the per-layer fields of ``config.taskprune_layers[i]`` and the stock config attribute each one sets
LAYER_FIELDS = {"heads": "num_attention_heads", "kv_heads": "num_key_value_heads", "ffn": "intermediate_size"}


def layer_configs(config):  # noqa: ANN001, ANN201
    """One config per layer: ``config`` with that layer's widths (a shallow field change of a deep copy)."""
    layers = getattr(config, "taskprune_layers", None)
    if not isinstance(layers, list) or len(layers) != config.num_hidden_layers:
        raise ValueError(f"config.taskprune_layers must list the widths of all {config.num_hidden_layers} layers")
    out = []
    for widths in layers:
        cfg = copy.deepcopy(config)
        for key, attr in LAYER_FIELDS.items():
            setattr(cfg, attr, int(widths[key]))
        out.append(cfg)
    return out


def add_recorded_biases(model, config) -> None:  # noqa: ANN001
    """Zero biases on the Linears named by ``config.taskprune_biases``: biases taskprune's repair added where the
    stock architecture has none (their values come with the weights)."""
    for name in getattr(config, "taskprune_biases", None) or []:
        linear = model.get_submodule(name)
        if linear.bias is None:
            linear.bias = nn.Parameter(torch.zeros(linear.out_features, dtype=linear.weight.dtype))


class PerLayerWidths:
    """Mixin for a stock ``...ForCausalLM``: rebuild each decoder layer at its recorded widths."""

    def _resize_layers(self, config) -> None:  # noqa: ANN001
        layers: nn.ModuleList = self.model.layers
        with warnings.catch_warnings():  # a layer whose FFN was pruned away has zero-element weights
            warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")
            for i, cfg in enumerate(layer_configs(config)):
                layers[i] = type(layers[i])(cfg, i)
        add_recorded_biases(self, config)


class TaskpruneLlamaForCausalLM(PerLayerWidths, LlamaForCausalLM):
    def __init__(self, config) -> None:  # noqa: ANN001
        super().__init__(config)
        self._resize_layers(config)


class TaskpruneMistralForCausalLM(PerLayerWidths, MistralForCausalLM):
    def __init__(self, config) -> None:  # noqa: ANN001
        super().__init__(config)
        self._resize_layers(config)


class TaskpruneQwen2ForCausalLM(PerLayerWidths, Qwen2ForCausalLM):
    def __init__(self, config) -> None:  # noqa: ANN001
        super().__init__(config)
        self._resize_layers(config)


class TaskpruneQwen3ForCausalLM(PerLayerWidths, Qwen3ForCausalLM):
    def __init__(self, config) -> None:  # noqa: ANN001
        super().__init__(config)
        self._resize_layers(config)
