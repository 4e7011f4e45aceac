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
