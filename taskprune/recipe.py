"""A recipe: which method, allocation, repair and calibration a compression runs, resolved and checked ONCE.

The flags (``--method``, ``--allocate``, ``--repair``, ``--repair-alpha``, ``--repair-order``, ``--calibration``,
``--search-iterations``) and the library's keyword arguments both end here, so a combination that cannot be
honoured is refused before any model is loaded or scored, and nothing the user asked for is dropped silently.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any

from .catalogue import DEFAULT_METHOD, get_method, list_methods
from .errors import TaskpruneError
from .pruning.allocate import ALLOCATIONS, MAX_RATE
from .pruning.rates import RateSpec
from .pruning.repair import RepairConfig
from .tasks import Example

#: calibration inputs for repair and the search allocation (scoring examples + unlabelled fit examples)
DEFAULT_CALIBRATION = 128
DEFAULT_SEARCH_ITERATIONS = 40
#: calibration inputs the search allocation judges each candidate on (one masked forward over them per candidate)
SEARCH_EXAMPLES = 64


def resolve_method(method: str, allocate: str | None, repair: str | None) -> tuple[str, str, str]:
    """(scorer, allocation, repair mode) for ``method``; explicit ``allocate``/``repair`` override its own."""
    m = get_method(method) if method in list_methods() else None
    if m is None or not m.selects_units:
        return method, allocate or "uniform", repair or "none"
    return m.scorer or method, allocate or m.allocate, repair or m.repair


def check_recipe(method: str, rates: RateSpec, allocate: str | None = None, repair: str | None = None) -> None:
    """Refuse a method / allocation / repair / rates combination that cannot be honoured, before any model is
    loaded or scored: minutes of work should not end in an error the flags alone already showed, and nothing
    the user asked for may be dropped silently (per-part rates under an allocation that sets every group's rate)."""
    m = get_method(method)
    if not m.selects_units:
        if allocate not in (None, "uniform") or repair not in (None, "none"):
            raise TaskpruneError(f"{method} does not select units: it takes no allocation or repair (drop --allocate "
                                 "and --repair)")
        if method == "svd" and rates.multiple_of != 1:
            raise TaskpruneError("svd's ranks follow the paper's parameter budget and are not rounded: leave "
                                 "--multiple-of at 1 for svd")
        return
    _, allocation, repair_mode = resolve_method(method, allocate, repair)
    if allocation not in ALLOCATIONS:
        raise TaskpruneError(f"allocation {allocation!r} is not one of {', '.join(ALLOCATIONS)}")
    RepairConfig(mode=repair_mode)  # refuses an unknown mode
    if allocation != "uniform" and rates.rate > MAX_RATE:
        raise TaskpruneError(f"{method}'s {allocation} allocation keeps at least {1 - MAX_RATE:.0%} of every group, so "
                             f"it cannot remove {rates.rate:g} of the parameters: pass --allocate uniform for a rate "
                             f"above {MAX_RATE}")
    overrides = [flag for flag, given in (("--module-rate", rates.module_rates), ("--layer-type-rate",
                 rates.layer_type_rates), ("--depth-rate", rates.depth_rates)) if given]
    if allocation != "uniform" and overrides:
        raise TaskpruneError(f"{' and '.join(overrides)} {'set' if len(overrides) > 1 else 'sets'} rates per part, but "
                             f"{method}'s {allocation} allocation sets every group's rate from the budget: pass "
                             "--allocate uniform with per-part rates (--modules and --layer-types narrow the scope "
                             "with any allocation)")


def check_steps(steps: int, method: str) -> None:
    """Iterative pruning re-scores a pruned model, which only a method that scores units can do."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise TaskpruneError(f"steps must be a positive integer (rounds of pruning), got {steps!r}")
    if steps > 1 and not get_method(method).selects_units:
        raise TaskpruneError(f"{method} does not score units, so it cannot prune in rounds: leave --steps at 1")


def check_trials(method: str, trials: int, evaluated: bool, allocate: str | None = None,
                 repair: str | None = None) -> None:
    """Refuse a ``--trials`` run that cannot be done, before any model is loaded (see
    :func:`taskprune.api.compress_trials`)."""
    random_methods = [name for name in list_methods() if get_method(name).random and not get_method(name).is_recipe]
    if method not in random_methods:
        raise TaskpruneError(f"--trials is for the random methods ({', '.join(random_methods)}); {method} is deterministic")
    if trials < 1:
        raise TaskpruneError(f"--trials must be at least 1, got {trials}")
    if not evaluated:
        raise TaskpruneError("trials are compared by evaluation: no eval examples were given")
    if allocate not in (None, "uniform") or repair not in (None, "none"):
        raise TaskpruneError("trials are evaluated as uniform, unrepaired masks of the model: they take no --allocate "
                             "or --repair")


def self_labelled(model: Any, tokenizer: Any, task: Any, calibration: list[Example], labelled: list[Example],
                  batch_size: int = 32, max_length: int = 256) -> list[Example]:
    """The ``calibration`` inputs that are not ``labelled`` examples, each labelled by the dense model's own
    prediction (rank classification, as evaluation): more examples to score at no labelling cost. The labelled few
    say which task; on the rest the scores follow what the model does, which is what pruning should keep."""
    from .evaluate import evaluate

    taken = {(e.text, e.prompt) for e in labelled}
    rest = [e for e in calibration if (e.text, e.prompt) not in taken]
    if not rest:
        return []
    predicted = evaluate(model, tokenizer, task, rest, batch_size=batch_size, max_length=max_length).predictions
    return [replace(e, label=int(p)) for e, p in zip(rest, predicted)]


def calibration_examples(pool: list[Example], scoring: list[Example], n: int, seed: int = 0) -> list[Example]:
    """``n`` calibration inputs: the scoring examples first, then others drawn (seeded) from ``pool`` (labels are
    not used, so any task input will do: repair needs inputs, not answers)."""
    chosen = list(scoring[:n])
    taken = {(e.text, e.prompt) for e in chosen}
    rest = [e for e in pool if (e.text, e.prompt) not in taken]
    return chosen + random.Random(seed).sample(rest, min(len(rest), n - len(chosen)))


@dataclass(frozen=True)
class Recipe:
    """What the recipe flags say; ``None`` = not given (the method's own, and a tuning flag the recipe would not use
    is refused rather than ignored)."""

    method: str = DEFAULT_METHOD
    allocate: str | None = None
    repair: str | None = None
    repair_alpha: float | None = None
    repair_order: str | None = None  # "one-shot" or "sequential"
    calibration: int | None = None
    search_iterations: int | None = None
    repair_centred: bool | None = None
    steps: int | None = None  # rounds of iterative pruning (None: one)
    self_label: bool | None = None  # also score the calibration inputs, labelled by the dense model (None: the method's)

    @property
    def allocation_and_repair(self) -> tuple[str, str]:
        """The allocation and repair mode this resolves to (a method's own where not given; none for transforms)."""
        if not get_method(self.method).selects_units:
            return "uniform", "none"
        _, allocation, repair = resolve_method(self.method, self.allocate, self.repair)
        return allocation, repair

    @property
    def uses_calibration(self) -> bool:
        allocation, repair = self.allocation_and_repair
        return repair != "none" or allocation == "search" or self.self_labels

    @property
    def self_labels(self) -> bool:
        """Whether compress also scores self-labelled calibration inputs (the method's own where not given)."""
        m = get_method(self.method)
        return m.selects_units and (m.self_label if self.self_label is None else self.self_label)

    def check(self, rates: RateSpec) -> None:
        """Every refusal the flags alone justify: the combination, then the tuning flags it would not use."""
        check_recipe(self.method, rates, self.allocate, self.repair)
        check_steps(self.steps or 1, self.method)
        self.check_tuning()

    def check_tuning(self) -> None:
        """Refuse a tuning flag the recipe would ignore: whoever set it expects it to change the result."""
        allocation, repair = self.allocation_and_repair
        unused = [flag for flag, value, used in (
            ("--repair-alpha", self.repair_alpha, repair in ("ls", "scale")),
            ("--repair-order", self.repair_order, repair != "none"),
            ("--calibration", self.calibration, self.uses_calibration),
            ("--search-iterations", self.search_iterations, allocation == "search"),
            ("--repair-centred", self.repair_centred, repair in ("ls", "scale")),
            ("--self-label", self.self_label, get_method(self.method).selects_units),
        ) if value is not None and not used]
        if unused:
            raise TaskpruneError(
                f"{' and '.join(unused)} would change nothing: --method {self.method} runs allocation {allocation} "
                f"with repair {repair} (--repair-alpha needs --repair ls or scale, --repair-order any repair, "
                "--calibration a repair, --allocate search or --self-label, --search-iterations --allocate search, "
                "--repair-centred --repair ls or scale, --self-label a method that selects units)")

    def check_placement(self) -> None:
        """Refuse, before anything loads, what cannot run on a model placed by a device map."""
        m = get_method(self.method)
        if m.whole_model:
            raise TaskpruneError(f"--method {self.method} needs the whole model in memory: it does not run with "
                                 "--device-map (leave --device-map out)")
        repair = self.allocation_and_repair[1]
        if m.selects_units and repair != "none":
            raise TaskpruneError(f"repair {repair} (the default of --method {self.method}) works on a copy of the whole "
                                 "model: with --device-map add --repair none")

    def compress_kwargs(self, pool: list[Example] | None, fit: list[Example], seed: int) -> dict[str, Any]:
        """:func:`taskprune.api.compress` keyword arguments; ``pool`` (the task's fit split) supplies calibration
        inputs beyond the scoring examples where the recipe uses them."""
        if not get_method(self.method).selects_units:
            return {"allocate": self.allocate, "repair": self.repair}
        allocation, repair = self.allocation_and_repair
        alpha = RepairConfig.alpha if self.repair_alpha is None else self.repair_alpha
        extra: dict[str, Any] = {"allocate": allocation, "steps": self.steps or 1, "self_label": self.self_labels,
                                 "search_iterations": self.search_iterations or DEFAULT_SEARCH_ITERATIONS,
                                 "repair": RepairConfig(repair, alpha, self.repair_order == "sequential",
                                                        centred=bool(self.repair_centred))}
        if self.uses_calibration:
            extra["calibration"] = calibration_examples(pool or [], fit, self.calibration or DEFAULT_CALIBRATION, seed)
        return extra
