"""What a method IS: one record per ``--method``, registered once by the file that implements it.

Three shapes of method share the record:

- a **scorer** (attribution, fisher, flap, ...): scores every unit; a plan then keeps the best at the rates
  (``scorer`` is its own name; registered with :func:`taskprune.scoring.base.register_scorer`);
- a **recipe** (taskprune, kwon, ...): a scorer's scores combined with an allocation and a repair
  (``scorer`` names another method; registered with :func:`recipe`);
- a **transform** (svd, smp-unstructured): changes the model some other way than by selecting units
  (``transform`` is set; no plan).

Everything the library, the CLI's ``--method`` help, the sweep and its checks need to know about a method is a
field here, so adding a method means one file that registers it (and its import in its package's ``__init__``).
The full catalogue, with every provider imported, is :mod:`taskprune.catalogue`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from .errors import TaskpruneError

#: How a scorer's work is shared by several processes (:func:`taskprune.scoring.base.run_scorer`):
#: ``sum``  — scores are sums over examples: each rank sums its batches, the partial sums are all-reduced;
#: ``same`` — the method reads no examples: every rank computes the whole (identical) result;
#: ``self`` — the method synchronises itself (SMP all-reduces its mask gradients every step, like DDP).
Combine = Literal["sum", "same", "self"]


@dataclass
class TransformRequest:
    """What a transform is given (the arguments of :func:`taskprune.api.compress`); ``scoring_job()`` builds the
    tokenised job a transform that reads examples needs (SMP's per-weight masks)."""

    model: Any
    tokenizer: Any
    task: Any
    examples: list[Any]
    rates: Any
    config: Any
    progress: Any
    scoring_job: Callable[[], Any]


@dataclass
class Transformed:
    """A transform's result: the new model, a note on what it is, and files written beside the checkpoint."""

    model: Any
    note: str | None = None
    extra_files: dict[str, Callable[[Path], Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Method:
    """One ``--method``.

    ``help`` is its phrase in ``--method``'s help. ``scorer``: the registered scorer it runs (None for a
    transform); ``allocate`` / ``repair``: its default allocation and repair (:mod:`taskprune.pruning.allocate`,
    :mod:`taskprune.pruning.repair`); ``self_label``: whether ``compress`` also scores the calibration inputs,
    labelled by the dense model (:func:`taskprune.recipe.self_labelled`). ``needs_examples``: it reads the task's examples (random scores and svd do
    not). ``combine``: how ranks share its scoring. ``group_local``: a group's score does not depend on which
    other groups are scored, so ``compress`` scores only the groups its rates prune. ``random``: its result is a
    draw of ``--trial-seed`` (``--trials`` applies). ``whole_model``: it needs the whole model in memory (not
    with ``--device-map``). ``rate_targeted``: its scores depend on the target rates (SMP learns masks for them).
    ``scores_alone``: ``taskprune score`` runs it (a recipe or a transform is not a score). ``order``: its place
    in the help.
    """

    name: str
    help: str
    scorer: str | None = None
    allocate: str = "uniform"
    repair: str = "none"
    self_label: bool = False
    transform: Callable[[TransformRequest], Transformed] | None = None
    needs_examples: bool = True
    combine: Combine = "sum"
    group_local: bool = False
    random: bool = False
    whole_model: bool = False
    rate_targeted: bool = False
    scores_alone: bool = True
    order: int = 100

    @property
    def selects_units(self) -> bool:
        """True for scorers and recipes (a plan of kept units), False for transforms."""
        return self.transform is None

    @property
    def is_recipe(self) -> bool:
        """True when the method adds an allocation or a repair to its scores."""
        return self.selects_units and (self.allocate != "uniform" or self.repair != "none")


_METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add ``method`` to the catalogue; a name registered twice is a programming error, said at import."""
    if method.name in _METHODS:
        raise TaskpruneError(f"method {method.name!r} is registered twice")
    _METHODS[method.name] = method
    return method


def recipe(name: str, scorer: str, allocate: str, repair: str, help: str, order: int = 100,  # noqa: A002
           self_label: bool = False) -> Method:
    """Register a recipe: the scorer method ``scorer`` (registered before) with an allocation, a repair and whether
    it also scores self-labelled calibration inputs; it inherits what the scorer is (examples, ranks, randomness)
    and is run by ``compress`` only."""
    base = _METHODS[scorer]
    return register_method(replace(base, name=name, help=help, allocate=allocate, repair=repair,
                                   self_label=self_label, scores_alone=False, order=order))


def registered() -> dict[str, Method]:
    """The methods registered so far (the complete catalogue is :func:`taskprune.catalogue.methods`)."""
    return dict(_METHODS)
