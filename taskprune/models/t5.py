"""T5 family adapter: T5 / T5 v1.1 / Flan-T5 (gated-GELU FFN) / mT5 ``...ForConditionalGeneration``.

Module names used here and nowhere else: ``encoder.block[i].layer[0].SelfAttention``,
``decoder.block[i].layer[1].EncDecAttention``, ``layer[-1].DenseReluDense`` with ``wi`` or
``wi_0``/``wi_1`` and ``wo``; attention ``q k v o`` sized by ``key_value_proj_dim`` (config ``d_kv``).
T5 does not scale attention scores, so equal per-head widths are exactly a smaller ``d_kv``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .base import Adapter, GroupParts, NeuronGroup, register_adapter
from .slicing import is_zero_width

#: the class-name stem of each model type in portable/modeling_taskprune_t5.py
REMOTE_NAMES = {"t5": "T5", "mt5": "MT5"}


@register_adapter
class T5Adapter(Adapter):
    family = "t5"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        enc = getattr(model, "encoder", None)
        dec = getattr(model, "decoder", None)
        return (
            getattr(model.config, "model_type", None) in ("t5", "mt5", "umt5")
            and hasattr(enc, "block")
            and hasattr(dec, "block")
        )

    # -- module lookup ---------------------------------------------------------------------------
    def _stack(self, module: str) -> nn.Module:
        return getattr(self.model, module)

    def _attention(self, group: NeuronGroup) -> nn.Module:
        block = self._stack(group.module).block[group.depth]
        if group.layer_type == "self_attn":
            return block.layer[0].SelfAttention
        return block.layer[1].EncDecAttention

    def _ffn(self, group: NeuronGroup) -> nn.Module:
        return self._stack(group.module).block[group.depth].layer[-1].DenseReluDense

    # -- adapter interface -----------------------------------------------------------------------
    def groups(self) -> list[NeuronGroup]:
        out: list[NeuronGroup] = []
        for module in ("encoder", "decoder"):
            for depth, block in enumerate(self._stack(module).block):
                attns = [("self_attn", block.layer[0].SelfAttention)]
                if module == "decoder":
                    attns.append(("cross_attn", block.layer[1].EncDecAttention))
                for layer_type, attn in attns:
                    for kind, lin in (("qk", attn.q), ("vo", attn.v)):
                        size = 0 if is_zero_width(lin) else lin.out_features
                        out.append(
                            NeuronGroup(f"{module}.{depth}.{layer_type}.{kind}", module, layer_type, kind,
                                        depth, size, attn.n_heads)
                        )
                ffn = block.layer[-1].DenseReluDense
                out.append(NeuronGroup(f"{module}.{depth}.ffn", module, "ffn", "ffn", depth, ffn.wo.in_features))
        return out

    def parts(self, group: NeuronGroup) -> GroupParts:
        if group.role == "ffn":
            ffn = self._ffn(group)
            producers = (ffn.wi_0, ffn.wi_1) if hasattr(ffn, "wi_0") else (ffn.wi,)
            return GroupParts(producers, (ffn.wo,))
        attn = self._attention(group)
        if group.role == "qk":
            return GroupParts((attn.q, attn.k), ())
        return GroupParts((attn.v,), (attn.o,))

    def set_head_width(self, group: NeuronGroup, head_width: int) -> None:
        attn = self._attention(group)
        attn.key_value_proj_dim = head_width
        attn.inner_dim = attn.n_heads * head_width

    def write_widths(self, config: Any, widths: dict[str, int]) -> None:
        groups = self.group_by_name()
        ffn = {w for n, w in widths.items() if groups[n].role == "ffn"}
        attn = {w // groups[n].n_heads for n, w in widths.items() if groups[n].role != "ffn"}
        if len(ffn) == 1 and min(ffn) > 0:
            config.d_ff = min(ffn)
        if len(attn) == 1 and min(attn) > 0:
            config.d_kv = min(attn)

    def remote_code(self) -> dict[str, Any] | None:
        """Every block's stored per-head widths (``d_kv``: a pruned-away attention keeps one zero unit per head) and
        FFN units, read by ``portable/modeling_taskprune_t5.py`` (T5 and mT5; umT5 stays load_pruned-only)."""
        stock = self.model.config.model_type
        if stock not in REMOTE_NAMES:
            return None
        layers: dict[str, list[dict[str, int]]] = {}
        for module in ("encoder", "decoder"):
            layers[module] = []
            for block in self._stack(module).block:
                widths = {"self_attn": block.layer[0].SelfAttention.key_value_proj_dim,
                          "ffn": block.layer[-1].DenseReluDense.wo.in_features}
                if module == "decoder":
                    widths["cross_attn"] = block.layer[1].EncDecAttention.key_value_proj_dim
                layers[module].append(widths)
        name = REMOTE_NAMES[stock]
        return {"file": "modeling_taskprune_t5.py",
                "auto_map": {"AutoModelForSeq2SeqLM": f"Taskprune{name}ForConditionalGeneration"},
                "config": {"taskprune_layers": layers}}

    def decoder_start_token_id(self) -> int:
        start = self.model.config.decoder_start_token_id
        return int(start if start is not None else self.model.config.pad_token_id)
