"""BERT-family encoder-decoders (bert2bert ``EncoderDecoderModel``, e.g. MiniLM) with pruned widths, as taskprune
prunes them.

Saved next to the weights of a taskprune checkpoint whose attention widths or per-layer FFN widths differ from
the stock config (BERT derives its head size from ``hidden_size / num_attention_heads``, so a smaller head
has no config field), and named by its config's ``auto_map``, so that

    AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True)

loads it with only torch and transformers installed (the config stays the stock one). Nothing of transformers' modeling code is copied: the class
below IS the stock ``EncoderDecoderModel``; after building it, each attention's query/key/value and output
projections and each layer's feed-forward projections are replaced by ``nn.Linear`` layers of the recorded
widths (``config.taskprune_layers``), and the attention's ``attention_head_size``/``all_head_size`` set to
match. Its ``scaling`` is left as built: scores are still scaled by the ORIGINAL head size, exactly as the
pruned model that taskprune measured computes them.

The encoder and decoder word embeddings are stored as two equal tensors (transformers cannot save a tie between
them); the model is correct either way. This file is the same in every checkpoint of this family (taskprune
records its SHA-256 in the config). Tested with transformers 5.24.0 and torch 2.13.0.
"""

from __future__ import annotations

from torch import nn
from transformers import EncoderDecoderModel


def _linear(like: nn.Linear, in_features: int, out_features: int) -> nn.Linear:
    return nn.Linear(in_features, out_features, bias=like.bias is not None)


def _resize_attention(attention: nn.Module, head_size: int) -> None:
    """``attention`` (a BertAttention) with ``head_size`` dims per head; the heads and the scaling stay."""
    inner = attention.self.num_attention_heads * head_size
    for name in ("query", "key", "value"):
        old = getattr(attention.self, name)
        setattr(attention.self, name, _linear(old, old.in_features, inner))
    attention.self.attention_head_size, attention.self.all_head_size = head_size, inner
    old = attention.output.dense
    attention.output.dense = _linear(old, inner, old.out_features)


def _resize_ffn(layer: nn.Module, units: int) -> None:
    old_in, old_out = layer.intermediate.dense, layer.output.dense
    layer.intermediate.dense = _linear(old_in, old_in.in_features, units)
    layer.output.dense = _linear(old_out, units, old_out.out_features)


class TaskpruneEncoderDecoderModel(EncoderDecoderModel):
    def __init__(self, config=None, encoder=None, decoder=None) -> None:  # noqa: ANN001
        super().__init__(config=config, encoder=encoder, decoder=decoder)
        layers = getattr(self.config, "taskprune_layers", None)
        if not isinstance(layers, dict):
            raise ValueError("config.taskprune_layers must map encoder/decoder to the widths of every layer")
        for name in ("encoder", "decoder"):
            stack = getattr(self, name).base_model.encoder.layer
            if len(layers[name]) != len(stack):
                raise ValueError(f"config.taskprune_layers[{name!r}] must list all {len(stack)} layers")
            for layer, widths in zip(stack, layers[name]):
                _resize_attention(layer.attention, int(widths["self_attn"]))
                if "cross_attn" in widths:
                    _resize_attention(layer.crossattention, int(widths["cross_attn"]))
                _resize_ffn(layer, int(widths["ffn"]))
