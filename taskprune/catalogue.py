"""Every method, with every file that registers one imported: the one place the library, the CLI's ``--method``
choices and help, and the sweep ask what a method is (records: :mod:`taskprune.method`)."""

from __future__ import annotations

from . import scoring  # noqa: F401  (registers the scorers and their recipes)
from .errors import TaskpruneError
from .method import Method, recipe, registered
from .pruning import lowrank  # noqa: F401  (registers svd)

#: taskprune's own recipe, the default of ``compress``: the paper's attribution scores, then the allocation and the
#: repair that measured best together (reports/beyond; global-sqrt since 2026-12-04, chosen on a validation split
#: of SmolLM2, where global-raw collapsed at 70 %), scoring the calibration inputs too with the dense model's own
#: labels (2026-12-04, chosen on the same split by a rule fixed before seeds 3-5 ran: +4.43 points pooled over
#: 0.3/0.5/0.7, 6 seeds, Holm p = 0.004; no difference on minilm-glue6);
#: ``--method attribution`` is the paper's method alone
DEFAULT_METHOD = "taskprune"
recipe(DEFAULT_METHOD, "attribution", "global-sqrt", "ls", order=0, self_label=True,
       help="taskprune (attribution + the best measured allocation and repair, see --allocate/--repair, scoring "
            "self-labelled calibration inputs too, see --self-label)")


def methods() -> dict[str, Method]:
    """Every method by name."""
    return registered()


def get_method(name: str) -> Method:
    """The record of ``name``; an unknown name is one line listing the known ones."""
    found = registered().get(name)
    if found is None:
        raise TaskpruneError(f"unknown method {name!r}; choose from {', '.join(list_methods())}")
    return found


def list_methods(command: str = "compress") -> list[str]:
    """The methods ``command`` accepts, sorted: ``compress`` (and the sweep) every method, ``score`` the scorers
    that need no target rate (SMP learns its masks for one: only compress, which has the rates, runs it)."""
    return sorted(m.name for m in registered().values()
                  if command != "score" or (m.scores_alone and not m.rate_targeted))


def method_help(command: str = "compress") -> str:
    """``--method``'s help for ``command``, from the records' help phrases in their catalogue order."""
    default = DEFAULT_METHOD if command != "score" else "attribution"
    chosen = sorted((m for m in registered().values() if m.name in list_methods(command)), key=lambda m: m.order)
    return ", ".join(m.help + (" (the default)" if m.name == default else "") for m in chosen)
