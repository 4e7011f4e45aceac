"""Hugging Face folders and Hub ids: which Auto class a config needs."""

from __future__ import annotations

from typing import Any


def auto_model_class(config: Any) -> Any:  # noqa: ANN401
    """AutoModelForSeq2SeqLM for encoder-decoders, AutoModelForCausalLM for decoder-only LMs."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    return AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
