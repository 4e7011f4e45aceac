"""BERT-family encoder-decoder adapter: ``EncoderDecoderModel`` built from BERT / MiniLM / RoBERTa stacks.

Module names used here and nowhere else: ``<stack>.encoder.layer[i].attention.self.{query,key,value}``,
``.attention.output.dense``, ``.crossattention`` (decoder), ``.intermediate.dense`` and ``.output.dense``.
BERT derives its head size from ``hidden_size / num_attention_heads`` and scales scores by the ORIGINAL
head size, kept in the module's ``scaling`` attribute: slicing changes ``attention_head_size`` but never
``scaling``, so a sliced model computes exactly what the masked one does. Attention widths therefore have
no stock config field; such checkpoints load through :func:`taskprune.load_pruned`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .base import Adapter, GroupParts, NeuronGroup, register_adapter
from .slicing import is_zero_width


def _layers(stack: nn.Module) -> nn.ModuleList:
    return stack.base_model.encoder.layer


@register_adapter
class Bert2BertAdapter(Adapter):
    family = "bert2bert"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        if getattr(model.config, "model_type", None) != "encoder-decoder":
            return False
        try:
            layers = [_layers(model.encoder)[0], _layers(model.decoder)[0]]
        except (AttributeError, IndexError):
            return False
        return all(hasattr(x, "attention") and hasattr(x, "intermediate") for x in layers) and hasattr(
            layers[1], "crossattention"
        )

    def _layer(self, group: NeuronGroup) -> nn.Module:
        return _layers(getattr(self.model, group.module))[group.depth]

    def _attention(self, group: NeuronGroup) -> nn.Module:
        layer = self._layer(group)
        return layer.attention if group.layer_type == "self_attn" else layer.crossattention

    def groups(self) -> list[NeuronGroup]:
        out: list[NeuronGroup] = []
        for module in ("encoder", "decoder"):
            for depth, layer in enumerate(_layers(getattr(self.model, module))):
                attns = [("self_attn", layer.attention)]
                if module == "decoder":
                    attns.append(("cross_attn", layer.crossattention))
                for layer_type, attn in attns:
                    heads = attn.self.num_attention_heads
                    for kind, lin in (("qk", attn.self.query), ("vo", attn.self.value)):
                        size = 0 if is_zero_width(lin) else lin.out_features
                        out.append(
                            NeuronGroup(f"{module}.{depth}.{layer_type}.{kind}", module, layer_type, kind,
                                        depth, size, heads)
                        )
                out.append(
                    NeuronGroup(f"{module}.{depth}.ffn", module, "ffn", "ffn", depth,
                                layer.intermediate.dense.out_features)
                )
        return out

    def parts(self, group: NeuronGroup) -> GroupParts:
        if group.kind == "ffn":
            layer = self._layer(group)
            return GroupParts((layer.intermediate.dense,), (layer.output.dense,))
        attn = self._attention(group)
        if group.kind == "qk":
            return GroupParts((attn.self.query, attn.self.key), ())
        return GroupParts((attn.self.value,), (attn.output.dense,))

    def set_head_width(self, group: NeuronGroup, head_width: int) -> None:
        inner = self._attention(group).self
        inner.attention_head_size = head_width
        inner.all_head_size = inner.num_attention_heads * head_width
        # inner.scaling is deliberately left at the original head size's value.

    def write_widths(self, config: Any, widths: dict[str, int]) -> None:
        groups = self.group_by_name()
        for module in ("encoder", "decoder"):
            ffn = {w for n, w in widths.items() if groups[n].kind == "ffn" and groups[n].module == module}
            if len(ffn) == 1 and min(ffn) > 0:
                getattr(config, module).intermediate_size = min(ffn)

    def decoder_start_token_id(self) -> int:
        cfg = self.model.config
        start = cfg.decoder_start_token_id
        if start is None:
            start = getattr(cfg.decoder, "bos_token_id", None)
        if start is None:
            from ..errors import TaskpruneError

            raise TaskpruneError(
                "the encoder-decoder model has no decoder_start_token_id in its config; set it (usually the "
                "tokenizer's [CLS] id) before pruning"
            )
        return int(start)
