"""Checks of single numeric settings, shared by the CLI's flags and the library's config objects.

One home for "a positive integer", "a finite number", "a port": the CLI wraps these as argparse ``type=``
functions (so ``--batch-size 0`` fails while the arguments are parsed, naming the flag), and the config
dataclasses (fine-tuning, serving, sweeps) call the same functions, so a library user gets the same refusal.
Each takes the raw value (a string from the command line, or a number from Python/YAML) and the name to show.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

from .errors import TaskpruneError


def _fail(what: str, expected: str, value: object) -> TaskpruneError:
    return TaskpruneError(f"{what + ' ' if what else ''}must be {expected}, got {value!r}")


def _as_int(value: object, what: str, expected: str) -> int:
    if isinstance(value, bool):
        raise _fail(what, expected, value)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            raise _fail(what, expected, value) from None
    raise _fail(what, expected, value)


def _as_float(value: object, what: str, expected: str) -> float:
    if isinstance(value, bool):
        raise _fail(what, expected, value)
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise _fail(what, expected, value) from None
    else:
        raise _fail(what, expected, value)
    if not math.isfinite(number):  # nan and inf are never a setting: nan even compares false to every bound
        raise _fail(what, expected, value)
    return number


def positive_int(value: object, what: str = "") -> int:
    """An integer >= 1 (counts, sizes, steps)."""
    n = _as_int(value, what, "a positive integer")
    if n < 1:
        raise _fail(what, "a positive integer", value)
    return n


def nonneg_int(value: object, what: str = "") -> int:
    """An integer >= 0 (seeds; intervals where 0 means "never")."""
    n = _as_int(value, what, "a non-negative integer")
    if n < 0:
        raise _fail(what, "a non-negative integer", value)
    return n


def finite_float(value: object, what: str = "") -> float:
    """Any finite number."""
    return _as_float(value, what, "a finite number")


def positive_float(value: object, what: str = "") -> float:
    """A finite number > 0 (learning rates, time limits, sizes)."""
    x = _as_float(value, what, "a positive finite number")
    if x <= 0:
        raise _fail(what, "a positive finite number", value)
    return x


def nonneg_float(value: object, what: str = "") -> float:
    """A finite number >= 0 (waits, weight decay)."""
    x = _as_float(value, what, "a finite number >= 0")
    if x < 0:
        raise _fail(what, "a finite number >= 0", value)
    return x


def fraction(value: object, what: str = "") -> float:
    """A number in [0, 1] (shares of a schedule, loss weights)."""
    x = _as_float(value, what, "a number in [0, 1]")
    if not 0.0 <= x <= 1.0:
        raise _fail(what, "a number in [0, 1]", value)
    return x


def port(value: object, what: str = "") -> int:
    """A TCP port, 1-65535 (0 would let the system pick one that nobody is told)."""
    n = _as_int(value, what, "a TCP port (1-65535)")
    if not 1 <= n <= 65535:
        raise _fail(what, "a TCP port (1-65535)", value)
    return n


Check = Callable[[object, str], object]


def optional(check: Check, value: object, what: str) -> object:
    """``check`` unless the value is None (a setting left to its default)."""
    return None if value is None else check(value, what)


def check_depths(depth_rates: Iterable[Sequence[float]], blocks: int, what: str = "depth rate") -> None:
    """Refuse a depth override that names blocks the model does not have (it would silently prune nothing).

    ``blocks`` is how many blocks the pruned modules have (the deepest one, when encoder and decoder differ).
    """
    for lo, hi, _rate in depth_rates:
        if int(hi) >= blocks:
            have = f"blocks 0-{blocks - 1}" if blocks > 0 else "no blocks in the pruned modules"
            raise TaskpruneError(f"{what} {int(lo)}-{int(hi)} names blocks this model does not have (it has {have})")
