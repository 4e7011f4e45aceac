"""Which options apply to which models: one table, consulted by the CLI (on the model's skeleton, before any weight
loads) and by the library where the same option arrives as a Python value.

A flag a model cannot honour would otherwise run and change nothing, or change something else than its name says
(``--head-granularity kv`` on BERT, whose attention has no key/value groups; ``--repair-centred`` on BERT, whose
consumers always carry a bias and are solved centred anyway; ``--chat-template on`` on a seq2seq model, whose
input is never a chat). Each row names the flag as typed, when the arguments set it, which models it applies to
(a predicate on the model, which may be a meta-device skeleton: only structure is read), and those models in words.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from .errors import TaskpruneError
from .lm import model_kind
from .models import REPAIRABLE_ROLES, get_adapter


def _decoder_only(model: nn.Module) -> bool:
    return not model_kind(model).has_encoder


def _kv_groups(model: nn.Module) -> bool:
    return any(g.role == "heads" for g in get_adapter(model).groups())


def _biasless_consumers(model: nn.Module) -> bool:
    adapter = get_adapter(model)
    return any(adapter.parts(g).consumers[0].bias is None for g in adapter.groups() if g.role in REPAIRABLE_ROLES)


@dataclass(frozen=True)
class Applies:
    flag: str
    given: Callable[[argparse.Namespace], bool]
    fits: Callable[[nn.Module], bool]
    models: str
    advice: str


_CHAT = "decoder-only LMs (a seq2seq model reads its task template's text, never a chat)"
TABLE: tuple[Applies, ...] = (
    Applies("--head-granularity kv", lambda a: getattr(a, "head_granularity", "query") == "kv", _kv_groups,
            "decoder-only LMs whose attention has key/value groups (Llama, Mistral, Qwen)", "leave it at query"),
    Applies("--repair-centred", lambda a: bool(getattr(a, "repair_centred", None)), _biasless_consumers,
            "models whose FFN and attention output projections have no bias (Llama, Mistral, Qwen, T5)",
            "its projections carry one and repair always solves them centred; leave the flag out"),
    Applies("--chat-template on", lambda a: getattr(a, "chat_template", "auto") == "on", _decoder_only, _CHAT,
            "leave it at auto"),
    Applies("--chat-template off", lambda a: getattr(a, "chat_template", "auto") == "off", _decoder_only, _CHAT,
            "leave it at auto"),
)
BY_FLAG = {row.flag: row for row in TABLE}


def _refusal(row: Applies, model: nn.Module) -> TaskpruneError:
    kind = "seq2seq" if model_kind(model).has_encoder else "decoder-only"
    return TaskpruneError(f"{row.flag} applies to {row.models}, and this is a {kind} {get_adapter(model).family} "
                          f"model: {row.advice}")


def check_args(args: argparse.Namespace, model: nn.Module) -> None:
    """Refuse the first option ``args`` set that ``model`` (a skeleton is enough) cannot honour."""
    for row in TABLE:
        if row.given(args) and not row.fits(model):
            raise _refusal(row, model)


def check_applies(flag: str, model: nn.Module) -> None:
    """The library's form: ``flag`` (a row of the table) is in use; refuse it where ``model`` cannot honour it."""
    row = BY_FLAG[flag]
    if not row.fits(model):
        raise _refusal(row, model)
