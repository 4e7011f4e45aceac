"""Chat templates of decoder-only tokenizers: whether a prompt is a chat turn, and which token ends an answer.

The template lives on the tokenizer, as in transformers, so a pruned checkpoint saved with its tokenizer keeps the
choice; :mod:`.kinds` builds the causal prompts and label continuations from these.
"""

from __future__ import annotations

from typing import Any

from ..data import end_token_id
from ..errors import TaskpruneError


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id
    return int(pad if pad is not None else end_token_id(tokenizer))


def use_chat_template(tokenizer: Any, mode: str) -> None:
    """``--chat-template``: ``auto`` keeps the tokenizer as it is, ``off`` drops its chat template (prompts become
    plain text ending in "Answer:"), ``on`` refuses a tokenizer that has none. The template lives on the tokenizer,
    as in transformers, so a pruned checkpoint saved with this tokenizer keeps the choice."""
    if mode == "off":
        tokenizer.chat_template = None
    elif mode == "on" and not has_chat_template(tokenizer):
        raise TaskpruneError("--chat-template on: this tokenizer has no chat template (use auto or off)")
    elif mode not in ("auto", "on", "off"):
        raise TaskpruneError(f"chat template mode {mode!r} is not one of auto, on, off")


def end_of_turn_id(tokenizer: Any) -> int:
    """The token that ends an assistant turn in the chat template (``<|im_end|>``, ``<|eot_id|>``...), else EOS."""
    if has_chat_template(tokenizer):
        marker = "\u2063taskprune\u2063"
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "x"}, {"role": "assistant", "content": marker}], tokenize=False)
        after = text.split(marker, 1)[-1]
        ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
        if ids and ids[0] in set(tokenizer.all_special_ids):
            return int(ids[0])
    return end_token_id(tokenizer)
