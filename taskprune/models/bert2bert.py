"""BERT-family encoder-decoder adapter: ``EncoderDecoderModel`` built from BERT / MiniLM / RoBERTa stacks.

Module names used here and nowhere else: ``<stack>.encoder.layer[i].attention.self.{query,key,value}``,
``.attention.output.dense``, ``.crossattention`` (decoder), ``.intermediate.dense`` and ``.output.dense``.
BERT derives its head size from ``hidden_size / num_attention_heads`` and scales scores by the ORIGINAL
head size, kept in the module's ``scaling`` attribute: slicing changes ``attention_head_size`` but never
``scaling``, so a sliced model computes exactly what the masked one does. Attention widths therefore have
no stock config field; such checkpoints load through :func:`taskprune.load_pruned`.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from .base import Adapter, GroupParts, NeuronGroup, register_adapter
from .slicing import is_zero_width


# -- encoder/decoder embedding ties ---------------------------------------------------------------
# transformers 5.x cannot declare a tie between the encoder and the decoder of an EncoderDecoderModel, and
# save_pretrained refuses a shared tensor: a tied bert2bert is saved with the decoder embedding as a second,
# identical copy, and tie_embeddings() restores the single tensor after loading.
def _word_embeddings(model: nn.Module) -> tuple[nn.Embedding, nn.Embedding]:
    return model.encoder.get_input_embeddings(), model.decoder.get_input_embeddings()


def is_tied(model: nn.Module) -> bool:
    """True if the decoder's word embeddings are the encoder's tensor."""
    enc, dec = _word_embeddings(model)
    return enc.weight is dec.weight


TIE_MARK = "taskprune_tied_embeddings"


def _is_seq2seq_of_stacks(model: nn.Module) -> bool:
    return getattr(model.config, "model_type", None) == "encoder-decoder"


def tie_embeddings(model: nn.Module, force: bool = False) -> bool:
    """Make the decoder's word embeddings (and an LM head tied to them) the encoder's tensor.

    Without ``force`` this only re-ties what :func:`save_pruned` recorded as tied (config flag
    ``taskprune_tied_embeddings``) and whose two copies are still equal: merely equal embeddings, or an
    LM head that was not tied to the decoder embeddings, are left alone. Returns whether the model is tied.
    """
    if not _is_seq2seq_of_stacks(model):
        return False
    enc, dec = _word_embeddings(model)
    if enc.weight is dec.weight:
        return True
    if "meta" in (enc.weight.device.type, dec.weight.device.type):
        return False  # offloaded by a device map: two copies (the checkpoint holds both), accelerate places them
    if not force and not getattr(model.config, TIE_MARK, False):
        return False
    if enc.weight.shape != dec.weight.shape or (not force and not torch.equal(enc.weight, dec.weight)):
        return False
    out = model.decoder.get_output_embeddings()
    head_follows = out is not None and (out.weight is dec.weight or torch.equal(out.weight, dec.weight))
    dec.weight = enc.weight
    if head_follows:
        out.weight = enc.weight
    setattr(model.config, TIE_MARK, True)
    return True


def savable_copy(model: nn.Module, dtype: torch.dtype | None) -> nn.Module:
    """``model``, or a copy cast to ``dtype`` whose decoder embedding is a separate tensor, for save_pretrained.

    The copy's config records the tie (``taskprune_tied_embeddings``) so loading can restore it.
    """
    tied = _is_seq2seq_of_stacks(model) and is_tied(model)
    if _is_seq2seq_of_stacks(model) and not tied and getattr(model.config, TIE_MARK, False):
        setattr(model.config, TIE_MARK, False)  # untied since it was loaded: say so in what is saved
    if not tied and dtype is None:
        return model
    m = copy.deepcopy(model)
    if dtype is not None:
        m.to(dtype)
    if tied:
        enc, dec = _word_embeddings(m)
        out = m.decoder.get_output_embeddings()
        head_follows = out is not None and out.weight is dec.weight
        dec.weight = nn.Parameter(enc.weight.detach().clone())
        if head_follows:
            out.weight = dec.weight
        setattr(m.config, TIE_MARK, True)
    return m



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
        if group.role == "ffn":
            layer = self._layer(group)
            return GroupParts((layer.intermediate.dense,), (layer.output.dense,))
        attn = self._attention(group)
        if group.role == "qk":
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
            ffn = {w for n, w in widths.items() if groups[n].role == "ffn" and groups[n].module == module}
            if len(ffn) == 1 and min(ffn) > 0:
                getattr(config, module).intermediate_size = min(ffn)

    def after_load(self) -> None:
        tie_embeddings(self.model)

    def savable(self, dtype: torch.dtype | None) -> nn.Module:
        return savable_copy(self.model, dtype)

    def remote_code(self) -> dict[str, Any] | None:
        """Every layer's stored head widths (a pruned-away attention keeps one zero unit per head) and FFN units,
        read by ``portable/modeling_taskprune_bert2bert.py``."""
        layers: dict[str, list[dict[str, int]]] = {}
        for module in ("encoder", "decoder"):
            layers[module] = []
            for layer in _layers(getattr(self.model, module)):
                widths = {"self_attn": layer.attention.self.attention_head_size,
                          "ffn": layer.intermediate.dense.out_features}
                if module == "decoder":
                    widths["cross_attn"] = layer.crossattention.self.attention_head_size
                layers[module].append(widths)
        return {"file": "modeling_taskprune_bert2bert.py",
                "auto_map": {"AutoModelForSeq2SeqLM": "TaskpruneEncoderDecoderModel"},
                "config": {"taskprune_layers": layers}}

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
