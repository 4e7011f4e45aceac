"""Tiny random-weight models and a word-level tokenizer for unit tests (no downloads, no ../shared)."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    BertConfig,
    EncoderDecoderConfig,
    EncoderDecoderModel,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

WORDS = (
    "negative positive not_entailment entailment neutral contradiction good bad movie film great awful "
    "sst2 sentence : rte sentence1 sentence2 the a is was and of to it this that very"
).split()


def tiny_tokenizer(bert_style: bool = False) -> PreTrainedTokenizerFast:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] if bert_style else ["<pad>", "</s>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=specials[1] if bert_style else "<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if bert_style:
        from tokenizers import processors

        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
        )
    from tokenizers import processors

    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def tiny_t5(gated: bool = False, seed: int = 0, layers: int = 2) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=len(WORDS) + 3,
        d_model=32,
        d_kv=8,
        d_ff=48,
        num_layers=layers,
        num_decoder_layers=layers,
        num_heads=4,
        relative_attention_num_buckets=8,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu" if gated else "relu",
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
        tie_word_embeddings=not gated,
    )
    model = T5ForConditionalGeneration(config).eval()
    return model


def tiny_bert2bert(seed: int = 0, layers: int = 2) -> EncoderDecoderModel:
    torch.manual_seed(seed)
    kw = dict(
        vocab_size=len(WORDS) + 4,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_hidden_layers=layers,
    )
    enc = BertConfig(**kw)
    dec = BertConfig(**kw, is_decoder=True, add_cross_attention=True)
    config = EncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    config.decoder_start_token_id = 2  # [CLS]
    config.pad_token_id = 0
    config.eos_token_id = 3
    model = EncoderDecoderModel(config=config).eval()
    return model


# -- decoder-only (Llama layout) --------------------------------------------------------------------------
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"
)


def tiny_causal_tokenizer(chat: bool = True) -> PreTrainedTokenizerFast:
    """Word-level tokenizer with the special tokens of a chat LM; ``chat`` gives it a (ChatML-like) template."""
    specials = ["<pad>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"]
    words = WORDS + ["user", "assistant", "Answer:", "review", "?", "or", "with", "one", "word", "Review:"]
    vocab = {tok: i for i, tok in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    out = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                  additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    if chat:
        out.chat_template = CHAT_TEMPLATE
    return out


CAUSAL_VOCAB = len(WORDS) + 15


def tiny_causal(model_type: str = "llama", seed: int = 0, layers: int = 2, heads: int = 4, kv_heads: int = 2,  # noqa: ANN201
                hidden: int = 32):
    """A tiny random LM of the Llama layout: GQA (``heads`` query heads over ``kv_heads`` KV heads), RoPE, SwiGLU.

    ``model_type``: llama, mistral, qwen2 (q/k/v biases) or qwen3 (per-head q/k norms, head_dim != hidden/heads).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    kw = dict(vocab_size=CAUSAL_VOCAB, hidden_size=hidden, intermediate_size=48, num_hidden_layers=layers,
              num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=128,
              pad_token_id=0, eos_token_id=1, bos_token_id=None, tie_word_embeddings=model_type != "mistral")
    if model_type == "qwen3":
        kw["head_dim"] = 12  # not hidden / heads: the config must say it
    config = AutoConfig.for_model(model_type, **kw)
    model = AutoModelForCausalLM.from_config(config).eval()
    if model_type == "qwen2":  # make its attention biases matter
        with torch.no_grad():
            for layer in model.model.layers:
                for lin in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    lin.bias.normal_(0, 0.5)
    return model


class Interrupted(Exception):
    """Raised by :func:`interrupt_at` to stop a fine-tuning run as a crash would."""


def interrupt_at(step: int):  # noqa: ANN201
    """A fine-tuning log callback that interrupts the run when it logs training step ``step``."""

    def log(row: dict) -> None:
        if row.get("event") == "train" and row["step"] == step:
            raise Interrupted

    return log
