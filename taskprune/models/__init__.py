"""Model adapters, one file per family, found through a registry (see :mod:`.base`)."""

from __future__ import annotations

from torch import nn

from ..errors import TaskpruneError
from . import bert2bert, llama, t5  # noqa: F401  (register the built-in adapters)
from .base import (
    GROUP_ROLES,
    LAYER_TYPES,
    MODULES,
    REPAIRABLE_ROLES,
    Adapter,
    GroupParts,
    NeuronGroup,
    Site,
    registered_adapters,
)


def get_adapter(model: nn.Module) -> Adapter:
    """The adapter for ``model``; a clear error naming the supported families otherwise."""
    # every adapter matches on the config's model_type: a module without a config is no architecture we know
    for cls in registered_adapters().values() if hasattr(model, "config") else ():
        if cls.matches(model):
            return cls(model)
    kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    names = ", ".join(sorted(registered_adapters()))
    raise TaskpruneError(
        f"unsupported architecture {kind!r} ({type(model).__name__}); supported families: {names} "
        "(T5/mT5/Flan-T5 ForConditionalGeneration, BERT-family EncoderDecoderModel, and decoder-only LMs of the "
        "Llama layout: Llama, Mistral, Qwen2, Qwen3, SmolLM2 ForCausalLM; fused-QKV layouts such as GPT-2 and "
        "Phi-3 are not supported)"
    )


__all__ = ["Adapter", "GroupParts", "NeuronGroup", "Site", "get_adapter", "MODULES", "LAYER_TYPES", "GROUP_ROLES",
           "REPAIRABLE_ROLES"]
