"""Decoder-only adapter for the Llama layout: Llama, Mistral, Qwen2, Qwen3, SmolLM2 (``...ForCausalLM``).

Module names used here and nowhere else: ``model.layers[i].self_attn.{q,k,v,o}_proj`` and
``model.layers[i].mlp.{gate,up,down}_proj``. Two groups per layer (module ``decoder``, depth = layer index):

- ``ffn``: SwiGLU unit i = row i of gate_proj and up_proj, column i of down_proj (stock ``intermediate_size``).
- ``self_attn.heads``: WHOLE query heads. Rotary embeddings rotate dims (i, i + head_dim/2) of a head together
  and Qwen3 normalises q/k over the head, so no dim inside a head is ever removed; a head's score is the
  attribution of a gate on its output (the sum over its dims at o_proj's input). Under grouped-query attention
  query head h reads key/value head h // (heads / kv_heads): the group's blocks are the KV groups, so selection
  keeps as many query heads in every KV group (query granularity), or removes whole KV groups with all their
  query heads (KV granularity, which also shrinks k_proj/v_proj and the KV cache). Either way each layer is a
  stock GQA attention: ``num_attention_heads``, ``num_key_value_heads`` and an explicit ``head_dim``.

The attention module sizes its heads from the projections (``view(..., -1, head_dim)``) and reads only
``num_key_value_groups`` for GQA, which :meth:`LlamaAdapter.slice_group` keeps right.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import Adapter, GroupParts, NeuronGroup, register_adapter
from .slicing import is_zero_width, slice_cols, slice_rows

#: model types with the Llama layout (same module names, per-head q/k norms where present act within a head)
LLAMA_LAYOUT = ("llama", "mistral", "qwen2", "qwen3")
#: the class-name stem of each model type in portable/modeling_taskprune_llama.py
REMOTE_NAMES = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3"}
_ATTN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
#: stock config flags giving projections a bias, per model type (transformers 5.x modeling code)
BIAS_FLAGS = {"llama": {"attention_bias": _ATTN, "mlp_bias": ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")},
              "qwen3": {"attention_bias": _ATTN}}
#: config field recording each layer's key/value head count (per-layer widths have no stock field)
KV_WIDTHS_KEY = "taskprune_kv_heads"


def _layers(model: nn.Module) -> nn.ModuleList:
    return model.model.layers


@register_adapter
class LlamaAdapter(Adapter):
    family = "llama"
    kind_name = "causal"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        if getattr(model.config, "model_type", None) not in LLAMA_LAYOUT:
            return False
        try:
            layer = _layers(model)[0]
        except (AttributeError, IndexError, TypeError):
            return False
        return all(hasattr(layer.self_attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")) and all(
            hasattr(layer.mlp, n) for n in ("gate_proj", "up_proj", "down_proj"))

    def _layer(self, group: NeuronGroup) -> nn.Module:
        return _layers(self.model)[group.depth]

    @staticmethod
    def _head_dim(attn: nn.Module) -> int:
        return int(attn.head_dim)

    def _heads(self, attn: nn.Module) -> tuple[int, int]:
        """(query heads, key/value heads) at the current widths; a zero-width placeholder counts 0 query heads."""
        d = self._head_dim(attn)
        n_kv = attn.k_proj.out_features // d
        return (0 if is_zero_width(attn.q_proj) else attn.q_proj.out_features // d), n_kv

    def groups(self) -> list[NeuronGroup]:
        out: list[NeuronGroup] = []
        for depth, layer in enumerate(_layers(self.model)):
            attn = layer.self_attn
            n_q, n_kv = self._heads(attn)
            out.append(NeuronGroup(f"decoder.{depth}.self_attn.heads", "decoder", "self_attn", "heads", depth,
                                   n_q, n_kv, unit_width=self._head_dim(attn)))
            out.append(NeuronGroup(f"decoder.{depth}.ffn", "decoder", "ffn", "ffn", depth,
                                   layer.mlp.down_proj.in_features))
        return out

    def parts(self, group: NeuronGroup) -> GroupParts:
        layer = self._layer(group)
        if group.role == "ffn":
            return GroupParts((layer.mlp.gate_proj, layer.mlp.up_proj), (layer.mlp.down_proj,))
        return GroupParts((layer.self_attn.q_proj,), (layer.self_attn.o_proj,))

    def check_keep(self, group: NeuronGroup, keep: torch.Tensor) -> str | None:
        """Kept query heads: as many in every KV group that keeps any (whole KV groups may go)."""
        if not keep.numel():
            return None
        per_group = torch.bincount(keep // group.head_size, minlength=group.n_heads).tolist()
        if len({c for c in per_group if c}) != 1:
            return f"keeps unequal numbers of query heads per key/value group ({per_group}); GQA needs equal ones"
        return None

    def slice_group(self, group: NeuronGroup, keep: torch.Tensor) -> int:
        if group.role == "ffn":
            return super().slice_group(group, keep)
        attn = self._layer(group).self_attn
        d = self._head_dim(attn)
        zero = keep.numel() == 0
        if zero:  # placeholder: query head 0 of KV group 0, all zero (o_proj has no bias: the sublayer adds 0)
            keep = torch.zeros(1, dtype=torch.long)
        kv_keep = torch.unique(keep // group.head_size)
        dims = (keep.unsqueeze(1) * d + torch.arange(d)).reshape(-1)
        kv_dims = (kv_keep.unsqueeze(1) * d + torch.arange(d)).reshape(-1)
        slice_rows(attn.q_proj, dims, zero)
        slice_cols(attn.o_proj, dims, zero)
        if kv_keep.numel() < group.n_heads:
            for lin in (attn.k_proj, attn.v_proj):
                slice_rows(lin, kv_dims)
        attn.num_key_value_groups = keep.numel() // kv_keep.numel()
        return 0 if zero else int(keep.numel())

    def skeleton_keep(self, group: NeuronGroup, width: int) -> torch.Tensor:
        """Heads: the first ``width / kv`` query heads of each of the first ``kv`` KV groups, with ``kv`` the KV
        width recorded by :meth:`write_widths` (KV-granularity plans drop whole KV groups)."""
        if group.role == "ffn" or width == 0:
            return super().skeleton_keep(group, width)
        kv = int(getattr(self.model.config, KV_WIDTHS_KEY, {}).get(group.name, group.n_heads))
        per = width // kv
        return (torch.arange(kv).unsqueeze(1) * group.head_size + torch.arange(per)).reshape(-1)

    def prunable_parameters(self, group: NeuronGroup, width: int | None = None) -> int:
        """FFN as usual; heads: q rows and o columns per query head, plus k and v rows of every KV head (counted
        once per layer, at the current KV width: a layer pruned to nothing counts 0)."""
        if group.role == "ffn":
            return super().prunable_parameters(group, width)
        width = group.size if width is None else width
        attn = self._layer(group).self_attn
        d = self._head_dim(attn)
        q, o, k, v = attn.q_proj, attn.o_proj, attn.k_proj, attn.v_proj
        per_q = d * (q.in_features + (q.bias is not None) + o.out_features)
        n_kv = 0 if width == 0 else k.out_features // d
        per_kv = d * (k.in_features + (k.bias is not None) + v.in_features + (v.bias is not None))
        return per_q * width + per_kv * n_kv

    def set_head_width(self, group: NeuronGroup, head_width: int) -> None:  # whole heads only: nothing to resize
        raise NotImplementedError("Llama-layout attention is pruned by whole heads; head_dim never changes")

    def write_widths(self, config: Any, widths: dict[str, int]) -> None:
        """Stock fields where every layer agrees: intermediate_size; num_attention_heads/num_key_value_heads."""
        groups = self.group_by_name()
        ffn = {w for n, w in widths.items() if groups[n].role == "ffn"}
        if len(ffn) == 1 and min(ffn) > 0:
            config.intermediate_size = min(ffn)
        per_layer = {n: self._heads(self._layer(groups[n]).self_attn) for n in widths if groups[n].role == "heads"}
        setattr(config, KV_WIDTHS_KEY, {n: n_kv for n, (_, n_kv) in per_layer.items()})
        heads = set(per_layer.values())
        zero = any(widths[n] == 0 for n in per_layer)
        # transformers' LlamaConfig validates hidden_size % num_attention_heads == 0 even with an explicit head_dim:
        # a head count that breaks it is recorded (taskprune_widths) and loads through load_pruned
        if len(heads) == 1 and not zero and config.hidden_size % next(iter(heads))[0] == 0:
            n_q, n_kv = next(iter(heads))
            config.head_dim = self._head_dim(_layers(self.model)[0].self_attn)
            config.num_attention_heads, config.num_key_value_heads = n_q, n_kv

    def bias_flags(self) -> dict[str, list[str]]:
        """Llama: ``attention_bias`` (q/k/v/o) and ``mlp_bias`` (gate/up/down); Qwen3: ``attention_bias``; Mistral
        and Qwen2 build their projections with fixed bias settings (no flag)."""
        flags = BIAS_FLAGS.get(self.model.config.model_type, {})
        n = len(_layers(self.model))
        return {flag: [f"model.layers.{i}.{part}" for i in range(n) for part in parts] for flag, parts in flags.items()}

    def remote_code(self) -> dict[str, Any]:
        """Every layer's stored query heads (a pruned-away attention keeps one zero head), key/value heads and FFN
        units, read by ``portable/modeling_taskprune_llama.py``."""
        layers, d = [], 0
        for layer in _layers(self.model):
            attn = layer.self_attn
            d = self._head_dim(attn)
            layers.append({"heads": attn.q_proj.out_features // d, "kv_heads": attn.k_proj.out_features // d,
                           "ffn": layer.mlp.down_proj.in_features})
        stock = self.model.config.model_type
        name = REMOTE_NAMES[stock]
        return {"file": "modeling_taskprune_llama.py", "auto_map": {"AutoModelForCausalLM": f"Taskprune{name}ForCausalLM"},
                "config": {"taskprune_layers": layers, "head_dim": d}}

    def decoder_start_token_id(self) -> int:
        raise NotImplementedError("decoder-only models have no decoder start token")
